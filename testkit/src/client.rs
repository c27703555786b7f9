//! A client of the exporter through the fake controller and router, made the way the Python
//! client does it (Dial, then a router stream with the token), for tests that need to hold or
//! cut a connection themselves.

use std::time::Duration;

use crate::FakeController;
use jmp_exporter::config::TlsConfig;
use jmp_exporter::controller::tunnel;
use jmp_exporter::controller::{self, ChannelOptions};
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::GetReportResponse;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// A gRPC channel whose one and only connection is `io`.
pub async fn channel_over<IO>(io: IO) -> Channel
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let io = std::sync::Mutex::new(Some(io));
    Endpoint::from_static("http://client.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let io = io.lock().unwrap().take();
            async move {
                io.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("this channel has one connection only"))
            }
        }))
        .await
        .expect("connect over the in-memory pipe")
}

/// Dials `lease` (retrying UNAVAILABLE, as the Python client does while the exporter's Listen
/// reconnects, and a full token queue) and returns a channel whose connection goes through the router; `stop` ends
/// the client's side of the tunnel.
pub async fn channel(c: &FakeController, lease: &str, stop: CancellationToken) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let token = loop {
        match c.dial(lease).await {
            Ok((_, token)) => break token,
            // The controller holds at most 8 tokens per lease for the exporter to pick up;
            // many connections at once can find that queue full for a moment.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(s) => panic!("dial: {s:?}"),
        }
    };
    let tls = controller::client_tls(&TlsConfig {
        ca: c.ca_base64(),
        insecure: false,
    })
    .unwrap();
    let router = controller::channel(&c.endpoint(), tls, &ChannelOptions::default()).unwrap();
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        // Said out loud: otherwise a refused router call shows only as a broken pipe on the
        // client's next call, with nothing to tell which hop failed.
        if let Err(e) = tunnel::bridge(router, &token, theirs, stop).await {
            eprintln!("test client: the tunnel through the router failed: {e}");
        }
    });
    channel_over(ours).await
}

/// [`channel`], as an ExporterService client.
pub async fn connect(
    c: &FakeController,
    lease: &str,
    stop: CancellationToken,
) -> ExporterServiceClient<Channel> {
    ExporterServiceClient::new(channel(c, lease, stop).await)
}

/// The UUID of the driver named `name` (its `jumpstarter.dev/name` label) in a GetReport
/// answer; panics naming it when there is none.
pub fn uuid_in(report: &GetReportResponse, name: &str) -> String {
    report
        .reports
        .iter()
        .find(|r| r.labels.get("jumpstarter.dev/name").map(String::as_str) == Some(name))
        .map(|r| r.uuid.clone())
        .unwrap_or_else(|| panic!("no driver named {name}"))
}

/// Asks GetReport over `channel` and returns the UUID of the driver named `name`.
pub async fn driver_uuid(channel: &Channel, name: &str) -> String {
    let report = ExporterServiceClient::new(channel.clone())
        .get_report(())
        .await
        .expect("GetReport")
        .into_inner();
    uuid_in(&report, name)
}
