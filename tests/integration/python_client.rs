//! The unchanged upstream Python client 0.9.0 against a real `jmp-exporter` process, over the
//! Unix socket and over standalone TCP (with and without passphrase).

use serde_json::json;

use crate::support::exporter::{config, Exporter};
use crate::support::python::{self, drive};

#[test]
fn the_client_builds_the_tree_and_drives_every_demo_driver_over_a_unix_socket() {
    let exporter = Exporter::unix(&config("demo.yaml"));
    let host = exporter.host();
    let tree = drive(&host, "tree", &[]);
    assert_eq!(tree["classes"]["console"], "PySerialClient");
    assert_eq!(
        tree["description"],
        "Demo exporter: mock power, an echo stream and a loopback serial console"
    );
    let power = drive(&host, "power", &[]);
    assert_eq!(
        power["readings"],
        json!([[0.0, 0.0, 0.0], [5.0, 2.0, 10.0]])
    );
    assert!(exporter.wait_for_log("power on"), "{}", exporter.log());
    assert!(exporter.log().contains("power off"));
    assert_eq!(drive(&host, "serial", &[])["echoed"], "hello serial");
    assert_eq!(drive(&host, "echo", &[])["bytes"], 1 << 20);
}

#[test]
fn strict_mode_refuses_driver_calls_once_the_session_has_ended() {
    let exporter = Exporter::unix_with(&config("demo.yaml"), &["--strict"], &[]);
    let refused = drive(&exporter.host(), "strict", &[]);
    let expected = "Exporter not ready for driver calls (status: AVAILABLE)";
    assert_eq!(refused["call"], expected, "{refused}");
    assert_eq!(refused["streaming"], expected, "{refused}");
    assert_ne!(refused["byte_stream"], "ok", "{refused}");
    // Without --strict, 0.9.0 behaviour: the same calls still work after EndSession.
    let lenient = Exporter::unix(&config("demo.yaml"));
    let allowed = drive(&lenient.host(), "strict", &[]);
    assert_eq!(
        allowed,
        json!({"call": "ok", "streaming": "ok", "byte_stream": "ok"})
    );
}

#[test]
fn driver_errors_reach_the_client_as_its_exceptions() {
    let exporter = Exporter::unix(&config("demo.yaml"));
    let seen = drive(&exporter.host(), "errors", &[]);
    assert!(
        seen["unknown_method"]
            .as_str()
            .unwrap()
            .contains("method explode not found on driver"),
        "{seen}"
    );
    assert!(
        seen["bad_args"]
            .as_str()
            .unwrap()
            .contains("on() takes 0 arguments, got 1"),
        "{seen}"
    );
    assert!(
        seen["wrong_kind"]
            .as_str()
            .unwrap()
            .contains("missing marker marker_streamingdrivercall"),
        "{seen}"
    );
    assert!(
        seen["unknown_driver"]
            .as_str()
            .unwrap()
            .contains("00000000-0000-4000-8000-000000000000"),
        "{seen}"
    );
}

#[test]
fn session_rpcs_behave_as_upstream() {
    let exporter = Exporter::unix(&config("demo.yaml"));
    let result = drive(&exporter.host(), "session_rpcs", &[]);
    assert_eq!(
        result["version_before"], 1,
        "standalone starts at v1 LEASE_READY: {result}"
    );
    assert_eq!(result["version_after"], 2);
    assert_eq!(
        result["end"],
        json!([
            true,
            "Session end triggered, afterLease hook running asynchronously"
        ])
    );
}

