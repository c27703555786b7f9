//! A fake Jumpstarter controller (and router) for tests: one loopback TCP port with TLS
//! (ALPN h2) serving
//!
//! - `jumpstarter.v1.ControllerService` for the exporter (and `Dial` for clients),
//! - `jumpstarter.client.v1.ClientService` for the unchanged 0.9.0 Python client,
//! - `jumpstarter.v1.RouterService`, the router, whose address `Dial` hands out.
//!
//! It imitates the Go controller where an exporter can tell the difference (protocol.md §11.9):
//! Listen shows no response headers before its first token, Dial holds and then refuses while
//! the exporter has not reported a ready status, at most 8 tokens wait per lease, a second
//! Listen supersedes the first, Status sends the current state at once and then one message per
//! change. Everything the exporter reports is recorded as [`Event`]s for tests to assert on.
//!
//! State (exporter, leases, issued router tokens) lives outside the server, so
//! [`FakeController::stop`] followed by [`FakeController::restart`] behaves like a restart of
//! the real controller with its Kubernetes state intact: every connection and every open stream
//! is dropped, the same port and certificate come back.

mod services;
mod state;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use futures::FutureExt as _;
use jmp_exporter::proto::controller_service_server::ControllerServiceServer;
use jmp_exporter::proto::jumpstarter::client::v1 as client;
use jmp_exporter::proto::jumpstarter::client::v1::client_service_server::ClientServiceServer;
use jmp_exporter::proto::router_service_server::RouterServiceServer;
use jmp_exporter::proto::ExporterStatus;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use crate::tls::TestCert;
use services::Services;
use state::Shared;

/// How the fake is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace of the exporter, the client and the leases.
    pub namespace: String,
    /// The one exporter's name (`metadata.name` of its config).
    pub exporter_name: String,
    /// The exporter's bearer token (any string; never decoded).
    pub exporter_token: String,
    /// The one client's name; its token is JWT-shaped, see [`FakeController::client_token`].
    pub client_name: String,
    /// How long Dial holds a client while the exporter's last report is AVAILABLE (or nothing
    /// since Register) before refusing with FAILED_PRECONDITION `... not ready ...`. Go holds
    /// ≈27.5 s.
    pub dial_hold: Duration,
    /// Behave like a controller from before exporter status reports: ReportStatus and
    /// ReleaseLease answer UNIMPLEMENTED (and are not recorded), and Dial does not look at the
    /// exporter's status at all (such a controller had no status gate).
    pub old_controller: bool,
    /// Labels of the Exporter object (what lease selectors are matched against, together with
    /// the `jumpstarter.dev/*` labels the exporter registers). Empty by default.
    pub exporter_labels: HashMap<String, String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "default".into(),
            exporter_name: "exporter1".into(),
            exporter_token: "exporter-token".into(),
            client_name: "client1".into(),
            dial_hold: Duration::from_secs(5),
            old_controller: false,
            exporter_labels: HashMap::new(),
        }
    }
}

/// Everything the fake saw or did, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// An accepted Register. `metadata`: `authorization` and every `jumpstarter-*` key as
    /// received (first value of each).
    Register {
        labels: HashMap<String, String>,
        reports: usize,
        metadata: HashMap<String, String>,
    },
    ReportStatus {
        status: ExporterStatus,
        message: Option<String>,
        release_lease: Option<bool>,
    },
    Unregister {
        reason: String,
    },
    StatusOpened,
    StatusClosed,
    /// An accepted Listen (before any response headers).
    ListenOpened {
        lease: String,
    },
    ListenClosed {
        lease: String,
    },
    /// An accepted exporter ReleaseLease (also when the lease had already ended).
    ReleaseLease {
        name: String,
    },
    /// A client Dial that got past authentication (or [`FakeController::dial`]) and its outcome.
    Dial {
        lease: String,
        result: Result<(), tonic::Code>,
    },
    /// A router Stream call whose token a Dial had issued.
    RouterStream {
        token: String,
    },
    LeaseCreated {
        lease: String,
    },
    LeaseEnded {
        lease: String,
    },
    /// A call answered with an error the test injected ([`FakeController::fail_next`]).
    Injected {
        rpc: Rpc,
        code: tonic::Code,
    },
    /// A Register call held without an answer ([`FakeController::hold_register`]).
    RegisterHeld,
}

