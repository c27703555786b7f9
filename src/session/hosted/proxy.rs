//! Forwarding a client's calls and streams to the driver host, untouched: requests go as they
//! came (arguments, method, `request` metadata), and the host's results, statuses and
//! response headers come back as they are, frame for frame. Only a host that cannot be reached
//! changes an answer: the client gets UNAVAILABLE saying which host and why.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::{HostClient, HostedSession};
use crate::proto::exporter_service_client::ExporterServiceClient;
use crate::proto::router_service_client::RouterServiceClient;
use crate::proto::{
    DriverCallRequest, DriverCallResponse, StreamRequest, StreamResponse,
    StreamingDriverCallRequest, StreamingDriverCallResponse,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The most a host's message may be: larger than a client may send, so the host is the limit.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Headers a gRPC server sets itself; the rest of a host's response headers are the driver's.
fn is_transport_header(key: &str) -> bool {
    key.starts_with("grpc-") || matches!(key, "content-type" | "date" | "te" | "user-agent")
}

/// A hosted driver, as the services reach it.
#[derive(Clone)]
pub struct HostedRef {
    pub session: Arc<HostedSession>,
}

impl HostedRef {
    fn client(&self) -> Result<HostClient, Status> {
        if let Some(why) = self.session.unreachable() {
            return Err(Status::unavailable(why));
        }
        self.session
            .client()
            .ok_or_else(|| Status::unavailable("the Python driver host is not serving"))
    }

    /// A status from the host, unless the host itself is the problem.
    fn answer(&self, status: Status) -> Status {
        match self.session.unreachable() {
            Some(why) => Status::unavailable(why),
            None => status,
        }
    }

    pub async fn driver_call(
        &self,
        request: DriverCallRequest,
    ) -> Result<Response<DriverCallResponse>, Status> {
        let mut client = ExporterServiceClient::with_origin(self.client()?, HostClient::origin())
            .max_decoding_message_size(MAX_MESSAGE);
        let response = client
            .driver_call(Request::new(request))
            .await
            .map_err(|s| self.answer(s))?;
        Ok(Response::new(response.into_inner()))
    }

    pub async fn streaming_driver_call(
        &self,
        request: StreamingDriverCallRequest,
    ) -> Result<BoxStream<StreamingDriverCallResponse>, Status> {
        let mut client = ExporterServiceClient::with_origin(self.client()?, HostClient::origin())
            .max_decoding_message_size(MAX_MESSAGE);
        let results = client
            .streaming_driver_call(Request::new(request))
            .await
            .map_err(|s| self.answer(s))?
            .into_inner();
        let this = self.clone();
        Ok(Box::pin(
            results.map(move |r| r.map_err(|s| this.answer(s))),
        ))
    }

    /// A byte or resource stream: the client's `request` metadata as it came, the host's
    /// response headers before any frame, frames one to one both ways; the client's end of
    /// input ends the host's, and dropping the answer (the client went away) cancels it.
    pub async fn stream(
        &self,
        metadata: &MetadataMap,
        inbound: Streaming<StreamRequest>,
    ) -> Result<Response<BoxStream<StreamResponse>>, Status> {
        let mut client = RouterServiceClient::with_origin(self.client()?, HostClient::origin())
            .max_decoding_message_size(MAX_MESSAGE);
        // A frame the client sent that cannot be read ends what goes to the host, as end of
        // input would; the client's own call already carries that error.
        let outbound = inbound
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()));
        let mut request = Request::new(outbound);
        if let Some(value) = metadata.get("request") {
            request.metadata_mut().insert("request", value.clone());
        }
        let answer = client.stream(request).await.map_err(|s| self.answer(s))?;
        let mut headers = MetadataMap::new();
        for entry in answer.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                if !is_transport_header(key.as_str()) {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
        let this = self.clone();
        let frames = answer
            .into_inner()
            .map(move |r| r.map_err(|s| this.answer(s)));
        let mut response = Response::new(Box::pin(frames) as BoxStream<StreamResponse>);
        *response.metadata_mut() = headers;
        Ok(response)
    }
}
