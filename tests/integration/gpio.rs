//! The gpiod drivers (DigitalOutput, DigitalInput, PowerSwitch) in a real `jmp-exporter`
//! process, driven by the unchanged upstream Python client, on the mock chip of
//! `config/gpio-demo.yaml`; the test moves input lines through the mock's control socket while
//! the client waits. The same scenarios run against the kernel's gpio-sim when root asks for
//! the ignored tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jmp_drivers::gpio::mock::CONTROL_ENV;
use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::controller::{Event, FakeController, Options};
use serde_json::{json, Value};

use crate::support::exporter::{binary, config, Exporter};
use crate::support::python;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/gpio_client.py")
}

/// An exporter serving `config/gpio-demo.yaml` with the mock control socket enabled.
struct Bench {
    exporter: Exporter,
    control: PathBuf,
    _dir: tempfile::TempDir,
}

fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("gpio-mock.sock");
    let exporter = Exporter::unix_with_env(
        &config("gpio-demo.yaml"),
        &[(CONTROL_ENV, control.to_str().unwrap())],
    );
    Bench {
        exporter,
        control,
        _dir: dir,
    }
}

impl Bench {
    /// One mock control command and its reply.
    fn mock(&self, command: &str) -> String {
        let stream = UnixStream::connect(&self.control).unwrap_or_else(|e| {
            panic!(
                "mock control socket {}: {e}\n{}",
                self.control.display(),
                self.exporter.log()
            )
        });
        let mut out = stream.try_clone().unwrap();
        writeln!(out, "{command}").unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }

    fn set(&self, line: &str, level: u8) {
        assert_eq!(self.mock(&format!("set demo {line} {level}")), "ok");
    }

    fn host(&self) -> String {
        self.exporter.host()
    }
}

fn client_command(host: &str, scenario: &str, args: &[&str]) -> Command {
    let mut cmd = python::command("python");
    cmd.arg(script())
        .arg(scenario)
        .args(args)
        .env("JUMPSTARTER_HOST", host);
    cmd
}

/// Runs a scenario of `gpio_client.py` to its end and returns its result.
fn client(host: &str, scenario: &str, args: &[&str]) -> Value {
    let out = python::output_with_timeout(client_command(host, scenario, args), 120);
    result(scenario, out)
}

fn result(scenario: &str, out: std::process::Output) -> Value {
    python::scenario_result("gpio_client.py", scenario, out)
}

