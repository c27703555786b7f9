//! Controller mode: register with the controller, keep the Status stream open for the life of
//! the process, serve each lease through the router, and leave with OFFLINE and Unregister.
//!
//! One task owns the controller link and the lease state ([`Lifecycle`]); it turns controller
//! messages and EndSession calls into lease events and carries out the effects. Per lease it
//! owns a session server, a Listen task and the tunnels that task starts, all stopped by the
//! lease's own cancellation token. A controller that restarts or a network that drops costs
//! a reconnect (capped, jittered backoff, then Register and Status again), never the process,
//! and an active lease's session and tunnels stay up meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::ExporterConfig;
use crate::controller::{self, ChannelOptions, ControllerError, Identity};
use crate::lease::{Effect, Event, Lifecycle, SHUTDOWN_MESSAGE};
use crate::proto::controller_service_client::ControllerServiceClient;
use crate::proto::{
    ExporterStatus, ListenRequest, RegisterRequest, ReportStatusRequest, StatusRequest,
    StatusResponse, UnregisterRequest,
};
use crate::server::{self, ConnSender};
use crate::session::{status_name, Session};
use crate::signal::Stop;
use crate::systemd;
use crate::tree::DriverTree;
use crate::tunnel;

/// Time allowed for OFFLINE and Unregister on the way out.
const GOODBYE_BUDGET: Duration = Duration::from_secs(10);
/// Time a lease's session gets to drain at lease end.
const LEASE_GRACE: Duration = Duration::from_secs(3);
/// Deadline of one ReportStatus, Register or Unregister call.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// Shared by the link task and the per-lease tasks.
struct Link {
    controller: ControllerServiceClient<Channel>,
    identity: Identity,
    tls: Arc<rustls::ClientConfig>,
    options: ChannelOptions,
    routers: Mutex<HashMap<String, Channel>>,
}

