//! Native network drivers with the unchanged 0.9.0 client: TcpNetwork and UnixNetwork byte
//! streams to echo peers the test runs (1 MiB byte-exact over TCP), TcpNetwork's `address`,
//! and a target that refuses.

use std::path::Path;

use crate::support::exporter::Exporter;
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: network}\nendpoint: ''\ntoken: ''\n";

/// A thread-per-connection echo peer on a TCP listener.
fn tcp_echo() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let mut writer = conn;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    port
}

fn unix_echo(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let mut writer = conn;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
}

#[test]
fn the_real_client_streams_through_tcp_and_unix_network_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let port = tcp_echo();
    let socket = dir.path().join("echo.sock");
    unix_echo(&socket);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let export = format!(
        "export:\n  tcp:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {port}}}\n  unix:\n    type: jumpstarter_driver_network.driver.UnixNetwork\n    config: {{path: {}}}\n  closed:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {closed}}}\n",
        socket.display()
    );
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/network_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .arg("network")
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1")
        .env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*");
    let seen = python::scenario_result(
        "network_client.py",
        "network",
        python::output_with_timeout(cmd, 120),
    );
    assert_eq!(seen["class"], "NetworkClient", "{seen}");
    assert_eq!(seen["address"], format!("tcp://127.0.0.1:{port}"), "{seen}");
    assert_eq!(seen["tcp"], true, "{seen}");
    assert_eq!(seen["unix"], true, "{seen}");
    // The 0.9.0 client reports a refused stream only as "RPC already finished"; the status
    // it got names the target, as our own client shows.
    assert!(
        !seen["closed"].as_str().unwrap_or_default().is_empty(),
        "a refusing target is an error for the client: {seen}"
    );
    let status = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(stream_status(&exporter.host(), "closed"));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("127.0.0.1:{closed}")),
        "{status:?}"
    );
}

/// The status of a byte stream to an entry whose target refuses or never answers, opened
/// with our own client.
pub async fn stream_status(host: &str, entry: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let uuid = jmp_testkit::client::driver_uuid(&channel, entry).await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<jmp_exporter::proto::StreamRequest>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let target = format!(r#"{{"kind":"driver","uuid":"{uuid}","method":"connect"}}"#);
    request
        .metadata_mut()
        .insert("request", target.parse().unwrap());
    match jmp_exporter::proto::router_service_client::RouterServiceClient::new(channel)
        .stream(request)
        .await
    {
        Err(status) => status,
        Ok(answer) => {
            let mut frames = answer.into_inner();
            match frames.message().await {
                Err(status) => status,
                other => panic!("a refused target gave {other:?}"),
            }
        }
    }
}
