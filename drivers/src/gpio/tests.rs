//! The three drivers on the fake chip, and the same checks on the kernel's gpio-sim (ignored
//! unless run as root on a kernel with gpio-sim).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;

/// A driver of `kind` from a `config:` body.
fn line(kind: Kind, config: &str) -> GpioLine {
    try_line(kind, config).unwrap_or_else(|e| panic!("{e}"))
}

fn try_line(kind: Kind, config: &str) -> Result<GpioLine, DriverError> {
    let spec = parse(kind, config, "export.x.config");
    GpioLine::open(kind, spec)
}

fn parse(kind: Kind, config: &str, path: &str) -> Arc<LineSpec> {
    let doc = yaml::parse(config).unwrap();
    let spec = match kind {
        Kind::DigitalOutput => config::output(&doc, path),
        Kind::DigitalInput => config::input(&doc, path),
        Kind::PowerSwitch => config::power_switch(&doc, path),
    };
    Arc::new(spec.unwrap_or_else(|e| panic!("{e}")))
}

fn mock(name: &str) -> Arc<mock::MockChip> {
    mock::chip(name).expect("the driver opened the mock chip")
}

async fn call(d: &GpioLine, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
    assert_eq!(d.method(method), Some(MethodKind::Call), "{method}");
    d.call(method, args).await
}

#[test]
fn the_table_has_the_three_types_with_upstream_client_labels() {
    let node = yaml::parse("line: 1\ndevice: mock://labels\n").unwrap();
    for (ty, client) in [
        (DIGITAL_OUTPUT, crate::client::DIGITAL_OUTPUT),
        (DIGITAL_INPUT, crate::client::DIGITAL_INPUT),
        (POWER_SWITCH, crate::client::POWER),
    ] {
        let factory = crate::factory(ty).unwrap_or_else(|| panic!("{ty} is not in BUILTIN"));
        assert_eq!(factory(&node, "export.x.config").unwrap().client(), client);
    }
    assert_eq!(
        crate::client::DIGITAL_OUTPUT,
        "jumpstarter_driver_gpiod.client.DigitalOutputClient"
    );
    assert_eq!(
        crate::client::DIGITAL_INPUT,
        "jumpstarter_driver_gpiod.client.DigitalInputClient"
    );
}

#[test]
fn methods_have_upstream_kinds() {
    let out = line(Kind::DigitalOutput, "line: 0\ndevice: mock://kinds\n");
    let inp = line(Kind::DigitalInput, "line: 1\ndevice: mock://kinds\n");
    let pwr = line(Kind::PowerSwitch, "line: 2\ndevice: mock://kinds\n");
    for m in ["on", "off", "read_pin"] {
        assert_eq!(out.method(m), Some(MethodKind::Call));
        assert_eq!(pwr.method(m), Some(MethodKind::Call));
    }
    for m in [
        "read_pin",
        "wait_for_active",
        "wait_for_inactive",
        "wait_for_edge",
    ] {
        assert_eq!(inp.method(m), Some(MethodKind::Call));
    }
    assert_eq!(pwr.method("read"), Some(MethodKind::Streaming));
    assert_eq!(
        out.method("read"),
        None,
        "DigitalOutputClient.read calls read_pin"
    );
    assert_eq!(inp.method("on"), None);
    assert_eq!(out.method("wait_for_edge"), None);
    assert_eq!(pwr.method("cycle"), None, "cycle is client-side");
}

#[tokio::test]
async fn outputs_go_to_initial_value_at_reset_and_switch() {
    let d = line(
        Kind::DigitalOutput,
        "line: RESET\ndevice: mock://out?lines=4&names=,RESET\ninitial_value: on\n",
    );
    let chip = mock("out");
    assert!(!chip.level(1).unwrap(), "building only claims the line");
    d.reset().await.unwrap();
    assert!(chip.level(1).unwrap());
    assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(1));
    assert_eq!(call(&d, "off", vec![]).await.unwrap(), Json::Null);
    assert!(!chip.level(1).unwrap());
    assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(0));
    call(&d, "on", vec![]).await.unwrap();
    assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(1));
    let err = call(&d, "on", vec![json!(1)]).await.unwrap_err();
    assert!(matches!(err, DriverError::InvalidArgument(_)), "{err}");
    assert_eq!(
        mock::control("get out RESET"),
        "ok level=1 output=true active_low=false consumer=jumpstarter-gpiod transitions=3"
    );
}

