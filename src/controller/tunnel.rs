//! The router tunnel: one `RouterService.Stream` call to the router carries one client's whole
//! HTTP/2 connection, which we hand to the lease's session server as if the client had dialled
//! it directly.
//!
//! [`Tunnel`] is the call itself seen as a byte connection: bytes written become DATA frames on
//! the request stream (then GOAWAY when the writer shuts down or goes away), and DATA frames
//! from the router are read as bytes (GOAWAY or the end of the call is end of stream). The
//! session server reads and writes it directly: no relay task and no in-memory pipe between
//! them, so every byte is copied once on each side of the frame codec instead of three times.
//! Writes are buffered up to [`SEND_BUFFER`]; beyond that the writer waits, and HTTP/2 flow
//! control on the router call does the rest, so a slow side slows the other instead of growing
//! a queue. The request stream is fed from the start, before the router's response headers
//! arrive, because the router sends those only once the client's side has sent something.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::frame::{self, FrameAction};
use crate::proto::router_service_client::RouterServiceClient;
use crate::proto::{StreamRequest, StreamResponse};
use crate::session::server::{Conn, ConnSender, Origin};

/// Bytes written but not yet taken into a frame, beyond which writers wait.
pub const SEND_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the router token cannot be sent as a header")]
    BadToken,
    #[error("the lease's session server is gone")]
    SessionGone,
    #[error("router refused the stream: {0}")]
    Refused(#[source] Box<tonic::Status>),
}

/// Resolves once the [`Tunnel`] it came with is dropped, with whether the router took the call.
pub type Ended = oneshot::Receiver<Result<(), TunnelError>>;

/// Carries one client connection through an already connected router channel, into the
/// lease's session server, until the server is done with it or `stop` is cancelled.
pub async fn run(
    router: Channel,
    token: &str,
    session: &ConnSender,
    stop: CancellationToken,
) -> Result<(), TunnelError> {
    let (tunnel, ended) = Tunnel::open(router, token)?;
    session
        .send(Conn::new(Box::new(tunnel), Origin::Tunnel, &stop))
        .await
        .map_err(|_| TunnelError::SessionGone)?;
    tokio::select! {
        outcome = ended => outcome.unwrap_or(Ok(())),
        _ = stop.cancelled() => Ok(()),
    }
}

/// Pipes `io` through a `RouterService.Stream` call presenting `token`, both ways, until both
/// directions have ended or `stop` is cancelled. For a peer that is not itself a reader and
/// writer of the tunnel, such as a client's end handed to a local socket.
pub async fn bridge<IO>(
    router: Channel,
    token: &str,
    io: IO,
    stop: CancellationToken,
) -> Result<(), TunnelError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut tunnel, ended) = Tunnel::open(router, token)?;
    tokio::pin!(io);
    tokio::select! {
        // An I/O error here is one side going away, which ends the connection like EOF does.
        _ = tokio::io::copy_bidirectional_with_sizes(
            &mut io, &mut tunnel, frame::MAX_PAYLOAD, frame::MAX_PAYLOAD) => {}
        _ = stop.cancelled() => {}
    }
    drop(tunnel);
    ended.await.unwrap_or(Ok(()))
}

type Opening = Pin<
    Box<
        dyn Future<Output = Result<tonic::Response<Streaming<StreamResponse>>, tonic::Status>>
            + Send,
    >,
>;

/// Where the read side of the call is.
enum Inbound {
    /// Waiting for the router's response headers.
    Opening(Opening),
    /// Frames arriving; `eof` once the peer sent GOAWAY or the call ended. The call is kept
    /// after GOAWAY: the peer only half-closed, and our side may still be answering.
    Open {
        frames: Box<Streaming<StreamResponse>>,
        eof: bool,
    },
    /// The router refused the call, for this reason.
    Refused(Box<tonic::Status>),
}

