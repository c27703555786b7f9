//! `--metrics-listen`: a running exporter scraped under load from the unchanged 0.9.0 client.
//! Counters move by what was done (calls by driver type, stream bytes both ways), a serial
//! adapter that is absent shows 0 and 1 once it is plugged in (a by-id link to a fake board's
//! terminal), the scrape passes `promtool check metrics`, and a port that cannot be bound is
//! logged while the exporter serves on.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::exporter::Exporter;
use crate::support::pty::{relink, Board};
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: bench-7}\nendpoint: ''\ntoken: ''\n";

/// A free port below the ephemeral range, so that no listener the tests bind to port 0 (the
/// exporter's own gRPC one among them) can be given it between this check and the exporter's
/// bind.
fn free_port() -> u16 {
    // Tests running side by side each start from their own place.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nth = NEXT.fetch_add(97, std::sync::atomic::Ordering::Relaxed);
    let start = 20000 + ((std::process::id() as u16 % 10000).wrapping_add(nth) % 11000);
    (start..32000)
        .chain(20000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 32000")
}

/// `GET /metrics` with a plain socket: the body.
fn scrape(port: u16) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of the sample `name{labels}` (labels as the exposition writes them, sorted).
fn value(body: &str, sample: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn wait_for(port: u16, sample: &str, want: f64) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let body = scrape(port);
        if value(&body, sample) == want || Instant::now() > until {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_scrape_under_load_counts_what_was_done_and_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-FTDI_board-if00");
    let export = format!(
        "export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config: {{url: '{}'}}\n",
        link.display()
    );
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let exporter = Exporter::tcp_with_env(
        &config,
        &["--tls-grpc-insecure", "--metrics-listen", &listen],
        &[],
    );
    let ops = |method: &str, result: &str| {
        format!("jumpstarter_operations_total{{driver_type=\"power\",exporter=\"bench-7\",operation=\"{method}\",result=\"{result}\"}}")
    };
    let present = "jmp_exporter_device_present{driver=\"serial\",driver_type=\"jumpstarter_driver_pyserial.driver.PySerial\"}";
    let body = wait_for(port, present, 0.0);
    assert!(body.contains(present), "the absent adapter is a 0:\n{body}");
    assert_eq!(value(&body, &ops("on", "success")), 0.0);

    // The client's `power` scenario: on, off, cycle (off, on), read.
    python::drive(&exporter.host(), "power", &[("JMP_GRPC_INSECURE", "1")]);
    python::drive(&exporter.host(), "echo", &[("JMP_GRPC_INSECURE", "1")]);
    // `on` with an argument (INVALID_ARGUMENT), then `on` again.
    python::drive(&exporter.host(), "errors", &[("JMP_GRPC_INSECURE", "1")]);
    let body = scrape(port);
    assert_eq!(value(&body, &ops("on", "success")), 3.0, "{body}");
    assert_eq!(value(&body, &ops("on", "failure")), 1.0, "{body}");
    assert_eq!(
        value(&body, "jumpstarter_operation_errors_total{driver_type=\"power\",error_type=\"validation_error\",exporter=\"bench-7\",operation=\"on\"}"),
        1.0,
        "{body}"
    );
    assert_eq!(value(&body, &ops("off", "success")), 2.0, "{body}");
    assert_eq!(value(&body, &ops("read", "success")), 1.0, "{body}");
    let echo = |direction: &str| {
        format!("jumpstarter_stream_bytes_total{{direction=\"{direction}\",driver_type=\"network\",exporter=\"bench-7\"}}")
    };
    assert_eq!(value(&body, &echo("rx")), (1 << 20) as f64, "{body}");
    assert_eq!(value(&body, &echo("tx")), (1 << 20) as f64, "{body}");
    assert!(
        value(&body, "jumpstarter_operation_duration_seconds_count{driver_type=\"power\",exporter=\"bench-7\",operation=\"on\",result=\"success\"}") == 3.0,
        "{body}"
    );
    assert!(
        value(&body, "process_resident_memory_bytes") > 1e6,
        "{body}"
    );
    assert!(value(&body, "process_open_fds") > 3.0, "{body}");
    assert!(
        value(&body, "process_cpu_seconds_total") > 0.0,
        "CPU is counted below a whole second:\n{body}"
    );
    assert_eq!(
        value(&body, "jmp_exporter_status{status=\"LEASE_READY\"}"),
        1.0
    );

    // The adapter plugged in (its by-id link appears), then pulled out.
    let board = Board::start("metrics");
    relink(&link, &board.path);
    let body = wait_for(port, present, 1.0);
    assert_eq!(
        value(&body, present),
        1.0,
        "the plugged adapter is a 1:\n{body}"
    );
    board.unplug();
    std::fs::remove_file(&link).unwrap();
    let body = wait_for(port, present, 0.0);
    assert_eq!(value(&body, present), 0.0, "unplugged again:\n{body}");

    let lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("promtool (Debian's prometheus package, installed by .ci/run)");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // The same port again: logged, and the second exporter serves without metrics.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("exporter.yaml");
    std::fs::write(
        &other,
        format!("{HEADER}export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n"),
    )
    .unwrap();
    let second = Exporter::tcp_with_env(
        &other,
        &["--tls-grpc-insecure", "--metrics-listen", &listen],
        &[],
    );
    assert!(
        second.wait_for_log("cannot serve metrics there"),
        "{}",
        second.log()
    );
    python::drive(&second.host(), "power", &[("JMP_GRPC_INSECURE", "1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_controller_the_link_status_leases_and_hooks_are_counted() {
    use jmp_testkit::controller::{FakeController, Options};
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    let yaml = c
        .exporter_config_yaml("  power:\n    type: jumpstarter_driver_power.driver.MockPower\n")
        .replace(
            "export:",
            "hooks:\n  beforeLease:\n    script: 'true'\n  afterLease:\n    script: 'exit 3'\nexport:",
        );
    std::fs::write(&config, yaml).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&config, &[("JMP_METRICS_LISTEN", listen.as_str())])
    })
    .await
    .unwrap();
    let scrape_now = move || tokio::task::block_in_place(|| scrape(port));
    let until = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape_now();
        if value(&body, "jmp_exporter_controller_connected") == 1.0 || Instant::now() > until {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&body, "jmp_exporter_controller_connected"),
        1.0,
        "{body}"
    );
    let age = value(&body, "jmp_exporter_controller_last_answer_age_seconds");
    assert!(
        (0.0..10.0).contains(&age),
        "the controller answered just now: {body}"
    );
    assert_eq!(
        value(&body, "jmp_exporter_status{status=\"AVAILABLE\"}"),
        1.0,
        "{body}"
    );

    let lease = c.create_lease().await;
    let until = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape_now();
        if value(&body, "jmp_exporter_status{status=\"LEASE_READY\"}") == 1.0
            || Instant::now() > until
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&body, "jmp_exporter_leases_total{event=\"started\"}"),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            "jmp_exporter_hook_runs_total{kind=\"beforeLease\",outcome=\"success\"}"
        ),
        1.0,
        "{body}"
    );
    c.end_lease(&lease).await;
    let until = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape_now();
        let after = "jmp_exporter_hook_runs_total{kind=\"afterLease\",outcome=\"failed\"}";
        if (value(&body, "jmp_exporter_leases_total{event=\"ended\"}") == 1.0
            && value(&body, after) == 1.0)
            || Instant::now() > until
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&body, "jmp_exporter_leases_total{event=\"ended\"}"),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            "jmp_exporter_hook_runs_total{kind=\"afterLease\",outcome=\"failed\"}"
        ),
        1.0,
        "{body}"
    );

    // The controller goes away: the link shows 0 and the last answer ages; it comes back: the
    // link is 1 again and the reconnect is counted.
    let wait = |sample: &'static str, done: fn(f64) -> bool| async move {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let body = scrape_now();
            if done(value(&body, sample)) || Instant::now() > until {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(
        value(&body, "jmp_exporter_controller_reconnects_total"),
        0.0,
        "{body}"
    );
    c.stop().await;
    let body = wait("jmp_exporter_controller_connected", |v| v == 0.0).await;
    assert_eq!(
        value(&body, "jmp_exporter_controller_connected"),
        0.0,
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = scrape_now();
    assert!(
        value(&body, "jmp_exporter_controller_last_answer_age_seconds") >= 2.0,
        "{body}"
    );
    c.restart().await;
    let body = wait("jmp_exporter_controller_connected", |v| v == 1.0).await;
    assert_eq!(
        value(&body, "jmp_exporter_controller_connected"),
        1.0,
        "{body}"
    );
    assert!(
        value(&body, "jmp_exporter_controller_reconnects_total") >= 1.0,
        "{body}"
    );
    drop(exporter);
}

/// USB devices' presence, from simulated ones: a hub that leaves the (fake) sysfs tree, and
/// so the bus, shows 0 and comes back as 1; an SD-Wire, a YKUSH and a DUT Link on their fake
/// buses show 1; the real client still drives the hub after its return.
#[test]
fn usb_hubs_muxes_and_boards_report_their_presence() {
    use jmp_drivers::usb::sysfs::fake as sysfs_tree;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    sysfs_tree::add_hub(&root, "1-1", (0x2109, 0x2817), 4, true).unwrap();
    let card = dir.path().join("card.img");
    std::fs::write(&card, b"").unwrap();
    let export = format!(
        "export:\n  hub:\n    type: jmp_exporter.drivers.UsbHubPort\n    config:\n      location: \"1-1\"\n      port: 2\n      sysfs_root: {root}\n      fake: {{hub: usb2}}\n  ykush:\n    type: jumpstarter_driver_yepkit.driver.Ykush\n    config:\n      serial: \"YK12345\"\n      fake: {{}}\n  sdwire:\n    type: jumpstarter_driver_sdwire.driver.SDWire\n    config:\n      storage_device: {card}\n      fake: {{}}\n  dutlink:\n    type: jumpstarter_driver_dutlink.driver.Dutlink\n    config:\n      storage_device: {card}\n      alternate_console: 'loop://'\n      fake: {{}}\n",
        root = root.display(),
        card = card.display()
    );
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let exporter = Exporter::tcp_with_env(
        &config,
        &["--tls-grpc-insecure", "--metrics-listen", &listen],
        &[],
    );
    let present = |driver: &str, type_name: &str| {
        format!("jmp_exporter_device_present{{driver=\"{driver}\",driver_type=\"{type_name}\"}}")
    };
    let hub = present("hub", "jmp_exporter.drivers.UsbHubPort");
    let body = wait_for(port, &hub, 1.0);
    for sample in [
        hub.clone(),
        present("ykush", "jumpstarter_driver_yepkit.driver.Ykush"),
        present("sdwire", "jumpstarter_driver_sdwire.driver.SDWire"),
        present("dutlink", "jumpstarter_driver_dutlink.driver.Dutlink"),
    ] {
        assert_eq!(value(&body, &sample), 1.0, "{sample}:\n{body}");
    }
    assert!(
        !body.contains("driver=\"dutlink.console\""),
        "a loop console has no device to look at:\n{body}"
    );

    std::fs::remove_dir_all(root.join("bus/usb/devices/1-1")).unwrap();
    let body = wait_for(port, &hub, 0.0);
    assert_eq!(value(&body, &hub), 0.0, "unplugged:\n{body}");
    sysfs_tree::add_hub(&root, "1-1", (0x2109, 0x2817), 4, true).unwrap();
    let body = wait_for(port, &hub, 1.0);
    assert_eq!(value(&body, &hub), 1.0, "back:\n{body}");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/usb_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .args(["power", "hub"])
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let seen = python::scenario_result(
        "usb_client.py",
        "power",
        python::output_with_timeout(cmd, 120),
    );
    assert_eq!(seen["hub"]["class"], "PowerClient", "{seen}");
}

/// An exporter on the Unix socket serving `export` with the tests' interpreter for hosted
/// drivers and metrics on a port of its own: (its directory, the exporter, the metrics port).
fn hosted_with_metrics(export: &str) -> (tempfile::TempDir, Exporter, u16) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let python = python::venv_bin().join("python").display().to_string();
    let exporter = Exporter::unix_with(
        &config,
        &["--metrics-listen", &listen],
        &[("JMP_EXPORTER_PYTHON", &python)],
    );
    (dir, exporter, port)
}

