//! The command line: `check` output and exit codes, and `run` refusing a bad config before
//! anything binds.

use std::process::Command;

use crate::support::exporter::{binary, config};

#[test]
fn check_prints_the_demo_tree() {
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(config("demo.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("(root) -> jumpstarter_driver_composite.client.CompositeClient\n"),
        "{text}"
    );
    assert!(text.contains("  power: jumpstarter_driver_power.driver.MockPower -> jumpstarter_driver_power.client.PowerClient (native)\n"), "{text}");
    assert!(text
        .contains("  console: ref serial -> jumpstarter_driver_pyserial.client.PySerialClient\n"));
}

#[test]
fn bad_configs_exit_78_with_every_error_and_bind_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "metadata: {}\ntoken: do-not-print-me\nexport:\n  a:\n    type: NopeDriver\n  b:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config: {url: 'loop://', baudrate: fast}\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 configuration errors"), "{stderr}");
    assert!(
        stderr.contains("export.a.type (line 5): `NopeDriver` is not a driver class path"),
        "{stderr}"
    );
    assert!(
        stderr.contains("export.b.config.baudrate (line 8)"),
        "{stderr}"
    );
    assert!(!stderr.contains("do-not-print-me"));

    let socket = dir.path().join("s.sock");
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&file)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        !socket.exists(),
        "a socket was bound despite the config errors"
    );
}

#[test]
fn sigterm_stops_a_standalone_exporter_cleanly() {
    let mut exporter = crate::support::exporter::Exporter::unix(&config("demo.yaml"));
    let socket = exporter.socket.clone().unwrap();
    let status = exporter.stop();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        exporter.log()
    );
    assert!(!socket.exists(), "the socket file was left behind");
}

#[test]
fn sigterm_does_not_wait_for_a_client_that_never_hangs_up() {
    use std::io::{BufRead, BufReader};
    let mut exporter =
        crate::support::exporter::Exporter::tcp(&config("demo.yaml"), &["--tls-grpc-insecure"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/drive.py");
    let mut holder = crate::support::python::command("python")
        .arg(script)
        .arg("hold_logstream")
        .env("JUMPSTARTER_HOST", exporter.host())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("holding")
    );
    let started = std::time::Instant::now();
    let status = exporter.stop();
    assert!(status.success(), "{status:?}\n{}", exporter.log());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "stop took {:?}",
        started.elapsed()
    );
    let ended = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        ended.contains("\"ended\""),
        "the held stream did not end: {ended:?}"
    );
    let _ = holder.wait();
}

#[test]
fn list_shows_usb_gpio_and_serial_sections_on_any_machine() {
    let out = Command::new(binary()).arg("list").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("USB hubs"), "{text}");
    assert!(
        text.contains("GPIO chips") || text.contains("no GPIO chips"),
        "{text}"
    );
    assert!(text.contains("Serial ports"), "{text}");
    let serial_only = Command::new(binary())
        .args(["list", "serial"])
        .output()
        .unwrap();
    let serial_text = String::from_utf8_lossy(&serial_only.stdout);
    assert!(
        serial_text.starts_with("Serial ports") && !serial_text.contains("USB hubs"),
        "{serial_text}"
    );
}
