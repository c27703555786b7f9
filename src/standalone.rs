//! Serving without a controller: one session for the whole process, on a Unix socket and/or
//! a TCP listener (as `jmp run --tls-grpc-listener`), with the same lease lifecycle as a
//! controller lease: the beforeLease hook at start, the afterLease hook at EndSession or
//! shutdown, whichever comes first. Statuses stay local.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{ExporterConfig, Secret};
use crate::exit::Exit;
use crate::hooks;
use crate::lifecycle::{Effect, Event, HookPlan, Lifecycle};
use crate::session::host::{HostError, SessionHost};
use crate::session::hosted::Hosting;
use crate::session::server;
use crate::session::tree::Layout;
use crate::signal::Stop;
use crate::systemd;

/// Lease name of the standalone session, as upstream.
pub const LEASE_NAME: &str = "standalone";

pub struct Listeners {
    pub socket: Option<PathBuf>,
    /// `HOST:PORT` to bind.
    pub tcp: Option<String>,
    pub tls: Option<TlsAcceptor>,
    pub passphrase: Option<Secret>,
}

/// A standalone session being served.
pub struct Running {
    pub tcp_addr: Option<SocketAddr>,
    pub host: SessionHost,
    /// EndSession calls from clients.
    ends: mpsc::Receiver<String>,
}

/// Builds the session and binds every listener; serving goes on in the background.
pub async fn start(
    config: &ExporterConfig,
    hosting: Option<Arc<Hosting>>,
    listeners: Listeners,
) -> Result<Running, HostError> {
    let no_labels = HashMap::new();
    Layout::of(config, hosting.as_ref().map_or(&no_labels, |h| h.labels()))?.start_owners();
    let (ends_tx, ends) = mpsc::channel(4);
    let host = SessionHost::start(
        config,
        hosting.as_ref(),
        Uuid::new_v4(),
        LEASE_NAME.to_string(),
        ends_tx,
        listeners.passphrase,
    )
    .await?;
    if let Some(path) = &listeners.socket {
        server::listen_unix(path, host.conns.clone(), host.stop.clone(), &host.tasks)?;
        tracing::info!(socket = %path.display(), "serving on Unix socket");
    }
    let mut tcp_addr = None;
    if let Some(addr) = &listeners.tcp {
        let bound = server::listen_tcp(
            addr,
            listeners.tls,
            host.conns.clone(),
            host.stop.clone(),
            &host.tasks,
        )
        .await?;
        tracing::info!(address = %bound, "serving on TCP");
        tcp_addr = Some(bound);
    }
    Ok(Running {
        tcp_addr,
        host,
        ends,
    })
}

/// Runs until told to stop; a stop after the lease is a stop now, as the standalone session
/// is the only lease.
pub async fn run(
    config: ExporterConfig,
    hosting: Option<Arc<Hosting>>,
    listeners: Listeners,
    stop: Stop,
) -> Result<Exit, HostError> {
    let mut running = start(&config, hosting, listeners).await?;
    let plan = HookPlan {
        before: config.hooks.before_lease.as_ref().map(|h| h.on_failure),
        after: config.hooks.after_lease.as_ref().map(|h| h.on_failure),
        standalone: true,
    };
    let (results, done) = mpsc::channel(HOOK_RESULTS);
    let mut machine = Machine {
        config: &config,
        lifecycle: Lifecycle::new(plan),
        host: &running.host,
        results,
        done,
        hooks: TaskTracker::new(),
        hooks_stop: CancellationToken::new(),
        exit: Exit::Clean,
        stop: stop.clone(),
    };
    machine.handle(Event::Status {
        leased: true,
        lease_name: Some(LEASE_NAME.to_string()),
        client_name: None,
    });
    systemd::ready(&match running.tcp_addr {
        Some(addr) => format!("serving standalone on {addr}"),
        None => "serving standalone".to_string(),
    });
    loop {
        tokio::select! {
            _ = stop.now.cancelled() => break,
            _ = stop.after_lease.cancelled() => break,
            // With exitOnLeaseEnd the session's end is the exporter's: the shutdown below runs
            // the afterLease hook once.
            Some(_) = running.ends.recv() => {
                if config.exit_on_lease_end {
                    tracing::info!("exitOnLeaseEnd: the session ended, so does the exporter");
                    break;
                }
                machine.handle(Event::EndSession)
            }
            Some(event) = machine.done.recv() => machine.handle(event),
        }
    }
    systemd::stopping();
    // The afterLease hook still runs, with the session up.
    machine.handle(Event::Shutdown);
    let budget = config
        .hooks
        .after_lease
        .as_ref()
        .map_or(Duration::ZERO, |h| h.timeout)
        + config
            .hooks
            .before_lease
            .as_ref()
            .map_or(Duration::ZERO, |h| h.timeout)
        + hooks::KILL_GRACE * 2
        + Duration::from_secs(5);
    let _ = tokio::time::timeout(budget, async {
        while machine.lifecycle.busy() {
            match machine.done.recv().await {
                Some(event) => machine.handle(event),
                None => break,
            }
        }
    })
    .await;
    // A hook still running past its budget goes now, with its whole process group.
    machine.hooks_stop.cancel();
    machine.hooks.close();
    machine.hooks.wait().await;
    let exit = machine.exit;
    running.host.end().await;
    tracing::info!("stopped");
    Ok(exit)
}

/// Hook results waiting for the standalone loop.
const HOOK_RESULTS: usize = 4;

/// Carries out the lifecycle's effects for the standalone session.
struct Machine<'a> {
    config: &'a ExporterConfig,
    lifecycle: Lifecycle,
    host: &'a SessionHost,
    results: mpsc::Sender<Event>,
    done: mpsc::Receiver<Event>,
    /// Hook runs, owned here: cancelled and awaited at the end.
    hooks: TaskTracker,
    hooks_stop: CancellationToken,
    exit: Exit,
    stop: Stop,
}

impl Machine<'_> {
    fn handle(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for effect in self.lifecycle.next(event) {
                match effect {
                    Effect::Report { status, message } => {
                        self.host.session.set_status(status, &message)
                    }
                    Effect::RunHook { kind } => {
                        let hook =
                            hooks::outcome(&self.config.hooks, kind, self.host.hook_context(""));
                        let (results, stop) = (self.results.clone(), self.hooks_stop.clone());
                        self.hooks.spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                result = hook => {
                                    let _ = results.send(Event::HookDone(kind, result)).await;
                                }
                            }
                        });
                    }
                    // The process is the session, and it is up already.
                    Effect::StartSession { .. } => events.push_back(Event::SessionStarted),
                    // Without a controller a release only marks the session's lease ended.
                    Effect::Release { .. } => events.push_back(Event::Released),
                    Effect::ExitAfterLease => {
                        self.exit = Exit::HookFailure;
                        self.stop.now.cancel();
                    }
                    // Served until the process stops; there is no Listen stream or gate:
                    // clients connect directly.
                    Effect::OpenListen { .. } | Effect::OpenGate | Effect::EndSession { .. } => {}
                }
            }
        }
    }
}