/// The write side, shared between the writer and the request stream that tonic polls.
#[derive(Default)]
struct Outbound {
    bytes: BytesMut,
    /// The writer has shut down or gone away: send what is left, then GOAWAY.
    closed: bool,
    /// The request stream is gone (the call ended): nothing written can reach the peer.
    call_gone: bool,
    /// The request stream, waiting for bytes.
    sender: Option<Waker>,
    /// The writer, waiting for room.
    writer: Option<Waker>,
}

impl Outbound {
    /// Applies `change` under the lock, then wakes the side it hands back, once the lock is
    /// released so the woken task does not find it taken.
    fn update<R>(
        shared: &Mutex<Outbound>,
        change: impl FnOnce(&mut Outbound) -> (R, Option<Waker>),
    ) -> R {
        let (result, wake) = change(&mut shared.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(w) = wake {
            w.wake();
        }
        result
    }
}

/// One router call as a byte connection.
pub struct Tunnel {
    inbound: Inbound,
    /// The rest of the last DATA frame that did not fit the reader's buffer.
    unread: Bytes,
    outbound: Arc<Mutex<Outbound>>,
    ended: Option<oneshot::Sender<Result<(), TunnelError>>>,
}

impl Tunnel {
    /// Starts the call; it goes out when the tunnel is first read.
    pub fn open(router: Channel, token: &str) -> Result<(Tunnel, Ended), TunnelError> {
        let mut bearer: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| TunnelError::BadToken)?;
        // Keeps the token out of HTTP/2 debug logs and the HPACK table.
        bearer.set_sensitive(true);
        let outbound = Arc::new(Mutex::new(Outbound::default()));
        let mut request = tonic::Request::new(Outgoing {
            shared: outbound.clone(),
            goaway_sent: false,
        });
        request.metadata_mut().insert("authorization", bearer);
        let mut client = RouterServiceClient::new(router);
        let opening: Opening = Box::pin(async move { client.stream(request).await });
        let (ended_tx, ended) = oneshot::channel();
        let tunnel = Tunnel {
            inbound: Inbound::Opening(opening),
            unread: Bytes::new(),
            outbound,
            ended: Some(ended_tx),
        };
        Ok((tunnel, ended))
    }

    /// Polls for the next bytes from the peer; an empty `Bytes` is end of stream.
    fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        loop {
            match &mut self.inbound {
                Inbound::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(response)) => {
                        self.inbound = Inbound::Open {
                            frames: Box::new(response.into_inner()),
                            eof: false,
                        }
                    }
                    Poll::Ready(Err(status)) => self.inbound = Inbound::Refused(Box::new(status)),
                },
                Inbound::Open { eof: true, .. } | Inbound::Refused(_) => {
                    return Poll::Ready(Bytes::new())
                }
                Inbound::Open { frames, eof } => match frames.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(f))) => match frame::classify(f.frame_type, f.payload) {
                        FrameAction::Payload(bytes) if !bytes.is_empty() => {
                            return Poll::Ready(bytes)
                        }
                        FrameAction::Payload(_) | FrameAction::Ignore => {}
                        FrameAction::Eof => *eof = true,
                    },
                    Poll::Ready(Some(Err(_)) | None) => *eof = true,
                },
            }
        }
    }

    fn close_outbound(&self) {
        Outbound::update(&self.outbound, |out| {
            out.closed = true;
            ((), out.sender.take())
        })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.close_outbound();
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(match &self.inbound {
                Inbound::Refused(status) => Err(TunnelError::Refused(status.clone())),
                _ => Ok(()),
            });
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            match self.poll_bytes(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(bytes) => self.unread = bytes,
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Outbound::update(&self.outbound, |out| {
            if out.call_gone || out.closed {
                return (Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())), None);
            }
            let room = SEND_BUFFER.saturating_sub(out.bytes.len());
            if room == 0 {
                out.writer = Some(cx.waker().clone());
                return (Poll::Pending, None);
            }
            let mut taken = 0;
            for slice in bufs {
                let n = slice.len().min(room - taken);
                out.bytes.extend_from_slice(&slice[..n]);
                taken += n;
                if taken == room {
                    break;
                }
            }
            let sender = if taken > 0 { out.sender.take() } else { None };
            (Poll::Ready(Ok(taken)), sender)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_outbound();
        Poll::Ready(Ok(()))
    }
}

