//! HttpPower and EnerGenie with the unchanged 0.9.0 client against local HTTP servers the
//! test runs: each request's method, path, body and basic auth as configured, `read` from a
//! JSON answer by dotted paths, a switch that answers 500, EnerGenie's login and switch form
//! posts, and a refused login reported instead of swallowed.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;

use crate::support::exporter::Exporter;
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: power}\nendpoint: ''\ntoken: ''\n";

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: String,
}

pub type Route = fn(&Seen) -> (u16, String);

/// An HTTP/1.1 server on a free loopback port that records every request and answers with
/// `route`, one connection at a time.
pub fn server(route: Route) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let (mut length, mut auth) = (0usize, None);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "authorization" => auth = Some(value.trim().to_string()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let request = Seen {
                method,
                path,
                auth,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let (status, answer) = route(&request);
            log.lock().unwrap().push(request);
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, seen)
}

pub fn plug(seen: &Seen) -> (u16, String) {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:plug-pass")
    );
    if seen.auth.as_deref() != Some(expected.as_str()) {
        return (401, String::new());
    }
    match seen.path.as_str() {
        "/status" => (
            200,
            r#"{"emeter": {"voltage": "229.5"}, "meters": [{"current": 0.25}]}"#.into(),
        ),
        "/broken" => (500, String::new()),
        _ => (200, "{}".into()),
    }
}

fn energenie(seen: &Seen) -> (u16, String) {
    match (seen.path.as_str(), seen.body.as_str()) {
        ("/login.html", "pw=pdu-pass") => (200, String::new()),
        ("/login.html", _) => (403, String::new()),
        _ => (200, String::new()),
    }
}

#[test]
fn the_real_client_switches_http_and_energenie_power_and_hears_every_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (web, web_seen) = server(plug);
    let (pdu, pdu_seen) = server(energenie);
    let export = format!(
        "export:
  plug:
    type: jumpstarter_driver_http_power.driver.HttpPower
    config:
      name: bench-plug
      power_on: {{url: 'http://127.0.0.1:{web}/on', method: post, data: 'turn=on'}}
      power_off: {{url: 'http://127.0.0.1:{web}/off', data: 'ignored with GET'}}
      power_read: {{url: 'http://127.0.0.1:{web}/status', voltage_path: emeter.voltage, current_path: meters.0.current}}
      auth: {{basic: {{user: admin, password: plug-pass}}}}
  broken:
    type: jumpstarter_driver_http_power.driver.HttpPower
    config:
      power_on: {{url: 'http://127.0.0.1:{web}/broken', method: PUT}}
      power_off: {{url: 'http://127.0.0.1:{web}/broken'}}
      auth: {{basic: {{user: admin, password: plug-pass}}}}
  pdu:
    type: jumpstarter_driver_energenie.driver.EnerGenie
    config: {{host: '127.0.0.1:{pdu}', password: pdu-pass, slot: 3}}
  locked:
    type: jumpstarter_driver_energenie.driver.EnerGenie
    config: {{host: '127.0.0.1:{pdu}', password: wrong-pass}}
"
    );
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/power_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .arg("power")
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let seen = python::scenario_result(
        "power_client.py",
        "power",
        python::output_with_timeout(cmd, 120),
    );
    assert_eq!(seen["class"], "PowerClient", "{seen}");
    assert_eq!(seen["on"], serde_json::json!({"ok": null}), "{seen}");
    assert_eq!(seen["off"], serde_json::json!({"ok": null}), "{seen}");
    assert_eq!(
        seen["read"],
        serde_json::json!({"ok": [{"voltage": 229.5, "current": 0.25}]}),
        "{seen}"
    );
    let broken = seen["broken_on"]["error"].as_str().unwrap_or_default();
    assert!(
        broken.contains("500") && broken.contains("/broken"),
        "{seen}"
    );
    assert_eq!(seen["pdu_on"], serde_json::json!({"ok": null}), "{seen}");
    assert_eq!(seen["pdu_off"], serde_json::json!({"ok": null}), "{seen}");
    assert!(seen["pdu_read"]["error"].is_string(), "{seen}");
    let locked = seen["locked_on"]["error"].as_str().unwrap_or_default();
    assert!(locked.contains("login was refused"), "{seen}");
    assert!(!locked.contains("wrong-pass"), "{seen}");
    assert_eq!(seen["after"], serde_json::json!({"ok": null}), "{seen}");

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:plug-pass")
    );
    let requests: Vec<(String, String, String)> = web_seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s.auth.as_deref(), Some(basic.as_str()), "{s:?}");
            (s.method.clone(), s.path.clone(), s.body.clone())
        })
        .collect();
    let r = |m: &str, p: &str, b: &str| (m.to_string(), p.to_string(), b.to_string());
    assert_eq!(
        requests,
        vec![
            r("POST", "/on", "turn=on"),
            r("GET", "/off", ""),
            r("GET", "/status", ""),
            r("PUT", "/broken", ""),
            r("POST", "/on", "turn=on"),
        ]
    );
    let pdu_requests: Vec<(String, String, String)> = pdu_seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.method.clone(), s.path.clone(), s.body.clone()))
        .collect();
    assert_eq!(
        pdu_requests,
        vec![
            r("POST", "/login.html", "pw=pdu-pass"),
            r("POST", "/", "cte3=1"),
            r("POST", "/login.html", "pw=pdu-pass"),
            r("POST", "/", "cte3=0"),
            r("POST", "/login.html", "pw=wrong-pass"),
        ]
    );
    assert!(
        !exporter.log().contains("plug-pass") && !exporter.log().contains("pdu-pass"),
        "a password reached the log"
    );
}
