//! Serving without a controller: one session for the whole process, on a Unix socket and/or
//! a TCP listener, at LEASE_READY from the start (as `jmp run --tls-grpc-listener`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{resolve, Entry, EntryKind, ExporterConfig, Secret};
use crate::proto::ExporterStatus;
use crate::server::{self, ListenError};
use crate::session::{Session, READY_MESSAGE};
use crate::signal::Stop;
use crate::systemd;
use crate::tree::{BuildError, DriverTree};

/// Lease name of the standalone session, as upstream.
pub const LEASE_NAME: &str = "standalone";

pub struct Listeners {
    pub socket: Option<PathBuf>,
    /// `HOST:PORT` to bind.
    pub tcp: Option<String>,
    pub tls: Option<TlsAcceptor>,
    pub passphrase: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("cannot start drivers: {0}")]
    Drivers(#[from] BuildError),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// A running standalone exporter.
pub struct Running {
    pub tcp_addr: Option<SocketAddr>,
    /// Feeds further connections (router tunnels, tests) into the session's server.
    pub conns: server::ConnSender,
    pub session: std::sync::Arc<Session>,
    server: tokio::task::JoinHandle<()>,
}

/// Builds the session and binds every listener; serving goes on in the background until
/// `stop` is cancelled.
pub async fn start(
    config: &ExporterConfig,
    listeners: Listeners,
    stop: CancellationToken,
) -> Result<Running, StandaloneError> {
    let tree = DriverTree::build(config)?;
    tree.reset().await?;
    let session = Session::new(Uuid::new_v4(), tree, Some(LEASE_NAME.to_string()));
    session.set_status(ExporterStatus::LeaseReady, READY_MESSAGE);
    let (conns, server) = server::start(session.clone(), listeners.passphrase, stop.clone());
    if let Some(path) = &listeners.socket {
        server::listen_unix(path, conns.clone(), stop.clone())?;
        tracing::info!(socket = %path.display(), "serving on Unix socket");
    }
    let mut tcp_addr = None;
    if let Some(addr) = &listeners.tcp {
        let bound = server::listen_tcp(addr, listeners.tls, conns.clone(), stop.clone()).await?;
        tracing::info!(address = %bound, "serving on TCP");
        tcp_addr = Some(bound);
    }
    Ok(Running {
        tcp_addr,
        conns,
        session,
        server,
    })
}

impl Running {
    /// Waits for the server to stop, then closes the drivers.
    pub async fn finish(self) {
        let _ = self.server.await;
        self.session.tree.close().await;
        tracing::info!("stopped");
    }
}

/// Runs until told to stop.
pub async fn run(
    config: ExporterConfig,
    listeners: Listeners,
    stop: Stop,
) -> Result<(), StandaloneError> {
    let now = stop.now.clone();
    let running = start(&config, listeners, now.clone()).await?;
    systemd::ready(&match running.tcp_addr {
        Some(addr) => format!("serving standalone on {addr}"),
        None => "serving standalone".to_string(),
    });
    // The standalone session is the only lease, so stopping after it means stopping now.
    tokio::select! {
        _ = stop.now.cancelled() => {}
        _ = stop.after_lease.cancelled() => now.cancel(),
    }
    systemd::stopping();
    running.finish().await;
    Ok(())
}

/// The driver tree as `check` prints it: names, types and client labels.
pub fn describe_tree(config: &ExporterConfig) -> String {
    fn walk(config: &ExporterConfig, entries: &[Entry], depth: usize, out: &mut String) {
        for e in entries {
            let indent = "  ".repeat(depth);
            match &e.kind {
                EntryKind::Driver { type_name, spec } => {
                    let _ = writeln!(out, "{indent}{}: {type_name} -> {}", e.name, spec.client());
                }
                EntryKind::Proxy { target } => {
                    let client = resolve(config, e)
                        .ok()
                        .and_then(Entry::client)
                        .unwrap_or("?");
                    let _ = writeln!(
                        out,
                        "{indent}{}: ref {} -> {client}",
                        e.name,
                        target.join(".")
                    );
                }
            }
            walk(config, &e.children, depth + 1, out);
        }
    }
    let mut out = format!("(root) -> {}\n", jmp_drivers::composite::CLIENT);
    walk(config, &config.export, 1, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output_lists_names_types_and_clients() {
        let config = crate::config::parse(
            "metadata: {}\nexport:\n  power: {type: jumpstarter_driver_power.driver.MockPower}\n  dut:\n    children:\n      s: {type: jumpstarter_driver_pyserial.driver.PySerial, config: {url: 'loop://'}}\n  c: {ref: dut.s}\n",
            &|_| None,
        )
        .unwrap()
        .config;
        let text = describe_tree(&config);
        assert_eq!(
            text,
            "(root) -> jumpstarter_driver_composite.client.CompositeClient\n  power: jumpstarter_driver_power.driver.MockPower -> jumpstarter_driver_power.client.PowerClient\n  dut: jumpstarter_driver_composite.driver.Composite -> jumpstarter_driver_composite.client.CompositeClient\n    s: jumpstarter_driver_pyserial.driver.PySerial -> jumpstarter_driver_pyserial.client.PySerialClient\n  c: ref dut.s -> jumpstarter_driver_pyserial.client.PySerialClient\n"
        );
    }
}
