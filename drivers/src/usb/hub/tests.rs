//! The driver against the fake USB bus and a fake sysfs tree: the exact transfers sent, the
//! order of a USB 3 pair, and what each failure tells the user. One test needs a real hub and
//! is ignored unless asked for.

use std::path::{Path, PathBuf};

use super::super::fake::{FakeBus, FakeDevice, FakeHub, Fault, Reaction, Transfer};
use super::super::sysfs::fake as tree;
use super::super::transport::{hub, ControlRequest, PowerSwitching, UsbError};
use super::switch::TIMEOUT;
use super::*;
use crate::{Json, MethodKind};

fn parse_src(src: &str) -> Result<HubPortInner, yaml::Error> {
    parse(&yaml::parse(src).unwrap(), "export.hub.config")
}

/// A driver from `src` (without `fake:`) over `bus`, with sysfs at `sysfs`.
fn driver(src: &str, bus: &FakeBus, sysfs: Option<&Path>) -> UsbHubPort {
    let mut inner = parse_src(src).unwrap();
    inner.bus = Arc::new(bus.clone());
    inner.sysfs = sysfs.map(Sysfs::new);
    UsbHubPort {
        inner: Arc::new(inner),
    }
}

fn usb2(location: &str, reaction: Reaction, switching: PowerSwitching) -> FakeDevice {
    FakeDevice::hub(
        location,
        (0x2109, 0x2817),
        Some("HUB1"),
        FakeHub::new(false, 4, switching, reaction),
    )
}

fn usb3_pair(bus: &FakeBus) {
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    bus.add(FakeDevice::hub(
        "2-1",
        (0x2109, 0x0817),
        Some("HUB1"),
        FakeHub::new(true, 4, PowerSwitching::PerPort, Reaction::PerPort),
    ));
}

fn lines(bus: &FakeBus) -> Vec<String> {
    bus.take_transfers().iter().map(|t| t.to_string()).collect()
}

fn message(e: DriverError) -> String {
    e.to_string()
}

#[test]
fn config_keys_defaults_and_mistakes() {
    let c = parse_src("location: 1-1.4\nport: 3\n").unwrap();
    assert_eq!(c.selector, Selector::Location("1-1.4".into()));
    assert_eq!(c.initial, Initial::Keep, "starting never cuts power");
    assert_eq!(c.companion, Companion::Auto);
    assert_eq!(
        c.sysfs.as_ref().map(|s| s.root().to_path_buf()),
        Some(PathBuf::from("/sys"))
    );
    let c = parse_src("vid_pid: 2109:2817\nserial: ABC\nport: 1\ndefault: off\ncompanion: none\n")
        .unwrap();
    assert_eq!(
        c.selector,
        Selector::Id {
            vendor: 0x2109,
            product: 0x2817
        }
    );
    assert_eq!(c.initial, Initial::Off, "YAML 1.1 off reads as the word");
    assert_eq!(c.companion, Companion::None);
    assert_eq!(
        parse_src("location: usb2\nport: 1\ncompanion: 3-1\n")
            .unwrap()
            .companion,
        Companion::At("3-1".into())
    );

    let err = |src: &str| parse_src(src).err().unwrap();
    let e = err("port: 1\n");
    assert!(e.message.contains("select the hub with `location`"), "{e}");
    let e = err("location: 1-1\nvid_pid: 2109:2817\nport: 1\n");
    assert_eq!(e.path, "export.hub.config.vid_pid");
    let e = err("location: 1.1\nport: 1\n");
    assert_eq!(e.path, "export.hub.config.location");
    assert!(e.message.contains("not a USB location"), "{e}");
    let e = err("vid_pid: 2109-2817\nport: 1\n");
    assert!(e.message.contains("not a USB id"), "{e}");
    let e = err("location: 1-1\nport: 0\n");
    assert_eq!(e.path, "export.hub.config.port");
    assert_eq!(e.mark.unwrap().line, 2);
    let e = err("location: 1-1\n");
    assert!(e.message.contains("missing field `port`"), "{e}");
    let e = err("location: 1-1\nport: 1\ndefault: maybe\n");
    assert!(e.message.contains("on, off, keep"), "{e}");
    let e = err("location: 1-1\nport: 1\nportt: 2\n");
    assert!(e.message.contains("unknown field `portt`"), "{e}");
    let e = err("location: 1-1\nport: 1\ncompanion: 2.1\n");
    assert_eq!(e.path, "export.hub.config.companion");
    let e = err("location: 1-1\nport: 1\nsysfs_root: /sys\nfake: {}\n");
    assert!(e.message.contains("real ports"), "{e}");
    let e = err("location: 1-1\nport: 1\nfake: {hub: usb4}\n");
    assert!(
        e.message
            .contains("usb2, usb3, ganged, ignores, gone, denied"),
        "{e}"
    );
}

