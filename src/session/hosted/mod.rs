//! Unchanged upstream Python drivers beside the native ones. Every entry the exporter has no
//! native driver for (or that asks for the host) runs, with its subtree, in one driver host
//! process: the lab's own interpreter with stock jumpstarter 0.9.0, our `host.py` on top, which
//! builds the entries with upstream's code and serves them with upstream's session on a private
//! Unix socket, through the [`lane`] (frames, not a gRPC server). The session tree routes their
//! UUIDs here; [`proxy`] forwards calls and streams to the host as they came, and relays its
//! answers as they are.
//!
//! Lifecycle, so that no lease waits for Python to start: [`Hosting`] lives as long as the
//! exporter and keeps one host warm (interpreter started, classes imported); a lease takes it
//! and has it build fresh drivers ([`HostedSession`]), and the next warm host starts when that
//! lease ends. A host that dies or hangs fails only its own drivers (UNAVAILABLE, naming the
//! entries and how it ended) and is replaced for the next lease.

pub mod lane;
pub mod process;
pub mod proxy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

use self::process::{HostError, HostProcess};
use crate::config::{Entry, ExporterConfig};
use crate::proto::DriverInstanceReport;

/// The host script, run with `python -c`.
pub const SCRIPT: &str = include_str!("host.py");

/// The interpreter used when neither `--python` nor `JMP_EXPORTER_PYTHON` names one.
pub const DEFAULT_PYTHON: &str = "python3";

/// The top-most hosted entries of a config, dotted (`storage`, `dut.flasher`): the host builds
/// each with everything below it.
pub fn hosted_roots(config: &ExporterConfig) -> Vec<&Entry> {
    fn walk<'a>(entries: &'a [Entry], out: &mut Vec<&'a Entry>) {
        for e in entries {
            if e.is_hosted() {
                out.push(e);
            } else {
                walk(&e.children, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&config.export, &mut out);
    out
}

/// The Python side of an exporter, for the life of the process.
pub struct Hosting {
    python: PathBuf,
    /// The config file as read at start; the host reads its entries with upstream's YAML
    /// reader, so that they mean to it what they mean to the Python exporter.
    config_text: Arc<str>,
    roots: Vec<String>,
    /// Dotted entry name → the client class its driver reports (from the imports).
    labels: HashMap<String, String>,
    /// The host waiting for the next lease.
    warm: tokio::sync::Mutex<Option<HostProcess>>,
    /// Starting the next warm host; it goes with this value.
    preparing: std::sync::Mutex<Option<JoinHandle<()>>>,
    entries: String,
}

impl Drop for Hosting {
    fn drop(&mut self) {
        if let Some(task) = self.preparing.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// The hosted entries' classes cannot all be imported: a config error.
#[derive(Debug)]
pub struct ImportErrors {
    /// Dotted entry name → why.
    pub errors: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostingError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("hosted driver classes cannot be imported")]
    Imports(ImportErrors),
}

impl Hosting {
    /// Starts the first host and has it import every hosted class; `None` when the config
    /// hosts nothing (no interpreter is started then).
    pub async fn start(
        config: &ExporterConfig,
        config_text: &str,
        python: PathBuf,
    ) -> Result<Option<Arc<Self>>, HostingError> {
        let roots: Vec<String> = hosted_roots(config).iter().map(|e| e.dotted()).collect();
        if roots.is_empty() {
            return Ok(None);
        }
        let entries = roots.join(", ");
        let host = HostProcess::spawn(&python, &entries)?;
        let loaded = host.load(config_text, &roots).await?;
        if !loaded.errors.is_empty() {
            host.stop().await;
            return Err(HostingError::Imports(ImportErrors {
                errors: loaded.errors,
            }));
        }
        tracing::debug!(python = %python.display(), entries = %entries, "Python driver host ready");
        Ok(Some(Arc::new(Self {
            python,
            config_text: config_text.into(),
            roots,
            labels: loaded.labels,
            warm: tokio::sync::Mutex::new(Some(host)),
            preparing: std::sync::Mutex::new(None),
            entries,
        })))
    }

    pub fn labels(&self) -> &HashMap<String, String> {
        &self.labels
    }

    /// A fresh warm host (interpreter started, config read, classes imported).
    async fn fresh(&self) -> Result<HostProcess, HostError> {
        let host = HostProcess::spawn(&self.python, &self.entries)?;
        host.load(&self.config_text, &self.roots).await?;
        Ok(host)
    }

    /// Starts the host for the next session now, so that its lease does not wait for it.
    pub fn prepare_next(self: &Arc<Self>) {
        // Weak: the task must not keep the exporter's hosting alive; a failure is retried when
        // the lease comes.
        let this = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let Some(this) = this.upgrade() else {
                return;
            };
            let mut warm = this.warm.lock().await;
            if warm.as_ref().is_some_and(|h| h.dead().is_none()) {
                return;
            }
            match this.fresh().await {
                Ok(host) => *warm = Some(host),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare the Python driver host for the next lease")
                }
            }
        });
        if let Some(old) = self.preparing.lock().ok().and_then(|mut t| t.replace(task)) {
            old.abort();
        }
    }

    /// Has a host build and serve fresh drivers with the given UUIDs (dotted name → UUID).
    pub async fn serve(self: &Arc<Self>, uuids: HashMap<String, String>) -> HostedSession {
        let began = std::time::Instant::now();
        let taken = self.warm.lock().await.take();
        let host = match taken {
            Some(h) if h.dead().is_none() => Ok(h),
            _ => self.fresh().await,
        };
        let started = async {
            let host = host?;
            let serving = host.serve(&uuids).await?;
            Ok::<_, HostError>((host, serving))
        };
        match started.await {
            Ok((host, serving)) => {
                let session = HostedSession::connect(host, serving).await;
                tracing::info!(entries = %self.entries, "Python drivers built and served in {} ms", began.elapsed().as_millis());
                session
            }
            Err(e) => {
                tracing::error!(entries = %self.entries, error = %e, "the Python driver host cannot serve this session; its drivers answer UNAVAILABLE");
                HostedSession::unavailable(&self.entries, e.to_string())
            }
        }
    }
}

