//! Part of the exporter cannot work, and the rest must: a GPIO line another program holds (in
//! controller and standalone mode, with the real client), and a lease whose session cannot
//! start at all (the controller hears why, the lease is given back, the next one works).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jmp_exporter::lifecycle::SESSION_FAILED_PREFIX;
use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::{Event, FakeController, Options};
use serde_json::Value;

use crate::support::exporter::Exporter;
use crate::support::python;

const CONTROL_ENV: &str = "JMP_EXPORTER_GPIO_MOCK_SOCKET";

/// Mock power beside a relay on line A of a chip whose line A another program holds.
const HELD: &str = "  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  relay:\n    type: jumpstarter_driver_gpiod.driver.PowerSwitch\n    config: {device: \"mock://c1?lines=4&names=A,B,C,D&held=0:someone\", line: A}\n";

fn gpio_client(scenario: &str, control: &Path) -> std::process::Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/gpio_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script).arg(scenario).env("GPIO_CONTROL", control);
    cmd
}

fn check_held(seen: &Value) {
    let busy = &seen["busy"];
    assert_eq!(busy[0], "DriverError", "{seen}");
    let message = busy[1].as_str().unwrap_or_default();
    assert!(
        message.contains("GPIO line 0 (\"A\") on mock://c1")
            && message.contains("busy: held by consumer \"someone\""),
        "the relay's error names the line and its holder: {message}"
    );
    assert_eq!(seen["released"], "ok", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_gpio_line_neither_blocks_registration_nor_the_lease_and_works_once_let_go() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("gpio.sock");
    let exporter_config = dir.path().join("exporter.yaml");
    std::fs::write(&exporter_config, c.exporter_config_yaml(HELD)).unwrap();
    let client_config = dir.path().join("client.yaml");
    std::fs::write(&client_config, c.client_config_yaml()).unwrap();
    let env_path = control.to_str().unwrap().to_string();
    // Registers at once (`controller_with_env` waits for it), with the line still held.
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&exporter_config, &[(CONTROL_ENV, env_path.as_str())])
    })
    .await
    .unwrap();
    assert!(
        !exporter.log().contains("cannot register"),
        "{}",
        exporter.log()
    );

    let seen = tokio::task::spawn_blocking(move || {
        let mut cmd = gpio_client("held_lease", &control);
        cmd.env("CLIENT_CONFIG", &client_config)
            .env("EXPORTER_NAME", "exporter1");
        python::scenario_result(
            "gpio_client.py",
            "held_lease",
            python::output_with_timeout(cmd, 120),
        )
    })
    .await
    .unwrap();
    check_held(&seen);
    assert!(exporter.log().contains("power on"), "{}", exporter.log());
    assert!(
        exporter.log().contains("driver not ready at session start"),
        "the held line was reported at lease start:\n{}",
        exporter.log()
    );
}

#[test]
fn a_held_gpio_line_does_not_stop_a_standalone_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("gpio.sock");
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {{namespace: default, name: held}}\nendpoint: ''\ntoken: ''\nexport:\n{HELD}")).unwrap();
    let mut exporter =
        Exporter::unix_with_env(&config, &[(CONTROL_ENV, control.to_str().unwrap())]);
    let mut cmd = gpio_client("held", &control);
    cmd.env("JUMPSTARTER_HOST", exporter.host());
    let seen = python::scenario_result(
        "gpio_client.py",
        "held",
        python::output_with_timeout(cmd, 120),
    );
    check_held(&seen);
    let status = exporter.stop();
    assert_eq!(status.code(), Some(0), "{}", exporter.log());
}

/// A directory whose path is too long for a Unix socket under it (108 bytes at most).
fn too_long_for_sockets(base: &Path) -> PathBuf {
    let dir = base.join("r".repeat(110));
    std::fs::create_dir(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_session_cannot_start_is_reported_failed_and_released_and_the_next_works() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // The hook socket goes under XDG_RUNTIME_DIR: while that path is too long for a socket,
    // no session can start; once it is gone the exporter falls back to the temp directory.
    let runtime = too_long_for_sockets(dir.path());
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        c.exporter_config_yaml("  power:\n    type: jumpstarter_driver_power.driver.MockPower\n"),
    )
    .unwrap();
    let runtime_env = runtime.to_str().unwrap().to_string();
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&config, &[("XDG_RUNTIME_DIR", runtime_env.as_str())])
    })
    .await
    .unwrap();

    let mark = c.mark();
    let lease = c.create_lease().await;
    let failed = c
        .wait_for_report_after(
            mark,
            ExporterStatus::BeforeLeaseHookFailed,
            Duration::from_secs(20),
        )
        .await;
    let Some(Event::ReportStatus { message, .. }) = failed else {
        panic!(
            "no failure status for a lease that cannot be served: {:#?}\n{}",
            &c.events()[mark..],
            exporter.log()
        );
    };
    let message = message.unwrap_or_default();
    assert!(
        message.starts_with(SESSION_FAILED_PREFIX) && message.contains("Unix socket"),
        "the status says why: {message}"
    );
    // A client dialling now is told at once instead of waiting for a ready that never comes.
    let started = std::time::Instant::now();
    assert!(c.dial(&lease).await.is_err(), "a Dial got through");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the Dial was held"
    );
    let released = c
        .wait_for_after(
            mark,
            |e| matches!(e, Event::ReleaseLease { name } if !name.is_empty()),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        released.is_some(),
        "the exporter did not give the lease back: {:#?}",
        &c.events()[mark..]
    );
    let available = c
        .wait_for_report_after(mark, ExporterStatus::Available, Duration::from_secs(10))
        .await;
    assert!(available.is_some(), "{:#?}", &c.events()[mark..]);
    assert!(
        !c.reports()[..]
            .iter()
            .any(|(s, _)| *s == ExporterStatus::LeaseReady),
        "LEASE_READY for a lease that was never served: {:#?}",
        c.reports()
    );

    // The runtime directory is fixed; the next lease is served.
    std::fs::remove_dir(&runtime).unwrap();
    let next = c.create_ready_lease().await;
    assert_ne!(next, lease);
    c.end_lease_and_wait_available(&next).await;
    assert_eq!(
        exporter.log().matches("cannot serve this lease").count(),
        1,
        "{}",
        exporter.log()
    );
}
