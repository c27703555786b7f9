//! Signals, turned into the ways the exporter stops: now (SIGTERM, SIGINT, SIGQUIT) or once the
//! current lease has ended (SIGHUP, upstream's drain, for the new config and binary to start).
//! A SIGTERM after a SIGHUP still stops at once.
//!
//! SIGHUP checks the config file first, as `check` would: a config with errors is refused (each
//! error logged, nothing changes, the exporter keeps serving with the config it started with),
//! so a typo never takes a lab's exporter down. A drain that SIGHUP started ends with
//! [`crate::exit::RELOAD`], which the unit restarts on; a stop asked for by SIGTERM ends with 0,
//! which it does not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Checks the config file as it is now; the errors, ready to log, if it cannot be used.
pub type ReloadCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), Vec<String>>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Stop {
    /// Stop now: the current lease is ended, then OFFLINE and Unregister.
    pub now: CancellationToken,
    /// Stop once no lease is active.
    pub after_lease: CancellationToken,
    /// SIGHUP found the new config good: the drain is for a restart.
    reloading: Arc<AtomicBool>,
    /// A signal asked to stop for good.
    terminated: Arc<AtomicBool>,
}

impl Stop {
    /// Watches the signals for the life of the process.
    pub fn from_signals(check: ReloadCheck) -> Self {
        let stop = Stop::default();
        let watcher = stop.clone();
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::quit()),
                signal(SignalKind::hangup()),
            ) else {
                tracing::error!("cannot watch for signals; stop the exporter with SIGKILL");
                return;
            };
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = quit.recv() => "SIGQUIT",
                    _ = hup.recv() => {
                        watcher.reload(&check).await;
                        continue;
                    }
                };
                tracing::info!("{name} received, stopping");
                watcher.terminated.store(true, Ordering::SeqCst);
                watcher.now.cancel();
                return;
            }
        });
        stop
    }

    async fn reload(&self, check: &ReloadCheck) {
        tracing::info!("SIGHUP received: checking the config file before anything changes");
        match check().await {
            Ok(()) => {
                tracing::info!(
                    "the new config is good: stopping once the current lease has ended, for the service to start it"
                );
                self.reloading.store(true, Ordering::SeqCst);
                self.after_lease.cancel();
            }
            Err(errors) => {
                tracing::error!(
                    "SIGHUP refused: the config file has {} error{}; still serving with the config loaded at start (fix it and send SIGHUP again)",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
                for e in errors {
                    tracing::error!("config error: {e}");
                }
            }
        }
    }

    /// Whether the process ends to be started again with the new config: SIGHUP drained it
    /// and no signal asked for a stop for good since.
    pub fn restart_wanted(&self) -> bool {
        self.reloading.load(Ordering::SeqCst) && !self.terminated.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_for_good_after_a_reload_is_not_restarted() {
        let stop = Stop::default();
        assert!(!stop.restart_wanted());
        stop.reloading.store(true, Ordering::SeqCst);
        assert!(stop.restart_wanted());
        stop.terminated.store(true, Ordering::SeqCst);
        assert!(
            !stop.restart_wanted(),
            "systemctl stop after a reload stays stopped"
        );
    }
}
