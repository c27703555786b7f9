//! Serving one session: listeners (Unix socket, standalone TCP with or without TLS) feed
//! connections into one tonic server through a bounded channel; every connection passes the
//! HTTP/2 edge first. After this point nobody knows where a connection came from, except the
//! passphrase check, which applies to TCP only (Unix sockets are guarded by file permissions).
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
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tonic::service::InterceptorLayer;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::config::Secret;
use crate::edge::Http2Edge;
use crate::proto::exporter_service_server::ExporterServiceServer;
use crate::proto::router_service_server::RouterServiceServer;
use crate::service::SessionService;
use crate::session::Session;

/// Metadata key of the standalone passphrase.
pub const PASSPHRASE_HEADER: &str = "x-jumpstarter-passphrase";

/// Streams one client connection may have open at once (advertised in SETTINGS).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

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
}

impl Conn {
    pub fn new(io: Box<dyn Io>, origin: Origin, session_end: &CancellationToken) -> Self {
        Self {
            io: Http2Edge::new(io),
            origin,
            session_end: session_end.clone(),
            closed: Box::pin(session_end.clone().cancelled_owned()),
        }
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
            .layer(InterceptorLayer::new(check))
            .layer(tower::util::MapResponseLayer::new(crate::rejection::log))
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
    tasks.spawn(async move {
        let owned = &socket_file.0;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    if conns
                        .send(Conn::new(Box::new(stream), Origin::Unix, &stop))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %owned.display(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
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
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conns = conns.clone();
            let stop = stop.clone();
            match &tls {
                None => {
                    if conns
                        .send(Conn::new(Box::new(stream), Origin::Tcp, &stop))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(acceptor) => {
                    // Handshakes run on their own so a slow client cannot hold up others.
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(tls)) => {
                                let _ = conns
                                    .send(Conn::new(Box::new(tls), Origin::Tcp, &stop))
                                    .await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Ok(local)
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