#[tokio::test]
async fn active_low_outputs_are_logical() {
    let d = line(
        Kind::DigitalOutput,
        "line: 0\ndevice: mock://low\nactive_low: true\ninitial_value: inactive\n",
    );
    let chip = mock("low");
    chip.drive(0, Some(false)).unwrap();
    chip.drive(0, None).unwrap();
    d.reset().await.unwrap();
    assert!(
        chip.level(0).unwrap(),
        "inactive on an active-low line is high"
    );
    call(&d, "on", vec![]).await.unwrap();
    assert!(!chip.level(0).unwrap());
    assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(1));
}

#[tokio::test]
async fn open_drain_outputs_release_the_line_when_active() {
    let d = line(
        Kind::PowerSwitch,
        "line: 0\ndevice: mock://od\ndrive: open_drain\nmode: open_drain\n",
    );
    let chip = mock("od");
    chip.drive(0, Some(true)).unwrap(); // the board's pull-up
    d.reset().await.unwrap();
    assert!(!chip.level(0).unwrap(), "inactive: the drain sinks");
    call(&d, "on", vec![]).await.unwrap();
    assert!(
        chip.level(0).unwrap(),
        "active: high impedance, the pull-up wins"
    );
}

#[tokio::test]
async fn a_new_session_never_glitches_a_line_at_its_initial_value() {
    let config = "line: 0\ndevice: mock://glitch\ninitial_value: active\n";
    let chip_level = || mock("glitch").level(0).unwrap();

    let first = line(Kind::DigitalOutput, config);
    let chip = mock("glitch");
    first.reset().await.unwrap();
    assert!(chip_level());
    let after_first_reset = chip.transitions(0).unwrap();
    first.close().await;
    assert_eq!(chip.line_info_consumer(0), None, "released at close");

    // The next lease: build (the request) and reset (back to the initial value).
    let second = line(Kind::DigitalOutput, config);
    assert!(chip_level(), "the request itself changes nothing");
    second.reset().await.unwrap();
    assert_eq!(
        chip.transitions(0).unwrap(),
        after_first_reset,
        "no level change at all: {:?}",
        chip.history(0).unwrap()
    );

    // A session that moved the line away still gets it back at the next start.
    call(&second, "off", vec![]).await.unwrap();
    second.close().await;
    assert!(!chip_level(), "a released output keeps its level");
    let third = line(Kind::DigitalOutput, config);
    third.reset().await.unwrap();
    assert!(chip_level());
    assert_eq!(chip.transitions(0).unwrap(), after_first_reset + 2);
}

#[tokio::test]
async fn a_session_built_while_another_holds_the_line_shares_it() {
    let config = "line: 0\ndevice: mock://share\ninitial_value: on\n";
    let lease = line(Kind::DigitalOutput, config);
    lease.reset().await.unwrap();
    call(&lease, "off", vec![]).await.unwrap();
    // The exporter builds a throw-away tree to register while the lease runs.
    let throwaway = line(Kind::DigitalOutput, config);
    drop(throwaway);
    let chip = mock("share");
    assert!(!chip.level(0).unwrap(), "the lease's state is untouched");
    assert_eq!(
        chip.line_info_consumer(0).as_deref(),
        Some("jumpstarter-gpiod")
    );
    call(&lease, "on", vec![]).await.unwrap();
    lease.close().await;
    assert_eq!(chip.line_info_consumer(0), None);
}

