//! Controller mode: register with the controller, keep the Status stream open for the life of
//! the process, serve each lease through the router, and leave with OFFLINE and Unregister.
//!
//! One task owns the controller link and the lease state ([`Lifecycle`]); it turns controller
//! messages and EndSession calls into lease events and carries out the effects. Per lease it
//! owns a session server, a Listen task and the tunnels that task starts, all stopped by the
//! lease's own cancellation token. A controller that restarts or a network that drops costs
//! a reconnect (capped, jittered backoff, then Register and Status again), never the process,
//! and an active lease's session and tunnels stay up meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::ExporterConfig;
use crate::controller::lifecycle::{
    Effect, Event, HookKind, HookPlan, LeaseState, Lifecycle, SHUTDOWN_MESSAGE,
};
use crate::controller::tunnel;
use crate::controller::{self, ChannelOptions, ControllerError, Identity};
use crate::hooks;
use crate::host::SessionHost;
use crate::proto::controller_service_client::ControllerServiceClient;
use crate::proto::{
    ExporterStatus, ListenRequest, RegisterRequest, ReleaseLeaseRequest, ReportStatusRequest,
    StatusRequest, StatusResponse, UnregisterRequest,
};
use crate::server::ConnSender;
use crate::session::status_name;
use crate::signal::Stop;
use crate::systemd;
use crate::tree::Layout;

/// Time allowed for OFFLINE and Unregister on the way out.
const GOODBYE_BUDGET: Duration = Duration::from_secs(10);
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
    /// The controller lacks ReleaseLease; release through ReportStatus instead.
    compat_release: AtomicBool,
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
    host: SessionHost,
    listen: Option<JoinHandle<()>>,
    /// Opens once the beforeLease step has finished; tokens wait for it.
    gate: watch::Sender<bool>,
}

/// Results that tasks of a lease hand back to the link task, tagged with the lease.
enum Internal {
    Hook(String, HookKind, Result<(), String>),
    Released(String),
}

/// How the exporter ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal (or SIGHUP after the lease).
    Clean,
    /// A hook with `onFailure: exit` took the exporter offline.
    HookFailure,
}

/// Runs in controller mode until told to stop.
pub async fn run(config: ExporterConfig, stop: Stop) -> Result<Exit, ExporterError> {
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
    if let Ok(layout) = Layout::of(&config) {
        layout.start_owners();
    }
    let link = Arc::new(Link {
        controller: ControllerServiceClient::new(channel),
        identity,
        tls,
        options,
        routers: Mutex::new(HashMap::new()),
        compat_release: AtomicBool::new(false),
    });
    let plan = HookPlan {
        before: config.hooks.before_lease.as_ref().map(|h| h.on_failure),
        after: config.hooks.after_lease.as_ref().map(|h| h.on_failure),
        standalone: false,
    };
    let reporter_stop = CancellationToken::new();
    let runner = Runner {
        config: Arc::new(config),
        exporter_uuid: Uuid::new_v4(),
        link: link.clone(),
        lifecycle: Lifecycle::new(plan),
        lease: None,
        reporter: Reporter::spawn(link.clone(), reporter_stop),
        ends: mpsc::unbounded_channel(),
        internal: mpsc::unbounded_channel(),
        stop,
        ready: false,
        exit: Exit::Clean,
    };
    Ok(runner.run(&endpoint).await)
}

struct Runner {
    config: Arc<ExporterConfig>,
    exporter_uuid: Uuid,
    link: Arc<Link>,
    lifecycle: Lifecycle,
    lease: Option<LeaseRun>,
    reporter: Reporter,
    /// EndSession calls from the sessions, as lease names.
    ends: (
        mpsc::UnboundedSender<String>,
        mpsc::UnboundedReceiver<String>,
    ),
    internal: (
        mpsc::UnboundedSender<Internal>,
        mpsc::UnboundedReceiver<Internal>,
    ),
    stop: Stop,
    /// systemd has been told READY.
    ready: bool,
    exit: Exit,
}

