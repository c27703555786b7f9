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
use crate::router::{ours_through_router, python_through_router};
use crate::targets::{ours, python, Target};

/// A thread-per-connection echo peer on loopback; its port. A spare thread always waits in
/// `accept`, and the one that takes a connection starts the next spare before it serves: a
/// thread spawned only once the connection arrived would be charged to every stream open.
fn echo_peer() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    spare_echo_thread(std::sync::Arc::new(listener));
    port
}

fn spare_echo_thread(listener: std::sync::Arc<std::net::TcpListener>) {
    std::thread::spawn(move || {
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        spare_echo_thread(listener);
        let _ = conn.set_nodelay(true);
        let mut reader = conn.try_clone().unwrap();
        let mut writer = conn;
        let _ = std::io::copy(&mut reader, &mut writer);
    });
}

/// The floor under any exporter's TcpNetwork: a bare relay (blocking copies with 256 KiB
/// buffers, no framing at all) between a client and the same echo peer, so the same four
/// loopback socket crossings per byte. Its CPU is its two threads' own.
fn bare_relay(peer: u16, size: usize) -> Value {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread_cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let pump = move |mut from: TcpStream, mut to: TcpStream| {
        let begin = thread_cpu();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        thread_cpu() - begin
    };
    let relay = std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let upstream = TcpStream::connect(("127.0.0.1", peer)).unwrap();
        for s in [&client, &upstream] {
            s.set_nodelay(true).unwrap();
        }
        let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let there = std::thread::spawn(move || pump(c2, u2));
        let back = pump(upstream, client);
        back + there.join().unwrap()
    });
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_nodelay(true).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let deadline = Instant::now() + crate::load::seconds();
    let begin = Instant::now();
    let sender = std::thread::spawn(move || {
        let payload = vec![0x5au8; size];
        while Instant::now() < deadline {
            writer.write_all(&payload).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = conn;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    while let Ok(n @ 1..) = reader.read(&mut buf) {
        received += n as u64;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    sender.join().unwrap();
    let cpu = relay.join().unwrap().as_secs_f64();
    json!({
        "mb_per_s": received as f64 / elapsed / 1e6,
        "cpu_s_per_gb": cpu / (received as f64 / 1e9),
    })
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
        (
            "python 0.9.0 via router",
            python_through_router(&export).await,
        ),
    ] {
        eprintln!("  {name} TcpNetwork ...");
        let mut cases = json!({});
        for size in [4096, 32768] {
            cases[format!("echo_{size}")] = echo(&target, "tcp", size).await;
        }
        r[name] = cases;
        drop(target);
    }
    eprintln!("  bare relay ...");
    let mut floor = json!({});
    for size in [4096, 32768] {
        floor[format!("echo_{size}")] = tokio::task::spawn_blocking(move || bare_relay(port, size))
            .await
            .unwrap();
    }
    r["bare relay"] = floor;
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