/// Bytes flashed count uploads to hosted drivers too: upstream's MockStorageMux run in the
/// Python host, written 2 MiB and read back by the real client, counts exactly what was
/// written (a read is not a flash).
#[test]
fn uploads_to_a_hosted_storage_driver_are_counted_as_flashed() {
    let (_dir, exporter, port) = hosted_with_metrics(
        "export:\n  storage:\n    type: jumpstarter_driver_opendal.driver.MockStorageMux\n    jmp_hosted: true\n",
    );
    let flashed = "jmp_exporter_flashed_bytes_total";
    assert_eq!(value(&scrape(port), flashed), 0.0);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hosted_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .args(["storage", "2"])
        .env("JUMPSTARTER_HOST", exporter.host());
    let seen = python::scenario_result(
        "hosted_client.py",
        "storage",
        python::output_with_timeout(cmd, 120),
    );
    assert_eq!(seen["bytes"], 2 << 20, "{seen}");
    assert!(
        exporter.log().contains("Python drivers built and served"),
        "{}",
        exporter.log()
    );
    let body = scrape(port);
    assert_eq!(value(&body, flashed), (2 << 20) as f64, "{body}");
}

/// A Python driver host that dies is counted once: a lab's own driver run hosted, its host
/// killed with SIGKILL.
#[test]
fn a_python_host_that_dies_is_counted() {
    let (_dir, exporter, port) =
        hosted_with_metrics("export:\n  counter:\n    type: acme_lab.driver.Counter\n");
    let deaths = "jmp_exporter_python_host_restarts_total";
    let body = wait_for(port, deaths, 0.0);
    assert!(body.contains(deaths), "{body}");
    let host = crate::hosted::host_of(exporter.pid());
    let killed = std::process::Command::new("kill")
        .args(["-9", &host.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let body = wait_for(port, deaths, 1.0);
    assert_eq!(value(&body, deaths), 1.0, "{body}");
}
