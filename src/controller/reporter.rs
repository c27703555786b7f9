//! Status reports to the controller, sent in the background and in order: transient failures
//! are retried with backoff, and while they last the queue keeps only the newest
//! [`PENDING_REPORTS`] (a controller that comes back needs the latest status, not the history).
//! A controller that lacks ReportStatus is noted once. The reporter's task is its own: `stop`
//! ends and awaits it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::channel::ControllerError;
use super::link::{Link, CALL_DEADLINE};
use crate::backoff::Backoff;
use crate::proto::{ExporterStatus, ReportStatusRequest};
use crate::session::status_name;

/// Reports kept while the controller is unreachable; older ones are dropped beyond this, as
/// only the latest status matters to a controller that comes back.
const PENDING_REPORTS: usize = 8;

/// Reports waiting to be sent, and the bell rung when one is added.
type ReportQueue = Arc<(Mutex<VecDeque<(ExporterStatus, String)>>, Notify)>;

pub struct Reporter {
    queue: ReportQueue,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Reporter {
    pub fn spawn(link: Arc<Link>) -> Self {
        let stop = CancellationToken::new();
        let queue: ReportQueue = Arc::default();
        let (task_queue, task_stop) = (queue.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut told_unimplemented = false;
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                let next = task_queue.0.lock().ok().and_then(|q| q.front().cloned());
                let Some((status, message)) = next else {
                    tokio::select! {
                        _ = task_stop.cancelled() => return,
                        _ = task_queue.1.notified() => continue,
                    }
                };
                let mut request = link.request(ReportStatusRequest {
                    status: status as i32,
                    message: Some(message.clone()),
                    release_lease: None,
                });
                request.set_timeout(CALL_DEADLINE);
                let mut client = link.client();
                let sent = tokio::select! {
                    _ = task_stop.cancelled() => return,
                    r = client.report_status(request) => r,
                };
                let retry = match sent {
                    Ok(_) => {
                        tracing::debug!(status = status_name(status), "status reported");
                        false
                    }
                    Err(e) if e.code() == Code::Unimplemented => {
                        if !told_unimplemented {
                            tracing::info!("the controller does not take ReportStatus (an older controller); statuses stay local");
                            told_unimplemented = true;
                        }
                        false
                    }
                    Err(e) => {
                        let error = ControllerError::from(e);
                        if error.is_transient() {
                            tracing::debug!(error = %error, "status report failed; retrying");
                            true
                        } else {
                            tracing::warn!(status = status_name(status), error = %error, "status report refused");
                            false
                        }
                    }
                };
                if retry {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = task_stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                } else {
                    backoff.reset();
                    if let Ok(mut q) = task_queue.0.lock() {
                        q.pop_front();
                    }
                }
            }
        });
        Self { queue, task, stop }
    }

    pub fn report(&self, status: ExporterStatus, message: String) {
        crate::metrics::get().status(crate::session::status_name(status));
        if let Ok(mut q) = self.queue.0.lock() {
            if q.len() == PENDING_REPORTS {
                q.pop_front();
            }
            q.push_back((status, message));
        }
        self.queue.1.notify_one();
    }

    /// Stops sending; reports still queued are given up.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }

    /// Waits up to `budget` for the queued reports to go out.
    pub async fn flush(&self, budget: Duration) {
        let _ = tokio::time::timeout(budget, async {
            while self.queue.0.lock().map(|q| !q.is_empty()).unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}
