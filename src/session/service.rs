//! The session's gRPC services: `ExporterService` (report, calls, logs, status, end) and
//! `RouterService.Stream` for driver byte streams, both over one session's driver tree.
//!
//! Driver errors become gRPC codes in exactly one place, [`status_of`]. Nothing a client sends
//! may panic: unknown UUIDs, methods and malformed stream requests are answered with a code.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use jmp_drivers::{DriverError, MethodKind};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use crate::frame::{self, FrameAction};
use crate::proto::exporter_service_server::ExporterService;
use crate::proto::router_service_server::RouterService;
use crate::proto::*;
use crate::session::resources::Scoped;
use crate::session::tree::{CallError, DriverRef};
use crate::session::value;
use crate::session::{status_name, Session};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Both services over one session.
#[derive(Clone)]
pub struct SessionService {
    session: Arc<Session>,
}

impl SessionService {
    pub fn new(session: Arc<Session>) -> Self {
        Self { session }
    }

    /// Finds the driver and checks that `method` is exported with the kind the client used;
    /// in strict mode, first that a lease is active.
    fn lookup(&self, uuid: &str, method: &str, kind: MethodKind) -> Result<DriverRef, Status> {
        let driver = self.find(uuid, method)?;
        if driver.hosted().is_some() {
            // The host's session answers for its methods, as upstream's does.
            return Ok(driver);
        }
        match driver.method(method).map_err(status_of)? {
            None => Err(Status::not_found(format!(
                "method {} not found on driver",
                shorten(method)
            ))),
            Some(k) if k != kind => Err(Status::not_found(format!(
                "method {} missing marker {}",
                shorten(method),
                kind.marker()
            ))),
            Some(_) => Ok(driver),
        }
    }

    /// The driver of `uuid`, once strict mode (if on) lets driver work through; `what` names
    /// the method or stream for the log.
    fn find(&self, uuid: &str, what: &str) -> Result<DriverRef, Status> {
        if let Some(status) = self.session.call_refused_by() {
            tracing::debug!(
                method = %shorten(what),
                "refused a driver call: strict mode needs an active lease (status {})",
                status_name(status)
            );
            // Upstream's intended wording; the Python client turns it into ExporterNotReady.
            return Err(Status::failed_precondition(format!(
                "Exporter not ready for driver calls (status: {})",
                status_name(status)
            )));
        }
        Uuid::parse_str(uuid)
            .ok()
            .and_then(|u| self.session.tree.driver(&u).cloned())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no driver with uuid {:?} in this session; GetReport lists the current ones",
                    shorten(uuid)
                ))
            })
    }
}

/// A client-supplied name as it may appear in an error message: error messages travel in a
/// response header, and an overlong one makes the client drop the whole connection.
fn shorten(name: &str) -> String {
    const MAX: usize = 200;
    if name.len() <= MAX {
        return name.to_string();
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &name[..end], name.len())
}

/// The one mapping from driver errors to gRPC codes (codes the Python client turns into its
/// exception classes). A driver that panicked is INTERNAL: a bug, not the device.
pub fn status_of(err: impl Into<CallError>) -> Status {
    match err.into() {
        CallError::Driver(DriverError::NotImplemented(m)) => Status::unimplemented(m),
        CallError::Driver(DriverError::InvalidArgument(m)) => Status::invalid_argument(m),
        CallError::Driver(DriverError::Timeout(m)) => Status::deadline_exceeded(m),
        CallError::Driver(DriverError::Unavailable(m)) => Status::unavailable(m),
        CallError::Driver(DriverError::Failed(m)) => Status::unknown(m),
        CallError::Panic(p) => Status::internal(p.to_string()),
    }
}

#[tonic::async_trait]
impl ExporterService for SessionService {
    async fn get_report(
        &self,
        _request: Request<()>,
    ) -> Result<Response<GetReportResponse>, Status> {
        Ok(Response::new(GetReportResponse {
            uuid: self.session.exporter_uuid.to_string(),
            labels: Default::default(),
            reports: self.session.tree.reports().to_vec(),
            alternative_endpoints: Vec::new(),
            motd: self.session.motd(),
        }))
    }

    async fn driver_call(
        &self,
        request: Request<DriverCallRequest>,
    ) -> Result<Response<DriverCallResponse>, Status> {
        let req = request.into_inner();
        let started = std::time::Instant::now();
        let driver = self.lookup(&req.uuid, &req.method, MethodKind::Call)?;
        let (method, kind) = (req.method.clone(), driver.type_name.clone());
        let answer = self.call_driver(driver, req).await;
        record(&method, &kind, started, answer.as_ref().err());
        answer
    }

    type StreamingDriverCallStream = BoxStream<StreamingDriverCallResponse>;