/// The exporter-facing RPCs a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Register,
    Status,
    Listen,
    ReportStatus,
}

/// The ReportStatus events among `events`, as (status, message).
pub fn reports_in(events: &[Event]) -> Vec<(ExporterStatus, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReportStatus {
                status, message, ..
            } => Some((*status, message.clone().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

/// One incarnation of the server (between start/restart and stop).
struct Running {
    life: CancellationToken,
    accept: JoinHandle<()>,
    server: JoinHandle<()>,
}

/// The fake controller + router. Dropping it stops the server.
pub struct FakeController {
    shared: Arc<Shared>,
    cert: TestCert,
    port: u16,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl FakeController {
    /// Generates a certificate and starts serving on a free loopback port.
    pub async fn start(options: Options) -> FakeController {
        let cert = TestCert::generate();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let shared = Shared::new(options, format!("127.0.0.1:{port}"));
        let running = serve(shared.clone(), listener, cert.acceptor());
        FakeController {
            shared,
            cert,
            port,
            running: tokio::sync::Mutex::new(Some(running)),
        }
    }

    /// `127.0.0.1:PORT`, the controller endpoint (and the router endpoint Dial hands out).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the fake serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base64 of the certificate's PEM: the value for `tls.ca` in both configs.
    pub fn ca_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.cert.pem())
    }

    /// The certificate (server certificate and trust anchor at once), PEM.
    pub fn ca_pem(&self) -> String {
        self.cert.pem().to_string()
    }

    /// The client's bearer token: JWT-shaped (`{"alg":"none"}`, `{"sub":<client name>}`, empty
    /// signature), as the 0.9.0 `jmp shell` decodes it before doing anything.
    pub fn client_token(&self) -> String {
        self.shared.client_token.clone()
    }

    /// The options the fake runs with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// A full ExporterConfig pointing at this fake, with `export_yaml` (driver entries, indented
    /// or not) as the body of `export:`.
    pub fn exporter_config_yaml(&self, export_yaml: &str) -> String {
        self.exporter_config_yaml_with_endpoint(&self.endpoint(), export_yaml)
    }

    /// [`Self::exporter_config_yaml`] with another controller endpoint (for example a
    /// [`crate::proxy::PausableProxy`] in front of the fake; the certificate covers 127.0.0.1).
    pub fn exporter_config_yaml_with_endpoint(&self, endpoint: &str, export_yaml: &str) -> String {
        let o = &self.shared.options;
        let body = indent_block(export_yaml);
        let export = if body.is_empty() {
            "export: {}\n".to_string()
        } else {
            format!("export:\n{body}")
        };
        format!(
            "apiVersion: jumpstarter.dev/v1alpha1\n\
             kind: ExporterConfig\n\
             metadata:\n  namespace: {ns}\n  name: {name}\n\
             endpoint: {endpoint}\n\
             token: {token}\n\
             tls:\n  ca: {ca}\n  insecure: false\n\
             {export}",
            ns = quote(&o.namespace),
            name = quote(&o.exporter_name),
            endpoint = quote(endpoint),
            token = quote(&o.exporter_token),
            ca = quote(&self.ca_base64()),
        )
    }

    /// A ClientConfig for the real `jmp shell --client-config FILE` (protocol.md §11.7).
    pub fn client_config_yaml(&self) -> String {
        let o = &self.shared.options;
        format!(
            "apiVersion: jumpstarter.dev/v1alpha1\n\
             kind: ClientConfig\n\
             metadata:\n  namespace: {ns}\n  name: {name}\n\
             endpoint: {endpoint}\n\
             token: {token}\n\
             tls:\n  ca: {ca}\n\
             drivers:\n  allow: [\"jumpstarter_driver_*\"]\n",
            ns = quote(&o.namespace),
            name = quote(&o.client_name),
            endpoint = quote(&self.endpoint()),
            token = quote(&self.shared.client_token),
            ca = quote(&self.ca_base64()),
        )
    }

    /// Everything recorded so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Every ReportStatus recorded so far, as (status, message).
    pub fn reports(&self) -> Vec<(ExporterStatus, String)> {
        reports_in(&self.events())
    }

    /// The number of events recorded so far (a mark for [`Self::wait_for_after`]).
    pub fn mark(&self) -> usize {
        self.shared.events.lock().unwrap().len()
    }

    /// The first recorded event (already recorded ones included) that satisfies `pred`, waiting
    /// up to `timeout` for one to be recorded.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        self.wait_for_after(0, pred, timeout).await
    }

    /// Like [`Self::wait_for`], but only events recorded after the first `mark` ones count.
    pub async fn wait_for_after(
        &self,
        mark: usize,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let mut seen = self.shared.events_seen.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self
                .shared
                .events
                .lock()
                .unwrap()
                .iter()
                .skip(mark)
                .find(|e| pred(e))
                .cloned();
            if found.is_some() {
                return found;
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Creates a lease and waits until the exporter reports LEASE_READY for it; panics after
    /// 20 s, showing what was recorded.
    pub async fn create_ready_lease(&self) -> String {
        let mark = self.mark();
        let lease = self.create_lease().await;
        let ready = self
            .wait_for_report_after(mark, ExporterStatus::LeaseReady, Duration::from_secs(20))
            .await;
        assert!(
            ready.is_some(),
            "no LEASE_READY for lease {lease}: {:#?}",
            self.events()
        );
        lease
    }

    /// The first ReportStatus with `status` recorded after the first `mark` events, waiting up
    /// to `timeout` for one.
    pub async fn wait_for_report_after(
        &self,
        mark: usize,
        status: ExporterStatus,
        timeout: Duration,
    ) -> Option<Event> {
        self.wait_for_after(
            mark,
            move |e| matches!(e, Event::ReportStatus { status: s, .. } if *s == status),
            timeout,
        )
        .await
    }

    /// Ends `lease` and waits until the exporter reports AVAILABLE after it; panics after 20 s,
    /// showing what was recorded meanwhile.
    pub async fn end_lease_and_wait_available(&self, lease: &str) {
        let mark = self.mark();
        self.end_lease(lease).await;
        let free = self
            .wait_for_report_after(mark, ExporterStatus::Available, Duration::from_secs(20))
            .await;
        assert!(
            free.is_some(),
            "no AVAILABLE after lease {lease} ended: {:#?}",
            &self.events()[mark..]
        );
    }

    /// One whole lease with a client reaching the exporter through the router, so that what
    /// an exporter keeps for reuse (its channel to the router) exists before a test counts
    /// the exporter's file descriptors.
    pub async fn warm_up(&self) {
        let lease = self.create_ready_lease().await;
        let mut client =
            crate::client::connect(self, &lease, tokio_util::sync::CancellationToken::new()).await;
        client
            .get_report(())
            .await
            .expect("GetReport in the warm-up lease");
        drop(client);
        self.end_lease_and_wait_available(&lease).await;
    }

    /// Creates a lease for the client on the configured exporter (as CreateLease with
    /// `exporter_name` and a 30 min duration would) and returns its id. It is assigned at once
    /// when the exporter is registered, free and AVAILABLE (or has reported nothing), otherwise
    /// as soon as it is.
    pub async fn create_lease(&self) -> String {
        let name = self.shared.options.exporter_name.clone();
        self.shared
            .create_lease(
                String::new(),
                Some(name),
                Some(Duration::from_secs(30 * 60)),
                None,
            )
            .expect("create a lease")
            .0
    }

    /// Ends a lease as the client's DeleteLease does (a no-op if it is unknown or already
    /// released).
    pub async fn end_lease(&self, lease: &str) {
        let _ = self.shared.delete_lease(lease);
    }

    /// A client Dial on `lease`, with the same checks, hold and hand-off as the RPC. Returns
    /// the router endpoint and token.
    pub async fn dial(&self, lease: &str) -> Result<(String, String), tonic::Status> {
        let life = self.shared.forever.clone();
        self.shared
            .dial(lease, &life)
            .await
            .map(|r| (r.router_endpoint, r.router_token))
    }

    /// The client-facing view of a lease (as GetLease returns it).
    pub fn lease(&self, lease: &str) -> Option<client::Lease> {
        self.shared.lease_view(lease)
    }

    /// The next `times` calls of `rpc` answer `code` (a controller answering with errors).
    pub fn fail_next(&self, rpc: Rpc, code: tonic::Code, times: usize) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.errors.insert(rpc, (code, times));
    }

    /// While on, Register calls get no answer until the controller is stopped (a controller
    /// that dies in the middle of a Register).
    pub fn hold_register(&self, on: bool) {
        self.shared.faults.lock().unwrap().hold_register = on;
    }

    /// The exporter's last reported status (`None`: nothing since Register, or never
    /// registered).
    pub fn exporter_status(&self) -> Option<ExporterStatus> {
        self.shared.state.lock().unwrap().exporter.status
    }

    /// Makes Dial and Listen hand out `endpoint` as the router endpoint instead of the fake's
    /// own (for example a proxy in front of it).
    pub fn set_router_endpoint(&self, endpoint: &str) {
        *self.shared.router_endpoint.lock().unwrap() = endpoint.to_string();
    }

    /// Drops the server: the port is closed and every connection and open call is cut (clients
    /// see the connection fail, not a clean end). State is kept.
    pub async fn stop(&self) {
        let running = self.running.lock().await.take();
        if let Some(r) = running {
            r.life.cancel();
            r.accept.abort();
            let _ = r.accept.await;
            r.server.abort();
            let _ = r.server.await;
        }
    }

    /// Serves again on the same port with the same certificate and state (stops first if
    /// running).
    pub async fn restart(&self) {
        self.stop().await;
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding the fake controller's port");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind 127.0.0.1:{} again: {e}", self.port),
            }
        };
        let running = serve(self.shared.clone(), listener, self.cert.acceptor());
        *self.running.lock().await = Some(running);
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        if let Some(r) = self.running.get_mut().take() {
            r.life.cancel();
            r.accept.abort();
            r.server.abort();
        }
        self.shared.forever.cancel();
    }
}

