//! Forwarding a client's calls and streams to the driver host, untouched: requests go as they
//! came (arguments, method, `request` metadata), and the host's results, statuses and
//! stream headers come back as they are, frame for frame, all over the host's [`Lane`]. Only a host that cannot be reached
//! changes an answer: the client gets UNAVAILABLE saying which host and why.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Response, Status, Streaming};

use super::lane::Lane;
use super::HostedSession;
use crate::proto::{
    DriverCallRequest, DriverCallResponse, StreamRequest, StreamResponse,
    StreamingDriverCallRequest, StreamingDriverCallResponse,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Headers our gRPC server sets itself, which a driver's stream headers must not replace.
fn is_transport_header(key: &str) -> bool {
    key.starts_with("grpc-") || matches!(key, "content-type" | "date" | "te" | "user-agent")
}

/// A hosted driver, as the services reach it.
#[derive(Clone)]
pub struct HostedRef {
    pub session: Arc<HostedSession>,
}

impl HostedRef {
    /// A status from the host, unless the host itself is the problem.
    fn answer(&self, status: Status) -> Status {
        match self.session.unreachable() {
            Some(why) => Status::unavailable(why),
            None => status,
        }
    }

    fn lane(&self) -> Result<Arc<Lane>, Status> {
        if let Some(why) = self.session.unreachable() {
            return Err(Status::unavailable(why));
        }
        self.session
            .lane()
            .ok_or_else(|| Status::unavailable("the Python driver host is not serving"))
    }

    pub async fn driver_call(
        &self,
        request: DriverCallRequest,
    ) -> Result<Response<DriverCallResponse>, Status> {
        let response = self
            .lane()?
            .driver_call(&request)
            .await
            .map_err(|s| self.answer(s))?;
        Ok(Response::new(response))
    }

    pub async fn streaming_driver_call(
        &self,
        request: StreamingDriverCallRequest,
    ) -> Result<BoxStream<StreamingDriverCallResponse>, Status> {
        let results = self
            .lane()?
            .streaming_driver_call(&request)
            .await
            .map_err(|s| self.answer(s))?;
        let this = self.clone();
        Ok(Box::pin(
            results.map(move |r| r.map_err(|s| this.answer(s))),
        ))
    }

    /// A byte or resource stream: the client's `request` metadata as it came, the driver's
    /// stream headers before any frame, frames one to one both ways; the client's end of
    /// input ends the host's, and dropping the answer (the client went away) cancels it.
    pub async fn stream(
        &self,
        metadata: &MetadataMap,
        inbound: Streaming<StreamRequest>,
    ) -> Result<Response<BoxStream<StreamResponse>>, Status> {
        let request = metadata
            .get("request")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (headers, frames) = self
            .lane()?
            .stream(request, inbound)
            .await
            .map_err(|s| self.answer(s))?;
        let mut relayed = MetadataMap::new();
        for (key, value) in headers {
            if is_transport_header(&key) {
                continue;
            }
            match (
                MetadataKey::<Ascii>::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                (Ok(key), Ok(value)) => {
                    relayed.insert(key, value);
                }
                _ => {
                    tracing::warn!(header = %key, "a hosted driver's stream header cannot be sent over gRPC; left out")
                }
            }
        }
        let this = self.clone();
        let frames = frames.map(move |r| r.map_err(|s| this.answer(s)));
        let mut response = Response::new(Box::pin(frames) as BoxStream<StreamResponse>);
        *response.metadata_mut() = relayed;
        Ok(response)
    }
}