    async fn streaming_driver_call(
        &self,
        request: Request<StreamingDriverCallRequest>,
    ) -> Result<Response<Self::StreamingDriverCallStream>, Status> {
        let req = request.into_inner();
        let started = std::time::Instant::now();
        let driver = self.lookup(&req.uuid, &req.method, MethodKind::Streaming)?;
        let (method, kind) = (req.method.clone(), driver.type_name.clone());
        let answer = self.streaming_driver(driver, req).await;
        record(&method, &kind, started, answer.as_ref().err());
        answer
    }

    type LogStreamStream = BoxStream<LogStreamResponse>;

    async fn log_stream(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::LogStreamStream>, Status> {
        let queue = self.session.logs.clone();
        let records = futures::stream::unfold(queue, |queue| async move {
            let batch = queue.next_batch().await;
            Some((futures::stream::iter(batch.into_iter().map(Ok)), queue))
        })
        .flatten();
        Ok(Response::new(Box::pin(records)))
    }

    async fn reset(
        &self,
        _request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        Err(Status::unimplemented("Method not implemented!"))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(self.session.status_response()))
    }

    async fn end_session(
        &self,
        _request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let (success, message) = self.session.end();
        Ok(Response::new(EndSessionResponse {
            success,
            message: Some(message.to_string()),
        }))
    }
}

impl SessionService {
    async fn call_driver(
        &self,
        driver: DriverRef,
        req: DriverCallRequest,
    ) -> Result<Response<DriverCallResponse>, Status> {
        if let Some(hosted) = driver.hosted() {
            return hosted.driver_call(req).await;
        }
        let args = req.args.into_iter().map(value::to_json).collect();
        let span = tracing::debug_span!("call", driver = %req.uuid, method = %req.method);
        let resources = Scoped {
            registry: self.session.resources.clone(),
            driver: Uuid::parse_str(&req.uuid).unwrap_or_default(),
        };
        let result = driver
            .call(&req.method, args, &resources)
            .instrument(span)
            .await
            .map_err(|e| {
                tracing::debug!(method = %req.method, error = %e, "driver call failed");
                status_of(e)
            })?;
        Ok(Response::new(DriverCallResponse {
            uuid: Uuid::new_v4().to_string(),
            result: Some(value::from_json(result)),
        }))
    }

    async fn streaming_driver(
        &self,
        driver: DriverRef,
        req: StreamingDriverCallRequest,
    ) -> Result<Response<BoxStream<StreamingDriverCallResponse>>, Status> {
        if let Some(hosted) = driver.hosted() {
            return Ok(Response::new(hosted.streaming_driver_call(req).await?));
        }
        let args = req.args.into_iter().map(value::to_json).collect();
        let results = driver
            .streaming_call(&req.method, args)
            .await
            .map_err(status_of)?;
        let responses = results.map(|item| {
            item.map(|json| StreamingDriverCallResponse {
                uuid: Uuid::new_v4().to_string(),
                result: Some(value::from_json(json)),
            })
            .map_err(status_of)
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

/// One driver operation in the metrics.
fn record(method: &str, driver_type: &str, started: std::time::Instant, error: Option<&Status>) {
    crate::metrics::get().operation(
        method,
        driver_type,
        started.elapsed(),
        error.map(|s| code_name(s.code())),
    );
}

/// A gRPC code as the protocol names it (`UNAVAILABLE`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `request` metadata of a session byte stream.
#[derive(serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum StreamTarget {
    Driver {
        uuid: String,
        method: String,
    },
    Resource {
        uuid: String,
        #[serde(default)]
        x_jmp_content_encoding: Option<String>,
    },
}

#[tonic::async_trait]
impl RouterService for SessionService {
    type StreamStream = BoxStream<StreamResponse>;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let target = request
            .metadata()
            .get("request")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument("stream request lacks the `request` metadata"))
            .and_then(|text| {
                serde_json::from_str::<StreamTarget>(text).map_err(|e| {
                    Status::invalid_argument(format!("stream `request` metadata is not valid: {e}"))
                })
            })?;
        let (uuid, method) = match target {
            StreamTarget::Driver { uuid, method } => (uuid, method),
            StreamTarget::Resource {
                uuid,
                x_jmp_content_encoding,
            } => {
                let driver = self.find(&uuid, "a resource stream")?;
                if let Some(hosted) = driver.hosted() {
                    let metadata = request.metadata().clone();
                    return hosted.stream(&metadata, request.into_inner()).await;
                }
                let id = Uuid::parse_str(&uuid)
                    .map_err(|_| Status::not_found(format!("no driver with uuid {uuid:?}")))?;
                let opened = self.session.resources.open(
                    id,
                    x_jmp_content_encoding.as_deref(),
                    request.into_inner(),
                );
                tracing::debug!(driver = %uuid, handle = %opened.handle, "resource stream opened");
                let mut response = Response::new(opened.frames as BoxStream<StreamResponse>);
                let handle = opened.handle.parse().map_err(|_| {
                    Status::internal("a resource handle could not be sent as a header")
                })?;
                response.metadata_mut().insert("resource", handle);
                if let Some(accept) = opened.accept {
                    response
                        .metadata_mut()
                        .insert("x_jmp_accept_encoding", MetadataValue::from_static(accept));
                }
                return Ok(response);
            }
        };
        let started = std::time::Instant::now();
        let driver = self.lookup(&uuid, &method, MethodKind::ByteStream)?;
        let kind = driver.type_name.clone();
        if let Some(hosted) = driver.hosted() {
            let metadata = request.metadata().clone();
            let answer = hosted.stream(&metadata, request.into_inner()).await;
            record(&method, &kind, started, answer.as_ref().err());
            return answer;
        }
        let io = match driver.connect(&method).await.map_err(status_of) {
            Ok(io) => io,
            Err(status) => {
                record(&method, &kind, started, Some(&status));
                return Err(status);
            }
        };
        record(&method, &kind, started, None);
        tracing::debug!(driver = %uuid, method = %method, "byte stream opened");
        let (device_rx, device_tx) = tokio::io::split(io);
        let inbound = tokio::spawn(client_to_device(
            request.into_inner(),
            device_tx,
            kind.clone(),
        ));
        let counted = frame::payloads(device_rx).inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                crate::metrics::get().stream_bytes(&kind, "tx", bytes.len() as u64);
            }
        });
        Ok(Response::new(Box::pin(device_to_client(counted, inbound))))
    }
}

