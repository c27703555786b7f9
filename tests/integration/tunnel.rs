//! A client connection carried through a router tunnel into a session server: unary calls,
//! streaming calls and a nested byte stream, with both tunnel ends using `tunnel::bridge`.

use std::time::Duration;

use jmp_exporter::config;
use jmp_exporter::controller::tunnel;
use jmp_exporter::frame;
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::{DriverCallRequest, FrameType, StreamingDriverCallRequest};
use jmp_exporter::standalone::{self, Listeners};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::support::exporter;
use jmp_testkit::client::channel_over;
use jmp_testkit::router;

#[tokio::test]
async fn a_client_connection_through_the_router_reaches_the_session() {
    let running = session_without_listeners().await;
    let stop = running.host.stop.clone();
    let router_addr = router::start().await;
    let router = Endpoint::from_shared(format!("http://{router_addr}"))
        .unwrap()
        .connect_lazy();

    // The exporter's end arrives first, as it does when the controller hands it the token.
    let exporter_end = tokio::spawn({
        let (router, conns, stop) = (router.clone(), running.host.conns.clone(), stop.clone());
        async move { tunnel::run(router, "token-1", &conns, stop).await }
    });
    let (client_io, bridge_io) = tokio::io::duplex(64 * 1024);
    let client_gone = CancellationToken::new();
    let client_end = tokio::spawn(tunnel::bridge(
        router.clone(),
        "token-1",
        bridge_io,
        client_gone.clone(),
    ));
    let channel = channel_over(client_io).await;

    let mut exporter_client = ExporterServiceClient::new(channel.clone());
    let report = exporter_client.get_report(()).await.unwrap().into_inner();
    let uuid_of = |name: &str| jmp_testkit::client::uuid_in(&report, name);
    exporter_client
        .driver_call(DriverCallRequest {
            uuid: uuid_of("power"),
            method: "on".into(),
            args: vec![],
        })
        .await
        .unwrap();
    let mut readings = exporter_client
        .streaming_driver_call(StreamingDriverCallRequest {
            uuid: uuid_of("power"),
            method: "read".into(),
            args: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while readings.message().await.unwrap().is_some() {
        count += 1;
    }
    assert_eq!(count, 2);

    // A byte stream to the echo driver, nested inside the tunnelled connection.
    let payload: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<_> = payload
        .chunks(32 * 1024)
        .map(|c| frame::data_request(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let outbound = futures::stream::iter(chunks)
        .chain(futures::stream::once(async { frame::goaway_request() }));
    let mut request = tonic::Request::new(outbound);
    let target = format!(
        r#"{{"kind":"driver","uuid":"{}","method":"connect"}}"#,
        uuid_of("echo")
    );
    request
        .metadata_mut()
        .insert("request", target.parse().unwrap());
    let mut echoed = RouterServiceClient::new(channel.clone())
        .stream(request)
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    let mut saw_goaway = false;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), echoed.message())
        .await
        .unwrap()
        .unwrap()
    {
        if frame.frame_type == FrameType::Goaway as i32 {
            saw_goaway = true;
        } else {
            back.extend_from_slice(&frame.payload);
        }
    }
    assert!(saw_goaway, "the echo stream ended without GOAWAY");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");

    // A connection that the client opens and closes at once (as `jmp shell` probes its
    // listener): both tunnel ends finish by themselves and the session stays up.
    let probe_exporter_end = tokio::spawn({
        let (router, conns, stop) = (router.clone(), running.host.conns.clone(), stop.clone());
        async move { tunnel::run(router, "token-2", &conns, stop).await }
    });
    let (mut probe, probe_io) = tokio::io::duplex(1024);
    let probe_client_end = tokio::spawn(tunnel::bridge(
        router.clone(),
        "token-2",
        probe_io,
        CancellationToken::new(),
    ));
    tokio::io::AsyncWriteExt::shutdown(&mut probe)
        .await
        .unwrap();
    let mut from_server = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut probe, &mut from_server)
        .await
        .unwrap();
    for (end, name) in [
        (probe_client_end, "client"),
        (probe_exporter_end, "exporter"),
    ] {
        tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .unwrap_or_else(|_| panic!("the {name}'s end of a closed connection did not finish"))
            .unwrap()
            .unwrap();
    }
    assert!(!stop.is_cancelled());

    // Ending the session ends the tunnels still open.
    drop((exporter_client, echoed, channel));
    stop.cancel();
    client_gone.cancel();
    for (end, name) in [(client_end, "client"), (exporter_end, "exporter")] {
        tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .unwrap_or_else(|_| panic!("the {name}'s tunnel end did not stop"))
            .unwrap()
            .unwrap();
    }
    running.host.end().await;
}

/// A token the router does not know: the session server gets end of stream at once, and the
/// exporter's end of the tunnel returns the router's refusal, to be logged.
#[tokio::test]
async fn a_refused_tunnel_ends_with_the_routers_reason() {
    let running = session_without_listeners().await;
    let stop = running.host.stop.clone();
    let controller = jmp_testkit::FakeController::start(jmp_testkit::Options::default()).await;
    let tls = jmp_exporter::controller::client_tls(&config::TlsConfig {
        ca: controller.ca_base64(),
        insecure: false,
    })
    .unwrap();
    let router = jmp_exporter::controller::channel(
        &controller.endpoint(),
        tls,
        &jmp_exporter::controller::ChannelOptions::default(),
    )
    .unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        tunnel::run(router, "never-issued", &running.host.conns, stop.clone()),
    )
    .await
    .expect("a refused tunnel did not end");
    match ended {
        Err(tunnel::TunnelError::Refused(status)) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}")
        }
        other => panic!("expected the router's refusal, got {other:?}"),
    }
    assert!(
        !stop.is_cancelled(),
        "one refused tunnel must not end the session"
    );
    running.host.end().await;
}

use futures::StreamExt as _;

/// A demo-config session that only tunnels feed: no socket, no TCP listener.
async fn session_without_listeners() -> standalone::Running {
    let loaded = config::load(&exporter::config("demo.yaml")).unwrap();
    let none = Listeners {
        socket: None,
        tcp: None,
        tls: None,
        passphrase: None,
    };
    standalone::start(&loaded.config, None, none).await.unwrap()
}