/// The request stream tonic sends: the written bytes in frames of at most
/// [`frame::MAX_PAYLOAD`], then GOAWAY once the writer is closed.
struct Outgoing {
    shared: Arc<Mutex<Outbound>>,
    goaway_sent: bool,
}

impl Stream for Outgoing {
    type Item = StreamRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamRequest>> {
        let taken = Outbound::update(&self.shared, |out| {
            if !out.bytes.is_empty() {
                let n = out.bytes.len().min(frame::MAX_PAYLOAD);
                let chunk = out.bytes.split_to(n).freeze();
                (
                    Poll::Ready(Some(frame::data_request(chunk))),
                    out.writer.take(),
                )
            } else if !out.closed {
                out.sender = Some(cx.waker().clone());
                (Poll::Pending, None)
            } else {
                (Poll::Ready(None), None)
            }
        });
        match taken {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame)),
            Poll::Ready(None) if !self.goaway_sent => {
                self.goaway_sent = true;
                Poll::Ready(Some(frame::goaway_request()))
            }
            Poll::Ready(None) => Poll::Ready(None),
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        Outbound::update(&self.shared, |out| {
            out.call_gone = true;
            ((), out.writer.take())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A tunnel whose call never gets anywhere: nothing reads its request stream.
    fn unanswered() -> (Tunnel, Ended) {
        let nowhere = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Tunnel::open(nowhere, "t").unwrap()
    }

    fn write(tunnel: &mut Tunnel, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(tunnel).poll_write(&mut cx, bytes)
    }

    #[tokio::test]
    async fn writes_stop_at_the_send_buffer_until_frames_are_taken() {
        let (mut tunnel, _ended) = unanswered();
        let big = vec![7u8; SEND_BUFFER + 1000];
        assert!(matches!(write(&mut tunnel, &big), Poll::Ready(Ok(n)) if n == SEND_BUFFER));
        assert!(write(&mut tunnel, b"more").is_pending());

        // The request stream takes one frame's worth; that much room opens again.
        let mut outgoing = Outgoing {
            shared: tunnel.outbound.clone(),
            goaway_sent: false,
        };
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut outgoing).poll_next(&mut cx) {
            Poll::Ready(Some(f)) => assert_eq!(f.payload.len(), frame::MAX_PAYLOAD),
            other => panic!("expected a full DATA frame, got {other:?}"),
        }
        assert!(matches!(write(&mut tunnel, &big), Poll::Ready(Ok(n)) if n == frame::MAX_PAYLOAD));
    }

    #[tokio::test]
    async fn after_shutdown_the_rest_goes_out_then_goaway_then_the_end() {
        let (mut tunnel, _ended) = unanswered();
        assert!(matches!(write(&mut tunnel, b"tail"), Poll::Ready(Ok(4))));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut tunnel).poll_shutdown(&mut cx).is_ready());
        assert!(matches!(
            write(&mut tunnel, b"late"),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe
        ));
        let outgoing = Outgoing {
            shared: tunnel.outbound.clone(),
            goaway_sent: false,
        };
        let frames: Vec<StreamRequest> = outgoing.collect().await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(&frames[0].payload[..], b"tail");
        assert_eq!(frames[1], frame::goaway_request());
    }

    #[tokio::test]
    async fn a_writer_learns_when_the_call_is_gone() {
        let (mut tunnel, _ended) = unanswered();
        drop(Outgoing {
            shared: tunnel.outbound.clone(),
            goaway_sent: false,
        });
        assert!(matches!(
            write(&mut tunnel, b"x"),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe
        ));
    }

    #[tokio::test]
    async fn dropping_the_tunnel_reports_that_it_ended() {
        let (tunnel, ended) = unanswered();
        drop(tunnel);
        assert!(matches!(ended.await, Ok(Ok(()))));
    }
}
