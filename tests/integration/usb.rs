//! USB power switching (`jmp_exporter.drivers.UsbHubPort` and the YKUSH driver) in a real
//! exporter process configured with the simulated hardware (`fake:`, `sysfs_root:`), driven by
//! the unchanged Python client; the effects are checked in the fakes' transfer logs and in the
//! fake sysfs tree. Real-hardware tests are ignored unless asked for.

use std::path::{Path, PathBuf};
use std::process::Command;

use jmp_drivers::usb::sysfs::{fake as sysfs_tree, Sysfs};
use serde_json::Value;

use crate::support::exporter::{binary, config, Exporter};
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata:\n  namespace: default\n  name: usb-test\n";

/// Writes a config whose `export:` is `export` into `dir`.
fn write_config(dir: &Path, export: &str) -> PathBuf {
    let path = dir.join("exporter.yaml");
    std::fs::write(&path, format!("{HEADER}export:\n{export}")).unwrap();
    path
}

/// Runs a scenario of `tests/python/usb_client.py` for the named drivers.
fn client(host: &str, scenario: &str, names: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/usb_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .arg(scenario)
        .args(names)
        .env("JUMPSTARTER_HOST", host);
    python::scenario_result(
        "usb_client.py",
        scenario,
        python::output_with_timeout(cmd, 120),
    )
}

/// `j ARGS...` against `host`.
fn j(host: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = python::command("j");
    cmd.args(args).env("JUMPSTARTER_HOST", host);
    python::output_with_timeout(cmd, 60)
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn hub_port_and_ykush_obey_the_real_client_with_exact_usb_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let hub_log = dir.path().join("hub.log");
    let ykush_log = dir.path().join("ykush.log");
    let path = write_config(
        dir.path(),
        &format!(
            "  hub:\n    type: jmp_exporter.drivers.UsbHubPort\n    config:\n      location: \"1-1\"\n      port: 3\n      fake: {{hub: usb3, log: {}}}\n  ykush:\n    type: jumpstarter_driver_yepkit.driver.Ykush\n    config:\n      serial: \"YK12345\"\n      port: \"2\"\n      fake: {{log: {}}}\n",
            hub_log.display(),
            ykush_log.display()
        ),
    );
    let exporter = Exporter::unix(&path);
    // The YKUSH's default (off) was applied when the session started; the hub's (keep) was not.
    assert!(
        exporter.wait_for_log("Power OFF for Ykush YK12345 on port 2"),
        "{}",
        exporter.log()
    );
    assert!(log_lines(&hub_log).is_empty(), "keep touches nothing");

    let seen = client(&exporter.host(), "power", &["hub", "ykush"]);
    for name in ["hub", "ykush"] {
        assert_eq!(seen[name]["class"], "PowerClient");
        let read = seen[name]["read"].as_str().unwrap();
        assert!(read.contains("cannot measure voltage or current"), "{read}");
    }

    // on, off, then cycle = off + on; each switches both halves of the USB 3 hub, each
    // half with descriptor, Set/ClearPortFeature(PORT_POWER) and GetPortStatus.
    let hub = log_lines(&hub_log);
    assert_eq!(hub.len(), 4 * 2 * 3, "{hub:#?}");
    let sent: Vec<&str> = hub
        .iter()
        .filter(|l| l.contains("control-out"))
        .map(String::as_str)
        .collect();
    let on = [
        "2-1 control-out 23 03 0008 0003",
        "1-1 control-out 23 03 0008 0003",
    ];
    let off = [
        "1-1 control-out 23 01 0008 0003",
        "2-1 control-out 23 01 0008 0003",
    ];
    assert_eq!(sent, [on, off, off, on].concat());
    assert_eq!(
        &hub[..3],
        [
            "2-1 control-in a0 06 2a00 0000 len 12",
            "2-1 control-out 23 03 0008 0003",
            "2-1 control-in a3 00 0000 0003 len 4",
        ]
    );
    assert!(
        exporter
            .log()
            .contains("Power OFF for USB hub 1-1 port 3 (and its USB 3 companion 2-1 port 3)"),
        "{}",
        exporter.log()
    );

    // Reset (off), on, off, cycle (off, on): one 64-byte report each, then a 64-byte read.
    let ykush = log_lines(&ykush_log);
    let zeros = "00".repeat(63);
    let reports: Vec<String> = [0x02, 0x12, 0x02, 0x02, 0x12]
        .iter()
        .map(|c| format!("1-2 write 01 {c:02x}{zeros}"))
        .collect();
    let written: Vec<&String> = ykush.iter().filter(|l| l.contains(" write ")).collect();
    assert_eq!(written, reports.iter().collect::<Vec<_>>(), "{ykush:#?}");
    assert_eq!(
        ykush.iter().filter(|l| *l == "1-2 read 81 len 64").count(),
        5
    );
    assert!(exporter
        .log()
        .contains("Power ON for Ykush YK12345 on port 2"));
}