#[tokio::test]
async fn a_usb2_hub_gets_the_exact_class_requests() {
    let bus = FakeBus::new();
    bus.add(usb2("1-1.4", Reaction::PerPort, PowerSwitching::PerPort));
    let d = driver("location: 1-1.4\nport: 3\n", &bus, None);
    d.call("off", vec![]).await.unwrap();
    assert_eq!(bus.hub_port_powered("1-1.4", 3), Some(false));
    assert_eq!(bus.hub_port_powered("1-1.4", 2), Some(true));
    assert_eq!(
        bus.take_transfers(),
        vec![
            Transfer::ControlIn {
                device: "1-1.4".into(),
                request: ControlRequest {
                    request_type: 0xA0,
                    request: 6,
                    value: 0x2900,
                    index: 0
                },
                length: 71
            },
            Transfer::ControlOut {
                device: "1-1.4".into(),
                request: ControlRequest {
                    request_type: 0x23,
                    request: 1,
                    value: 8,
                    index: 3
                },
                data: vec![]
            },
            Transfer::ControlIn {
                device: "1-1.4".into(),
                request: ControlRequest {
                    request_type: 0xA3,
                    request: 0,
                    value: 0,
                    index: 3
                },
                length: 4
            },
        ]
    );
    d.call("on", vec![]).await.unwrap();
    assert_eq!(
        lines(&bus),
        [
            "1-1.4 control-in a0 06 2900 0000 len 71",
            "1-1.4 control-out 23 03 0008 0003",
            "1-1.4 control-in a3 00 0000 0003 len 4",
        ]
    );
    assert_eq!(bus.hub_port_powered("1-1.4", 3), Some(true));
    assert!(matches!(
        d.call("on", vec![Json::Bool(true)]).await,
        Err(DriverError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_usb3_hub_switches_both_halves_in_the_kernels_order() {
    let bus = FakeBus::new();
    usb3_pair(&bus);
    // Some other vendor's SuperSpeed hub at the same path elsewhere is not the twin.
    bus.add(FakeDevice::hub(
        "4-1",
        (0x05e3, 0x0626),
        None,
        FakeHub::new(true, 4, PowerSwitching::PerPort, Reaction::PerPort),
    ));
    let d = driver("location: 1-1\nport: 2\n", &bus, None);
    d.call("off", vec![]).await.unwrap();
    assert_eq!(
        lines(&bus),
        [
            "1-1 control-in a0 06 2900 0000 len 71",
            "1-1 control-out 23 01 0008 0002",
            "1-1 control-in a3 00 0000 0002 len 4",
            "2-1 control-in a0 06 2a00 0000 len 12",
            "2-1 control-out 23 01 0008 0002",
            "2-1 control-in a3 00 0000 0002 len 4",
        ],
        "off: USB 2 half first"
    );
    assert_eq!(bus.hub_port_powered("1-1", 2), Some(false));
    assert_eq!(bus.hub_port_powered("2-1", 2), Some(false));
    assert_eq!(bus.hub_port_powered("4-1", 2), Some(true));
    d.call("on", vec![]).await.unwrap();
    let on = lines(&bus);
    assert_eq!(
        on[1], "2-1 control-out 23 03 0008 0002",
        "on: SuperSpeed first"
    );
    assert_eq!(on[4], "1-1 control-out 23 03 0008 0002");

    // Selecting the SuperSpeed half finds the USB 2 one just the same.
    let d = driver("location: 2-1\nport: 2\n", &bus, None);
    d.call("off", vec![]).await.unwrap();
    assert_eq!(bus.hub_port_powered("1-1", 2), Some(false));

    // companion: none switches only the one half.
    let d = driver("location: 1-1\nport: 4\ncompanion: none\n", &bus, None);
    d.call("off", vec![]).await.unwrap();
    assert_eq!(bus.hub_port_powered("1-1", 4), Some(false));
    assert_eq!(bus.hub_port_powered("2-1", 4), Some(true));
}

#[tokio::test]
async fn sysfs_disable_is_used_where_the_kernel_has_it_with_peers_for_the_twin() {
    let dir = tempfile::tempdir().unwrap();
    tree::add_hub(dir.path(), "1-1", (0x2109, 0x2817), 4, true).unwrap();
    tree::add_hub(dir.path(), "2-1", (0x2109, 0x0817), 4, true).unwrap();
    // The kernel paired USB 2 port 3 with SuperSpeed port 1 (it need not be the same number).
    tree::link_peers(dir.path(), ("1-1", 3), ("2-1", 1)).unwrap();
    let bus = FakeBus::new();
    usb3_pair(&bus);
    let d = driver("location: 1-1\nport: 3\n", &bus, Some(dir.path()));
    let sys = Sysfs::new(dir.path());
    let usb2 = sys.disable_attribute("1-1", 3).unwrap();
    let ss = sys.disable_attribute("2-1", 1).unwrap();

    d.call("off", vec![]).await.unwrap();
    assert_eq!(std::fs::read_to_string(&usb2).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(&ss).unwrap(), "1");
    assert_eq!(
        std::fs::read_to_string(sys.disable_attribute("2-1", 3).unwrap()).unwrap(),
        "0\n",
        "only the peer port"
    );
    assert!(
        lines(&bus).is_empty(),
        "no usbfs traffic when sysfs can do it"
    );
    d.call("on", vec![]).await.unwrap();
    assert_eq!(std::fs::read_to_string(&usb2).unwrap(), "0");
    assert_eq!(std::fs::read_to_string(&ss).unwrap(), "0");

    // No twin linked: only this port.
    let d = driver("location: 1-1\nport: 2\n", &bus, Some(dir.path()));
    d.call("off", vec![]).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(sys.disable_attribute("2-1", 2).unwrap()).unwrap(),
        "0\n"
    );

    // A port the hub does not have.
    let d = driver("location: 1-1\nport: 7\n", &bus, Some(dir.path()));
    let e = message(d.call("off", vec![]).await.unwrap_err());
    assert!(e.contains("has no port 7 (its ports: 1, 2, 3, 4)"), "{e}");
}

#[tokio::test]
async fn without_disable_the_kernels_peer_still_names_the_twin() {
    // A kernel before 6.0: port devices and peers, no `disable`.
    let dir = tempfile::tempdir().unwrap();
    tree::add_hub(dir.path(), "1-1", (0x2109, 0x2817), 4, false).unwrap();
    tree::add_hub(dir.path(), "2-1", (0x2109, 0x0817), 4, false).unwrap();
    tree::link_peers(dir.path(), ("1-1", 1), ("2-1", 1)).unwrap();
    let bus = FakeBus::new();
    usb3_pair(&bus);
    let d = driver("location: 1-1\nport: 1\n", &bus, Some(dir.path()));
    d.call("off", vec![]).await.unwrap();
    let sent: Vec<String> = lines(&bus)
        .into_iter()
        .filter(|l| l.contains("control-out"))
        .collect();
    assert_eq!(
        sent,
        [
            "1-1 control-out 23 01 0008 0001",
            "2-1 control-out 23 01 0008 0001"
        ]
    );
    // And where the kernel knows the hub but linked no peer, there is no twin.
    let d = driver("location: 1-1\nport: 2\n", &bus, Some(dir.path()));
    d.call("off", vec![]).await.unwrap();
    assert_eq!(bus.hub_port_powered("2-1", 2), Some(true));
}

#[tokio::test]
async fn hubs_that_ignore_the_request_are_reported_with_what_they_declare() {
    let bus = FakeBus::new();
    bus.add(usb2("1-1", Reaction::Ignores, PowerSwitching::PerPort));
    bus.add(usb2("1-2", Reaction::Ganged, PowerSwitching::Ganged));
    bus.add(usb2("1-3", Reaction::Ignores, PowerSwitching::None));
    let e = message(
        driver("location: 1-1\nport: 2\n", &bus, None)
            .call("off", vec![])
            .await
            .unwrap_err(),
    );
    assert!(
        e.starts_with(
            "USB hub 1-1 (2109:2817, bus 1 address 8) ignored the request to switch port 2 \
                 off: after ClearPortFeature(PORT_POWER) its port status still reads powered."
        ),
        "{e}"
    );
    assert!(e.contains("claims per-port power switching"), "{e}");
    assert!(e.contains("which hubs really cut power"), "{e}");
    let e = message(
        driver("location: 1-2\nport: 1\n", &bus, None)
            .call("off", vec![])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("declares ganged power switching"), "{e}");
    let e = message(
        driver("location: 1-3\nport: 1\n", &bus, None)
            .call("off", vec![])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("declares no power switching"), "{e}");
    // Switching on a port that is on anyway is fine for all of them.
    driver("location: 1-1\nport: 2\n", &bus, None)
        .call("on", vec![])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_ganged_hub_does_switch_once_every_port_is_off() {
    let bus = FakeBus::new();
    bus.add(FakeDevice::hub(
        "1-1",
        (0x1a40, 0x0101),
        None,
        FakeHub::new(false, 1, PowerSwitching::Ganged, Reaction::Ganged),
    ));
    let d = driver("location: 1-1\nport: 1\n", &bus, None);
    d.call("off", vec![]).await.unwrap();
    assert_eq!(bus.hub_port_powered("1-1", 1), Some(false));
}

#[tokio::test]
async fn missing_gone_and_forbidden_hubs_say_so() {
    let bus = FakeBus::new();
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort).with_fault(Fault::Denied));
    bus.add(usb2("1-2", Reaction::PerPort, PowerSwitching::PerPort).with_fault(Fault::Gone));
    bus.add(FakeDevice::ykush("1-3", "YK1"));
    let err = |loc: &str| {
        let d = driver(&format!("location: {loc}\nport: 1\n"), &bus, None);
        async move { d.call("on", vec![]).await.unwrap_err() }
    };
    let e = err("1-1").await;
    assert!(matches!(e, DriverError::Failed(_)));
    let e = message(e);
    assert!(
        e.contains("permission denied opening USB hub 1-1 (2109:2817, bus 1 address 8)"),
        "{e}"
    );
    assert!(e.contains("/dev/bus/usb/001/008"), "{e}");
    assert!(e.contains(super::super::UDEV_RULES), "{e}");
    let e = err("1-2").await;
    assert!(matches!(e, DriverError::Unavailable(_)), "{e:?}");
    assert!(message(e).contains("is gone (unplugged?)"));
    let e = err("1-9").await;
    assert!(matches!(e, DriverError::Unavailable(_)), "{e:?}");
    assert!(message(e).contains("no USB device at 1-9"));
    let e = message(err("1-3").await);
    assert!(e.contains("04d8:f2f7) is not a hub"), "{e}");
    let e = message(
        driver("location: 1-2\nport: 1\nserial: OTHER\n", &bus, None)
            .call("on", vec![])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("has serial HUB1, not OTHER"), "{e}");
}

#[tokio::test]
async fn selection_by_id_and_serial() {
    let bus = FakeBus::new();
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    bus.add(FakeDevice::hub(
        "1-2",
        (0x2109, 0x2817),
        Some("HUB2"),
        FakeHub::new(false, 4, PowerSwitching::PerPort, Reaction::PerPort),
    ));
    let e = message(
        driver("vid_pid: 2109:2817\nport: 1\n", &bus, None)
            .call("off", vec![])
            .await
            .unwrap_err(),
    );
    assert!(
        e.contains("2 hubs match 2109:2817: 1-1, 1-2; add `serial:`"),
        "{e}"
    );
    driver("vid_pid: 2109:2817\nserial: HUB2\nport: 1\n", &bus, None)
        .call("off", vec![])
        .await
        .unwrap();
    assert_eq!(bus.hub_port_powered("1-2", 1), Some(false));
    assert_eq!(bus.hub_port_powered("1-1", 1), Some(true));
    let e = driver("vid_pid: 2109:2817\nserial: HUB3\nport: 1\n", &bus, None)
        .call("off", vec![])
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::Unavailable(_)), "{e:?}");
    assert!(message(e).contains("no USB hub 2109:2817 with serial HUB3"));
}

