//! Unchanged upstream Python drivers (and a lab's own) run by the exporter's Python driver host
//! beside native ones, driven with the unchanged 0.9.0 client: upstream's e2e config through
//! the controller and router, a `ref:` from a hosted entry to a native one, the Shell driver
//! through `j`, a lab's own driver package, the reports against upstream's own, and the faults
//! (a constructor that raises, a host killed mid-lease, the exporter killed, a missing package).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_testkit::{FakeController, Options};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::exporter::{binary, Exporter};
use crate::support::process::children_of;
use crate::support::python;

/// The interpreter the exporter's driver host runs with: the tests' virtualenv, where the
/// upstream driver packages and the lab's own are installed.
fn python_path() -> String {
    python::venv_bin().join("python").display().to_string()
}

fn hosting_env() -> Vec<(&'static str, String)> {
    vec![("JMP_EXPORTER_PYTHON", python_path())]
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hosted_client.py")
}

fn client(host: &str, scenario: &str, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let mut cmd = python::command("python");
    cmd.arg(script()).arg(scenario).args(args);
    if !host.is_empty() {
        cmd.env("JUMPSTARTER_HOST", host);
    }
    cmd.env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*,acme_lab.*");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    python::scenario_result(
        "hosted_client.py",
        scenario,
        python::output_with_timeout(cmd, 180),
    )
}

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: hosted}\nendpoint: ''\ntoken: ''\n";

/// A lab's own driver, one that cannot be built, a native power switch and upstream's Shell.
const LAB: &str = "export:
  power:
    type: jumpstarter_driver_power.driver.MockPower
  counter:
    type: acme_lab.driver.Counter
    description: counts
    methods_description: {add: adds n}
    config: {start: 10}
  broken:
    type: acme_lab.driver.Broken
  shell:
    type: jumpstarter_driver_shell.driver.Shell
    jmp_hosted: true
    config:
      methods:
        hello: 'echo hello $1; echo oops >&2; exit 3'
";

/// A controller-mode exporter on `config` with the tests' interpreter, once registered.
async fn hosted_controller(config: PathBuf) -> Exporter {
    let envs = hosting_env();
    tokio::task::spawn_blocking(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Exporter::controller_with_env(&config, &envs)
    })
    .await
    .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn standalone(dir: &Path, export: &str) -> Exporter {
    let config = write(dir, "exporter.yaml", &format!("{HEADER}{export}"));
    let envs = hosting_env();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Exporter::unix_with_env(&config, &envs)
}

/// The exporter's Python driver host (its one Python child), waiting up to 20 s for it.
pub(crate) fn host_of(exporter: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts: Vec<u32> = children_of(exporter)
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.contains("python"))
            })
            .collect();
        if let [one] = hosts[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single driver host: {hosts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_labs_own_driver_and_upstreams_shell_run_hosted_beside_native_ones() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = standalone(dir.path(), LAB);
    let host = exporter.host();
    let seen = client(&host, "lab", &[], &[]);
    assert_eq!(seen["class"], "CounterClient");
    assert_eq!(
        seen["add"],
        json!([12.0, 15.0]),
        "state lives in the hosted driver: {seen}"
    );
    assert_eq!(seen["countdown"], json!([3.0, 2.0, 1.0]));
    assert_eq!(seen["stream"], "ping");
    assert!(
        seen["invalid"]
            .as_str()
            .unwrap_or_default()
            .contains("INVALID_ARGUMENT: cannot add -1.0: only forward"),
        "a ValueError is INVALID_ARGUMENT with its text, as upstream: {seen}"
    );
    let broken = seen["broken"][1].as_str().unwrap_or_default();
    assert!(
        broken.contains("broken could not be built")
            && broken.contains("no acme board on /dev/acme0"),
        "the entry whose constructor raised says why: {seen}"
    );
    assert!(exporter.wait_for_log("power on"), "{}", exporter.log());
    assert!(
        exporter.wait_for_log("counter at 15"),
        "the hosted driver's log line reaches the exporter's log:\n{}",
        exporter.log()
    );
    assert!(
        exporter.log().contains("host=power") || exporter.log().contains("host=counter"),
        "{}",
        exporter.log()
    );

    assert_eq!(seen["shell"], 3.0, "the Shell method's exit code: {seen}");
    assert_eq!(
        seen["log"],
        json!(["INFO", "LOG_SOURCE_DRIVER"]),
        "LogStream carries the hosted driver's record as upstream's session would: {seen}"
    );

    // Upstream's Shell through `j`: stdout and stderr reach the user. (`j` itself exits 0
    // with the upstream exporter too: its Shell command compares the float code it gets.)
    let mut j = python::command("j");
    j.args(["shell", "hello", "world"])
        .env("JUMPSTARTER_HOST", &host);
    let out = python::output_with_timeout(j, 120);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("oops"),
        "{out:?}"
    );
    assert!(
        exporter.wait_for_log("hello return code: 3"),
        "{}",
        exporter.log()
    );
}

