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

/// A UDP peer that sends every datagram back as it came.
pub fn udp_echo() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    port
}

/// A websocket peer that sends every message back as it came.
pub fn ws_echo() -> u16 {
    use futures::{SinkExt, StreamExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_binary() || message.is_text())
                            && ws.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
    });
    port
}

/// A TCP peer that reads until the client's half-close, then says how much it got and
/// closes.
pub fn half_close_peer() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
            let _ = conn.write_all(format!("got {} bytes", got.len()).as_bytes());
        }
    });
    port
}

/// A private D-Bus daemon on a socket in `dir`; killed with the guard.
pub struct DbusDaemon(std::process::Child);

impl DbusDaemon {
    pub fn start(dir: &Path) -> (Self, String) {
        let socket = dir.join("bus");
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth><policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                socket.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian's dbus-daemon, installed by .ci/run)");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "dbus-daemon never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (DbusDaemon(child), format!("unix:path={}", socket.display()))
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn datagrams_and_messages_keep_their_boundaries_half_close_works_and_dbus_answers() {
    let dir = tempfile::tempdir().unwrap();
    let udp = udp_echo();
    let ws = ws_echo();
    let half = half_close_peer();
    let (_daemon, bus) = DbusDaemon::start(dir.path());
    let export = format!(
        "export:\n  udp:\n    type: jumpstarter_driver_network.driver.UdpNetwork\n    config: {{host: 127.0.0.1, port: {udp}}}\n  ws:\n    type: jumpstarter_driver_network.driver.WebsocketNetwork\n    config: {{url: 'ws://127.0.0.1:{ws}/echo'}}\n  halfclose:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {half}}}\n  bus:\n    type: jumpstarter_driver_network.driver.DbusNetwork\n    config: {{kind: session}}\n"
    );
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let exporter = Exporter::tcp_with_env(
        &config,
        &["--tls-grpc-insecure"],
        &[("DBUS_SESSION_BUS_ADDRESS", bus.as_str())],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/network_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .arg("boundaries")
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let seen = python::scenario_result(
        "network_client.py",
        "boundaries",
        python::output_with_timeout(cmd, 120),
    );
    let whole: serde_json::Value = serde_json::json!([
        [1, true],
        [100, true],
        [1400, true],
        [9000, true],
        [30000, true]
    ]);
    assert_eq!(seen["udp"], whole, "one datagram per frame: {seen}");
    assert_eq!(seen["ws"], whole, "one message per frame: {seen}");
    assert_eq!(seen["udp_address"], format!("udp://127.0.0.1:{udp}"));
    assert_eq!(seen["ws_address"], format!("ws://127.0.0.1:{ws}/echo"));
    assert_eq!(seen["halfclose"], "got 1000 bytes", "{seen}");
    assert_eq!(seen["halfclose_end"], "EndOfStream", "{seen}");
    assert_eq!(seen["bus_class"], "DbusNetworkClient", "{seen}");
    assert_eq!(seen["bus_kind"], "session", "{seen}");
    assert!(
        seen["bus"].as_str().unwrap_or_default().starts_with("OK "),
        "the daemon accepted the client's authentication: {seen}"
    );
}
