//! TcpNetwork: byte streams through each exporter's `TcpNetwork` to an echo peer in this
//! process (a Rust one, so that the peer is not the limit), at 4 KiB and 32 KiB writes, with
//! the exporter's CPU per GB and the time from stream open to the first byte back.

use serde_json::{json, Value};

use crate::load::echo;
use crate::targets::{ours, python};

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
