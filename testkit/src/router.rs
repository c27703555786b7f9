//! A fake Jumpstarter router on its own port, for tests that need a router but no controller:
//! it accepts any bearer token and pairs the two `RouterService.Stream` calls that present the
//! same one with the same [`Relay`] as the fake controller's router (headers only after the
//! peer's first frame, frames forwarded unchanged both ways, both calls ended only once both
//! directions have ended).

use std::net::SocketAddr;

use jmp_exporter::proto::router_service_server::{RouterService, RouterServiceServer};
use jmp_exporter::proto::StreamRequest;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::relay::{FrameStream, Relay};

#[derive(Clone, Default)]
pub struct FakeRouter {
    relay: Relay,
    /// Never cancelled: this router lives as long as the test's runtime.
    life: CancellationToken,
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

#[tonic::async_trait]
impl RouterService for FakeRouter {
    type StreamStream = FrameStream;

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
        let frames = self
            .relay
            .join(token, request.into_inner(), self.life.clone())
            .await?;
        Ok(Response::new(frames))
    }
}