#[tokio::test]
async fn busy_and_missing_lines_are_clear_errors() {
    let err = try_line(
        Kind::DigitalOutput,
        "line: 2\ndevice: mock://taken?lines=4&names=,,LED&held=2:leds-gpio\n",
    )
    .err()
    .unwrap();
    assert!(matches!(err, DriverError::Unavailable(_)));
    assert_eq!(
        err.to_string(),
        "GPIO line 2 (\"LED\") on mock://taken [mock] is busy: held by consumer \"leds-gpio\""
    );

    let _a = line(Kind::DigitalInput, "line: 0\ndevice: mock://taken\n");
    let spec = parse(
        Kind::DigitalInput,
        "line: 0\ndevice: mock://taken\n",
        "export.y.config",
    );
    let err = GpioLine::open(Kind::DigitalInput, spec).err().unwrap();
    assert_eq!(
        err.to_string(),
        "GPIO line 0 on mock://taken [mock] is already used by export.x of this exporter"
    );

    let err = try_line(Kind::DigitalInput, "line: 9\ndevice: mock://taken\n")
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "line 9 does not exist on GPIO chip mock://taken [mock], which has 4 lines"
    );
    let err = try_line(Kind::DigitalInput, "line: NOPE\ndevice: mock://taken\n")
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "no GPIO line named \"NOPE\" on mock://taken [mock]"
    );
    let err = try_line(Kind::DigitalInput, "line: 1\ndevice: /dev/gpiochip-none\n")
        .err()
        .unwrap();
    assert!(matches!(err, DriverError::Unavailable(_)));
    assert!(
        err.to_string()
            .starts_with("GPIO chip /dev/gpiochip-none not found ("),
        "{err}"
    );
    let err = try_line(Kind::DigitalInput, "line: 1\ndevice: no-such-label\n")
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("GPIO chip labelled \"no-such-label\" not found ("),
        "{err}"
    );
}

#[tokio::test]
async fn inputs_read_logical_values() {
    let d = line(
        Kind::DigitalInput,
        "line: 0\ndevice: mock://in\nactive_low: true\nbias: pull_up\n",
    );
    d.reset().await.unwrap();
    let chip = mock("in");
    assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(0));
    chip.drive(0, Some(false)).unwrap();
    assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(1));
}

#[tokio::test]
async fn level_waits_return_at_once_when_already_there() {
    let d = line(Kind::DigitalInput, "line: 0\ndevice: mock://there\n");
    d.reset().await.unwrap();
    mock("there").drive(0, Some(true)).unwrap();
    call(&d, "wait_for_active", vec![json!(-1.0)])
        .await
        .unwrap();
    call(&d, "wait_for_active", vec![]).await.unwrap();
    mock("there").drive(0, Some(false)).unwrap();
    call(&d, "wait_for_inactive", vec![json!(null)])
        .await
        .unwrap();
}

#[tokio::test]
async fn waits_end_with_the_matching_edge() {
    let d = Arc::new(line(Kind::DigitalInput, "line: 0\ndevice: mock://edges\n"));
    d.reset().await.unwrap();
    let chip = mock("edges");
    let claim = d.claim().unwrap();
    for (method, args, edges) in [
        ("wait_for_active", vec![json!(10.0)], vec![true]),
        ("wait_for_inactive", vec![json!(10.0)], vec![false]),
        (
            "wait_for_edge",
            vec![json!("rising"), json!(10.0)],
            vec![true],
        ),
        // The level is already high: a falling edge only comes after a fall.
        ("wait_for_edge", vec![json!("falling")], vec![true, false]),
    ] {
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.call(method, args).await }
        });
        while claim.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        for level in edges {
            assert!(!waiting.is_finished(), "{method} ended before its edge");
            chip.drive(0, Some(level)).unwrap();
        }
        let result = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap_or_else(|_| panic!("{method} did not see its edge"))
            .unwrap();
        assert_eq!(result.unwrap(), Json::Null, "{method}");
        assert_eq!(claim.waiters(), 0);
    }
}

