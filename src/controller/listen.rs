//! One lease's Listen stream: kept open (reopened with backoff when it ends), and a router
//! tunnel started for every token it delivers, once the lease's gate is open. The call's
//! response headers arrive only once a client has dialled, so nothing waits on it but this task.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tracing::Instrument;

use super::channel::ControllerError;
use super::link::Link;
use super::tunnel;
use crate::backoff::Backoff;
use crate::proto::ListenRequest;
use crate::session::server::ConnSender;

/// Keeps the lease's Listen stream open and starts a tunnel for every token it delivers.
/// The call's response headers arrive only once a client has dialled, so nothing waits on it
/// but this task.
pub async fn listen(
    link: Arc<Link>,
    lease: String,
    conns: ConnSender,
    stop: CancellationToken,
    tunnels: TaskTracker,
    mut gate: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::controller();
    // Tunnels of this lease so far, to tell them apart in the log.
    let mut tunnels_opened = 0u64;
    loop {
        let request = link.request(ListenRequest {
            lease_name: lease.clone(),
        });
        let mut client = link.client();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.listen(request) => r,
        };
        match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match message {
                        Ok(Some(token)) => {
                            backoff.reset();
                            // Clients wait until the beforeLease step has finished.
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                open = gate.wait_for(|open| *open) => if open.is_err() { return },
                            }
                            let router = match link.router(&token.router_endpoint) {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!(lease = %lease, error = %e, "unusable router endpoint");
                                    continue;
                                }
                            };
                            let (conns, stop) = (conns.clone(), stop.clone());
                            tunnels_opened += 1;
                            // Inside the lease's span: a debug log of one lease reads as one story.
                            let span = tracing::info_span!("tunnel", n = tunnels_opened);
                            tunnels.spawn(
                                async move {
                                    tracing::info!(router = %token.router_endpoint, "client connected through the router");
                                    match tunnel::run(router, &token.router_token, &conns, stop).await {
                                        Ok(()) => tracing::info!("client connection closed"),
                                        Err(e) => tracing::warn!(error = %e, "client connection failed"),
                                    }
                                }
                                .instrument(span),
                            );
                        }
                        // A clean end (superseded, or the controller going away): reopen.
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(lease = %lease, error = %ControllerError::from(status), "Listen stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                let level_is_warn = status.code() != Code::Unavailable;
                let error = ControllerError::from(status);
                if level_is_warn && backoff.attempts() == 0 {
                    tracing::warn!(lease = %lease, error = %error, "cannot listen for clients");
                } else {
                    tracing::debug!(lease = %lease, error = %error, "Listen failed");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
