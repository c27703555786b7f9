//! The router tunnel: one `RouterService.Stream` call to the router carries one client's whole
//! HTTP/2 connection, which we hand to the lease's session server as if the client had dialled
//! it directly.
//!
//! Two halves, each a plain stream transformation: bytes the session server writes become DATA
//! frames on the request stream (GOAWAY when it closes), and DATA frames from the router become
//! bytes for the server (GOAWAY or the end of the call closes its read side). There is no relay
//! buffer of our own: the in-memory pipe is bounded and HTTP/2 flow control on the router call
//! does the rest, so a slow side slows the other instead of growing a queue. The request stream
//! is fed from the start, before the router's response headers arrive, because the router sends
//! those only once the client's side has sent something.

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::frame::{self, FrameAction};
use crate::proto::router_service_client::RouterServiceClient;
use crate::server::{Conn, ConnSender, Origin};

/// Size of the in-memory pipe between the tunnel and the session server.
const PIPE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the router token cannot be sent as a header")]
    BadToken,
    #[error("the lease's session server is gone")]
    SessionGone,
    #[error("router refused the stream: {0}")]
    Refused(#[source] Box<tonic::Status>),
}

/// Carries one client connection through an already connected router channel, into the
/// lease's session server, until either side ends it or `stop` is cancelled.
pub async fn run(
    router: Channel,
    token: &str,
    session: &ConnSender,
    stop: CancellationToken,
) -> Result<(), TunnelError> {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    session
        .send(Conn::new(Box::new(theirs), Origin::Tunnel, &stop))
        .await
        .map_err(|_| TunnelError::SessionGone)?;
    bridge(router, token, ours, stop).await
}

/// Pipes `io` through a `RouterService.Stream` call presenting `token`: what `io` yields goes
/// out as DATA frames (then GOAWAY), what arrives is written to `io` (GOAWAY or the end of the
/// call shuts its write side). Both ends of a tunnel are this same bridge.
pub async fn bridge<IO>(
    router: Channel,
    token: &str,
    io: IO,
    stop: CancellationToken,
) -> Result<(), TunnelError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut bearer: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| TunnelError::BadToken)?;
    // Keeps the token out of HTTP/2 debug logs and the HPACK table.
    bearer.set_sensitive(true);
    let (from_local, mut to_local) = tokio::io::split(io);

    // Resolves once the local side has ended and its GOAWAY is queued (or the call is gone).
    let (sent_all, local_done) = tokio::sync::oneshot::channel::<()>();
    let outbound = ReaderStream::with_capacity(from_local, frame::MAX_PAYLOAD)
        .scan((), |_, chunk| futures::future::ready(chunk.ok()))
        .map(frame::data_request)
        .chain(futures::stream::once(async move {
            drop(sent_all);
            frame::goaway_request()
        }));
    let mut request = tonic::Request::new(outbound);
    request.metadata_mut().insert("authorization", bearer);

    let mut client = RouterServiceClient::new(router);
    let call = async {
        let mut inbound = client
            .stream(request)
            .await
            .map_err(|s| TunnelError::Refused(Box::new(s)))?
            .into_inner();
        // Whether the call is still up after the peer's last frame (it sent GOAWAY) or over.
        let call_alive = loop {
            match inbound.message().await {
                Ok(Some(frame)) => match frame::classify(frame.frame_type, frame.payload) {
                    FrameAction::Payload(bytes) => {
                        if !bytes.is_empty() && to_local.write_all(&bytes).await.is_err() {
                            break true;
                        }
                    }
                    FrameAction::Eof => break true,
                    FrameAction::Ignore => {}
                },
                Ok(None) | Err(_) => break false,
            }
        };
        let _ = to_local.shutdown().await;
        if call_alive {
            // The peer half-closed: the local side may still answer, and dropping the call now
            // would reset it and lose that.
            let _ = local_done.await;
        }
        Ok(())
    };
    tokio::select! {
        result = call => result,
        _ = stop.cancelled() => Ok(()),
    }
}