#[tokio::test]
async fn edges_from_before_the_call_do_not_count() {
    let d = line(Kind::DigitalInput, "line: 0\ndevice: mock://stale\n");
    // No reset: nothing reads the queue, so the edges below wait in it like a kernel queue.
    let chip = mock("stale");
    chip.drive(0, Some(true)).unwrap();
    chip.drive(0, Some(false)).unwrap();
    let err = call(&d, "wait_for_edge", vec![json!("rising"), json!(0.05)])
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn timeouts_carry_upstreams_message() {
    let d = line(Kind::DigitalInput, "line: 3\ndevice: mock://slow\n");
    d.reset().await.unwrap();
    for (method, args) in [
        ("wait_for_active", vec![json!(0.02)]),
        ("wait_for_edge", vec![json!("falling"), json!(0.02)]),
        ("wait_for_edge", vec![json!("rising"), json!(-1)]),
    ] {
        let err = call(&d, method, args).await.unwrap_err();
        assert!(matches!(err, DriverError::Timeout(_)), "{method}: {err}");
        assert_eq!(err.to_string(), "Timed out waiting for line 3 edge event");
    }
    mock("slow").drive(3, Some(true)).unwrap();
    let err = call(&d, "wait_for_inactive", vec![json!(0.02)])
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::Timeout(_)));
    let named = line(
        Kind::DigitalInput,
        "line: BTN\ndevice: mock://slow-named?names=BTN\n",
    );
    let err = call(&named, "wait_for_active", vec![json!(0.01)])
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Timed out waiting for line BTN edge event");
}

#[tokio::test(start_paused = true)]
async fn zero_and_null_timeouts_mean_no_limit() {
    let d = Arc::new(line(
        Kind::DigitalInput,
        "line: 0\ndevice: mock://forever\n",
    ));
    d.reset().await.unwrap();
    for args in [vec![json!(0)], vec![json!(null)], vec![]] {
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.call("wait_for_active", args).await }
        });
        tokio::time::sleep(Duration::from_secs(1_000_000)).await;
        assert!(!waiting.is_finished());
        waiting.abort();
    }
}

#[tokio::test]
async fn bad_arguments_are_invalid_argument() {
    let d = line(Kind::DigitalInput, "line: 0\ndevice: mock://args\n");
    for (method, args, want) in [
        (
            "wait_for_edge",
            vec![json!("up")],
            "Invalid edge type: up, must be one of: rising, falling",
        ),
        (
            "wait_for_edge",
            vec![json!(1.0), json!(1.0)],
            "Invalid edge type: 1.0, must be one of: rising, falling",
        ),
        (
            "wait_for_edge",
            vec![],
            "wait_for_edge() takes 1 or 2 arguments, got 0",
        ),
        (
            "wait_for_active",
            vec![json!(1), json!(2)],
            "wait_for_active() takes 0 or 1 arguments, got 2",
        ),
        (
            "wait_for_inactive",
            vec![json!("soon")],
            "wait_for_inactive(): argument 1 must be a number or null, got \"soon\"",
        ),
        (
            "read_pin",
            vec![json!(1)],
            "read_pin() takes 0 arguments, got 1",
        ),
    ] {
        let err = call(&d, method, args).await.unwrap_err();
        assert!(
            matches!(err, DriverError::InvalidArgument(_)),
            "{method}: {err}"
        );
        assert_eq!(err.to_string(), want);
    }
}

