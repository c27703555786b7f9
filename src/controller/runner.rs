//! Controller mode's runner: keeps the exporter registered (Register, then the Status stream
//! for the life of the registration) and carries out the lease lifecycle's effects: a session
//! per lease, its Listen stream and tunnels, hooks, releases and status reports.
//!
//! One task owns all of it and waits on one `select!`: the controller connection moves through
//! its phases (backoff, Register, opening Status, following it) while lease work (EndSession
//! calls, hook results, releases) goes on, so a controller that restarts or a network that drops
//! costs a reconnect, never the lease. Everything the runner starts has an owner: the session
//! host owns a lease's listeners and tunnels, the runner's job tracker owns hook runs and
//! releases, and shutdown cancels and awaits both, within budgets.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Streaming;
use tracing::Instrument;
use uuid::Uuid;

use super::channel::ControllerError;
use super::link::Link;
use super::listen::listen;
use super::reporter::Reporter;
use crate::backoff::Backoff;
use crate::config::ExporterConfig;
use crate::exit::Exit;
use crate::hooks::{self, HookKind};
use crate::lifecycle::{Effect, Event, HookPlan, LeaseState, Lifecycle};
use crate::proto::{DriverInstanceReport, ExporterStatus, StatusResponse};
use crate::session::host::SessionHost;
use crate::session::hosted::Hosting;
use crate::session::tree::{Layout, LayoutError};
use crate::signal::Stop;
use crate::systemd;

/// Pause before an exporter-initiated release, as upstream.
const RELEASE_PAUSE: Duration = Duration::from_secs(1);
/// EndSession calls waiting for the runner; more than one per lease changes nothing.
const END_REQUESTS: usize = 8;
/// Results of hook runs and releases waiting for the runner.
const JOB_RESULTS: usize = 16;
/// How long hook runs and releases still get once the exporter is past its last lease.
const JOB_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error("the driver tree cannot be laid out: {0}")]
    Layout(#[from] LayoutError),
}

impl RunError {
    /// A config the controller link cannot use is a config error; the rest may pass.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Controller(ControllerError::Call(_)) => crate::exit::UNAVAILABLE,
            RunError::Controller(_) | RunError::Layout(_) => crate::exit::CONFIG_ERROR,
        }
    }
}

/// Runs in controller mode until told to stop.
pub async fn run(
    config: ExporterConfig,
    hosting: Option<Arc<Hosting>>,
    stop: Stop,
) -> Result<Exit, RunError> {
    let link = Arc::new(Link::new(&config)?);
    // Reports come from the config (and the hosted classes' client labels); registering opens
    // no device and builds no driver.
    let no_labels = HashMap::new();
    let layout = Layout::of(&config, hosting.as_ref().map_or(&no_labels, |h| h.labels()))?;
    layout.start_owners();
    let plan = HookPlan {
        before: config.hooks.before_lease.as_ref().map(|h| h.on_failure),
        after: config.hooks.after_lease.as_ref().map(|h| h.on_failure),
        standalone: false,
    };
    let (end_tx, end_rx) = mpsc::channel(END_REQUESTS);
    let (job_tx, job_rx) = mpsc::channel(JOB_RESULTS);
    let runner = Runner {
        config: Arc::new(config),
        hosting,
        exporter_uuid: Uuid::new_v4(),
        reports: layout.reports().to_vec(),
        reporter: Reporter::spawn(link.clone()),
        link,
        lifecycle: Lifecycle::new(plan),
        lease: None,
        end_tx,
        end_rx,
        job_tx,
        job_rx,
        jobs: TaskTracker::new(),
        jobs_stop: CancellationToken::new(),
        stop,
        ready: false,
        exit: Exit::Clean,
    };
    Ok(runner.run().await)
}

/// A lease being served.
struct LeaseRun {
    name: String,
    host: SessionHost,
    listen: Option<JoinHandle<()>>,
    /// Opens once the beforeLease step has finished; tokens wait for it.
    gate: watch::Sender<bool>,
    /// Every log line of this lease's work carries it.
    span: tracing::Span,
}