#[tokio::test]
async fn a_port_beyond_the_descriptor_is_refused_before_sending() {
    let bus = FakeBus::new();
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    let e = message(
        driver("location: 1-1\nport: 6\n", &bus, None)
            .call("off", vec![])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("has 4 ports; there is no port 6"), "{e}");
    assert_eq!(lines(&bus), ["1-1 control-in a0 06 2900 0000 len 71"]);
}

#[tokio::test]
async fn default_is_applied_at_session_start_and_keep_touches_nothing() {
    let bus = FakeBus::new();
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    driver("location: 1-1\nport: 1\n", &bus, None)
        .reset()
        .await
        .unwrap();
    assert!(bus.transfers().is_empty());
    driver("location: 1-1\nport: 1\ndefault: off\n", &bus, None)
        .reset()
        .await
        .unwrap();
    assert_eq!(bus.hub_port_powered("1-1", 1), Some(false));
    driver("location: 1-1\nport: 1\ndefault: on\n", &bus, None)
        .reset()
        .await
        .unwrap();
    assert_eq!(bus.hub_port_powered("1-1", 1), Some(true));
    // keep does not even need the hub to be there.
    let empty = FakeBus::new();
    driver("location: 1-1\nport: 1\n", &empty, None)
        .reset()
        .await
        .unwrap();
}