/// One session's hosted drivers: a host serving them, or why there is none.
pub struct HostedSession {
    host: Option<HostProcess>,
    lane: Option<Arc<lane::Lane>>,
    /// Dotted entry name → why the host could not build it, and its client class if known.
    pub failed: HashMap<String, (String, Option<String>)>,
    /// The host's reports by UUID, as upstream's session gives them.
    pub reports: HashMap<String, DriverInstanceReport>,
    /// Why no call can reach the host, when it never served.
    never: Option<String>,
    entries: Arc<str>,
    keep_alive: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl HostedSession {
    fn unavailable(entries: &str, why: String) -> Self {
        Self {
            host: None,
            lane: None,
            failed: HashMap::new(),
            reports: HashMap::new(),
            never: Some(why),
            entries: entries.into(),
            keep_alive: std::sync::Mutex::new(None),
        }
    }

    async fn connect(host: HostProcess, serving: process::Serving) -> Self {
        let entries = host.entries.clone();
        let Some(socket) = serving.socket else {
            let mut s = Self::unavailable(&entries, "built none of its drivers".into());
            s.failed = serving.failed;
            s.host = Some(host);
            return s;
        };
        let lane = Arc::new(lane::Lane::new(socket, entries.clone()));
        let reports = match lane.report().await {
            Ok(r) => r.reports.into_iter().map(|r| (r.uuid.clone(), r)).collect(),
            Err(status) => {
                tracing::warn!(entries = %entries, error = %status, "the Python driver host did not report its drivers");
                HashMap::new()
            }
        };
        Self {
            host: Some(host),
            lane: Some(lane),
            failed: serving.failed,
            reports,
            never: None,
            entries,
            keep_alive: std::sync::Mutex::new(None),
        }
    }

    /// Starts watching the host's event loop (a hung host is killed); [`Self::end`] stops it.
    pub fn watch(self: &Arc<Self>) {
        if self.host.is_none() {
            return;
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            if let Some(host) = &this.host {
                host.keep_alive().await;
            }
        });
        if let Ok(mut slot) = self.keep_alive.lock() {
            *slot = Some(task);
        }
    }

    /// Why calls cannot reach the host right now, naming its entries.
    pub fn unreachable(&self) -> Option<String> {
        let why = match (&self.never, &self.host) {
            (Some(why), _) => why.clone(),
            (None, Some(host)) => host.dead()?,
            (None, None) => "is not running".into(),
        };
        Some(format!(
            "the Python driver host for {} {why}; the next lease starts a new one",
            self.entries
        ))
    }

    pub fn lane(&self) -> Option<Arc<lane::Lane>> {
        self.lane.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.host.as_ref().and_then(HostProcess::pid)
    }

    /// Closes the hosted drivers and ends the host.
    pub async fn end(&self) {
        if let Some(task) = self.keep_alive.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
            let _ = task.await;
        }
        if let Some(host) = &self.host {
            host.stop().await;
        }
    }
}
