//! Serving one session: listeners (Unix socket, standalone TCP with or without TLS) feed
//! connections into one tonic server through a bounded channel; every connection passes the
//! HTTP/2 edge first. After this point nobody knows where a connection came from, except the
//! passphrase check, which applies to TCP only (Unix sockets are guarded by file permissions).
//!
//! Listeners hand nothing to the server before the peer has spoken: each accepted connection
//! first goes through [`crate::session::admission`] (TLS, the HTTP/2 preface, a deadline, caps) on a
//! task of its listener's tracker.
//!
//! Shutdown: when the session token is cancelled every connection reports end of stream on its
//! next read, so long-lived calls (LogStream, byte streams) cannot hold the server open.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tonic::service::InterceptorLayer;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::backoff::Backoff;
use crate::config::Secret;
use crate::proto::exporter_service_server::ExporterServiceServer;
use crate::proto::router_service_server::RouterServiceServer;
use crate::session::admission::{self, Admission, Admitted, Caps, Replay, Reports, Slot, Ticket};
use crate::session::edge::Http2Edge;
use crate::session::service::SessionService;
use crate::session::Session;

/// Metadata key of the standalone passphrase.
pub const PASSPHRASE_HEADER: &str = "x-jumpstarter-passphrase";

/// Streams one client connection may have open at once (advertised in SETTINGS).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// HTTP/2 receive windows: a stream may hold a quarter of its connection's.
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// How long in-flight calls get to finish once the server is told to stop.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Where a connection came from; only TCP connections must present the passphrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Unix,
    Tcp,
    /// A client tunnelled through the router; the controller already checked who it is.
    Tunnel,
}

/// Anything that carries bytes both ways.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A client connection as the server sees it.
pub struct Conn {
    io: Http2Edge<Box<dyn Io>>,
    origin: Origin,
    session_end: CancellationToken,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The connection's place among its listener's established ones, freed with it.
    _slot: Option<Slot>,
    _counted: ActiveSession,
}

/// A connection in `jumpstarter_active_sessions`, for as long as it lives.
struct ActiveSession;

impl ActiveSession {
    fn new() -> Self {
        crate::metrics::get().session_opened();
        ActiveSession
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        crate::metrics::get().session_closed();
    }
}

impl Conn {
    pub fn new(io: Box<dyn Io>, origin: Origin, session_end: &CancellationToken) -> Self {
        Self {
            io: Http2Edge::new(io),
            origin,
            session_end: session_end.clone(),
            closed: Box::pin(session_end.clone().cancelled_owned()),
            _slot: None,
            _counted: ActiveSession::new(),
        }
    }

    /// The same connection, holding `slot` for as long as it lives.
    fn holding(mut self, slot: Slot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Whether the session has ended. Cheap: the wake-up registration (`closed`) is only
    /// renewed in [`Self::ended_while_pending`], where it is needed.
    fn has_ended(&self) -> bool {
        self.session_end.is_cancelled()
    }

    /// Called when the connection itself has nothing for us: makes sure the end of the
    /// session wakes this task too, and says whether it came meanwhile.
    fn ended_while_pending(&mut self, cx: &mut Context<'_>) -> bool {
        self.closed.poll_unpin(cx).is_ready()
    }
}

impl Connected for Conn {
    type ConnectInfo = Origin;

    fn connect_info(&self) -> Origin {
        self.origin
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.has_ended() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending if self.ended_while_pending(cx) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let aborted = || Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        if self.has_ended() {
            return aborted();
        }
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending if self.ended_while_pending(cx) => aborted(),
            other => other,
        }
    }

    // Without these two, h2 sees a connection that cannot take vectored writes and sends
    // every frame head and payload with a system call each.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let aborted = || Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        if self.has_ended() {
            return aborted();
        }
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending if self.ended_while_pending(cx) => aborted(),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A sender of connections into a session's server.
pub type ConnSender = mpsc::Sender<Conn>;