#[tokio::test]
async fn power_switch_read_is_unimplemented() {
    let d = line(Kind::PowerSwitch, "line: 0\ndevice: mock://pwr\n");
    let err = d.streaming_call("read", vec![]).await.err().unwrap();
    assert!(matches!(err, DriverError::NotImplemented(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn many_idle_waits_cost_nothing_and_one_edge_wakes_them_all() {
    let d = Arc::new(line(Kind::DigitalInput, "line: 0\ndevice: mock://crowd\n"));
    d.reset().await.unwrap();
    let chip = mock("crowd");
    let claim = d.claim().unwrap();
    let waits: Vec<_> = (0..1000)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { d.call("wait_for_active", vec![json!(null)]).await })
        })
        .collect();
    while claim.waiters() < 1000 {
        tokio::task::yield_now().await;
    }
    let reads = chip.edge_reads();
    // An hour of (paused) time passes: nothing polls, so nothing runs.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(chip.edge_reads(), reads, "the reader stayed parked");
    assert!(
        reads <= 2,
        "one reader for all the waits, not one each: {reads}"
    );
    chip.drive(0, Some(true)).unwrap();
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap(), Json::Null);
    }
    assert_eq!(claim.waiters(), 0);
}

#[tokio::test]
async fn a_dropped_wait_leaves_nothing_behind() {
    let d = Arc::new(line(Kind::DigitalInput, "line: 0\ndevice: mock://gone\n"));
    d.reset().await.unwrap();
    let claim = d.claim().unwrap();
    let waiting = tokio::spawn({
        let d = d.clone();
        async move {
            d.call("wait_for_edge", vec![json!("rising"), json!(null)])
                .await
        }
    });
    while claim.waiters() == 0 {
        tokio::task::yield_now().await;
    }
    // What the server does when the client goes away: the call's future is dropped.
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(claim.waiters(), 0);
    // The line still works for the next caller.
    let again = tokio::spawn({
        let d = d.clone();
        async move {
            d.call("wait_for_edge", vec![json!("rising"), json!(5.0)])
                .await
        }
    });
    while claim.waiters() == 0 {
        tokio::task::yield_now().await;
    }
    mock("gone").drive(0, Some(true)).unwrap();
    assert_eq!(again.await.unwrap().unwrap(), Json::Null);
}

#[tokio::test]
async fn close_ends_waits_and_releases_the_line() {
    let d = Arc::new(line(
        Kind::DigitalInput,
        "line: 0\ndevice: mock://closing\n",
    ));
    d.reset().await.unwrap();
    let waiting = tokio::spawn({
        let d = d.clone();
        async move { d.call("wait_for_active", vec![json!(null)]).await }
    });
    while d.claim().unwrap().waiters() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(5), d.close())
        .await
        .expect("close does not wait for the wait");
    assert_eq!(mock("closing").line_info_consumer(0), None, "released");
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("the session ended"), "{err}");
    let err = call(&d, "read_pin", vec![]).await.unwrap_err();
    assert!(err.to_string().contains("released"), "{err}");
    // The next session requests it again.
    let next = line(Kind::DigitalInput, "line: 0\ndevice: mock://closing\n");
    next.reset().await.unwrap();
    assert_eq!(call(&next, "read_pin", vec![]).await.unwrap(), json!(0));
}

impl mock::MockChip {
    fn line_info_consumer(&self, offset: u32) -> Option<String> {
        let reply = mock::control(&format!("get {} {offset}", self.name()));
        let consumer = reply.split("consumer=").nth(1)?.split(' ').next()?;
        (consumer != "-").then(|| consumer.to_string())
    }
}

/// The same checks on the kernel's GPIO simulator: the cdev code path end to end.
mod gpio_sim {
    use super::*;
    use std::path::PathBuf;

    /// A gpio-sim chip made through configfs, removed on drop.
    pub struct Sim {
        dir: PathBuf,
        names: Vec<u32>,
        pub label: String,
        pub path: String,
        sysfs: PathBuf,
    }

