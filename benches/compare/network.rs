//! TcpNetwork: byte streams through each exporter's `TcpNetwork` to an echo peer in this
//! process (a Rust one, so that the peer is not the limit), at 4 KiB and 32 KiB writes, with
//! the exporter's CPU per GB and the time from stream open to the first byte back; ours both
//! directly and leased through the fake router. Shell: the time from `call_method` to the
//! first output, under both exporters.

use serde_json::{json, Value};

use std::time::{Duration, Instant};

use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::StreamingDriverCallRequest;

use crate::load::{channels, echo};
use crate::router::ours_through_router;
use crate::targets::{ours, python, Target};

/// A thread-per-connection echo peer on loopback; its port.
fn echo_peer() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let mut writer = conn;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    port
}

pub(crate) async fn tcp_network() -> Value {
    let port = echo_peer();
    let export = format!(
        "export:\n  tcp:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {port}}}\n"
    );
    let mut r = json!({});
    for (name, target) in [
        ("python 0.9.0", python("python 0.9.0", &export).await),
        ("jmp-exporter", ours("jmp-exporter", &export).await),
        ("via router", ours_through_router(&export).await),
    ] {
        eprintln!("  {name} TcpNetwork ...");
        let mut cases = json!({});
        for size in [4096, 32768] {
            cases[format!("echo_{size}")] = echo(&target, "tcp", size).await;
        }
        r[name] = cases;
        drop(target);
    }
    r
}

const SHELL_EXPORT: &str = "export:\n  sh:\n    type: jumpstarter_driver_shell.driver.Shell\n    config:\n      methods:\n        hello: 'echo ready; sleep 0.3; echo done'\n";

/// Calls of `sh.hello` timed to the first item with output and to the end, p50 and slowest.
async fn first_output(target: &Target) -> Value {
    let chans = channels(target, 1).await;
    let uuid = jmp_testkit::client::driver_uuid(&chans[0], "sh").await;
    let mut client = ExporterServiceClient::new(chans[0].clone());
    let (mut first, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let started = Instant::now();
        let request = StreamingDriverCallRequest {
            uuid: uuid.clone(),
            method: "call_method".into(),
            args: vec![
                jmp_exporter::session::value::from_json(json!("hello")),
                jmp_exporter::session::value::from_json(json!({})),
            ],
        };
        let mut stream = client
            .streaming_driver_call(request)
            .await
            .expect("call_method")
            .into_inner();
        let mut seen = None;
        while let Ok(Some(_)) = stream.message().await {
            seen.get_or_insert(started.elapsed());
        }
        first.push(seen.unwrap_or_default());
        whole.push(started.elapsed());
    }
    first.sort();
    whole.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    json!({
        "first_output_p50_ms": ms(first[first.len() / 2]),
        "first_output_max_ms": ms(first[first.len() - 1]),
        "call_p50_ms": ms(whole[whole.len() / 2]),
    })
}

pub(crate) async fn shell() -> Value {
    let mut r = json!({});
    for (name, target) in [
        ("python 0.9.0", python("python 0.9.0", SHELL_EXPORT).await),
        ("jmp-exporter", ours("jmp-exporter", SHELL_EXPORT).await),
    ] {
        eprintln!("  {name} Shell ...");
        r[name] = first_output(&target).await;
        drop(target);
    }
    r
}