/// Serves `session` on every connection sent to the returned sender until `stop` is
/// cancelled, then gives in-flight calls [`DRAIN_GRACE`] and closes every connection.
pub fn start(
    session: Arc<Session>,
    passphrase: Option<Secret>,
    stop: CancellationToken,
) -> (ConnSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Conn>(64);
    let service = SessionService::new(session);
    let check = PassphraseCheck(passphrase.map(Arc::new));
    let task = tokio::spawn(async move {
        let incoming = ReceiverStream::new(rx).map(Ok::<_, io::Error>);
        let graceful = stop.clone();
        let server = tonic::transport::Server::builder()
            // Bounds what one connection can hold open; a `jmp shell` uses a handful.
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            // A resource stream's bytes wait for the driver call that reads them, and that
            // call comes on the same connection (the client starts sending before it calls):
            // one stream must never be able to take the whole connection's window, or the
            // call could not be sent. hyper's defaults give both 1 MiB.
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .layer(InterceptorLayer::new(check))
            .layer(tower::util::MapResponseLayer::new(
                crate::session::rejection::log,
            ))
            .add_service(ExporterServiceServer::new(service.clone()))
            .add_service(RouterServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, graceful.cancelled_owned());
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "session server failed");
                }
            }
            _ = async { stop.cancelled().await; tokio::time::sleep(DRAIN_GRACE).await } => {
                tracing::warn!("session server did not drain within {DRAIN_GRACE:?}; closing its connections");
            }
        }
    });
    (tx, task)
}

use futures::StreamExt as _;

/// Refuses TCP calls without the right passphrase.
#[derive(Clone)]
struct PassphraseCheck(Option<Arc<Secret>>);

impl tonic::service::Interceptor for PassphraseCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        if request.extensions().get::<Origin>() != Some(&Origin::Tcp) {
            return Ok(request);
        }
        let given = request
            .metadata()
            .get(PASSPHRASE_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(expected.expose().as_bytes())) {
            Ok(request)
        } else {
            tracing::warn!("refused a call with a missing or wrong passphrase");
            Err(Status::unauthenticated("invalid or missing passphrase"))
        }
    }
}

/// Problems binding a listener; each names the address or path.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on Unix socket {path}: {source}")]
    Unix { path: PathBuf, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("TLS certificate or key: {0}")]
    Tls(String),
}

/// Binds a Unix socket (replacing a stale socket file) readable by owner and group only, and
/// forwards its connections until `stop`, on a task of `tasks`. The socket file goes with that
/// task, also when the runtime drops it before it saw `stop`.
pub fn listen_unix(
    path: &Path,
    conns: ConnSender,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), ListenError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| ListenError::Unix {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            // A socket file left by a killed process is replaced; one a live process still
            // answers on is not taken over.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on it; stop that process or choose another path",
                )));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    let socket_file = SocketFile(path.to_path_buf());
    // Peers on a Unix socket passed its file permissions: no caps, but the same deadline.
    let door = Door {
        admission: Admission::new(Caps::UNBOUNDED),
        tls: None,
        conns,
        stop,
        tasks: tasks.clone(),
        reports: Reports::new(path.display().to_string(), Caps::UNBOUNDED),
    };
    tasks.spawn(async move {
        accept_loop(Listener::Unix(listener), door).await;
        drop(socket_file);
    });
    Ok(())
}

/// Removes the socket file it names when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Parses `[HOST:]PORT` as upstream does (HOST defaults to 0.0.0.0).
pub fn parse_listen_addr(text: &str) -> Result<String, String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (if h.is_empty() { "0.0.0.0" } else { h }, p),
        None => ("0.0.0.0", text),
    };
    let port: u16 = port.parse().map_err(|_| {
        format!("`{text}` is not [HOST:]PORT (the port must be a number from 0 to 65535)")
    })?;
    Ok(format!("{host}:{port}"))
}

/// Binds the standalone TCP listener, accepting on a task of `tasks` until `stop`; returns the
/// bound address.
pub async fn listen_tcp(
    addr: &str,
    tls: Option<TlsAcceptor>,
    conns: ConnSender,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Tcp {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ListenError::Tcp {
        addr: addr.to_string(),
        source,
    })?;
    let caps = Caps::for_fd_limit(admission::fd_limit());
    tracing::debug!(
        listener = %local,
        "holding at most {} connections before their handshake and {} after it",
        caps.pending,
        caps.established
    );
    let door = Door {
        admission: Admission::new(caps),
        tls,
        conns,
        stop,
        tasks: tasks.clone(),
        reports: Reports::new(local.to_string(), caps),
    };
    tasks.spawn(accept_loop(Listener::Tcp(listener), door));
    Ok(local)
}