impl Runner {
    async fn run(mut self, endpoint: &str) -> Exit {
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
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                let (now, drain) = (self.stop.now.clone(), self.stop.after_lease.clone());
                tokio::select! {
                    _ = now.cancelled() => break,
                    _ = &mut sleep => break,
                    // Lease work goes on while the controller is away.
                    Some(lease) = self.ends.1.recv() => self.end_requested(lease).await,
                    Some(done) = self.internal.1.recv() => self.internal_done(done).await,
                    _ = drain.cancelled(), if self.lease.is_none() => {
                        self.stop.now.cancel();
                        break;
                    }
                }
            }
        }
        systemd::stopping();
        self.shutdown(registered).await
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
        // From the config alone: registering opens no device.
        let reports = Layout::of(&self.config)
            .map(|layout| layout.reports().to_vec())
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
                    }
                    Ok(None) => return Some(tonic::Status::unavailable("the controller ended the Status stream").into()),
                    Err(status) => return Some(status.into()),
                },
                Some(lease) = self.ends.1.recv() => self.end_requested(lease).await,
                Some(done) = self.internal.1.recv() => self.internal_done(done).await,
                _ = drain.cancelled(), if self.lease.is_none() => {
                    self.stop.now.cancel();
                    return None;
                }
            }
        }
    }

    fn is_current(&self, lease: &str) -> bool {
        self.lease.as_ref().is_some_and(|run| run.name == lease)
    }

    async fn end_requested(&mut self, lease: String) {
        if self.is_current(&lease) {
            self.handle(Event::EndSession).await;
        }
    }

    async fn internal_done(&mut self, done: Internal) {
        match done {
            Internal::Hook(lease, kind, result) if self.is_current(&lease) => {
                self.handle(Event::HookDone(kind, result)).await
            }
            Internal::Released(lease) if self.is_current(&lease) => {
                self.handle(Event::Released).await
            }
            _ => {}
        }
    }

    async fn handle(&mut self, event: Event) {
        for effect in self.lifecycle.next(event) {
            match effect {
                Effect::StartSession { lease } => self.start_lease(lease).await,
                Effect::OpenListen { lease } => self.open_listen(&lease),
                Effect::OpenGate => {
                    if let Some(run) = &self.lease {
                        run.gate.send_replace(true);
                    }
                }
                Effect::RunHook { kind } => self.run_hook(kind),
                Effect::Release { lease } => self.release(lease),
                Effect::EndSession { lease } => self.end_lease(&lease).await,
                Effect::Report { status, message } => {
                    if let Some(run) = &self.lease {
                        run.host.session.set_status(status, &message);
                    }
                    self.reporter.report(status, message);
                }
                Effect::ExitAfterLease => {
                    self.exit = Exit::HookFailure;
                    self.stop.after_lease.cancel();
                }
            }
        }
    }

    async fn start_lease(&mut self, name: String) {
        let host = match SessionHost::start(
            &self.config,
            self.exporter_uuid,
            name.clone(),
            self.ends.0.clone(),
            None,
        )
        .await
        {
            Ok(host) => host,
            Err(e) => {
                tracing::error!(lease = %name, error = %e, "cannot serve this lease");
                return;
            }
        };
        tracing::info!(lease = %name, "lease started");
        systemd::status(&format!("leased: {name}"));
        self.lease = Some(LeaseRun {
            name,
            host,
            listen: None,
            gate: watch::channel(false).0,
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
            run.host.conns.clone(),
            run.host.stop.clone(),
            run.host.tasks.clone(),
            run.gate.subscribe(),
        )));
    }

    fn run_hook(&self, kind: HookKind) {
        let Some(run) = &self.lease else {
            return;
        };
        let client = match &self.lifecycle.lease {
            LeaseState::Active(lease) => lease.client.clone().unwrap_or_default(),
            LeaseState::Idle => String::new(),
        };
        let (lease, done) = (run.name.clone(), self.internal.0.clone());
        hooks::spawn(
            &self.config.hooks,
            kind,
            run.host.hook_context(&client),
            move |result| {
                let _ = done.send(Internal::Hook(lease, kind, result));
            },
        );
    }

    /// Asks the controller to end the lease (a second after the hook, as upstream), falling
    /// back to ReportStatus with `release_lease` for controllers without ReleaseLease.
    fn release(&self, lease: String) {
        let link = self.link.clone();
        let done = self.internal.0.clone();
        let status = self
            .lifecycle
            .reported
            .as_ref()
            .map(|r| r.status)
            .unwrap_or(ExporterStatus::AfterLeaseHook);
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_PAUSE).await;
            release_lease(&link, &lease, status).await;
            let _ = done.send(Internal::Released(lease));
        });
    }

    async fn end_lease(&mut self, lease: &str) {
        let Some(run) = self.lease.take_if(|r| r.name == lease) else {
            return;
        };
        if let Some(listen) = run.listen {
            listen.abort();
        }
        run.host.end().await;
        tracing::info!(lease = %run.name, "lease ended");
        if !self.stop.now.is_cancelled() {
            systemd::status("available");
        }
        if self.stop.after_lease.is_cancelled() {
            self.stop.now.cancel();
        }
    }

    async fn shutdown(mut self, registered: bool) -> Exit {
        // The end-of-lease step (afterLease hook, release) still runs, with the session up.
        if self.lease.is_some() {
            self.handle(Event::Shutdown).await;
            let budget = self
                .config
                .hooks
                .after_lease
                .as_ref()
                .map_or(Duration::ZERO, |h| h.timeout)
                + hooks::KILL_GRACE
                + Duration::from_secs(5);
            let deadline = tokio::time::Instant::now() + budget;
            while self.lease.is_some() && self.lifecycle.busy() {
                tokio::select! {
                    Some(done) = self.internal.1.recv() => self.internal_done(done).await,
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!("the end of the lease did not finish within {budget:?}");
                        break;
                    }
                }
            }
            if let Some(run) = &self.lease {
                let name = run.name.clone();
                self.end_lease(&name).await;
            }
        }
        // The end-of-lease reports go out before OFFLINE says goodbye.
        self.reporter.flush(Duration::from_secs(3)).await;
        self.reporter.stop().await;
        if registered {
            self.goodbye().await;
        }
        self.exit
    }

    /// OFFLINE and Unregister, bounded in time.
    async fn goodbye(&self) {
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

/// Pause before an exporter-initiated release, as upstream.
const RELEASE_PAUSE: Duration = Duration::from_secs(1);
const COMPAT_RELEASE_MESSAGE: &str = "Lease released (compat: ReportStatus with release_lease)";

/// Ends the lease from the exporter's side: ReleaseLease, retried while the controller is
/// unreachable; a controller that does not know ReleaseLease (or refuses it as an old one
/// does) gets ReportStatus with `release_lease` instead, from then on.
async fn release_lease(link: &Link, lease: &str, current: ExporterStatus) {
    if !link.compat_release.load(Ordering::Relaxed) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for attempt in 1..=21 {
            let mut request = link.identity.request(ReleaseLeaseRequest {
                name: lease.to_string(),
            });
            request.set_timeout(CALL_DEADLINE);
            match link.controller.clone().release_lease(request).await {
                Ok(_) => {
                    tracing::info!(lease = %lease, "lease released");
                    return;
                }
                Err(e) => match e.code() {
                    Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::Unauthenticated
                    | Code::Unimplemented => {
                        tracing::info!(lease = %lease, code = ?e.code(), "the controller does not take ReleaseLease; using ReportStatus with release_lease");
                        link.compat_release.store(true, Ordering::Relaxed);
                        break;
                    }
                    Code::Unavailable | Code::DeadlineExceeded if attempt < 21 => {
                        tracing::debug!(lease = %lease, attempt, "release failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    _ => {
                        tracing::warn!(lease = %lease, error = %ControllerError::from(e), "could not release the lease");
                        return;
                    }
                },
            }
        }
    }
    let status = match current {
        ExporterStatus::Available => ExporterStatus::AfterLeaseHook,
        other => other,
    };
    let mut request = link.identity.request(ReportStatusRequest {
        status: status as i32,
        message: Some(COMPAT_RELEASE_MESSAGE.to_string()),
        release_lease: Some(true),
    });
    request.set_timeout(CALL_DEADLINE);
    if let Err(e) = link.controller.clone().report_status(request).await {
        tracing::warn!(lease = %lease, error = %ControllerError::from(e), "could not release the lease");
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
    mut gate: watch::Receiver<bool>,
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

/// Reports kept while the controller is unreachable; older ones are dropped beyond this, as
/// only the latest status matters to a controller that comes back.
const PENDING_REPORTS: usize = 8;

/// Sends status reports in the background, in order. Transient failures are retried; while
/// they last, reports pile up to [`PENDING_REPORTS`] and the oldest give way to newer ones.
/// An older controller that lacks ReportStatus is noted once.
/// Reports waiting to be sent, and the bell rung when one is added.
type ReportQueue = Arc<(Mutex<VecDeque<(ExporterStatus, String)>>, Notify)>;

struct Reporter {
    queue: ReportQueue,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Reporter {
    fn spawn(link: Arc<Link>, stop: CancellationToken) -> Self {
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

    fn report(&self, status: ExporterStatus, message: String) {
        if let Ok(mut q) = self.queue.0.lock() {
            if q.len() == PENDING_REPORTS {
                q.pop_front();
            }
            q.push_back((status, message));
        }
        self.queue.1.notify_one();
    }

    /// Stops sending; reports still queued are given up.
    async fn stop(&mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }

    /// Waits up to `budget` for the queued reports to go out.
    async fn flush(&self, budget: Duration) {
        let _ = tokio::time::timeout(budget, async {
            while self.queue.0.lock().map(|q| !q.is_empty()).unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}
