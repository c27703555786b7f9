//! A fake Jumpstarter router: pairs the two `RouterService.Stream` calls that present the same
//! bearer token and forwards every frame unchanged both ways. Like the Go router it sends a
//! caller no response headers until its peer has arrived, and ends each call only once both
//! directions have ended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use jmp_exporter::proto::router_service_server::{RouterService, RouterServiceServer};
use jmp_exporter::proto::{StreamRequest, StreamResponse};
use tokio::sync::{oneshot, Barrier};
use tonic::{Request, Response, Status, Streaming};

type Waiting = (
    Streaming<StreamRequest>,
    Arc<Barrier>,
    oneshot::Sender<Streaming<StreamRequest>>,
);

#[derive(Clone, Default)]
pub struct FakeRouter {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
}

/// Starts the fake router on a loopback port (plaintext h2c).
pub async fn start() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RouterServiceServer::new(FakeRouter::default()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// The peer's frames, then (once this side's own frames have ended too) the end of the call.
fn forward(
    peer: Streaming<StreamRequest>,
    both_done: Arc<Barrier>,
) -> Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>> {
    let frames = peer.map(|r| {
        r.map(|f| StreamResponse {
            payload: f.payload,
            frame_type: f.frame_type,
        })
    });
    let end = futures::stream::once(async move {
        both_done.wait().await;
    })
    .filter_map(|_| async { None });
    Box::pin(frames.chain(end))
}

#[tonic::async_trait]
impl RouterService for FakeRouter {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing or invalid authorization"))?
            .to_string();
        let inbound = request.into_inner();
        let waiting = self.waiting.lock().unwrap().remove(&token);
        match waiting {
            Some((first, barrier, give)) => {
                let _ = give.send(inbound);
                Ok(Response::new(forward(first, barrier)))
            }
            None => {
                let barrier = Arc::new(Barrier::new(2));
                let (give, take) = oneshot::channel();
                self.waiting
                    .lock()
                    .unwrap()
                    .insert(token, (inbound, barrier.clone(), give));
                let peer = take
                    .await
                    .map_err(|_| Status::aborted("peer never arrived"))?;
                Ok(Response::new(forward(peer, barrier)))
            }
        }
    }
}