#[test]
fn j_in_a_hook_reaches_hosted_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "exporter.yaml",
        &format!("{HEADER}hooks:\n  beforeLease:\n    script: j shell hello from-the-hook\n    timeout: 60\nexport:\n  shell:\n    type: jumpstarter_driver_shell.driver.Shell\n    jmp_hosted: true\n    config:\n      methods:\n        hello: 'echo hello $1'\n"),
    );
    let path = format!(
        "{}:{}",
        python::venv_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let python = python_path();
    let exporter = Exporter::unix_with_env(
        &config,
        &[
            ("JMP_EXPORTER_PYTHON", python.as_str()),
            ("PATH", path.as_str()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exporter
        .log()
        .contains("calling hello with args: ('from-the-hook',)")
    {
        assert!(
            Instant::now() < deadline,
            "the hook's j never reached the hosted Shell:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        exporter.wait_for_log("beforeLease hook succeeded"),
        "{}",
        exporter.log()
    );
}

#[test]
fn hosted_reports_match_upstreams_own_tree_entry_for_entry() {
    let dir = tempfile::tempdir().unwrap();
    // Without the entry that cannot be built: upstream's own tree would not build at all.
    let export = LAB.replace("  broken:\n    type: acme_lab.driver.Broken\n", "")
        + "  alias: {ref: counter}\n  group:\n    children:\n      store: {type: jumpstarter_driver_opendal.driver.MockStorageMux}\n";
    let exporter = standalone(dir.path(), &export);
    let config = dir.path().join("exporter.yaml");
    let shapes = client(
        &exporter.host(),
        "reports",
        &[config.to_str().unwrap()],
        &[],
    );
    assert_eq!(shapes["ours"], shapes["upstream"], "{shapes}");
    let names: Vec<&str> = shapes["ours"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r[0].as_str())
        .collect();
    assert_eq!(
        names,
        ["power", "counter", "shell", "alias", "group", "store"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_e2e_config_works_through_the_controller_and_router_also_through_a_ref() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // Upstream's e2e exporter (MockPower, MockStorageMux), and a hosted composite whose refs
    // name the hosted storage and the native power (which therefore runs hosted too).
    let export = "  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  storage:\n    type: jumpstarter_driver_opendal.driver.MockStorageMux\n  lab:\n    type: jumpstarter_driver_composite.driver.Composite\n    jmp_hosted: true\n    children:\n      disk: {ref: storage}\n      switch: {ref: power}\n";
    let exporter_config = write(dir.path(), "exporter.yaml", &c.exporter_config_yaml(export));
    let client_config = write(dir.path(), "client.yaml", &c.client_config_yaml());
    let exporter = hosted_controller(exporter_config).await;
    let lease_env = |cfg: &Path| {
        vec![
            ("CLIENT_CONFIG".to_string(), cfg.display().to_string()),
            ("EXPORTER_NAME".to_string(), "exporter1".to_string()),
        ]
    };
    for path in ["storage", "lab.disk"] {
        let envs = lease_env(&client_config);
        let seen = tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client("", "lease:storage", &["4", path], &envs)
        })
        .await
        .unwrap();
        assert_eq!(seen["bytes"], 4 << 20, "{path}: {seen}");
        assert_eq!(seen["class"], "StorageMuxClient");
    }
    assert!(!exporter.log().contains("ERROR"), "{}", exporter.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_fails_only_its_drivers_and_the_next_lease_gets_a_new_one() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let export = "  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  counter:\n    type: acme_lab.driver.Counter\n";
    let exporter_config = write(dir.path(), "exporter.yaml", &c.exporter_config_yaml(export));
    let exporter = hosted_controller(exporter_config).await;
    use jmp_exporter::proto::DriverCallRequest;
    use prost_types::{value::Kind, Value as PbValue};
    let add = |uuid: &str| DriverCallRequest {
        uuid: uuid.to_string(),
        method: "add".into(),
        args: vec![PbValue {
            kind: Some(Kind::NumberValue(1.0)),
        }],
    };
    let on = |uuid: &str| DriverCallRequest {
        uuid: uuid.to_string(),
        method: "on".into(),
        args: vec![],
    };

    let lease = c.create_ready_lease().await;
    let channel = jmp_testkit::client::channel(&c, &lease, CancellationToken::new()).await;
    let mut session =
        jmp_exporter::proto::exporter_service_client::ExporterServiceClient::new(channel.clone());
    let counter = jmp_testkit::client::driver_uuid(&channel, "counter").await;
    let power = jmp_testkit::client::driver_uuid(&channel, "power").await;
    session
        .driver_call(add(&counter))
        .await
        .expect("hosted call");
    let host = host_of(exporter.pid());
    let _ = std::process::Command::new("kill")
        .args(["-9", &host.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match session.driver_call(add(&counter)).await {
            Err(s) if s.code() == tonic::Code::Unavailable && s.message().contains("signal 9") => {
                break s
            }
            other => assert!(
                Instant::now() < deadline,
                "no clear error after the host died: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status
            .message()
            .contains("the Python driver host for counter"),
        "{status:?}"
    );
    session
        .driver_call(on(&power))
        .await
        .expect("native drivers go on");
    c.end_lease_and_wait_available(&lease).await;

    let lease = c.create_ready_lease().await;
    let channel = jmp_testkit::client::channel(&c, &lease, CancellationToken::new()).await;
    let mut session =
        jmp_exporter::proto::exporter_service_client::ExporterServiceClient::new(channel.clone());
    let counter = jmp_testkit::client::driver_uuid(&channel, "counter").await;
    let fresh = session
        .driver_call(add(&counter))
        .await
        .expect("a new host serves the next lease");
    assert_eq!(
        fresh.into_inner().result.and_then(|v| v.kind),
        Some(Kind::NumberValue(1.0)),
        "fresh driver state per lease"
    );
    assert_ne!(host_of(exporter.pid()), host);
}

#[test]
fn a_killed_host_is_a_clear_error_for_the_client_in_standalone_mode_too() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = standalone(
        dir.path(),
        "export:\n  power: {type: jumpstarter_driver_power.driver.MockPower}\n  counter: {type: acme_lab.driver.Counter}\n",
    );
    assert_eq!(client(&exporter.host(), "counter", &[], &[])["add"], 1.0);
    let host = host_of(exporter.pid());
    let _ = std::process::Command::new("kill")
        .args(["-9", &host.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(host) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen = client(&exporter.host(), "after_host_death", &[], &[]);
    let hosted = seen["hosted"].as_str().unwrap_or_default();
    assert!(
        hosted.contains("the Python driver host for counter was killed by signal 9"),
        "{seen}"
    );
    assert_eq!(seen["native"], "ok");
}

#[test]
fn a_host_that_stops_answering_is_killed_and_its_drivers_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = standalone(
        dir.path(),
        "export:\n  power: {type: jumpstarter_driver_power.driver.MockPower}\n  counter: {type: acme_lab.driver.Counter}\n",
    );
    let host = host_of(exporter.pid());
    // A host frozen in place: its process lives, its event loop answers nothing.
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &host.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exporter.log().contains("stopped answering") {
        assert!(
            Instant::now() < deadline,
            "the hang was never noticed:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = client(&exporter.host(), "after_host_death", &[], &[]);
    assert!(
        seen["hosted"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped answering for 30s and was killed"),
        "{seen}"
    );
    assert_eq!(seen["native"], "ok");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(host) {
        assert!(Instant::now() < deadline, "the hung host was not killed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_host_outlives_a_killed_exporter_and_secrets_stay_out_of_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "exporter.yaml",
        &format!("{HEADER}export:\n  counter: {{type: acme_lab.driver.Counter}}\n"),
    );
    let python = python_path();
    let mut exporter = Exporter::tcp_with_env(
        &config,
        &["--tls-grpc-insecure"],
        &[
            ("JMP_EXPORTER_PYTHON", python.as_str()),
            ("JMP_EXPORTER_PASSPHRASE", "open-sesame-42"),
        ],
    );
    let host = host_of(exporter.pid());
    let environ = std::fs::read(format!("/proc/{host}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{host}/cmdline")).unwrap();
    for (what, bytes) in [("environment", &environ), ("arguments", &cmdline)] {
        assert!(
            !String::from_utf8_lossy(bytes).contains("open-sesame-42"),
            "the passphrase reached the host's {what}"
        );
    }
    exporter.signal("KILL");
    let _ = exporter.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(host) {
        assert!(
            Instant::now() < deadline,
            "the driver host {host} outlived the exporter"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_missing_driver_package_is_a_config_error_for_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "exporter.yaml",
        &format!("{HEADER}export:\n  power: {{type: jumpstarter_driver_power.driver.MockPower}}\n  flasher:\n    type: jumpstarter_driver_nosuch.driver.Flasher\n"),
    );
    for args in [
        &["check", "--config"][..],
        &["run", "--socket", "/nonexistent/x.sock", "--config"][..],
    ] {
        let out = std::process::Command::new(binary())
            .args(args)
            .arg(&config)
            .env("JMP_EXPORTER_PYTHON", python_path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("export.flasher.type (line 9)")
                && stderr.contains("pip install jumpstarter-driver-nosuch==0.9.0"),
            "{args:?}: {stderr}"
        );
    }
    // The same config's native part needs no interpreter at all.
    let native = write(
        dir.path(),
        "native.yaml",
        &format!("{HEADER}export:\n  power: {{type: jumpstarter_driver_power.driver.MockPower}}\n"),
    );
    let out = std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(&native)
        .env("JMP_EXPORTER_PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Upstream's own exporter (`jmp run`, 0.9.0, standalone TCP) on a config; killed on drop with
/// its descendants, since `jmp run` serves from a child in a session of its own that would
/// outlive it.
struct UpstreamExporter {
    child: std::process::Child,
    addr: String,
}

impl UpstreamExporter {
    async fn start(config: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = python::command("jmp")
            .args(["run", "--exporter-config"])
            .arg(config)
            .args(["--tls-grpc-listener", &addr, "--tls-grpc-insecure"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start upstream's exporter");
        let this = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(90);
        while this.channel().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "upstream's exporter never served on {}",
                this.addr
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        this
    }

    async fn channel(&self) -> Option<tonic::transport::Channel> {
        channel_to(&self.addr).await
    }
}

impl Drop for UpstreamExporter {
    fn drop(&mut self) {
        let mut tree = vec![self.child.id()];
        let mut i = 0;
        while i < tree.len() {
            tree.extend(children_of(tree[i]));
            i += 1;
        }
        for pid in tree.into_iter().skip(1) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to a session on `addr` once it answers GetReport.
async fn channel_to(addr: &str) -> Option<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    ExporterServiceClient::new(channel.clone())
        .get_report(())
        .await
        .ok()?;
    Some(channel)
}

/// How every way a call can end looks to a client of `channel`: results as JSON, errors as
/// their status code and message. A streaming call that fails at once and one that fails
/// before its first result look the same to a client, so both are "[] then the status".
async fn call_outcomes(channel: tonic::transport::Channel) -> Vec<String> {
    use jmp_exporter::proto::{DriverCallRequest, StreamingDriverCallRequest};
    use jmp_exporter::session::value::{from_json, to_json};
    use tokio_stream::StreamExt;

    let mut client = ExporterServiceClient::new(channel.clone());
    let uuid = jmp_testkit::client::driver_uuid(&channel, "counter").await;
    let unary: [(&str, Value); 9] = [
        ("add", json!([2])),
        ("add", json!([-1])),
        ("add", json!([])),
        ("unready", json!([])),
        ("late", json!([])),
        ("fails", json!([])),
        ("helper", json!([])),
        ("nope", json!([])),
        ("countdown", json!([2])),
    ];
    let mut seen = Vec::new();
    for (method, args) in unary {
        let request = DriverCallRequest {
            uuid: uuid.clone(),
            method: method.into(),
            args: args
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .map(from_json)
                .collect(),
        };
        seen.push(match client.driver_call(request).await {
            Ok(r) => format!(
                "{method}: ok {}",
                to_json(r.into_inner().result.unwrap_or_default())
            ),
            Err(s) => format!("{method}: {:?} {}", s.code(), s.message()),
        });
    }
    let streaming: [(&str, Value); 5] = [
        ("countdown", json!([3])),
        ("fails_after", json!([2])),
        ("refuses", json!([4])),
        ("add", json!([1])),
        ("nope", json!([])),
    ];
    for (method, args) in streaming {
        let request = StreamingDriverCallRequest {
            uuid: uuid.clone(),
            method: method.into(),
            args: args
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .map(from_json)
                .collect(),
        };
        let mut results = Vec::new();
        let end = match client.streaming_driver_call(request).await {
            Err(s) => format!("{:?} {}", s.code(), s.message()),
            Ok(r) => {
                let mut stream = r.into_inner();
                loop {
                    match stream.next().await {
                        None => break "ok".to_string(),
                        Some(Ok(item)) => results.push(to_json(item.result.unwrap_or_default())),
                        Some(Err(s)) => break format!("{:?} {}", s.code(), s.message()),
                    }
                }
            }
        };
        seen.push(format!(
            "{method} (streaming): {} then {end}",
            Value::from(results)
        ));
    }
    seen.extend(stream_outcomes(&channel, &uuid).await);
    seen
}
/// How byte and resource streams look to a client: the stream headers (a resource handle's
/// random UUID left out), the frames that come back for a ping and a GOAWAY, and the status
/// of a stream the driver refuses.
async fn stream_outcomes(channel: &tonic::transport::Channel, uuid: &str) -> Vec<String> {
    use jmp_exporter::frame::{data_request, goaway_request};
    use jmp_exporter::proto::router_service_client::RouterServiceClient;

    let targets = [
        format!(r#"{{"kind":"driver","uuid":"{uuid}","method":"connect"}}"#),
        format!(r#"{{"kind":"driver","uuid":"{uuid}","method":"add"}}"#),
        format!(r#"{{"kind":"driver","uuid":"{uuid}","method":"nope"}}"#),
        format!(r#"{{"kind":"resource","uuid":"{uuid}"}}"#),
        format!(r#"{{"kind":"resource","uuid":"{uuid}","x_jmp_content_encoding":"gzip"}}"#),
    ];
    let mut seen = Vec::new();
    for target in targets {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("request", target.parse().unwrap());
        let outcome = match RouterServiceClient::new(channel.clone())
            .stream(request)
            .await
        {
            Err(s) => format!("{:?} {}", s.code(), s.message()),
            Ok(answer) => {
                let mut headers: Vec<String> = answer
                    .metadata()
                    .iter()
                    .filter_map(|h| match h {
                        tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                            let (k, v) = (k.as_str(), v.to_str().unwrap_or("?"));
                            let driver_set =
                                !k.starts_with("grpc-") && !matches!(k, "content-type" | "date");
                            driver_set.then(|| match k {
                                "resource" => {
                                    let r: Value = serde_json::from_str(v).unwrap_or_default();
                                    format!(
                                        "resource kind={} encoding={}",
                                        r["kind"], r["x_jmp_content_encoding"]
                                    )
                                }
                                _ => format!("{k}={v:?}"),
                            })
                        }
                        _ => None,
                    })
                    .collect();
                headers.sort();
                let mut frames = Vec::new();
                if target.contains("connect") {
                    let mut inbound = answer.into_inner();
                    tx.send(data_request(bytes::Bytes::from_static(b"ping")))
                        .await
                        .unwrap();
                    tx.send(goaway_request()).await.unwrap();
                    while frames.len() < 3 {
                        let next =
                            tokio::time::timeout(Duration::from_secs(1), inbound.message()).await;
                        match next {
                            Ok(Ok(Some(f))) => frames.push(format!(
                                "{}:{}",
                                f.frame_type,
                                String::from_utf8_lossy(&f.payload)
                            )),
                            Ok(Ok(None)) => break,
                            Ok(Err(s)) => {
                                frames.push(format!("{:?} {}", s.code(), s.message()));
                                break;
                            }
                            // The stream stays open until the client ends it.
                            Err(_) => break,
                        }
                    }
                }
                format!("headers {headers:?} frames {frames:?}")
            }
        };
        seen.push(format!("stream {target}: {outcome}").replace(uuid, "UUID"));
    }
    seen
}

/// Every way a hosted driver's call can end (a result, each exception upstream's driver base
/// maps to a status, one it does not, a method that is not exported or does not exist, a
/// streaming call that fails before or after its first result) and every way a byte or
/// resource stream opens (headers, frames back, half-close, a refused method), asked of
/// upstream's own exporter and of ours with the same config: the same results, codes,
/// messages, headers and frames. And a client that goes away cancels the call in the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_calls_end_as_they_do_under_upstreams_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let export =
        "export:\n  counter:\n    type: acme_lab.driver.Counter\n    config: {start: 10}\n";
    let config = write(dir.path(), "exporter.yaml", &format!("{HEADER}{export}"));
    let upstream = UpstreamExporter::start(&config).await;
    let theirs = call_outcomes(upstream.channel().await.expect("upstream serves")).await;
    drop(upstream);

    let ours = {
        let (config, envs) = (config.clone(), hosting_env());
        tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &envs)
        })
        .await
        .unwrap()
    };
    let addr = ours.tcp.clone().expect("our exporter's address");
    let channel = channel_to(&addr).await.expect("ours serves");
    let mine = call_outcomes(channel.clone()).await;
    assert_eq!(
        mine, theirs,
        "hosted calls must end as under upstream's exporter"
    );

    // A client that goes away cancels the hosted call, streaming or not, as upstream's
    // server does; the calls after it are served as before.
    use jmp_exporter::proto::{DriverCallRequest, StreamingDriverCallRequest};
    use tokio_stream::StreamExt;
    let mut client = ExporterServiceClient::new(channel.clone());
    let uuid = jmp_testkit::client::driver_uuid(&channel, "counter").await;
    let mut ticks = client
        .streaming_driver_call(StreamingDriverCallRequest {
            uuid: uuid.clone(),
            method: "ticks".into(),
            args: vec![],
        })
        .await
        .expect("ticks")
        .into_inner();
    for _ in 0..3 {
        ticks.next().await.expect("a tick").expect("a tick");
    }
    drop(ticks);
    let hang = client.driver_call(DriverCallRequest {
        uuid: uuid.clone(),
        method: "hang".into(),
        args: vec![],
    });
    assert!(tokio::time::timeout(Duration::from_millis(300), hang)
        .await
        .is_err());
    for needle in ["ticks stopped after", "hang given up"] {
        assert!(
            ours.wait_for_log(needle),
            "{needle:?} not logged:\n{}",
            ours.log()
        );
    }
    let again = client
        .driver_call(DriverCallRequest {
            uuid,
            method: "add".into(),
            args: vec![jmp_exporter::session::value::from_json(json!(1))],
        })
        .await
        .expect("a call after the cancelled ones");
    assert_eq!(
        jmp_exporter::session::value::to_json(again.into_inner().result.unwrap_or_default()),
        json!(13.0)
    );

    // Both could be wrong the same way (the test driver broken, say): the cases are what
    // they claim to be.
    let expect = [
        "add: ok 12.0",
        "add: InvalidArgument cannot add -1.0: only forward",
        "unready: Unimplemented acme counters cannot do that yet",
        "late: DeadlineExceeded the counter did not answer in 2s",
        "fails: Unknown counter jammed at 12",
        "helper: NotFound method helper missing marker",
        "nope: NotFound method nope not found on driver",
        "countdown (streaming): [3.0,2.0,1.0] then ok",
        "fails_after (streaming): [0.0,1.0] then Unknown jammed after 2.0",
        "refuses (streaming): [] then InvalidArgument no countdown from 4.0",
        r#"stream {"kind":"driver","uuid":"UUID","method":"connect"}: headers [] frames ["0:ping", "7:"]"#,
        r#"stream {"kind":"driver","uuid":"UUID","method":"nope"}: NotFound method nope not found on driver"#,
        r#"stream {"kind":"resource","uuid":"UUID"}: headers ["resource kind=\"client_stream\" encoding=null", "x_jmp_accept_encoding=\"\""]"#,
    ];
    for want in expect {
        assert!(
            theirs.iter().any(|s| s.starts_with(want)),
            "upstream's answers lack {want:?}: {theirs:#?}"
        );
    }
}
