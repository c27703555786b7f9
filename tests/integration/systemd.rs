//! Life under systemd: the shipped unit file verifies, and the exporter speaks the sd_notify
//! protocol (READY, STATUS, WATCHDOG at the requested interval, STOPPING) to a socket the test
//! owns, the way systemd would see it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::exporter::{binary, config, Exporter};

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/jmp-exporter@.service"),
    )
    .unwrap();
    assert!(shipped.contains("Type=notify") && shipped.contains("RestartPreventExitStatus=1 78"));
    // verify checks that ExecStart exists, so point it at the binary under test.
    let unit = shipped.replace("/usr/local/bin/jmp-exporter", binary());
    std::fs::write(dir.path().join("jmp-exporter@.service"), unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("jmp-exporter@lab1.service"))
        .output()
        .expect("systemd-analyze (Debian package `systemd`; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// Every notification the exporter sent, with when it arrived.
fn collect(
    socket: &UnixDatagram,
    until: impl Fn(&[(Instant, String)]) -> bool,
    timeout: Duration,
) -> Vec<(Instant, String)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
            got.push((Instant::now(), text));
        }
    }
    got
}

#[test]
fn sd_notify_ready_status_watchdog_and_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut exporter = Exporter::unix_with_env(
        &config("demo.yaml"),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let watchdogs =
        |got: &[(Instant, String)]| got.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    let before_stop = collect(&socket, |got| watchdogs(got) >= 6, Duration::from_secs(10));
    exporter.signal("TERM");
    let status = exporter
        .wait_exit(Duration::from_secs(10))
        .expect("exporter exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let after_stop = collect(
        &socket,
        |got| got.iter().any(|(_, m)| m.starts_with("STOPPING=1")),
        Duration::from_secs(5),
    );

    let messages: Vec<&str> = before_stop
        .iter()
        .chain(&after_stop)
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(messages[0], "READY=1\nSTATUS=serving standalone");
    assert!(
        messages.contains(&"STOPPING=1\nSTATUS=stopping"),
        "{messages:?}"
    );
    let stopping = messages
        .iter()
        .position(|m| m.starts_with("STOPPING=1"))
        .unwrap();
    assert!(
        messages[1..stopping].iter().all(|m| *m == "WATCHDOG=1"),
        "{messages:?}"
    );
    // Pings at half of WATCHDOG_USEC (100 ms), give or take scheduling.
    let pings: Vec<Instant> = before_stop
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean > Duration::from_millis(60) && mean < Duration::from_millis(160),
        "mean ping gap {mean:?}"
    );
}

#[test]
fn sighup_refuses_a_broken_config_and_restarts_a_standalone_exporter_on_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exporter.yaml");
    let good = std::fs::read_to_string(config("demo.yaml")).unwrap();
    std::fs::write(&file, &good).unwrap();
    let mut exporter = Exporter::unix(&file);

    // A broken file: every error logged with its path and line, nothing stops.
    std::fs::write(
        &file,
        format!("{good}\n  extra:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config: {{url: 'loop://', baudrate: fast}}\n"),
    )
    .unwrap();
    exporter.signal("HUP");
    assert!(
        exporter.wait_for_log("SIGHUP refused: the config file has 1 error"),
        "{}",
        exporter.log()
    );
    // Each error is a line of its own, after the one that says how many.
    assert!(
        exporter.wait_for_log("export.extra.config.baudrate (line"),
        "{}",
        exporter.log()
    );
    assert!(
        exporter.wait_exit(Duration::from_secs(2)).is_none(),
        "a broken config stopped the exporter"
    );
    let seen = crate::support::python::drive(&exporter.host(), "power", &[]);
    assert!(!seen.is_null(), "still serving after the refused reload");

    // A good one: the exporter leaves with the code the unit restarts on.
    std::fs::write(&file, &good).unwrap();
    exporter.signal("HUP");
    let status = exporter
        .wait_exit(Duration::from_secs(10))
        .expect("exporter exits after SIGHUP");
    assert_eq!(status.code(), Some(75), "{status:?}\n{}", exporter.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_on_lease_end_ends_a_standalone_exporter_with_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("after-lease-ran");
    let file = dir.path().join("exporter.yaml");
    let demo = std::fs::read_to_string(config("demo.yaml")).unwrap();
    std::fs::write(
        &file,
        demo.replacen(
            "export:",
            &format!(
                "hooks:\n  afterLease:\n    script: touch {}\nexport:",
                marker.display()
            ),
            1,
        ),
    )
    .unwrap();
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::unix_with(&file, &["--exit-on-lease-end"], &[])
    })
    .await
    .unwrap();
    let socket = exporter.host();
    let io = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let channel = jmp_testkit::client::channel_over(io).await;
    let ended = jmp_exporter::proto::exporter_service_client::ExporterServiceClient::new(channel)
        .end_session(jmp_exporter::proto::EndSessionRequest {})
        .await
        .expect("EndSession");
    assert!(ended.into_inner().success);
    let (status, log) = tokio::task::spawn_blocking(move || {
        let mut exporter = exporter;
        (exporter.wait_exit(Duration::from_secs(20)), exporter.log())
    })
    .await
    .unwrap();
    let status = status.unwrap_or_else(|| panic!("still running after its session:\n{log}"));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(marker.exists(), "the afterLease hook ran once: {log}");
}