/// A bound listener of either kind.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Shortest and longest pause after accepting failed for want of resources (file
/// descriptors, memory); the pause doubles while failures go on.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What a listener's accept loop needs to take connections through admission.
struct Door {
    admission: Arc<Admission>,
    tls: Option<TlsAcceptor>,
    conns: ConnSender,
    stop: CancellationToken,
    /// Owns every connection's handshake task; the listener's session waits for them.
    tasks: TaskTracker,
    reports: Reports,
}

/// Accepts until `door.stop`, starting a handshake task per connection.
async fn accept_loop(listener: Listener, mut door: Door) {
    let mut backoff = Backoff::new(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
    loop {
        let report_due = door.reports.due();
        let accepted = tokio::select! {
            _ = door.stop.cancelled() => break,
            _ = sleep_until(report_due), if report_due.is_some() => {
                door.reports.flush(std::time::Instant::now());
                continue;
            }
            a = listener.accept() => a,
        };
        match accepted {
            Ok(accepted) => {
                backoff.reset();
                if door.conns.is_closed() {
                    // The server is gone: stop listening, so that clients are refused.
                    break;
                }
                door.admit(accepted);
            }
            Err(e) => {
                door.reports.accept_failed(&e, std::time::Instant::now());
                if is_one_connections_fault(&e) {
                    continue;
                }
                if out_of_resources(&e) {
                    // The descriptor of a peer that has not spoken yet is the cheapest to give
                    // back; the pause lets its task close it.
                    door.admission.evict_oldest();
                }
                let pause = backoff.next_delay();
                tokio::select! {
                    _ = door.stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

fn sleep_until(at: Option<std::time::Instant>) -> tokio::time::Sleep {
    let at = at.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
    tokio::time::sleep_until(at)
}

/// An accept error about one connection that went away before it was accepted: the next
/// accept may well succeed at once.
fn is_one_connections_fault(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: accepting cannot succeed until something is freed.
fn out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    rustix::io::Errno::from_io_error(e)
        .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&n))
}

impl Door {
    /// Takes a new connection in, or closes it at once when its listener is full.
    fn admit(&mut self, accepted: Accepted) {
        let now = std::time::Instant::now();
        let ticket = match self.admission.admit(&self.stop) {
            Admitted::Pending { ticket, evicted } => {
                if evicted {
                    self.reports.evicted(now);
                }
                ticket
            }
            Admitted::Full => {
                self.reports.refused(now);
                return;
            }
        };
        let (conns, stop) = (self.conns.clone(), self.stop.clone());
        match accepted {
            Accepted::Tcp(stream, peer) => {
                let _ = stream.set_nodelay(true);
                let tls = self.tls.clone();
                self.tasks.spawn(handshake(
                    stream,
                    tls,
                    Origin::Tcp,
                    Some(peer),
                    ticket,
                    conns,
                    stop,
                ));
            }
            Accepted::Unix(stream) => {
                self.tasks.spawn(handshake(
                    stream,
                    None,
                    Origin::Unix,
                    None,
                    ticket,
                    conns,
                    stop,
                ));
            }
        }
    }
}

/// Why a connection was closed before it reached the server.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("reading the HTTP/2 client preface failed: {0}")]
    Read(io::Error),
    #[error("the peer closed the connection before its HTTP/2 client preface")]
    Left,
}

/// Takes one accepted connection through its handshake, then into the server: TLS where the
/// listener has it, then the HTTP/2 client preface, all within
/// [`admission::HANDSHAKE_DEADLINE`] of the accept. The connection is closed instead when the
/// deadline passes, the peer fails or leaves, or its ticket is cancelled (evicted for a newer
/// connection, or the listener stopped).
async fn handshake<S: Io>(
    stream: S,
    tls: Option<TlsAcceptor>,
    origin: Origin,
    peer: Option<SocketAddr>,
    ticket: Ticket,
    conns: ConnSender,
    stop: CancellationToken,
) {
    let closed = ticket.closed().clone();
    let spoken = tokio::select! {
        _ = closed.cancelled() => return,
        spoken = tokio::time::timeout(admission::HANDSHAKE_DEADLINE, speak(stream, tls)) => spoken,
    };
    let peer = || peer.map_or_else(|| "local".to_string(), |a| a.to_string());
    let io = match spoken {
        Ok(Ok(io)) => io,
        Ok(Err(HandshakeError::Left)) => {
            tracing::trace!(peer = %peer(), "{}", HandshakeError::Left);
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer(), "closed a connection: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(
                peer = %peer(),
                "closed a connection that did not finish its handshake within {:?}",
                admission::HANDSHAKE_DEADLINE
            );
            return;
        }
    };
    let conn = Conn::new(io, origin, &stop).holding(ticket.establish());
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = conns.send(conn) => {}
    }
}

/// The TLS handshake if there is one, then the client preface; the connection to serve, with
/// what was read of it to be read again.
async fn speak<S: Io>(stream: S, tls: Option<TlsAcceptor>) -> Result<Box<dyn Io>, HandshakeError> {
    match tls {
        None => preface_of(stream).await,
        Some(acceptor) => {
            let stream = acceptor.accept(stream).await.map_err(HandshakeError::Tls)?;
            preface_of(stream).await
        }
    }
}

async fn preface_of<S: Io>(mut io: S) -> Result<Box<dyn Io>, HandshakeError> {
    match admission::read_preface(&mut io).await {
        Ok(Some(head)) => Ok(Box::new(Replay::new(head, io))),
        Ok(None) => Err(HandshakeError::Left),
        Err(e) => Err(HandshakeError::Read(e)),
    }
}

/// Builds a TLS acceptor (ALPN h2) from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ListenError> {
    use tokio_rustls::rustls;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| ListenError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ListenError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ListenError::Tls(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| ListenError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| ListenError::Tls(format!("{} holds no PEM private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ListenError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_all_interfaces() {
        assert_eq!(parse_listen_addr("7777").unwrap(), "0.0.0.0:7777");
        assert_eq!(
            parse_listen_addr("127.0.0.1:7777").unwrap(),
            "127.0.0.1:7777"
        );
        assert_eq!(parse_listen_addr(":7777").unwrap(), "0.0.0.0:7777");
        assert!(parse_listen_addr("host:port")
            .unwrap_err()
            .contains("[HOST:]PORT"));
    }

    /// The exporter can stop right after cancelling: the runtime then drops the listener task
    /// before it runs again, and the socket file must go all the same.
    #[test]
    fn the_socket_file_goes_with_its_listener_even_unpolled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (conns, _incoming) = mpsc::channel(1);
        let stop = CancellationToken::new();
        runtime.block_on(async {
            listen_unix(&path, conns, stop.clone(), &TaskTracker::new()).unwrap();
        });
        assert!(path.exists());
        stop.cancel();
        drop(runtime);
        assert!(!path.exists(), "the socket file was left behind");
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A pending connection of a fresh admission, as the accept loop makes one.
    fn pending(admission: &Arc<Admission>, stop: &CancellationToken) -> Ticket {
        match admission.admit(stop) {
            Admitted::Pending { ticket, .. } => ticket,
            Admitted::Full => panic!("refused"),
        }
    }

    /// Waits until the peer of `client` closed the connection; fails on any byte from it.
    async fn closed_by_the_exporter(client: &mut tokio::io::DuplexStream) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        assert_eq!(
            client.read(&mut buf).await.unwrap(),
            0,
            "bytes from a pending connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_finish_its_preface_is_closed_at_the_deadline() {
        use tokio::io::AsyncWriteExt;
        let admission = Admission::new(Caps::UNBOUNDED);
        let stop = CancellationToken::new();
        let (conns, mut incoming) = mpsc::channel(1);
        let (mut client, server) = tokio::io::duplex(4096);
        let started = tokio::time::Instant::now();
        let ticket = pending(&admission, &stop);
        let task = tokio::spawn(handshake(
            server,
            None,
            Origin::Unix,
            None,
            ticket,
            conns,
            stop.clone(),
        ));
        client.write_all(&PREFACE[..12]).await.unwrap();
        closed_by_the_exporter(&mut client).await;
        let waited = started.elapsed();
        assert!(
            waited >= admission::HANDSHAKE_DEADLINE
                && waited < admission::HANDSHAKE_DEADLINE + Duration::from_secs(1),
            "closed after {waited:?}"
        );
        task.await.unwrap();
        assert!(incoming.try_recv().is_err(), "it reached the server");
        assert_eq!(admission.held(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_speaks_http2_reaches_the_server_with_every_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admission = Admission::new(Caps::UNBOUNDED);
        let stop = CancellationToken::new();
        let (conns, mut incoming) = mpsc::channel(1);
        let (mut client, server) = tokio::io::duplex(4096);
        let mut hello = PREFACE.to_vec();
        hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
        hello.extend([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]); // PING
        let ticket = pending(&admission, &stop);
        tokio::spawn(handshake(
            server,
            None,
            Origin::Tcp,
            None,
            ticket,
            conns,
            stop.clone(),
        ));
        client.write_all(&hello).await.unwrap();
        let mut conn = incoming
            .recv()
            .await
            .expect("no connection reached the server");
        assert_eq!(conn.connect_info(), Origin::Tcp);
        assert_eq!(admission.held(), (0, 1));
        let mut got = vec![0; hello.len()];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(got, hello);
        drop(conn);
        assert_eq!(admission.held(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_closes_the_oldest_pending_one_and_stop_closes_the_rest() {
        let admission = Admission::new(Caps {
            pending: 1,
            established: 8,
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (conns, _incoming) = mpsc::channel(1);
        let started = tokio::time::Instant::now();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (client, server) = tokio::io::duplex(4096);
            let ticket = pending(&admission, &stop);
            tasks.spawn(handshake(
                server,
                None,
                Origin::Tcp,
                None,
                ticket,
                conns.clone(),
                stop.clone(),
            ));
            clients.push(client);
        }
        closed_by_the_exporter(&mut clients[0]).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not closed for room"
        );
        assert_eq!(admission.held(), (1, 0));
        stop.cancel();
        closed_by_the_exporter(&mut clients[1]).await;
        tasks.close();
        tasks.wait().await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not closed at stop"
        );
        assert_eq!(admission.held(), (0, 0));
    }

    #[test]
    fn only_resource_errors_free_a_pending_connection() {
        let errno = |n: i32| io::Error::from_raw_os_error(n);
        use rustix::io::Errno;
        assert!(out_of_resources(&errno(Errno::MFILE.raw_os_error())));
        assert!(out_of_resources(&errno(Errno::NFILE.raw_os_error())));
        assert!(!out_of_resources(&errno(Errno::CONNABORTED.raw_os_error())));
        assert!(is_one_connections_fault(&errno(
            Errno::CONNABORTED.raw_os_error()
        )));
        assert!(!is_one_connections_fault(&errno(
            Errno::MFILE.raw_os_error()
        )));
    }

    #[test]
    fn passphrase_is_checked_on_tcp_only() {
        let mut check = PassphraseCheck(Some(Arc::new(Secret::new("pw".into()))));
        let call = |origin: Origin, pw: Option<&str>| {
            let mut r = Request::new(());
            r.extensions_mut().insert(origin);
            if let Some(pw) = pw {
                r.metadata_mut()
                    .insert(PASSPHRASE_HEADER, pw.parse().unwrap());
            }
            r
        };
        use tonic::service::Interceptor;
        assert!(check.call(call(Origin::Tcp, Some("pw"))).is_ok());
        let refused = check.call(call(Origin::Tcp, Some("nope"))).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(!refused.message().contains("nope") && !refused.message().contains("pw"));
        assert!(check.call(call(Origin::Tcp, None)).is_err());
        assert!(check.call(call(Origin::Unix, None)).is_ok());
        assert!(PassphraseCheck(None).call(call(Origin::Tcp, None)).is_ok());
    }
}
