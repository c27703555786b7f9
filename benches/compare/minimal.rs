//! The minimal server: the least work a server on these protos can do to put the same bytes on
//! the wire as an exporter (a UUID in every response, MockPower's two readings). It stands for
//! the limit of the stack on this machine, so that our numbers have something to be read
//! against.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use jmp_exporter::proto::exporter_service_server::{ExporterService, ExporterServiceServer};
use jmp_exporter::proto::router_service_server::{RouterService, RouterServiceServer};
use jmp_exporter::proto::*;
use tonic::{Request, Response, Status, Streaming};

const MINIMAL_UUID: &str = "00000000-0000-4000-8000-000000000001";

#[derive(Clone)]
struct Minimal;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn null() -> Option<prost_types::Value> {
    Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::NullValue(0)),
    })
}

#[tonic::async_trait]
impl ExporterService for Minimal {
    async fn get_report(&self, _: Request<()>) -> Result<Response<GetReportResponse>, Status> {
        let mut labels = std::collections::HashMap::new();
        labels.insert("jumpstarter.dev/name".to_string(), "power".to_string());
        let mut echo = labels.clone();
        echo.insert("jumpstarter.dev/name".to_string(), "echo".to_string());
        Ok(Response::new(GetReportResponse {
            reports: vec![
                DriverInstanceReport {
                    uuid: MINIMAL_UUID.into(),
                    labels,
                    ..Default::default()
                },
                DriverInstanceReport {
                    uuid: MINIMAL_UUID.into(),
                    labels: echo,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }))
    }
    async fn driver_call(
        &self,
        _: Request<DriverCallRequest>,
    ) -> Result<Response<DriverCallResponse>, Status> {
        Ok(Response::new(DriverCallResponse {
            uuid: MINIMAL_UUID.into(),
            result: null(),
        }))
    }
    type StreamingDriverCallStream = BoxStream<StreamingDriverCallResponse>;
    async fn streaming_driver_call(
        &self,
        _: Request<StreamingDriverCallRequest>,
    ) -> Result<Response<Self::StreamingDriverCallStream>, Status> {
        // The same two readings MockPower streams, so both put the same bytes on the wire.
        let items = [(0.0, 0.0), (5.0, 2.0)].map(|(voltage, current)| {
            let number = |n| prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(n)),
            };
            let fields = [("voltage", voltage), ("current", current)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), number(v)))
                .collect();
            Ok(StreamingDriverCallResponse {
                uuid: MINIMAL_UUID.into(),
                result: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                        fields,
                    })),
                }),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
    type LogStreamStream = BoxStream<LogStreamResponse>;
    async fn log_stream(&self, _: Request<()>) -> Result<Response<Self::LogStreamStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
    async fn reset(&self, _: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(GetStatusResponse::default()))
    }
    async fn end_session(
        &self,
        _: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        Ok(Response::new(EndSessionResponse::default()))
    }
}

#[tonic::async_trait]
impl RouterService for Minimal {
    type StreamStream = BoxStream<StreamResponse>;
    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let echoed = request.into_inner().map(|r| {
            r.map(|f| StreamResponse {
                payload: f.payload,
                frame_type: f.frame_type,
            })
        });
        Ok(Response::new(Box::pin(echoed)))
    }
}

pub(crate) fn serve_minimal(addr: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = addr.parse().unwrap();
    runtime.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(ExporterServiceServer::new(Minimal))
            .add_service(RouterServiceServer::new(Minimal))
            .serve(addr)
            .await
            .unwrap();
    });
}