    impl Sim {
        pub fn new(tag: &str, lines: u32, names: &[(u32, &str)]) -> Sim {
            let name = format!("jmp-{tag}-{}", std::process::id());
            let dir = PathBuf::from("/sys/kernel/config/gpio-sim").join(&name);
            let bank = dir.join("bank0");
            std::fs::create_dir(&dir).expect("gpio-sim in configfs (modprobe gpio-sim; root)");
            std::fs::create_dir(&bank).unwrap();
            std::fs::write(bank.join("num_lines"), lines.to_string()).unwrap();
            std::fs::write(bank.join("label"), &name).unwrap();
            for (offset, line_name) in names {
                let l = bank.join(format!("line{offset}"));
                std::fs::create_dir(&l).unwrap();
                std::fs::write(l.join("name"), line_name).unwrap();
            }
            std::fs::write(dir.join("live"), "1").unwrap();
            let dev = std::fs::read_to_string(dir.join("dev_name")).unwrap();
            let chip = std::fs::read_to_string(bank.join("chip_name")).unwrap();
            let (dev, chip) = (dev.trim().to_string(), chip.trim().to_string());
            Sim {
                names: names.iter().map(|(o, _)| *o).collect(),
                label: name,
                path: format!("/dev/{chip}"),
                sysfs: PathBuf::from("/sys/devices/platform").join(dev).join(chip),
                dir,
            }
        }

        /// Takes the chip away, as unplugging a USB GPIO adapter does.
        pub fn unplug(&self) {
            std::fs::write(self.dir.join("live"), "0").unwrap();
        }

        /// Brings it back; the kernel may give it another name.
        pub fn replug(&mut self) {
            std::fs::write(self.dir.join("live"), "1").unwrap();
            let dev = std::fs::read_to_string(self.dir.join("dev_name")).unwrap();
            let chip = std::fs::read_to_string(self.dir.join("bank0/chip_name")).unwrap();
            let (dev, chip) = (dev.trim().to_string(), chip.trim().to_string());
            self.path = format!("/dev/{chip}");
            self.sysfs = PathBuf::from("/sys/devices/platform").join(dev).join(chip);
        }

        /// What the outside world does to an input: pull it up or down.
        pub fn pull(&self, offset: u32, up: bool) {
            let f = self.sysfs.join(format!("sim_gpio{offset}/pull"));
            std::fs::write(f, if up { "pull-up" } else { "pull-down" }).unwrap();
        }

        /// The level an output drives.
        pub fn level(&self, offset: u32) -> bool {
            let f = self.sysfs.join(format!("sim_gpio{offset}/value"));
            std::fs::read_to_string(f).unwrap().trim() == "1"
        }
    }

    impl Drop for Sim {
        fn drop(&mut self) {
            let _ = std::fs::write(self.dir.join("live"), "0");
            for o in &self.names {
                let _ = std::fs::remove_dir(self.dir.join(format!("bank0/line{o}")));
            }
            let _ = std::fs::remove_dir(self.dir.join("bank0"));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    #[tokio::test]
    #[ignore = "needs gpio-sim and root"]
    async fn outputs_on_a_real_chip() {
        let sim = Sim::new("out", 4, &[(1, "JMP_SIM_RESET")]);
        let config = format!(
            "line: JMP_SIM_RESET\ndevice: {}\ninitial_value: active\n",
            sim.label
        );
        let d = line(Kind::DigitalOutput, &config);
        d.reset().await.unwrap();
        assert!(sim.level(1));
        call(&d, "off", vec![]).await.unwrap();
        assert!(!sim.level(1));
        assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(0));
        // Busy for anyone else, naming us.
        let err = gpiocdev::Request::builder()
            .on_chip(&sim.path)
            .with_line(1)
            .as_input()
            .request();
        assert!(err.is_err());
        let listing = list_chips().to_string();
        assert!(
            listing.contains("JMP_SIM_RESET  used by \"jumpstarter-gpiod\", output"),
            "{listing}"
        );
        d.close().await;
        let again = line(Kind::DigitalOutput, &config);
        again.reset().await.unwrap();
        assert!(sim.level(1));
        let err = try_line(
            Kind::DigitalOutput,
            &format!("line: 1\ndevice: {}\n", sim.path),
        );
        assert!(err.is_ok(), "the same entry path shares the claim");
    }

