//! A TCP proxy that tests can pause: while paused it keeps every connection open but moves no
//! bytes in either direction (and accepts new connections without forwarding anything), which
//! looks to both ends like a peer that stopped answering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A pausable TCP proxy to one target. Dropping it closes every connection.
pub struct PausableProxy {
    addr: SocketAddr,
    paused: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl PausableProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (paused, _) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (paused, accepted, open, stop) =
                (paused.clone(), accepted.clone(), open.clone(), stop.clone());
            async move {
                loop {
                    let inbound = tokio::select! {
                        _ = stop.cancelled() => break,
                        a = listener.accept() => match a {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(relay(
                        inbound,
                        target,
                        paused.subscribe(),
                        open.clone(),
                        stop.child_token(),
                    ));
                }
            }
        });
        PausableProxy {
            addr,
            paused,
            accepted,
            open,
            stop,
        }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops moving bytes (connections stay open).
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Moves bytes again, starting with whatever was held back.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// How many connections the proxy has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many proxied connections are open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    paused: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    open.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(open);
    let outbound = tokio::select! {
        _ = stop.cancelled() => return,
        o = TcpStream::connect(target) => match o {
            Ok(o) => o,
            Err(_) => return,
        },
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let up = pump(in_r, out_w, paused.clone());
    let down = pump(out_r, in_w, paused);
    tokio::select! {
        _ = stop.cancelled() => {}
        // A failed direction ends the connection; a clean EOF waits for the other direction.
        _ = async {
            tokio::pin!(up, down);
            tokio::select! {
                r = &mut up => if r.is_ok() { let _ = down.await; },
                r = &mut down => if r.is_ok() { let _ = up.await; },
            }
        } => {}
    }
}

/// Copies `from` to `to` while not paused; on EOF shuts `to` down.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut paused: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let _ = paused.wait_for(|p| !*p).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = paused.wait_for(|p| !*p).await;
            to.shutdown().await?;
            return Ok(());
        }
        let _ = paused.wait_for(|p| !*p).await;
        to.write_all(&buf[..n]).await?;
    }
}
