//! A served session: the session itself, its server, its private hook socket and the client
//! connections feeding it, started together at lease start and ended together at lease end.
//! Shared by controller mode (one per lease) and standalone mode (one per process).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{ExporterConfig, Secret};
use crate::hooks::HookContext;
use crate::session::hosted::{HostedSession, Hosting};
use crate::session::server::{self, ConnSender, ListenError};
use crate::session::tree::{DriverTree, Layout, LayoutError};
use crate::session::Session;

/// Time the session gets to drain at its end.
pub const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot lay out the driver tree: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot create the hook socket directory: {0}")]
    RuntimeDir(std::io::Error),
}

impl HostError {
    /// The exit code of a process that could not start serving for this reason.
    pub fn exit_code(&self) -> u8 {
        match self {
            HostError::Layout(_) => crate::exit::CONFIG_ERROR,
            HostError::Listen(_) | HostError::RuntimeDir(_) => crate::exit::UNAVAILABLE,
        }
    }
}

pub struct SessionHost {
    pub session: Arc<Session>,
    /// Feeds client connections (tunnels, listeners) into the session's server.
    pub conns: ConnSender,
    /// Ends everything the session started.
    pub stop: CancellationToken,
    /// The tasks serving this session (listeners, router tunnels); [`Self::end`] waits for
    /// them, so that what they clean up on their way out (a socket file) is gone when it returns.
    pub tasks: TaskTracker,
    /// The Unix socket hooks reach the session on (`JUMPSTARTER_HOST`).
    pub hook_socket: PathBuf,
    server: JoinHandle<()>,
    /// This session's hosted drivers, and where the next session's come from.
    hosted: Option<Arc<HostedSession>>,
    hosting: Option<Arc<Hosting>>,
    /// Private (0700) directory holding the hook socket; removed with the host.
    _runtime_dir: tempfile::TempDir,
}

impl SessionHost {
    /// Builds fresh drivers, resets them (a device that is absent or busy costs only its own
    /// driver's calls), and serves the session on a new hook socket.
    pub async fn start(
        config: &ExporterConfig,
        hosting: Option<&Arc<Hosting>>,
        exporter_uuid: Uuid,
        lease: String,
        on_end: mpsc::Sender<String>,
        passphrase: Option<Secret>,
    ) -> Result<Self, HostError> {
        let runtime_dir = runtime_dir().map_err(HostError::RuntimeDir)?;
        let hook_socket = runtime_dir.path().join("hook.sock");
        let empty = HashMap::new();
        let layout = Layout::of(config, hosting.map_or(&empty, |h| h.labels()))?;
        // Fresh hosted drivers too: the host builds them for this session.
        let hosted = match hosting {
            Some(hosting) => {
                let hosted = Arc::new(hosting.serve(layout.hosted_uuids()).await);
                hosted.watch();
                Some(hosted)
            }
            None => None,
        };
        let tree = DriverTree::from_layout(layout, hosted.clone());
        // A driver that cannot reach its device says so at its calls; the session starts.
        tree.reset().await;
        let session = Session::for_lease(exporter_uuid, tree, lease, on_end);
        let motd_file = runtime_dir.path().join("motd");
        session.set_motd(config.motd.clone(), Some(motd_file.clone()));
        if config.require_lease {
            session.require_lease();
        }
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (conns, server) = server::start(session.clone(), passphrase, stop.clone());
        if let Err(e) = server::listen_unix(&hook_socket, conns.clone(), stop.clone(), &tasks) {
            stop.cancel();
            session.tree.close().await;
            if let Some(hosted) = &hosted {
                hosted.end().await;
            }
            return Err(e.into());
        }
        Ok(Self {
            session,
            conns,
            stop,
            tasks,
            hook_socket,
            server,
            hosted,
            hosting: hosting.cloned(),
            _runtime_dir: runtime_dir,
        })
    }

    /// What a hook of this session needs.
    pub fn hook_context(&self, client_name: &str) -> HookContext {
        HookContext {
            socket: self.hook_socket.clone(),
            motd_file: self.hook_socket.with_file_name("motd"),
            lease_name: self.session.lease_name.clone().unwrap_or_default(),
            client_name: client_name.to_string(),
        }
    }

    /// Stops serving (connections get [`GRACE`] to finish) and closes the drivers.
    pub async fn end(self) {
        self.stop.cancel();
        self.tasks.close();
        let (tasks, server) = (self.tasks, self.server);
        let drained = tokio::time::timeout(GRACE, async {
            tasks.wait().await;
            let _ = server.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("session connections did not close within {GRACE:?}");
        }
        self.session.tree.close().await;
        if let Some(hosted) = &self.hosted {
            hosted.end().await;
        }
        if let Some(hosting) = &self.hosting {
            hosting.prepare_next();
        }
    }

    /// The process id of this session's Python driver host, if one serves it.
    pub fn hosted_pid(&self) -> Option<u32> {
        self.hosted.as_ref().and_then(|h| h.pid())
    }
}

/// Names of this exporter's runtime directories: `jmp-exporter-<pid>-<random>`, so that the
/// ones of a process that was killed can be recognised and removed.
const RUNTIME_PREFIX: &str = "jmp-exporter-";

/// A fresh private directory under `$XDG_RUNTIME_DIR` (the systemd unit's RuntimeDirectory),
/// else the system temporary directory. The first call also removes directories left by
/// exporters that were killed.
fn runtime_dir() -> std::io::Result<tempfile::TempDir> {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    SWEEP.call_once(|| sweep_stale(&base));
    // Private: only the exporter's user may reach the hook socket through it.
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!("{RUNTIME_PREFIX}{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(base)
}

/// Removes runtime directories whose process is gone (a SIGKILL leaves them behind).
fn sweep_stale(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUNTIME_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(
                path = %entry.path().display(),
                "removed the runtime directory of an exporter that did not stop cleanly"
            ),
            // Another exporter starting at the same moment removed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %entry.path().display(),
                error = %e,
                "cannot remove a stale runtime directory"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_dead_exporters_are_swept() {
        let base = tempfile::tempdir().unwrap();
        // A pid above the kernel's limit (4194304) never runs.
        let dead = base.path().join("jmp-exporter-4999999-abc");
        let alive = base
            .path()
            .join(format!("jmp-exporter-{}-def", std::process::id()));
        let init = base.path().join("jmp-exporter-1-ghi");
        let other = base.path().join("jumpstarter-4999999");
        for dir in [&dead, &alive, &init, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(dead.join("hook.sock"), b"").unwrap();
        sweep_stale(base.path());
        assert!(!dead.exists());
        assert!(alive.exists() && init.exists() && other.exists());
    }
}
