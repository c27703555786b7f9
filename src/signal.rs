//! Signals, turned into the two ways the exporter stops: now (SIGTERM, SIGINT, SIGQUIT) or
//! once the current lease has ended (SIGHUP, upstream's drain). A SIGTERM after a SIGHUP still
//! stops at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Stop {
    /// Stop now: the current lease is ended, then OFFLINE and Unregister.
    pub now: CancellationToken,
    /// Stop once no lease is active.
    pub after_lease: CancellationToken,
}

impl Stop {
    /// Watches the signals for the life of the process.
    pub fn from_signals() -> Self {
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
                        tracing::info!("SIGHUP received: stopping once the current lease has ended");
                        watcher.after_lease.cancel();
                        continue;
                    }
                };
                tracing::info!("{name} received, stopping");
                watcher.now.cancel();
                return;
            }
        });
        stop
    }
}