/// What the runner's jobs hand back, tagged with their lease.
enum JobResult {
    Hook {
        lease: String,
        kind: HookKind,
        result: Result<(), String>,
    },
    Released {
        lease: String,
    },
}

/// Where the link to the controller is.
enum Phase {
    /// Waiting out the backoff before the next Register.
    Waiting(Pin<Box<tokio::time::Sleep>>),
    Registering(BoxFuture<'static, Result<(), ControllerError>>),
    OpeningStatus(BoxFuture<'static, Result<Streaming<StatusResponse>, ControllerError>>),
    Following(Box<Streaming<StatusResponse>>),
}

/// What a phase came to.
enum Progress {
    Retry,
    Registered(Result<(), ControllerError>),
    StatusOpened(Result<Streaming<StatusResponse>, ControllerError>),
    Message(Result<Option<StatusResponse>, tonic::Status>),
}

impl Phase {
    /// Waits for the current phase's next step; cancel-safe, as the phase keeps its future.
    async fn progress(&mut self) -> Progress {
        match self {
            Phase::Waiting(sleep) => {
                sleep.as_mut().await;
                Progress::Retry
            }
            Phase::Registering(call) => Progress::Registered(call.await),
            Phase::OpeningStatus(call) => Progress::StatusOpened(call.await),
            Phase::Following(stream) => Progress::Message(stream.message().await),
        }
    }
}

/// One turn of the runner's loop.
enum Step {
    Stop,
    EndRequested(String),
    Job(JobResult),
    Link(Progress),
}

struct Runner {
    config: Arc<ExporterConfig>,
    hosting: Option<Arc<Hosting>>,
    exporter_uuid: Uuid,
    link: Arc<Link>,
    reports: Vec<DriverInstanceReport>,
    lifecycle: Lifecycle,
    lease: Option<LeaseRun>,
    reporter: Reporter,
    /// EndSession calls from the sessions, as lease names: the sessions' end, and ours.
    end_tx: mpsc::Sender<String>,
    end_rx: mpsc::Receiver<String>,
    /// What the jobs hand back: their end, and ours.
    job_tx: mpsc::Sender<JobResult>,
    job_rx: mpsc::Receiver<JobResult>,
    /// Hook runs and releases.
    jobs: TaskTracker,
    jobs_stop: CancellationToken,
    stop: Stop,
    /// systemd has been told READY.
    ready: bool,
    exit: Exit,
}

impl Runner {
    async fn run(mut self) -> Exit {
        let mut backoff = Backoff::controller();
        let mut registered = false;
        // Failures are logged once per outage, not once per retry; every Register ends one.
        let mut warned = false;
        tracing::info!(controller = %self.link.endpoint, "connecting to the controller");
        let mut phase = self.register();
        loop {
            let (now, drain) = (self.stop.now.clone(), self.stop.after_lease.clone());
            let step = tokio::select! {
                _ = now.cancelled() => Step::Stop,
                _ = drain.cancelled(), if self.lease.is_none() => {
                    self.stop.now.cancel();
                    Step::Stop
                }
                Some(lease) = self.end_rx.recv() => Step::EndRequested(lease),
                Some(done) = self.job_rx.recv() => Step::Job(done),
                progress = phase.progress() => Step::Link(progress),
            };
            let lost = match step {
                Step::Stop => break,
                Step::EndRequested(lease) => {
                    if self.is_current(&lease) {
                        self.handle(Event::EndSession).await;
                    }
                    continue;
                }
                Step::Job(done) => {
                    self.job_done(done).await;
                    continue;
                }
                Step::Link(Progress::Retry) => {
                    phase = self.register();
                    continue;
                }
                Step::Link(Progress::Registered(Ok(()))) => {
                    let metrics = crate::metrics::get();
                    if registered {
                        metrics.controller_reconnected();
                    }
                    metrics.controller_answered();
                    registered = true;
                    warned = false;
                    let endpoint = self.link.endpoint.clone();
                    tracing::info!(controller = %endpoint, "registered with the controller");
                    self.tell_systemd(&format!("registered with {endpoint}"));
                    self.handle(Event::Registered).await;
                    let link = self.link.clone();
                    phase = Phase::OpeningStatus(Box::pin(async move { link.status().await }));
                    continue;
                }
                Step::Link(Progress::Registered(Err(e))) => {
                    if warned {
                        tracing::debug!(error = %e, "register failed again");
                    } else {
                        tracing::warn!(error = %e, "cannot register with the controller; will keep trying");
                        systemd::status(&format!("cannot reach the controller: {e}"));
                        warned = true;
                    }
                    phase = Phase::Waiting(Box::pin(tokio::time::sleep(backoff.next_delay())));
                    continue;
                }
                Step::Link(Progress::StatusOpened(Ok(stream))) => {
                    crate::metrics::get().controller_connected(true);
                    crate::metrics::get().controller_answered();
                    phase = Phase::Following(Box::new(stream));
                    continue;
                }
                Step::Link(Progress::Message(Ok(Some(message)))) => {
                    crate::metrics::get().controller_answered();
                    backoff.reset();
                    let StatusResponse {
                        leased,
                        lease_name,
                        client_name,
                    } = message;
                    self.handle(Event::Status {
                        leased,
                        lease_name,
                        client_name,
                    })
                    .await;
                    continue;
                }
                Step::Link(Progress::StatusOpened(Err(e))) => e,
                Step::Link(Progress::Message(Ok(None))) => {
                    tonic::Status::unavailable("the controller ended the Status stream").into()
                }
                Step::Link(Progress::Message(Err(status))) => status.into(),
            };
            crate::metrics::get().controller_connected(false);
            tracing::warn!(error = %lost, "lost the controller's Status stream; reconnecting");
            systemd::status("reconnecting to the controller");
            phase = Phase::Waiting(Box::pin(tokio::time::sleep(backoff.next_delay())));
        }
        systemd::stopping();
        self.shutdown(registered).await
    }

    fn register(&self) -> Phase {
        let (link, reports) = (self.link.clone(), self.reports.clone());
        Phase::Registering(Box::pin(async move { link.register(reports).await }))
    }

    fn tell_systemd(&mut self, text: &str) {
        if self.ready {
            systemd::status(text);
        } else {
            systemd::ready(text);
            self.ready = true;
        }
    }

    /// Whether `lease` is the lease the lifecycle is serving (also while its session failed
    /// to start and it is being released).
    fn is_current(&self, lease: &str) -> bool {
        matches!(&self.lifecycle.lease, LeaseState::Active(l) if l.name == lease)
    }

    async fn job_done(&mut self, done: JobResult) {
        match done {
            JobResult::Hook {
                lease,
                kind,
                result,
            } if self.is_current(&lease) => self.handle(Event::HookDone(kind, result)).await,
            JobResult::Released { lease } if self.is_current(&lease) => {
                self.handle(Event::Released).await
            }
            _ => {}
        }
    }

    /// Feeds `event` to the lifecycle and carries out its effects; what an effect reports back
    /// at once (a session that started or failed) is fed in turn.
    async fn handle(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for effect in self.lifecycle.next(event) {
                match effect {
                    Effect::StartSession { lease } => {
                        events.push_back(self.start_lease(lease).await);
                    }
                    Effect::OpenListen { lease } => self.open_listen(&lease).await,
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
    }

    async fn start_lease(&mut self, name: String) -> Event {
        let span = tracing::info_span!("lease", lease = %name);
        let started = SessionHost::start(
            &self.config,
            self.hosting.as_ref(),
            self.exporter_uuid,
            name.clone(),
            self.end_tx.clone(),
            None,
        )
        .instrument(span.clone())
        .await;
        match started {
            Ok(host) => {
                span.in_scope(|| tracing::info!("lease started"));
                crate::metrics::get().lease("started");
                systemd::status(&format!("leased: {name}"));
                if self.config.exit_on_lease_end {
                    span.in_scope(|| {
                        tracing::info!("exitOnLeaseEnd: the exporter exits when this lease ends")
                    });
                    self.stop.after_lease.cancel();
                }
                self.lease = Some(LeaseRun {
                    name,
                    host,
                    listen: None,
                    gate: watch::channel(false).0,
                    span,
                });
                Event::SessionStarted
            }
            Err(e) => {
                span.in_scope(|| {
                    tracing::error!(error = %e, "cannot serve this lease; reporting it failed and releasing it")
                });
                Event::SessionFailed(e.to_string())
            }
        }
    }

    async fn open_listen(&mut self, lease: &str) {
        let Some(run) = self.lease.as_mut().filter(|r| r.name == lease) else {
            return;
        };
        if let Some(old) = run.listen.take() {
            old.abort();
            let _ = old.await;
        }
        run.listen = Some(tokio::spawn(
            listen(
                self.link.clone(),
                run.name.clone(),
                run.host.conns.clone(),
                run.host.stop.clone(),
                run.host.tasks.clone(),
                run.gate.subscribe(),
            )
            .instrument(run.span.clone()),
        ));
    }

    /// Starts a job on the runner's tracker; its result comes back through `job_rx`,
    /// unless the runner stops first.
    fn spawn_job(
        &self,
        span: tracing::Span,
        work: impl std::future::Future<Output = JobResult> + Send + 'static,
    ) {
        let (stop, results) = (self.jobs_stop.clone(), self.job_tx.clone());
        self.jobs.spawn(
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    result = work => {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = results.send(result) => {}
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    fn run_hook(&self, kind: HookKind) {
        let Some(run) = &self.lease else {
            return;
        };
        let client = match &self.lifecycle.lease {
            LeaseState::Active(lease) => lease.client.clone().unwrap_or_default(),
            LeaseState::Idle => String::new(),
        };
        let hook = hooks::outcome(&self.config.hooks, kind, run.host.hook_context(&client));
        let lease = run.name.clone();
        self.spawn_job(run.span.clone(), async move {
            JobResult::Hook {
                lease,
                kind,
                result: hook.await,
            }
        });
    }

    /// Asks the controller to end the lease (a second after the hook, as upstream).
    fn release(&self, lease: String) {
        let link = self.link.clone();
        let status = self
            .lifecycle
            .reported
            .as_ref()
            .map(|r| r.status)
            .unwrap_or(ExporterStatus::AfterLeaseHook);
        let span = match &self.lease {
            Some(run) if run.name == lease => run.span.clone(),
            _ => tracing::info_span!("lease", lease = %lease),
        };
        self.spawn_job(span, async move {
            tokio::time::sleep(RELEASE_PAUSE).await;
            link.release_lease(&lease, status).await;
            JobResult::Released { lease }
        });
    }

    async fn end_lease(&mut self, lease: &str) {
        let Some(run) = self.lease.take_if(|r| r.name == lease) else {
            return;
        };
        if let Some(listen) = run.listen {
            listen.abort();
            let _ = listen.await;
        }
        let span = run.span.clone();
        run.host.end().instrument(span.clone()).await;
        span.in_scope(|| tracing::info!("lease ended"));
        crate::metrics::get().lease("ended");
        if !self.stop.now.is_cancelled() {
            systemd::status("available");
        }
        if self.stop.after_lease.is_cancelled() {
            self.stop.now.cancel();
        }
    }

    async fn shutdown(mut self, registered: bool) -> Exit {
        // The end-of-lease step (afterLease hook, release) still runs, with the session up.
        if self.lease.is_some() || self.lifecycle.busy() {
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
            while self.lifecycle.busy() {
                tokio::select! {
                    Some(done) = self.job_rx.recv() => self.job_done(done).await,
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
        // Hooks and releases still running are stopped (a hook's whole process group goes).
        self.jobs_stop.cancel();
        self.jobs.close();
        if tokio::time::timeout(JOB_GRACE, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!("hook runs or releases did not stop within {JOB_GRACE:?}");
        }
        // The end-of-lease reports go out before OFFLINE says goodbye.
        self.reporter.flush(Duration::from_secs(3)).await;
        self.reporter.stop().await;
        if registered {
            self.link.goodbye().await;
        }
        self.exit
    }
}