#[test]
fn j_and_jmp_shell_work_over_standalone_tcp() {
    let exporter = Exporter::tcp(&config("demo.yaml"), &["--tls-grpc-insecure"]);
    let host = exporter.host();
    assert_eq!(
        drive(&host, "power", &[("JMP_GRPC_INSECURE", "1")])["readings"][1][2],
        10.0
    );

    let mut j = python::command("j");
    j.args(["power", "off"])
        .env("JUMPSTARTER_HOST", &host)
        .env("JMP_GRPC_INSECURE", "1");
    let out = python::output_with_timeout(j, 60);
    assert!(
        out.status.success(),
        "j power off: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(exporter.wait_for_log("power off"), "{}", exporter.log());

    let mut shell = python::command("jmp");
    shell.args([
        "shell",
        "--tls-grpc",
        &host,
        "--tls-grpc-insecure",
        "--",
        "j",
        "power",
        "on",
    ]);
    let before = exporter.log().matches("power on").count();
    let out = python::output_with_timeout(shell, 60);
    assert!(
        out.status.success(),
        "jmp shell: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while exporter.log().matches("power on").count() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "j power on inside jmp shell never reached the exporter:\n{}",
            exporter.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_passphrase_is_required_on_tcp() {
    let exporter = Exporter::tcp(
        &config("demo.yaml"),
        &["--tls-grpc-insecure", "--passphrase", "open-sesame"],
    );
    let host = exporter.host();
    let ok = drive(
        &host,
        "power",
        &[
            ("JMP_GRPC_INSECURE", "1"),
            ("JMP_GRPC_PASSPHRASE", "open-sesame"),
        ],
    );
    assert_eq!(ok["readings"][1][0], 5.0);

    for wrong in [Some("guess"), None] {
        let mut j = python::command("j");
        j.args(["power", "on"])
            .env("JUMPSTARTER_HOST", &host)
            .env("JMP_GRPC_INSECURE", "1");
        if let Some(pw) = wrong {
            j.env("JMP_GRPC_PASSPHRASE", pw);
        }
        let out = python::output_with_timeout(j, 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a wrong passphrase was accepted");
        assert!(stderr.contains("passphrase"), "{stderr}");
    }
    assert!(
        !exporter.log().contains("guess"),
        "a passphrase attempt was logged"
    );
    assert!(
        !exporter.log().contains("open-sesame"),
        "the passphrase was logged"
    );
}

#[test]
fn the_tls_listener_serves_grpcio_with_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let exporter = Exporter::tcp(
        &config("demo.yaml"),
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
            "--passphrase",
            "pw",
        ],
    );
    let result = drive(
        &exporter.host(),
        "tls_report",
        &[
            ("TEST_CA_FILE", cert_file.to_str().unwrap()),
            ("JMP_GRPC_PASSPHRASE", "pw"),
        ],
    );
    assert_eq!(
        result["names"],
        json!(["", "power", "echo", "serial", "console"])
    );
}

/// Aliases of a composite, of a nested composite and of a leaf, one listed before its target,
/// and a serial console with `cps: 0` (no throttling, as upstream).
const ALIASES: &str = "apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata: {namespace: default, name: aliases}
endpoint: ''
token: ''
export:
  composite1:
    children:
      power1: {type: jumpstarter_driver_power.driver.MockPower}
  power0: {type: jumpstarter_driver_power.driver.MockPower}
  proxy0: {ref: power0}
  proxy1: {ref: composite1}
  early: {ref: outer}
  outer:
    children:
      inner:
        children:
          leaf: {type: jumpstarter_driver_power.driver.MockPower}
          alias: {ref: solo}
  solo: {type: jumpstarter_driver_power.driver.MockPower}
  deep: {ref: outer.inner}
  console:
    type: jumpstarter_driver_pyserial.driver.PySerial
    config: {url: 'loop://', cps: 0}
";

#[test]
fn aliases_are_reported_as_upstream_lays_them_out_and_the_client_reaches_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aliases.yaml");
    std::fs::write(&file, ALIASES).unwrap();
    let exporter = Exporter::unix(&file);
    let host = exporter.host();

    let shapes = drive(
        &host,
        "report_shapes",
        &[("CONFIG_FILE", file.to_str().unwrap())],
    );
    assert_eq!(shapes["ours"], shapes["upstream"], "{shapes}");
    let names: Vec<&str> = shapes["ours"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row[0].as_str())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "leaf").count(),
        3,
        "outer.inner.leaf at its place and through `early` and `deep`: {names:?}"
    );

    let seen = drive(&host, "refs", &[]);
    assert_eq!(
        seen["same"],
        json!({"proxy1.power1": true, "proxy0": true, "early.inner": true, "deep.leaf": true, "deep.alias": true}),
        "{seen}"
    );
    assert_eq!(seen["classes"]["proxy1"], "CompositeClient");
    assert_eq!(seen["classes"]["deep.leaf"], "PowerClient");
    assert_eq!(seen["echoed"], 65536);
    assert!(
        exporter.log().matches("power on").count() >= 3,
        "{}",
        exporter.log()
    );
}