#[test]
fn the_kernels_disable_switch_is_written_for_both_halves_by_j() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    sysfs_tree::add_hub(&root, "1-1", (0x2109, 0x2817), 4, true).unwrap();
    sysfs_tree::add_hub(&root, "2-1", (0x2109, 0x0817), 4, true).unwrap();
    sysfs_tree::link_peers(&root, ("1-1", 2), ("2-1", 2)).unwrap();
    let sys = Sysfs::new(&root);
    let usb2 = sys.disable_attribute("1-1", 2).unwrap();
    let ss = sys.disable_attribute("2-1", 2).unwrap();
    let usb_log = dir.path().join("usb.log");
    let path = write_config(
        dir.path(),
        &format!(
            "  hub:\n    type: jmp_exporter.drivers.UsbHubPort\n    config:\n      location: \"1-1\"\n      port: 2\n      default: \"off\"\n      sysfs_root: {}\n      fake: {{hub: usb3, log: {}}}\n",
            root.display(),
            usb_log.display()
        ),
    );
    let exporter = Exporter::unix(&path);
    let host = exporter.host();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    // default: off at session start.
    assert!(
        exporter.wait_for_log("Power OFF for USB hub 1-1 port 2"),
        "{}",
        exporter.log()
    );
    assert_eq!((read(&usb2), read(&ss)), ("1".into(), "1".into()));

    let out = j(&host, &["hub", "on"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((read(&usb2), read(&ss)), ("0".into(), "0".into()));
    let out = j(&host, &["hub", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((read(&usb2), read(&ss)), ("1".into(), "1".into()));
    let other = sys.disable_attribute("1-1", 1).unwrap();
    assert_eq!(read(&other), "0\n", "other ports are left alone");
    assert!(
        log_lines(&usb_log)
            .iter()
            .all(|l| !l.contains("control-out")),
        "with sysfs no hub request goes through usbfs"
    );

    let out = j(&host, &["hub", "read"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot measure voltage or current"), "{err}");
}

#[test]
fn hub_and_board_failures_reach_the_client_as_driver_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut export = String::new();
    for (name, kind) in [
        ("ignores", "ignores"),
        ("ganged", "ganged"),
        ("denied", "denied"),
        ("gone", "gone"),
    ] {
        export.push_str(&format!(
            "  {name}:\n    type: jmp_exporter.drivers.UsbHubPort\n    config:\n      location: \"1-1\"\n      port: 1\n      fake: {{hub: {kind}}}\n"
        ));
    }
    export.push_str("  board:\n    type: jumpstarter_driver_yepkit.driver.Ykush\n    config:\n      default: keep\n      fake: {fault: denied}\n");
    let exporter = Exporter::unix(&write_config(dir.path(), &export));
    let seen = client(
        &exporter.host(),
        "fails",
        &["ignores", "ganged", "denied", "gone", "board"],
    );
    let message = |name: &str| {
        assert_eq!(seen[name]["type"], "DriverError", "{name}: {seen}");
        seen[name]["message"].as_str().unwrap().to_string()
    };
    let m = message("ignores");
    assert!(
        m.contains("ignored the request to switch port 1 off") && m.contains("claims per-port"),
        "{m}"
    );
    assert!(m.contains("which hubs really cut power"), "{m}");
    assert!(message("ganged").contains("declares ganged power switching"));
    let m = message("denied");
    assert!(
        m.contains("permission denied opening USB hub 1-1 (2109:2817, bus 1 address 8)")
            && m.contains("udev/60-jmp-exporter-usb.rules")
            && m.contains("group `jumpstarter`"),
        "{m}"
    );
    assert!(message("gone").contains("is gone (unplugged?)"));
    let m = message("board");
    assert!(
        m.contains("permission denied opening ykush YK00000")
            && m.contains("udev/60-jmp-exporter-usb.rules"),
        "{m}"
    );
}

/// The hub is unplugged from under a running exporter (removed from the fake sysfs tree, which
/// the fake bus follows) and plugged back: the real client gets a clean error naming the hub
/// and the port, and the same exporter switches the port again once the hub is back.
#[test]
fn a_hub_that_disappears_gives_a_clean_error_and_works_again_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    sysfs_tree::add_hub(&root, "1-1", (0x2109, 0x2817), 4, true).unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "  hub:\n    type: jmp_exporter.drivers.UsbHubPort\n    config:\n      location: \"1-1\"\n      port: 2\n      sysfs_root: {}\n      fake: {{hub: usb2}}\n",
            root.display()
        ),
    );
    let exporter = Exporter::unix(&path);
    let host = exporter.host();
    let pid = exporter.pid();
    let disable = || Sysfs::new(&root).disable_attribute("1-1", 2).unwrap();
    client(&host, "power", &["hub"]);
    assert_eq!(
        std::fs::read_to_string(disable()).unwrap(),
        "0",
        "cycle ends on"
    );

    std::fs::remove_dir_all(root.join("bus/usb/devices/1-1")).unwrap();
    let seen = client(&host, "fails", &["hub"]);
    assert_eq!(seen["hub"]["type"], "DriverError", "{seen}");
    let m = seen["hub"]["message"].as_str().unwrap();
    eprintln!("with the hub gone the client saw: {m}");
    assert!(
        m.contains("UNAVAILABLE")
            && m.contains("cannot switch port 2 of USB hub 1-1 off")
            && m.contains("no USB device at 1-1")
            && m.contains("works as soon as it is back"),
        "{m}"
    );

    sysfs_tree::add_hub(&root, "1-1", (0x2109, 0x2817), 4, true).unwrap();
    let out = j(&host, &["hub", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(disable()).unwrap(), "1");
    client(&host, "power", &["hub"]);
    assert_eq!(std::fs::read_to_string(disable()).unwrap(), "0");
    assert_eq!(exporter.pid(), pid, "no restart");
}

#[test]
fn the_usb_demo_config_runs_without_hardware() {
    let exporter = Exporter::unix(&config("usb-demo.yaml"));
    let seen = client(&exporter.host(), "power", &["hub", "ykush"]);
    assert_eq!(seen["hub"]["class"], "PowerClient");
    assert_eq!(seen["ykush"]["class"], "PowerClient");
    assert!(exporter
        .log()
        .contains("Power ON for USB hub 1-1 port 2 (and its USB 3 companion 2-1 port 2)"));
}

#[test]
fn list_usb_prints_a_table_on_any_machine() {
    let out = Command::new(binary())
        .args(["list", "usb"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("USB hubs\nLOCATION  ID"), "{stdout}");
}

#[test]
#[ignore = "needs a USB hub: JMP_TEST_HUB=LOCATION:PORT of a port that may lose power"]
fn a_real_hub_port_with_the_real_client() {
    let target = std::env::var("JMP_TEST_HUB").expect("JMP_TEST_HUB=1-1.4:3");
    let (location, port) = target.rsplit_once(':').expect("LOCATION:PORT");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("  hub:\n    type: jmp_exporter.drivers.UsbHubPort\n    config:\n      location: \"{location}\"\n      port: {port}\n"),
    );
    let exporter = Exporter::unix(&path);
    let seen = client(&exporter.host(), "power", &["hub"]);
    assert_eq!(seen["hub"]["class"], "PowerClient");
}

#[test]
#[ignore = "needs a YKUSH board (JMP_TEST_YKUSH=SERIAL) whose port 1 may lose power"]
fn a_real_ykush_with_the_real_client() {
    let serial = std::env::var("JMP_TEST_YKUSH").expect("JMP_TEST_YKUSH=YK12345");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("  ykush:\n    type: jumpstarter_driver_yepkit.driver.Ykush\n    config:\n      serial: \"{serial}\"\n      port: \"1\"\n      default: keep\n"),
    );
    let exporter = Exporter::unix(&path);
    let seen = client(&exporter.host(), "power", &["ykush"]);
    assert_eq!(seen["ykush"]["class"], "PowerClient");
}