/// Starts a scenario and leaves it running.
fn spawn(host: &str, scenario: &str, args: &[&str]) -> Child {
    client_command(host, scenario, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python client")
}

/// Waits (up to a minute: the client first starts Python) for a child to end.
fn finish(scenario: &str, mut child: Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result(scenario, child.wait_with_output().unwrap())
}

/// Waits until the exporter has logged `needle` more than `before` times.
fn wait_for_count(exporter: &Exporter, needle: &str, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while exporter.log().matches(needle).count() <= before {
        assert!(
            Instant::now() < deadline,
            "the exporter never logged {needle:?}:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a wait in a client, moves the line once the exporter has the call parked, and
/// returns what the client saw.
fn wait_while_the_test_moves_the_line(
    exporter: &Exporter,
    host: &str,
    args: &[&str],
    parked: &str,
    move_line: impl FnOnce(),
) -> Value {
    let before = exporter.log().matches(parked).count();
    let child = spawn(host, "wait", args);
    wait_for_count(exporter, parked, before);
    move_line();
    finish("wait", child)
}

#[test]
fn outputs_and_the_power_switch_work_with_the_upstream_clients() {
    let bench = bench();
    let host = bench.host();
    // Lease start drove every output to its initial value: reset (active low) inactive is a
    // high level, the power switch is on.
    assert!(bench
        .mock("get demo BOARD_RESET")
        .starts_with("ok level=1 output=true active_low=true consumer=jumpstarter-gpiod"));
    assert!(bench
        .mock("get demo DUT_POWER")
        .starts_with("ok level=1 output=true"));

    assert_eq!(
        client(&host, "tree", &[]),
        json!({"reset": "DigitalOutputClient", "button": "DigitalInputClient", "power": "PowerClient"})
    );
    let out = client(&host, "output", &[]);
    assert_eq!(
        out["states"],
        json!(["inactive", "active", "inactive", "active"])
    );
    assert!(
        bench.mock("get demo BOARD_RESET").starts_with("ok level=0"),
        "active on an active-low line is a low level"
    );
    assert!(
        bench
            .exporter
            .log()
            .contains("line BOARD_RESET (BOARD_RESET) on() -> pin reads: active"),
        "{}",
        bench.exporter.log()
    );

    let power = client(&host, "power", &[]);
    assert_eq!(power["read_pin"], json!([0.0, 1.0, 1.0]));
    assert_eq!(power["errors"]["read"][0], "DriverMethodNotImplemented");
    assert_eq!(power["errors"]["rescue"][0], "DriverMethodNotImplemented");
    assert!(
        power["errors"]["rescue"][1]
            .as_str()
            .unwrap()
            .contains("method rescue not found on driver"),
        "{power}"
    );
    assert!(bench.mock("get demo DUT_POWER").starts_with("ok level=1"));
}

#[test]
fn inputs_read_what_the_test_drives() {
    let bench = bench();
    let host = bench.host();
    assert_eq!(
        client(&host, "read", &[]),
        json!({"state": "inactive", "value": 0})
    );
    bench.set("BOOT_BUTTON", 1);
    assert_eq!(
        client(&host, "read", &[]),
        json!({"state": "active", "value": 1})
    );
}

#[test]
fn waits_end_when_the_test_moves_the_line_during_the_wait() {
    let bench = bench();
    let host = bench.host();
    let log = &bench.exporter;
    // The line starts low (pull-down): each wait below has to wait for the test.
    for (args, parked, level) in [
        (
            &["wait_for_active", "none"][..],
            "wait_for_active (waiting for a rising edge): started",
            1,
        ),
        (
            &["wait_for_inactive", "30"][..],
            "wait_for_inactive (waiting for a falling edge): started",
            0,
        ),
        (
            &["wait_for_edge", "rising", "30"][..],
            "wait_for_edge (waiting for a rising edge): started",
            1,
        ),
        (
            &["wait_for_edge", "falling", "none"][..],
            "wait_for_edge (waiting for a falling edge): started",
            0,
        ),
    ] {
        let seen = wait_while_the_test_moves_the_line(log, &host, args, parked, || {
            bench.set("BOOT_BUTTON", level)
        });
        assert_eq!(seen["outcome"], "ok", "{args:?}: {seen}");
    }
    assert_eq!(
        log.log()
            .matches("(\"BOOT_BUTTON\") on mock://demo [mock]: wait_for")
            .count(),
        8,
        "each wait logs its start and its end:\n{}",
        log.log()
    );
    // Already there: the level waits return at once, without an edge.
    let seen = client(&host, "wait", &["wait_for_inactive", "-1"]);
    assert_eq!(seen["outcome"], "ok");
}

#[test]
fn timeouts_and_bad_edge_types_reach_the_client_as_upstream_errors() {
    let bench = bench();
    let host = bench.host();
    let seen = client(&host, "errors", &[]);
    // [exception class, its text (the client wraps the status details), is a ValueError]
    for (key, class, code, text, value_error) in [
        (
            "wait_for_active",
            "DriverError",
            "DEADLINE_EXCEEDED",
            "Timed out waiting for line BOOT_BUTTON edge event",
            false,
        ),
        (
            "wait_for_edge",
            "DriverError",
            "DEADLINE_EXCEEDED",
            "Timed out waiting for line BOOT_BUTTON edge event",
            false,
        ),
        (
            "edge_type",
            "DriverInvalidArgument",
            "INVALID_ARGUMENT",
            "Invalid edge type: sideways, must be one of: rising, falling",
            true,
        ),
    ] {
        let got = &seen[key];
        assert_eq!(got[0], class, "{key}: {got}");
        let message = got[1].as_str().unwrap();
        assert!(
            message.contains(text) && message.contains(code),
            "{key}: {message}"
        );
        assert_eq!(got[2], value_error, "{key}: {got}");
    }
    assert!(seen["elapsed"].as_f64().unwrap() >= 0.3, "{seen}");
    assert_eq!(seen["still_reads"], "inactive");

    let codes = client(&host, "codes", &[]);
    assert_eq!(
        codes["timeout"],
        json!([
            "DEADLINE_EXCEEDED",
            "Timed out waiting for line BOOT_BUTTON edge event"
        ])
    );
    assert_eq!(codes["edge_timeout"][0], "DEADLINE_EXCEEDED");
    assert_eq!(codes["bad_edge"][0], "INVALID_ARGUMENT");
    assert_eq!(codes["power_read"][0], "UNIMPLEMENTED");
    assert_eq!(codes["read_pin"], json!(["OK", "number_value", 0.0]));
    assert_eq!(codes["wrong_kind"][0], "NOT_FOUND");
}

#[test]
fn a_client_that_goes_away_mid_wait_cancels_only_its_own_wait() {
    let mut bench = bench();
    let host = bench.host();
    let parked = "wait_for_edge (waiting for a rising edge): started";
    let mut gone = spawn(&host, "wait", &["wait_for_edge", "rising", "none"]);
    wait_for_count(&bench.exporter, parked, 0);
    gone.kill().unwrap();
    let _ = gone.wait();
    wait_for_count(
        &bench.exporter,
        "wait_for_edge (waiting for a rising edge): cancelled, the client went away",
        0,
    );
    // The line, the reader and the session are fine: the next wait sees the next edge.
    let seen = wait_while_the_test_moves_the_line(
        &bench.exporter,
        &host,
        &["wait_for_edge", "rising", "30"],
        parked,
        || bench.set("BOOT_BUTTON", 1),
    );
    assert_eq!(seen["outcome"], "ok", "{seen}");
    assert_eq!(
        bench
            .exporter
            .log()
            .matches("wait_for_edge (waiting for a rising edge): done")
            .count(),
        1,
        "the cancelled wait never completed:\n{}",
        bench.exporter.log()
    );
    assert!(bench.exporter.stop().success(), "{}", bench.exporter.log());
}

#[test]
fn the_j_cli_drives_gpio() {
    let bench = bench();
    let host = bench.host();
    let j = |args: &[&str]| {
        let mut cmd = python::command("j");
        cmd.args(args).env("JUMPSTARTER_HOST", &host);
        python::output_with_timeout(cmd, 60)
    };
    let on = j(&["reset", "on"]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let read = j(&["reset", "read"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "active");
    let read = j(&["button", "read"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "inactive");
    let wait = j(&["button", "wait-for-edge", "rising", "-t", "0.2"]);
    assert!(!wait.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&wait.stdout),
        String::from_utf8_lossy(&wait.stderr)
    );
    assert!(
        text.contains("Timed out waiting for line BOOT_BUTTON edge event"),
        "{text}"
    );
}

/// The `export:` body of `config/gpio-demo.yaml`.
fn demo_export() -> String {
    let demo = std::fs::read_to_string(config("gpio-demo.yaml")).unwrap();
    let body = demo
        .split_once("\nexport:\n")
        .expect("an export: section")
        .1;
    body.to_string()
}

/// The mock's `transitions=` count in a `get` reply.
fn transitions(reply: &str) -> u64 {
    reply
        .split("transitions=")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transitions in {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_starts_at_the_initial_values_without_glitching_lines_already_there() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("gpio-mock.sock");
    let exporter_config = dir.path().join("exporter.yaml");
    std::fs::write(&exporter_config, c.exporter_config_yaml(&demo_export())).unwrap();
    let client_config = dir.path().join("client.yaml");
    std::fs::write(&client_config, c.client_config_yaml()).unwrap();
    let env_path = control.to_str().unwrap().to_string();
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&exporter_config, &[(CONTROL_ENV, env_path.as_str())])
    })
    .await
    .unwrap();
    let bench = Bench {
        exporter,
        control,
        _dir: dir,
    };
    let ready = |e: &Event| {
        matches!(
            e,
            Event::ReportStatus {
                status: ExporterStatus::LeaseReady,
                ..
            }
        )
    };
    let available = |e: &Event| matches!(e, Event::ReportStatus { status: ExporterStatus::Available, message: Some(m), .. } if m == "Available for new lease");
    let registers = |c: &FakeController| {
        c.events()
            .iter()
            .filter(|e| matches!(e, Event::Register { .. }))
            .count()
    };
    // Registering built (and dropped) the drivers: the lines were claimed, not driven.
    assert_eq!(
        bench.mock("get demo DUT_POWER"),
        "ok level=0 output=false active_low=false consumer=- transitions=0"
    );

    // Lease 1, by the Python client: it leaves the reset line active and the power on.
    let path = client_config.to_str().unwrap().to_string();
    let first = tokio::task::spawn_blocking(move || {
        let mut cmd = client_command("", "lease", &[]);
        cmd.env("CLIENT_CONFIG", &path)
            .env("EXPORTER_NAME", "exporter1");
        result("lease", python::output_with_timeout(cmd, 120))
    })
    .await
    .unwrap();
    assert_eq!(
        first["output"]["states"],
        json!(["inactive", "active", "inactive", "active"])
    );
    assert!(c
        .wait_for(available, Duration::from_secs(20))
        .await
        .is_some());
    assert!(bench
        .mock("get demo BOARD_RESET")
        .starts_with("ok level=0 output=true active_low=true consumer=- "));
    let power = bench.mock("get demo DUT_POWER");
    assert!(
        power.starts_with("ok level=1 output=true active_low=false consumer=- "),
        "{power}"
    );

    // Lease 2: the reset line goes back to inactive; the power, already on, does not move.
    let mark = c.mark();
    let lease = c.create_lease().await;
    assert!(c
        .wait_for_after(mark, ready, Duration::from_secs(20))
        .await
        .is_some());
    assert!(bench
        .mock("get demo BOARD_RESET")
        .starts_with("ok level=1 output=true active_low=true consumer=jumpstarter-gpiod "));
    let again = bench.mock("get demo DUT_POWER");
    assert!(again.starts_with("ok level=1 "), "{again}");
    assert_eq!(
        transitions(&again),
        transitions(&power),
        "no glitch: {again}"
    );

    // Mid-lease the controller restarts: registering again builds drivers while the lease holds
    // the lines, which must neither fail nor touch them.
    c.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while registers(&c) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-Register while the lease holds the lines:\n{}",
            bench.exporter.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = bench.mock("get demo DUT_POWER");
    assert!(during.contains("consumer=jumpstarter-gpiod"), "{during}");
    assert_eq!(transitions(&during), transitions(&power));

    let mark = c.mark();
    c.end_lease(&lease).await;
    assert!(c
        .wait_for_after(mark, available, Duration::from_secs(20))
        .await
        .is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bench.mock("get demo DUT_POWER").contains("consumer=- ") {
        assert!(
            Instant::now() < deadline,
            "the lease's end did not release the line"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config with one entry of `type` and `config`, in a temp dir.
fn one_entry(dir: &Path, ty: &str, body: &str) -> PathBuf {
    let path = dir.join("exporter.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {{namespace: default, name: t}}\nexport:\n  reset:\n    type: jumpstarter_driver_gpiod.driver.{ty}\n    config:\n{body}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_busy_line_stops_the_exporter_and_a_bad_key_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let busy = one_entry(
        dir.path(),
        "DigitalOutput",
        "      device: mock://lab?lines=4&names=,LED&held=1:leds-gpio\n      line: LED\n",
    );
    let check = Command::new(binary())
        .args(["check", "--config"])
        .arg(&busy)
        .output()
        .unwrap();
    assert!(check.status.success(), "checking opens no device");
    let run = python::output_with_timeout(
        {
            let mut cmd = Command::new(binary());
            cmd.args(["run", "--config"])
                .arg(&busy)
                .arg("--socket")
                .arg(dir.path().join("s.sock"));
            cmd
        },
        30,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(
            "GPIO line 1 (\"LED\") on mock://lab [mock] is busy: held by consumer \"leds-gpio\""
        ),
        "{stderr}"
    );

    let bad = one_entry(
        dir.path(),
        "DigitalOutput",
        "      line: 3\n      initial_value: high\n",
    );
    let check = Command::new(binary())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("export.reset.config.initial_value (line 9): `high` is not one of"),
        "{stderr}"
    );
}

/// The same client scenarios on the kernel's GPIO simulator, through the cdev code path.
mod gpio_sim {
    use super::*;

    struct Sim {
        dir: PathBuf,
        sysfs: PathBuf,
        label: String,
    }

    impl Sim {
        fn new() -> Sim {
            let label = format!("jmp-it-{}", std::process::id());
            let dir = PathBuf::from("/sys/kernel/config/gpio-sim").join(&label);
            let bank = dir.join("bank0");
            std::fs::create_dir(&dir).expect("gpio-sim in configfs (modprobe gpio-sim; root)");
            std::fs::create_dir(&bank).unwrap();
            std::fs::write(bank.join("num_lines"), "4").unwrap();
            std::fs::write(bank.join("label"), &label).unwrap();
            for (offset, name) in [(0, "JMP_IT_RESET"), (1, "JMP_IT_BUTTON")] {
                std::fs::create_dir(bank.join(format!("line{offset}"))).unwrap();
                std::fs::write(bank.join(format!("line{offset}/name")), name).unwrap();
            }
            std::fs::write(dir.join("live"), "1").unwrap();
            let dev = std::fs::read_to_string(dir.join("dev_name")).unwrap();
            let chip = std::fs::read_to_string(bank.join("chip_name")).unwrap();
            Sim {
                sysfs: PathBuf::from("/sys/devices/platform")
                    .join(dev.trim())
                    .join(chip.trim()),
                dir,
                label,
            }
        }

        fn pull(&self, offset: u32, up: bool) {
            let f = self.sysfs.join(format!("sim_gpio{offset}/pull"));
            std::fs::write(f, if up { "pull-up" } else { "pull-down" }).unwrap();
        }

        fn level(&self, offset: u32) -> bool {
            let f = self.sysfs.join(format!("sim_gpio{offset}/value"));
            std::fs::read_to_string(f).unwrap().trim() == "1"
        }
    }

    impl Drop for Sim {
        fn drop(&mut self) {
            let _ = std::fs::write(self.dir.join("live"), "0");
            for offset in 0..2 {
                let _ = std::fs::remove_dir(self.dir.join(format!("bank0/line{offset}")));
            }
            let _ = std::fs::remove_dir(self.dir.join("bank0"));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    #[test]
    #[ignore = "needs gpio-sim and root"]
    fn the_upstream_clients_on_a_real_chip() {
        let sim = Sim::new();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("exporter.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {{namespace: default, name: sim}}\nexport:\n  reset:\n    type: jumpstarter_driver_gpiod.driver.DigitalOutput\n    config: {{device: {0}, line: JMP_IT_RESET, initial_value: inactive}}\n  button:\n    type: jumpstarter_driver_gpiod.driver.DigitalInput\n    config: {{line: JMP_IT_BUTTON}}\n  power:\n    type: jumpstarter_driver_gpiod.driver.PowerSwitch\n    config: {{device: {0}, line: 2, initial_value: on}}\n",
                sim.label
            ),
        )
        .unwrap();
        sim.pull(1, false);
        let exporter = Exporter::unix(&config);
        let host = exporter.host();
        assert!(!sim.level(0) && sim.level(2), "initial values");
        let out = client(&host, "output", &[]);
        assert_eq!(
            out["states"],
            json!(["inactive", "active", "inactive", "active"])
        );
        assert!(sim.level(0));
        let power = client(&host, "power", &[]);
        assert_eq!(power["read_pin"], json!([0.0, 1.0, 1.0]));
        assert_eq!(client(&host, "read", &[])["state"], "inactive");
        let seen = wait_while_the_test_moves_the_line(
            &exporter,
            &host,
            &["wait_for_active", "30"],
            "wait_for_active (waiting for a rising edge): started",
            || sim.pull(1, true),
        );
        assert_eq!(seen["outcome"], "ok", "{seen}");
        let codes = client(&host, "codes", &[]);
        assert_eq!(codes["edge_timeout"][0], "DEADLINE_EXCEEDED");
    }
}

/// The chip vanishes and comes back (the mock's `vanish`/`return`, which fail requests with
/// ENODEV as the kernel does for an unplugged adapter): a wait in progress and every later call
/// fail with a clean error naming chip and line; after the return, the same exporter and
/// client work again, and the outputs drive what the client last set.
#[test]
fn a_vanished_chip_gives_clean_errors_and_the_lines_recover_when_it_returns() {
    let bench = bench();
    let host = bench.host();
    let pid = bench.exporter.pid();
    // The client's last word on reset is "active" (cycle ends on), a low level (active low).
    let out = client(&host, "output", &[]);
    assert_eq!(out["states"][3], "active");
    assert!(bench.mock("get demo BOARD_RESET").starts_with("ok level=0"));

    let parked = "wait_for_active (waiting for a rising edge): started";
    let seen = wait_while_the_test_moves_the_line(
        &bench.exporter,
        &host,
        &["wait_for_active", "none"],
        parked,
        || assert_eq!(bench.mock("vanish demo"), "ok"),
    );
    let named = |what: &Value, line: &str| {
        let message = what[1]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {what}"));
        assert!(
            message.contains("mock://demo")
                && message.contains(line)
                && message.contains("went away"),
            "{what}"
        );
    };
    assert_eq!(seen["outcome"][0], "DriverError", "{seen}");
    named(&seen["outcome"], "BOOT_BUTTON");

    let gone = client(&host, "gone", &[]);
    eprintln!("the wait in progress saw {seen}; later calls saw {gone}");
    for (call, line) in [
        ("reset.on", "BOARD_RESET"),
        ("reset.read", "BOARD_RESET"),
        ("power.off", "line 2"),
        ("button.read", "BOOT_BUTTON"),
        ("button.wait_for_active", "BOOT_BUTTON"),
    ] {
        named(&gone[call], line);
        assert!(
            gone[call][1].as_str().unwrap().contains("not back yet"),
            "{call}: {gone}"
        );
        let seconds = gone[&format!("{call}.seconds")].as_f64().unwrap();
        assert!(seconds < 2.0, "{call} took {seconds} s: {gone}");
    }

    assert_eq!(bench.mock("return demo"), "ok");
    assert_eq!(
        client(&host, "read", &[]),
        json!({"state": "inactive", "value": 0})
    );
    let seen = wait_while_the_test_moves_the_line(
        &bench.exporter,
        &host,
        &["wait_for_active", "30"],
        parked,
        || bench.set("BOOT_BUTTON", 1),
    );
    assert_eq!(seen["outcome"], "ok", "{seen}");
    // The power switch was last set on (initial_value at session start): on again. Its first
    // call after the return requests it again.
    let power = client(&host, "power", &[]);
    assert_eq!(power["read_pin"], json!([0.0, 1.0, 1.0]));
    assert!(bench
        .mock("get demo DUT_POWER")
        .starts_with("ok level=1 output=true active_low=false consumer=jumpstarter-gpiod"));
    // Reset was last set active: requested again at its first call, driving a low level.
    assert_eq!(client(&host, "output", &[])["states"][0], "active");
    assert_eq!(bench.exporter.pid(), pid);
    assert!(
        bench
            .exporter
            .log()
            .contains("GPIO chip is back; line requested again"),
        "{}",
        bench.exporter.log()
    );
}
