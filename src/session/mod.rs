//! One session: a fresh driver tree, the status clients poll, and the log queue. A session is
//! the whole process in standalone mode and one lease in controller mode; everything a client
//! can change lives here and dies with it.
//!
//! The path every client byte takes, through the modules here: a connection (a listener's, or
//! a router tunnel handed in) → [`admission`] (handshake deadline and caps on TCP) → [`edge`]
//! (makes real clients' HTTP/2 acceptable) → [`server`] (one tonic server per session) →
//! [`service`] (the gRPC handlers, errors mapped once) → [`tree`] (uuid → driver, every call
//! guarded by [`panics`]) → a driver from `jmp-drivers`. [`host`] starts and ends all of it for
//! a lease; [`logs`] feeds LogStream; [`value`] is the protobuf Value codec.

pub mod admission;
pub mod edge;
pub mod host;
pub mod hosted;
pub mod logs;
pub mod panics;
pub mod rejection;
pub mod resources;
pub mod server;
pub mod service;
pub mod tree;
pub mod value;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::lifecycle::AVAILABLE_MESSAGE;
use crate::proto::{ExporterStatus, GetStatusResponse};
use crate::session::logs::LogQueue;
use crate::session::tree::DriverTree;

/// What `GetStatus` answers.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusView {
    pub status: ExporterStatus,
    pub message: String,
    pub version: u64,
    pub previous: Option<ExporterStatus>,
}

pub struct Session {
    /// The exporter's per-process UUID, reported by `GetReport`.
    pub exporter_uuid: Uuid,
    pub tree: DriverTree,
    /// The client's resource streams waiting for their drivers.
    pub resources: Arc<resources::Registry>,
    pub logs: Arc<LogQueue>,
    /// The lease this session serves; `None` for a session without one.
    pub lease_name: Option<String>,
    status: Mutex<StatusView>,
    /// Where EndSession goes when a controller link owns the lease's statuses.
    on_end: Option<mpsc::Sender<String>>,
    /// Strict mode: driver calls only while a lease is active (upstream never enforces this).
    lease_gate: AtomicBool,
    motd: Mutex<Motd>,
}

/// The message of the day: the config's `motd:`, then what a beforeLease hook wrote to the
/// file it was given (`JMP_MOTD_FILE`), read at each GetReport.
#[derive(Default)]
struct Motd {
    text: Option<String>,
    file: Option<std::path::PathBuf>,
    /// A file that cannot be used is logged once, not at every GetReport.
    warned: bool,
}

/// The most a hook may add to the message of the day.
pub const MOTD_FILE_LIMIT: u64 = 64 * 1024;

impl Session {
    pub fn new(exporter_uuid: Uuid, tree: DriverTree, lease_name: Option<String>) -> Arc<Self> {
        Self::build(exporter_uuid, tree, lease_name, None)
    }

    /// A lease's session whose EndSession is handed to the controller link (as the lease name).
    pub fn for_lease(
        exporter_uuid: Uuid,
        tree: DriverTree,
        lease_name: String,
        on_end: mpsc::Sender<String>,
    ) -> Arc<Self> {
        Self::build(exporter_uuid, tree, Some(lease_name), Some(on_end))
    }

    fn build(
        exporter_uuid: Uuid,
        tree: DriverTree,
        lease_name: Option<String>,
        on_end: Option<mpsc::Sender<String>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            on_end,
            exporter_uuid,
            tree,
            resources: Arc::default(),
            logs: LogQueue::register(),
            lease_name,
            lease_gate: AtomicBool::new(false),
            motd: Mutex::default(),
            status: Mutex::new(StatusView {
                status: ExporterStatus::Available,
                message: String::new(),
                version: 0,
                previous: None,
            }),
        })
    }

    /// Sets the message of the day and the file a hook may add to it.
    pub fn set_motd(&self, text: Option<String>, file: Option<std::path::PathBuf>) {
        let mut motd = self.motd.lock().unwrap_or_else(|e| e.into_inner());
        *motd = Motd {
            text,
            file,
            warned: false,
        };
    }

    /// The message of the day as GetReport gives it: the config's, then the hook's addition
    /// (a regular file of at most [`MOTD_FILE_LIMIT`] bytes; anything else is left out, and
    /// said once in the log).
    pub fn motd(&self) -> String {
        let mut motd = self.motd.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = motd.text.clone().unwrap_or_default();
        let Some(file) = motd.file.clone() else {
            return out;
        };
        let added = match std::fs::symlink_metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(e) => Err(e.to_string()),
            Ok(m) if !m.file_type().is_file() => Err("it is not a regular file".to_string()),
            Ok(m) if m.len() > MOTD_FILE_LIMIT => Err(format!(
                "it holds {} bytes, more than {MOTD_FILE_LIMIT}",
                m.len()
            )),
            Ok(_) => std::fs::read(&file)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| e.to_string()),
        };
        match added {
            Ok(text) if !text.is_empty() => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&text);
            }
            Ok(_) => {}
            Err(why) if !motd.warned => {
                motd.warned = true;
                tracing::warn!(file = %file.display(), "the hook's addition to the message of the day is left out: {why}");
            }
            Err(_) => {}
        }
        out
    }

    /// Records a status change; the version counts every update, even to the same status.
    pub fn set_status(&self, status: ExporterStatus, message: &str) {
        crate::metrics::get().status(status_name(status));
        if let Ok(mut view) = self.status.lock() {
            view.previous = Some(view.status);
            view.status = status;
            view.message = message.to_string();
            view.version += 1;
        }
        tracing::info!("Updated status to {}: {message}", status_name(status));
    }

    pub fn status(&self) -> StatusView {
        self.status.lock().map(|v| v.clone()).unwrap_or(StatusView {
            status: ExporterStatus::Unspecified,
            message: String::new(),
            version: 0,
            previous: None,
        })
    }

    pub fn status_response(&self) -> GetStatusResponse {
        let view = self.status();
        GetStatusResponse {
            status: view.status as i32,
            message: Some(view.message),
            status_version: view.version,
            previous_status: view.previous.map(|p| p as i32),
        }
    }

    /// Turns on strict mode: from now on driver calls need an active lease.
    pub fn require_lease(&self) {
        self.lease_gate.store(true, Ordering::Relaxed);
    }

    /// In strict mode, the status that forbids driver calls right now, if any. Calls are
    /// allowed while the lease is ready and while a hook runs (hooks drive the devices).
    pub fn call_refused_by(&self) -> Option<ExporterStatus> {
        if !self.lease_gate.load(Ordering::Relaxed) {
            return None;
        }
        let status = self.status().status;
        let allowed = matches!(
            status,
            ExporterStatus::LeaseReady
                | ExporterStatus::BeforeLeaseHook
                | ExporterStatus::AfterLeaseHook
        );
        (!allowed).then_some(status)
    }

    /// A client asked to end the session. Without hooks this only makes the exporter
    /// available again; the lease itself is released by the client.
    pub fn end(&self) -> (bool, &'static str) {
        let Some(lease) = &self.lease_name else {
            return (false, "No active lease context");
        };
        match &self.on_end {
            Some(link) => {
                // A full queue already holds an end for this lease; one is enough.
                let _ = link.try_send(lease.clone());
            }
            None => self.set_status(ExporterStatus::Available, AVAILABLE_MESSAGE),
        }
        (
            true,
            "Session end triggered, afterLease hook running asynchronously",
        )
    }
}

