//! Telling systemd how the exporter is doing, for `Type=notify` units: READY once serving,
//! STATUS lines a lab owner sees in `systemctl status`, WATCHDOG pings, STOPPING. Everything
//! here does nothing when the exporter was not started by systemd (no `NOTIFY_SOCKET`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Set once READY went out: watchdog pings follow it, never precede it.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// The exporter is serving (standalone) or registered (controller mode).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    READY_SENT.store(true, Ordering::SeqCst);
}

/// What the exporter is doing now, shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Whether stdout/stderr go to the journal, which adds its own timestamps.
pub fn logs_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Pings the systemd watchdog at half the interval the unit asks for, once READY was sent,
/// until `stop`. The pings come from the async runtime, so a wedged runtime stops them and
/// systemd restarts us.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if READY_SENT.load(Ordering::SeqCst) {
                        send(&[NotifyState::Watchdog]);
                    }
                }
            }
        }
    });
}