#[tokio::test]
async fn read_is_a_streaming_call_that_is_not_implemented() {
    let bus = FakeBus::new();
    let d = driver("location: 1-1\nport: 1\n", &bus, None);
    assert_eq!(d.method("read"), Some(MethodKind::Streaming));
    assert_eq!(d.method("on"), Some(MethodKind::Call));
    assert_eq!(d.method("cycle"), None);
    let e = d.streaming_call("read", vec![]).await.err().unwrap();
    assert!(matches!(e, DriverError::NotImplemented(_)));
    assert!(message(e).contains("cannot measure voltage or current"));
}

#[tokio::test]
async fn the_fake_selected_from_the_config_logs_to_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hub.log");
    let src = format!(
        "location: 3-2\nport: 1\nfake:\n  hub: usb3\n  log: {}\n",
        log.display()
    );
    let spec = spec(&yaml::parse(&src).unwrap(), "export.hub.config").unwrap();
    assert_eq!(spec.client(), crate::client::POWER);
    let d = spec.build();
    d.call("off", vec![]).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let sent: Vec<&str> = text.lines().filter(|l| l.contains("control-out")).collect();
    assert_eq!(
        sent,
        [
            "3-2 control-out 23 01 0008 0001",
            "4-2 control-out 23 01 0008 0001"
        ]
    );
    // A second session's driver shares the simulated hardware.
    spec.build().call("on", vec![]).await.unwrap();
    for (kind, expected) in [
        ("ignores", "ignored the request"),
        ("ganged", "ganged"),
        ("gone", "is gone"),
        ("denied", "permission denied"),
    ] {
        let src = format!("location: 1-1\nport: 1\nfake: {{hub: {kind}}}\n");
        let d = spec_build(&src);
        let e = message(d.call("off", vec![]).await.unwrap_err());
        assert!(e.contains(expected), "{kind}: {e}");
    }
    let d = spec_build("vid_pid: 1a40:0101\nserial: X\nport: 2\nfake: {}\n");
    d.call("off", vec![]).await.unwrap();
}

