//! A served session: the session itself, its server, its private hook socket and the client
//! connections feeding it, started together at lease start and ended together at lease end.
//! Shared by controller mode (one per lease) and standalone mode (one per process).

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
use crate::server::{self, ConnSender, ListenError};
use crate::session::Session;
use crate::tree::{BuildError, DriverTree};

/// Time the session gets to drain at its end.
pub const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot start drivers: {0}")]
    Drivers(#[from] BuildError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot create the hook socket directory: {0}")]
    RuntimeDir(std::io::Error),
}

pub struct SessionHost {
    pub session: Arc<Session>,
    /// Feeds client connections (tunnels, listeners) into the session's server.
    pub conns: ConnSender,
    /// Ends everything the session started.
    pub stop: CancellationToken,
    /// Client connections (router tunnels) of this session.
    pub tunnels: TaskTracker,
    /// The Unix socket hooks reach the session on (`JUMPSTARTER_HOST`).
    pub hook_socket: PathBuf,
    server: JoinHandle<()>,
    /// Private (0700) directory holding the hook socket; removed with the host.
    _runtime_dir: tempfile::TempDir,
}

impl SessionHost {
    /// Builds fresh drivers, resets them, and serves the session on a new hook socket.
    pub async fn start(
        config: &ExporterConfig,
        exporter_uuid: Uuid,
        lease: String,
        on_end: mpsc::UnboundedSender<String>,
        passphrase: Option<Secret>,
    ) -> Result<Self, HostError> {
        let tree = DriverTree::build(config)?;
        tree.reset().await?;
        let session = Session::for_lease(exporter_uuid, tree, lease, on_end);
        if config.require_lease {
            session.require_lease();
        }
        let stop = CancellationToken::new();
        let (conns, server) = server::start(session.clone(), passphrase, stop.clone());
        let runtime_dir = runtime_dir().map_err(HostError::RuntimeDir)?;
        let hook_socket = runtime_dir.path().join("hook.sock");
        server::listen_unix(&hook_socket, conns.clone(), stop.clone())?;
        Ok(Self {
            session,
            conns,
            stop,
            tunnels: TaskTracker::new(),
            hook_socket,
            server,
            _runtime_dir: runtime_dir,
        })
    }

    /// What a hook of this session needs.
    pub fn hook_context(&self, client_name: &str) -> HookContext {
        HookContext {
            socket: self.hook_socket.clone(),
            lease_name: self.session.lease_name.clone().unwrap_or_default(),
            client_name: client_name.to_string(),
        }
    }

    /// Stops serving (connections get [`GRACE`] to finish) and closes the drivers.
    pub async fn end(self) {
        self.stop.cancel();
        self.tunnels.close();
        let (tunnels, server) = (self.tunnels, self.server);
        let drained = tokio::time::timeout(GRACE, async {
            tunnels.wait().await;
            let _ = server.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("session connections did not close within {GRACE:?}");
        }
        self.session.tree.close().await;
    }
}

/// A fresh private directory under `$XDG_RUNTIME_DIR` (the systemd unit's RuntimeDirectory),
/// else the system temporary directory.
fn runtime_dir() -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("jumpstarter-")
        .tempdir_in(base)
}