    #[tokio::test]
    #[ignore = "needs gpio-sim and root"]
    async fn inputs_and_edges_on_a_real_chip() {
        let sim = Sim::new("in", 4, &[(2, "JMP_SIM_BUTTON")]);
        let d = Arc::new(line(
            Kind::DigitalInput,
            &format!("line: 2\ndevice: {}\n", sim.path),
        ));
        d.reset().await.unwrap();
        sim.pull(2, false);
        assert_eq!(call(&d, "read_pin", vec![]).await.unwrap(), json!(0));
        let claim = d.claim().unwrap();
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.call("wait_for_active", vec![json!(10.0)]).await }
        });
        while claim.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        sim.pull(2, true);
        assert_eq!(waiting.await.unwrap().unwrap(), Json::Null);
        let err = call(&d, "wait_for_edge", vec![json!("rising"), json!(0.05)])
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "Timed out waiting for line 2 edge event");
        let falling = tokio::spawn({
            let d = d.clone();
            async move {
                d.call("wait_for_edge", vec![json!("falling"), json!(10.0)])
                    .await
            }
        });
        while claim.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        sim.pull(2, false);
        assert_eq!(falling.await.unwrap().unwrap(), Json::Null);
        drop(claim);
        d.close().await;
    }

    #[tokio::test]
    #[ignore = "needs gpio-sim and root"]
    async fn a_line_held_elsewhere_names_its_consumer() {
        let sim = Sim::new("busy", 2, &[]);
        let _other = gpiocdev::Request::builder()
            .on_chip(&sim.path)
            .with_consumer("other-app")
            .with_line(0)
            .as_input()
            .request()
            .unwrap();
        let err = try_line(
            Kind::DigitalInput,
            &format!("line: 0\ndevice: {}\n", sim.path),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .ends_with("is busy: held by consumer \"other-app\""),
            "{err}"
        );
        let err = try_line(
            Kind::DigitalInput,
            &format!("line: 7\ndevice: {}\n", sim.path),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("which has 2 lines"), "{err}");
    }

    /// The recovery of `line` on the kernel's chip: requests die with ENODEV when the chip
    /// goes, and the line is requested again (found by label) when it is back.
    #[tokio::test]
    #[ignore = "needs gpio-sim and root"]
    async fn a_real_chip_that_goes_away_and_returns() {
        let mut sim = Sim::new("gone", 4, &[(1, "JMP_SIM_RELAY"), (2, "JMP_SIM_BTN")]);
        let out = line(
            Kind::DigitalOutput,
            &format!(
                "line: JMP_SIM_RELAY\ndevice: {}\ninitial_value: off\n",
                sim.label
            ),
        );
        let inp = line(
            Kind::DigitalInput,
            &format!("line: JMP_SIM_BTN\ndevice: {}\n", sim.label),
        );
        out.reset().await.unwrap();
        inp.reset().await.unwrap();
        call(&out, "on", vec![]).await.unwrap();
        assert!(sim.level(1));
        sim.unplug();
        for (d, method) in [(&out, "off"), (&inp, "read_pin")] {
            match call(d, method, vec![]).await {
                Err(DriverError::Unavailable(m)) => {
                    assert!(m.contains("went away") && m.contains("JMP_SIM"), "{m}")
                }
                other => panic!("{method}: expected UNAVAILABLE, got {other:?}"),
            }
        }
        sim.replug();
        assert_eq!(call(&out, "read_pin", vec![]).await.unwrap(), json!(1));
        assert!(sim.level(1), "the relay drives what was last set");
        sim.pull(2, true);
        assert_eq!(call(&inp, "read_pin", vec![]).await.unwrap(), json!(1));
    }
}