/// Writes the client's DATA to the device until GOAWAY or the end of the call, then closes the
/// device's write side.
/// A frame the client sent that could not be read (too large, malformed) fails the call with
/// that status, so the client knows its bytes were not delivered.
async fn client_to_device(
    mut inbound: Streaming<StreamRequest>,
    mut device: impl tokio::io::AsyncWrite + Unpin,
    driver_type: Arc<str>,
) -> Result<(), Status> {
    let result = loop {
        match inbound.message().await {
            Ok(Some(frame)) => match frame::classify(frame.frame_type, frame.payload) {
                FrameAction::Payload(bytes) => {
                    crate::metrics::get().stream_bytes(&driver_type, "rx", bytes.len() as u64);
                    if let Err(e) = device.write_all(&bytes).await {
                        // The client must learn that these bytes did not reach the device.
                        tracing::warn!(error = %e, "byte stream: writing to the device failed");
                        return Err(Status::unavailable(format!(
                            "writing to the device failed: {e}"
                        )));
                    }
                }
                FrameAction::Eof => break Ok(()),
                FrameAction::Ignore => {}
            },
            Ok(None) => break Ok(()),
            Err(status) => {
                tracing::warn!(error = %status, "byte stream: a client frame could not be read");
                break Err(status);
            }
        }
    };
    let _ = device.shutdown().await;
    result
}

/// How long the inbound pump may go on after the client went away: bytes it had already sent
/// (at most an HTTP/2 window) still reach the device, as when `j serial pipe --no-output`
/// exits right after its last write; a device that takes none of them cannot hold the pump.
const DRAIN_AFTER_CLIENT: std::time::Duration = std::time::Duration::from_secs(10);

/// Ends the inbound pump when the response stream is dropped (the client went away), once it
/// has written what it had received or after [`DRAIN_AFTER_CLIENT`].
struct AbortOnDrop(Option<JoinHandle<Result<(), Status>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(mut handle) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if tokio::time::timeout(DRAIN_AFTER_CLIENT, &mut handle)
                        .await
                        .is_err()
                    {
                        handle.abort();
                    }
                });
            }
            Err(_) => handle.abort(),
        }
    }
}

/// Device bytes as DATA frames, then one GOAWAY; the call itself ends only once the client has
/// finished sending too, so nothing it sends after our GOAWAY is lost.
fn device_to_client<S>(
    device: S,
    inbound: JoinHandle<Result<(), Status>>,
) -> impl Stream<Item = Result<StreamResponse, Status>> + Send
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    enum Phase {
        Reading,
        Draining,
        Done,
    }
    let state = (Box::pin(device), AbortOnDrop(Some(inbound)), Phase::Reading);
    futures::stream::unfold(state, |(mut device, mut guard, phase)| async move {
        match phase {
            Phase::Reading => match device.next().await {
                Some(Ok(chunk)) => Some((
                    Ok(frame::data_response(chunk)),
                    (device, guard, Phase::Reading),
                )),
                Some(Err(e)) => {
                    // The device failed (not a clean end): the client is told why, and the
                    // call ends here; whatever it still sends cannot be delivered.
                    tracing::warn!(error = %e, "byte stream: the device failed");
                    Some((
                        Err(Status::unavailable(e.to_string())),
                        (device, guard, Phase::Done),
                    ))
                }
                None => Some((
                    Ok(frame::goaway_response()),
                    (device, guard, Phase::Draining),
                )),
            },
            Phase::Draining => match guard.0.take() {
                Some(handle) => match handle.await {
                    Ok(Err(status)) => Some((Err(status), (device, guard, Phase::Draining))),
                    _ => None,
                },
                None => None,
            },
            Phase::Done => None,
        }
    })
}