fn spec_build(src: &str) -> Box<dyn Driver> {
    spec(&yaml::parse(src).unwrap(), "p").unwrap().build()
}

#[test]
#[ignore = "needs a USB hub: JMP_TEST_HUB=LOCATION:PORT, and permission to switch it"]
fn a_real_hub_port_switches_off_and_on() {
    let target = std::env::var("JMP_TEST_HUB").expect("JMP_TEST_HUB=1-1.4:3");
    let (location, port) = target.rsplit_once(':').expect("LOCATION:PORT");
    let src = format!("location: {location}\nport: {port}\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = spec_build(&src);
        d.call("off", vec![]).await.unwrap();
        d.call("on", vec![]).await.unwrap();
    });
}

/// The hub disappears and returns, both ways a test can make a fake hub go: off the fake
/// bus (control requests), and out of the fake sysfs tree the bus follows (the kernel's
/// `disable` switch). Every call meanwhile is UNAVAILABLE naming hub and port; the first
/// call after the return switches the port, with no new driver.
#[tokio::test]
async fn a_hub_that_disappears_is_unavailable_naming_hub_and_port_until_it_returns() {
    let unavailable = |e: DriverError| match e {
        DriverError::Unavailable(m) => m,
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    };

    // Off the bus, selected by id and serial.
    let bus = FakeBus::new();
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    let d = driver("vid_pid: 2109:2817\nserial: HUB1\nport: 3\n", &bus, None);
    d.call("off", vec![]).await.unwrap();
    bus.unplug("1-1");
    let m = unavailable(d.call("on", vec![]).await.unwrap_err());
    assert!(
        m.contains("port 3 of USB hub 2109:2817 with serial HUB1")
            && m.contains("works as soon as it is back"),
        "{m}"
    );
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    d.call("off", vec![]).await.unwrap();
    assert_eq!(bus.hub_port_powered("1-1", 3), Some(false));

    // Out of the sysfs tree the fake bus follows, by location.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    tree::add_hub(&root, "1-2", (0x2109, 0x2817), 4, true).unwrap();
    let bus = FakeBus::new().plugged_per(Sysfs::new(&root));
    bus.add(usb2("1-2", Reaction::PerPort, PowerSwitching::PerPort));
    let d = driver("location: 1-2\nport: 2\n", &bus, Some(&root));
    d.call("off", vec![]).await.unwrap();
    let hub_dir = root.join("bus/usb/devices/1-2");
    std::fs::remove_dir_all(&hub_dir).unwrap();
    let m = unavailable(d.call("on", vec![]).await.unwrap_err());
    assert!(
        m.contains("cannot switch port 2 of USB hub 1-2 on") && m.contains("no USB device at 1-2"),
        "{m}"
    );
    assert!(bus.hub_port_powered("1-2", 2).is_none(), "off the bus too");
    tree::add_hub(&root, "1-2", (0x2109, 0x2817), 4, true).unwrap();
    d.call("off", vec![]).await.unwrap();
    let disable = Sysfs::new(&root).disable_attribute("1-2", 2).unwrap();
    assert_eq!(std::fs::read_to_string(disable).unwrap(), "1");

    // Gone between the look-up and the switch: the handle's transfers fail.
    let bus = FakeBus::new();
    bus.add(usb2("1-3", Reaction::PerPort, PowerSwitching::PerPort));
    let hub = bus.devices().unwrap().remove(0);
    let mut handle = bus.open(&hub).unwrap();
    bus.unplug("1-3");
    assert_eq!(
        handle
            .control_out(hub::port_power(1, true), &[], TIMEOUT)
            .unwrap_err(),
        UsbError::NoDevice
    );
}

/// Presence is a look at the bus for the hub the config selects: it follows an unplug and a
/// return, and never sends a request.
#[test]
fn presence_follows_the_hub_on_the_bus_without_a_transfer() {
    let bus = FakeBus::new();
    let mut inner = parse_src("location: 1-1\nport: 2\n").unwrap();
    inner.bus = Arc::new(bus.clone());
    inner.sysfs = None;
    let spec = HubPortSpec {
        inner: Arc::new(inner),
    };
    assert_eq!(spec.device_present(), Some(false), "not plugged yet");
    bus.add(usb2("1-1", Reaction::PerPort, PowerSwitching::PerPort));
    assert_eq!(spec.device_present(), Some(true));
    bus.unplug("1-1");
    assert_eq!(spec.device_present(), Some(false), "unplugged");
    assert!(bus.transfers().is_empty(), "{:?}", bus.transfers());
}