/// The chip vanishes (as an unplugged USB GPIO adapter does) and comes back: calls fail with
/// UNAVAILABLE naming chip and line, a wait in progress ends with that error, and after the
/// return the lines are requested again: the output drives what the client last set, the
/// input sees edges again. The recovery code is the one the kernel's chips use (`line`).
#[tokio::test]
async fn a_vanished_chip_fails_calls_cleanly_and_its_lines_recover_when_it_returns() {
    let out = line(
        Kind::DigitalOutput,
        "line: RELAY\ndevice: mock://vanish?lines=4&names=RELAY,BUTTON\ninitial_value: off\n",
    );
    let inp = Arc::new(line(
        Kind::DigitalInput,
        "line: BUTTON\ndevice: mock://vanish\nbias: pull_down\n",
    ));
    out.reset().await.unwrap();
    inp.reset().await.unwrap();
    let chip = mock("vanish");
    call(&out, "on", vec![]).await.unwrap();
    assert!(chip.level(0).unwrap());

    let claim = inp.claim().unwrap();
    let waiting = tokio::spawn({
        let inp = inp.clone();
        async move { inp.call("wait_for_active", vec![]).await }
    });
    while claim.waiters() == 0 {
        tokio::task::yield_now().await;
    }
    drop(claim);

    assert_eq!(mock::control("vanish vanish"), "ok");
    assert!(!chip.level(0).unwrap(), "a vanished chip drives nothing");
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait in progress ended")
        .unwrap()
        .unwrap_err();
    let gone = |e: &DriverError, line: &str| {
        let DriverError::Unavailable(m) = e else {
            panic!("expected UNAVAILABLE, got {e:?}");
        };
        assert!(
            m.contains("mock://vanish [mock]") && m.contains(line) && m.contains("went away"),
            "{m}"
        );
        m.clone()
    };
    gone(&ended, "BUTTON");
    for (d, method, name) in [
        (&out, "off", "RELAY"),
        (&out, "read_pin", "RELAY"),
        (&*inp, "read_pin", "BUTTON"),
        (&*inp, "wait_for_active", "BUTTON"),
    ] {
        let e = call(d, method, vec![]).await.unwrap_err();
        let m = gone(&e, name);
        assert!(m.contains("not back yet"), "{method}: {m}");
    }
    assert!(!chip.level(0).unwrap(), "nothing was driven while gone");

    // Back: the relay drives what the client last set (on), without a call to set it.
    assert_eq!(mock::control("return vanish"), "ok");
    assert_eq!(call(&out, "read_pin", vec![]).await.unwrap(), json!(1));
    assert!(chip.level(0).unwrap(), "the relay is on again");
    assert!(mock::control("get vanish RELAY").contains("consumer=jumpstarter-gpiod"));
    call(&out, "off", vec![]).await.unwrap();
    assert!(!chip.level(0).unwrap());

    // The input waits and sees edges again, on a new request.
    let claim = inp.claim().unwrap();
    let waiting = tokio::spawn({
        let inp = inp.clone();
        async move { inp.call("wait_for_active", vec![json!(10.0)]).await }
    });
    while claim.waiters() == 0 {
        tokio::task::yield_now().await;
    }
    chip.drive(1, Some(true)).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait after the return saw its edge")
        .unwrap();
    assert_eq!(r.unwrap(), Json::Null);

    // A second vanish, recovered by a different first call: an output never set falls back to
    // initial_value (checked through a fresh driver of its own line).
    let fresh = line(
        Kind::PowerSwitch,
        "line: 2\ndevice: mock://vanish\ninitial_value: on\n",
    );
    fresh.reset().await.unwrap();
    assert!(chip.level(2).unwrap());
    assert_eq!(mock::control("vanish vanish"), "ok");
    assert!(!chip.level(2).unwrap());
    assert_eq!(mock::control("return vanish"), "ok");
    assert_eq!(call(&fresh, "read_pin", vec![]).await.unwrap(), json!(1));
    assert!(chip.level(2).unwrap(), "initial_value, as it was never set");
    assert!(
        mock::control("vanish nosuchchip").starts_with("error: no mock chip"),
        "control errors are replies"
    );
}