impl Link {
    /// One channel per router endpoint, reused by every tunnel to it.
    fn router(&self, endpoint: &str) -> Result<Channel, ControllerError> {
        let mut routers = self
            .routers
            .lock()
            .map_err(|_| ControllerError::BadEndpoint(endpoint.into()))?;
        if let Some(channel) = routers.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = controller::channel(endpoint, self.tls.clone(), &self.options)?;
        routers.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A lease being served.
struct LeaseRun {
    name: String,
    session: Arc<Session>,
    conns: ConnSender,
    stop: CancellationToken,
    server: JoinHandle<()>,
    listen: Option<JoinHandle<()>>,
    tunnels: TaskTracker,
}

/// Runs in controller mode until `stop` is cancelled.
pub async fn run(config: ExporterConfig, stop: Stop) -> Result<(), ExporterError> {
    let endpoint = config
        .endpoint
        .clone()
        .ok_or(ControllerError::Missing("endpoint"))?;
    let identity = Identity::from_config(&config)?;
    let tls = controller::client_tls(&config.tls)?;
    if config.tls.insecure {
        tracing::warn!(
            "tls.insecure is set: the controller's and router's certificates are not verified"
        );
    }
    let (options, unused) = ChannelOptions::from_grpc_options(&config.grpc_options);
    for key in unused {
        tracing::warn!(option = %key, "grpcOptions key is not used by this exporter");
    }
    let channel = controller::channel(&endpoint, tls.clone(), &options)?;
    let link = Arc::new(Link {
        controller: ControllerServiceClient::new(channel),
        identity,
        tls,
        options,
        routers: Mutex::new(HashMap::new()),
    });
    let runner = Runner {
        config: Arc::new(config),
        exporter_uuid: Uuid::new_v4(),
        link: link.clone(),
        lifecycle: Lifecycle::default(),
        lease: None,
        reporter: Reporter::spawn(link.clone(), stop.now.clone()),
        ends: mpsc::unbounded_channel(),
        stop,
        ready: false,
    };
    runner.run(&endpoint).await;
    Ok(())
}

struct Runner {
    config: Arc<ExporterConfig>,
    exporter_uuid: Uuid,
    link: Arc<Link>,
    lifecycle: Lifecycle,
    lease: Option<LeaseRun>,
    reporter: Reporter,
    ends: (
        mpsc::UnboundedSender<String>,
        mpsc::UnboundedReceiver<String>,
    ),
    stop: Stop,
    /// systemd has been told READY.
    ready: bool,
}

impl Runner {
    async fn run(mut self, endpoint: &str) {
        let mut backoff = Backoff::controller();
        let mut registered = false;
        // Failures are logged once per outage, not once per retry; every Register ends one.
        let mut warned = false;
        tracing::info!(controller = %endpoint, "connecting to the controller");
        while !self.stop.now.is_cancelled() {
            match self.register().await {
                Ok(()) => {
                    registered = true;
                    warned = false;
                    tracing::info!(controller = %endpoint, "registered with the controller");
                    self.tell_systemd(&format!("registered with {endpoint}"));
                    self.handle(Event::Registered).await;
                    let Some(lost) = self.follow_status(&mut backoff).await else {
                        break;
                    };
                    tracing::warn!(error = %lost, "lost the controller's Status stream; reconnecting");
                    systemd::status("reconnecting to the controller");
                }
                Err(e) => {
                    if warned {
                        tracing::debug!(error = %e, "register failed again");
                    } else {
                        tracing::warn!(error = %e, "cannot register with the controller; will keep trying");
                        systemd::status(&format!("cannot reach the controller: {e}"));
                        warned = true;
                    }
                }
            }
            let delay = backoff.next_delay();
            let (now, drain) = (self.stop.now.clone(), self.stop.after_lease.clone());
            tokio::select! {
                _ = now.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                // EndSession still works while the controller is away.
                Some(lease) = self.ends.1.recv() => self.end_requested(lease).await,
                _ = drain.cancelled(), if self.lease.is_none() => break,
            }
        }
        systemd::stopping();
        self.shutdown(registered).await;
    }

    fn tell_systemd(&mut self, text: &str) {
        if self.ready {
            systemd::status(text);
        } else {
            systemd::ready(text);
            self.ready = true;
        }
    }

    async fn register(&self) -> Result<(), ControllerError> {
        let reports = DriverTree::build(&self.config)
            .map(|tree| tree.reports().to_vec())
            .map_err(|e| ControllerError::Drivers(e.to_string()))?;
        let mut request = self.link.identity.request(RegisterRequest {
            labels: HashMap::new(),
            reports,
        });
        request.set_timeout(CALL_DEADLINE);
        self.link.controller.clone().register(request).await?;
        Ok(())
    }

    /// Follows the Status stream until it fails (returns why) or the exporter stops (`None`).
    async fn follow_status(&mut self, backoff: &mut Backoff) -> Option<ControllerError> {
        let (now, drain) = (self.stop.now.clone(), self.stop.after_lease.clone());
        let mut client = self.link.controller.clone();
        let opened = tokio::select! {
            _ = now.cancelled() => return None,
            r = client.status(self.link.identity.request(StatusRequest {})) => r,
        };
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return Some(status.into()),
        };
        loop {
            tokio::select! {
                _ = now.cancelled() => return None,
                message = stream.message() => match message {
                    Ok(Some(StatusResponse { leased, lease_name, client_name })) => {
                        backoff.reset();
                        self.handle(Event::Status { leased, lease_name, client_name }).await;
                        if drain.is_cancelled() && self.lease.is_none() {
                            return None;
                        }
                    }
                    Ok(None) => return Some(tonic::Status::unavailable("the controller ended the Status stream").into()),
                    Err(status) => return Some(status.into()),
                },
                Some(lease) = self.ends.1.recv() => self.end_requested(lease).await,
                _ = drain.cancelled(), if self.lease.is_none() => return None,
            }
        }
    }

    async fn end_requested(&mut self, lease: String) {
        if self.lease.as_ref().is_some_and(|run| run.name == lease) {
            self.handle(Event::EndSession).await;
        }
    }

    async fn handle(&mut self, event: Event) {
        for effect in self.lifecycle.next(event) {
            match effect {
                Effect::StartSession { lease } => self.start_lease(lease).await,
                Effect::OpenListen { lease } => self.open_listen(&lease),
                Effect::EndSession { lease } => self.end_lease(&lease).await,
                Effect::Report { status, message } => {
                    if let Some(run) = &self.lease {
                        run.session.set_status(status, &message);
                    }
                    self.reporter.report(status, message);
                }
            }
        }
    }

    async fn start_lease(&mut self, name: String) {
        let tree = match DriverTree::build(&self.config) {
            Ok(tree) => tree,
            Err(e) => {
                tracing::error!(lease = %name, error = %e, "cannot build the drivers for this lease");
                return;
            }
        };
        if let Err(e) = tree.reset().await {
            tracing::error!(lease = %name, error = %e, "a driver failed to reset at lease start");
        }
        let session =
            Session::for_lease(self.exporter_uuid, tree, name.clone(), self.ends.0.clone());
        let stop = CancellationToken::new();
        let (conns, server) = server::start(session.clone(), None, stop.clone());
        tracing::info!(lease = %name, "lease started");
        systemd::status(&format!("leased: {name}"));
        self.lease = Some(LeaseRun {
            name,
            session,
            conns,
            stop,
            server,
            listen: None,
            tunnels: TaskTracker::new(),
        });
    }

    fn open_listen(&mut self, lease: &str) {
        let Some(run) = self.lease.as_mut().filter(|r| r.name == lease) else {
            return;
        };
        if let Some(old) = run.listen.take() {
            old.abort();
        }
        run.listen = Some(tokio::spawn(listen(
            self.link.clone(),
            run.name.clone(),
            run.conns.clone(),
            run.stop.clone(),
            run.tunnels.clone(),
        )));
    }

    async fn end_lease(&mut self, lease: &str) {
        let Some(run) = self.lease.take_if(|r| r.name == lease) else {
            return;
        };
        if let Some(listen) = run.listen {
            listen.abort();
        }
        run.stop.cancel();
        run.tunnels.close();
        if tokio::time::timeout(LEASE_GRACE, async {
            run.tunnels.wait().await;
            let _ = run.server.await;
        })
        .await
        .is_err()
        {
            tracing::warn!(lease = %run.name, "lease session did not stop within {LEASE_GRACE:?}");
        }
        run.session.tree.close().await;
        tracing::info!(lease = %run.name, "lease ended");
        if !self.stop.now.is_cancelled() {
            systemd::status("available");
        }
    }

    async fn shutdown(mut self, registered: bool) {
        if let Some(run) = &self.lease {
            let name = run.name.clone();
            self.end_lease(&name).await;
        }
        self.reporter.stop().await;
        if !registered {
            return;
        }
        let link = self.link.clone();
        let goodbye = async move {
            let mut report = link.identity.request(ReportStatusRequest {
                status: ExporterStatus::Offline as i32,
                message: Some(SHUTDOWN_MESSAGE.to_string()),
                release_lease: None,
            });
            report.set_timeout(GOODBYE_BUDGET);
            if let Err(e) = link.controller.clone().report_status(report).await {
                tracing::warn!(error = %ControllerError::from(e), "could not report OFFLINE");
            }
            let mut unregister = link.identity.request(UnregisterRequest {
                reason: "Exporter shutdown".to_string(),
            });
            unregister.set_timeout(GOODBYE_BUDGET);
            match link.controller.clone().unregister(unregister).await {
                Ok(_) => tracing::info!("unregistered from the controller"),
                Err(e) => tracing::warn!(error = %ControllerError::from(e), "could not unregister"),
            }
        };
        if tokio::time::timeout(GOODBYE_BUDGET, goodbye).await.is_err() {
            tracing::warn!(
                "the controller did not take OFFLINE and Unregister within {GOODBYE_BUDGET:?}"
            );
        }
    }
}

/// Keeps the lease's Listen stream open and starts a tunnel for every token it delivers.
/// The call's response headers arrive only once a client has dialled, so nothing waits on it
/// but this task.
async fn listen(
    link: Arc<Link>,
    lease: String,
    conns: ConnSender,
    stop: CancellationToken,
    tunnels: TaskTracker,
) {
    let mut backoff = Backoff::controller();
    loop {
        let request = link.identity.request(ListenRequest {
            lease_name: lease.clone(),
        });
        let mut client = link.controller.clone();
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
                            let router = match link.router(&token.router_endpoint) {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!(lease = %lease, error = %e, "unusable router endpoint");
                                    continue;
                                }
                            };
                            let (conns, stop, lease) = (conns.clone(), stop.clone(), lease.clone());
                            tunnels.spawn(async move {
                                tracing::info!(lease = %lease, router = %token.router_endpoint, "client connected through the router");
                                match tunnel::run(router, &token.router_token, &conns, stop).await {
                                    Ok(()) => tracing::info!(lease = %lease, "client connection closed"),
                                    Err(e) => tracing::warn!(lease = %lease, error = %e, "client connection failed"),
                                }
                            });
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

/// Sends status reports in the background, newest wins: a report still waiting when a newer
/// one arrives is replaced. Transient failures are retried; an older controller that lacks
/// ReportStatus is noted once.
struct Reporter {
    tx: watch::Sender<Option<(ExporterStatus, String)>>,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Reporter {
    fn spawn(link: Arc<Link>, parent: CancellationToken) -> Self {
        let (tx, mut rx) = watch::channel::<Option<(ExporterStatus, String)>>(None);
        let stop = parent.child_token();
        let task_stop = stop.clone();
        let task = tokio::spawn(async move {
            let mut told_unimplemented = false;
            let mut pending: Option<(ExporterStatus, String)> = None;
            loop {
                let Some((status, message)) = pending.take() else {
                    tokio::select! {
                        _ = task_stop.cancelled() => return,
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                    pending = rx.borrow_and_update().clone();
                    continue;
                };
                let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
                loop {
                    let mut request = link.identity.request(ReportStatusRequest {
                        status: status as i32,
                        message: Some(message.clone()),
                        release_lease: None,
                    });
                    request.set_timeout(CALL_DEADLINE);
                    let mut client = link.controller.clone();
                    let sent = tokio::select! {
                        _ = task_stop.cancelled() => return,
                        r = client.report_status(request) => r,
                    };
                    let error = match sent {
                        Ok(_) => {
                            tracing::debug!(status = status_name(status), "status reported");
                            break;
                        }
                        Err(e) if e.code() == Code::Unimplemented => {
                            if !told_unimplemented {
                                tracing::info!("the controller does not take ReportStatus (an older controller); statuses stay local");
                                told_unimplemented = true;
                            }
                            break;
                        }
                        Err(e) => ControllerError::from(e),
                    };
                    if !error.is_transient() {
                        tracing::warn!(status = status_name(status), error = %error, "status report refused");
                        break;
                    }
                    tracing::debug!(error = %error, "status report failed; retrying");
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = task_stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                        // A newer report replaces this one.
                        changed = rx.changed() => {
                            if changed.is_err() { return }
                            pending = rx.borrow_and_update().clone();
                            break;
                        }
                    }
                }
            }
        });
        Self { tx, task, stop }
    }

    fn report(&self, status: ExporterStatus, message: String) {
        self.tx.send_replace(Some((status, message)));
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