/// YAML double-quoted scalar (JSON strings are valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Removes the common indentation of `text` (and blank lines around it) and indents every
/// line by two spaces.
fn indent_block(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let blank = |l: &&str| l.trim().is_empty();
    let Some(first) = lines.iter().position(|l| !blank(l)) else {
        return String::new();
    };
    let last = lines.iter().rposition(|l| !blank(l)).unwrap_or(first);
    let body = &lines[first..=last];
    let common = body
        .iter()
        .filter(|l| !blank(l))
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| {
            if blank(l) {
                "\n".to_string()
            } else {
                format!("  {}\n", &l[common..])
            }
        })
        .collect()
}

/// Starts accepting on `listener` and serving all three services until the token is cancelled.
fn serve(shared: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) -> Running {
    let life = CancellationToken::new();
    let (tx, rx) = mpsc::channel::<Conn>(16);
    let accept = tokio::spawn({
        let life = life.clone();
        async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = life.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "fake controller: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx, life) = (acceptor.clone(), tx.clone(), life.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    let tls = tokio::select! {
                        _ = life.cancelled() => return,
                        r = handshake => r,
                    };
                    match tls {
                        Ok(Ok(io)) => {
                            let _ = tx.send(Conn::new(io, &life)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "fake controller: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "fake controller: TLS handshake timed out")
                        }
                    }
                });
            }
        }
    });
    let services = Services::new(shared, life.clone());
    let server = tokio::spawn(async move {
        let incoming = ReceiverStream::new(rx).map(Ok::<_, io::Error>);
        let result = tonic::transport::Server::builder()
            .add_service(ControllerServiceServer::new(services.clone()))
            .add_service(ClientServiceServer::new(services.clone()))
            .add_service(RouterServiceServer::new(services))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "fake controller: server failed");
        }
    });
    Running {
        life,
        accept,
        server,
    }
}

/// An accepted TLS connection that dies (EOF on read, error on write) when its incarnation of
/// the server is stopped, so that stopping cuts every connection at once.
struct Conn {
    io: TlsStream<TcpStream>,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Conn {
    fn new(io: TlsStream<TcpStream>, life: &CancellationToken) -> Conn {
        Conn {
            io,
            dead: Box::pin(life.clone().cancelled_owned()),
        }
    }

    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        self.dead.poll_unpin(cx).is_ready()
    }
}

impl Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<FakeController>();
        shareable::<Event>();
    }

    #[test]
    fn export_bodies_are_reindented() {
        assert_eq!(indent_block(""), "");
        assert_eq!(
            indent_block("power:\n  type: x.Y\n"),
            "  power:\n    type: x.Y\n"
        );
        assert_eq!(
            indent_block("\n    power:\n      type: x.Y\n    serial:\n      ref: power\n"),
            "  power:\n    type: x.Y\n  serial:\n    ref: power\n"
        );
    }
}