/// The status name as upstream logs it (`LEASE_READY`).
pub fn status_name(status: ExporterStatus) -> &'static str {
    status
        .as_str_name()
        .strip_prefix("EXPORTER_STATUS_")
        .unwrap_or("UNSPECIFIED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::READY_MESSAGE;

    fn session(lease: Option<&str>) -> Arc<Session> {
        let config = crate::config::parse("metadata: {}\n", &|_| None)
            .unwrap()
            .config;
        Session::new(
            Uuid::new_v4(),
            DriverTree::build(&config).unwrap(),
            lease.map(str::to_string),
        )
    }

    #[test]
    fn status_versions_count_every_update() {
        let s = session(Some("standalone"));
        let fresh = s.status_response();
        assert_eq!(
            (fresh.status, fresh.status_version, fresh.previous_status),
            (ExporterStatus::Available as i32, 0, None)
        );
        assert_eq!(fresh.message.as_deref(), Some(""));
        s.set_status(ExporterStatus::LeaseReady, READY_MESSAGE);
        s.set_status(ExporterStatus::LeaseReady, READY_MESSAGE);
        let r = s.status_response();
        assert_eq!(r.status_version, 2);
        assert_eq!(r.previous_status, Some(ExporterStatus::LeaseReady as i32));
        assert_eq!(status_name(ExporterStatus::LeaseReady), "LEASE_READY");
    }

    #[test]
    fn strict_mode_allows_calls_only_during_a_lease_or_its_hooks() {
        let s = session(Some("l1"));
        assert_eq!(s.call_refused_by(), None, "off by default, as upstream");
        s.require_lease();
        assert_eq!(s.call_refused_by(), Some(ExporterStatus::Available));
        for allowed in [
            ExporterStatus::BeforeLeaseHook,
            ExporterStatus::LeaseReady,
            ExporterStatus::AfterLeaseHook,
        ] {
            s.set_status(allowed, "");
            assert_eq!(s.call_refused_by(), None, "{allowed:?}");
        }
        for refused in [
            ExporterStatus::Available,
            ExporterStatus::BeforeLeaseHookFailed,
            ExporterStatus::AfterLeaseHookFailed,
            ExporterStatus::Offline,
        ] {
            s.set_status(refused, "");
            assert_eq!(s.call_refused_by(), Some(refused));
        }
    }

    #[test]
    fn end_session_needs_a_lease() {
        assert_eq!(session(None).end(), (false, "No active lease context"));
        let s = session(Some("standalone"));
        s.set_status(ExporterStatus::LeaseReady, READY_MESSAGE);
        assert!(s.end().0);
        assert_eq!(s.status().status, ExporterStatus::Available);
        assert_eq!(s.status().message, AVAILABLE_MESSAGE);
    }

    #[test]
    fn end_session_of_a_lease_goes_to_the_controller_link() {
        let config = crate::config::parse("metadata: {}\n", &|_| None)
            .unwrap()
            .config;
        let (tx, mut rx) = mpsc::channel(1);
        let s = Session::for_lease(
            Uuid::new_v4(),
            DriverTree::build(&config).unwrap(),
            "l1".into(),
            tx,
        );
        s.set_status(ExporterStatus::LeaseReady, READY_MESSAGE);
        assert!(s.end().0);
        assert_eq!(rx.try_recv().unwrap(), "l1");
        assert_eq!(
            s.status().status,
            ExporterStatus::LeaseReady,
            "the link reports, not the session"
        );
    }
}
