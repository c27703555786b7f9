//! The `config:` of a `UsbHubPort` entry, checked once at config load with the YAML path of
//! the offending key, so that a typo fails `jmp-exporter check` rather than the first switch.
//! It also assembles the simulated hardware a `fake:` entry asks for, because what is
//! simulated follows from the selector and port given. Nothing here opens a device.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::HubPortInner;
use crate::usb::fake::{FakeBus, FakeDevice, FakeHub, Fault, Reaction};
use crate::usb::libusb::LibusbBus;
use crate::usb::sysfs::{self, Sysfs};
use crate::usb::transport::{location_of, parse_location, PowerSwitching, UsbBus};
use crate::usb::Initial;
use crate::yaml::{self, Node};

/// The `config:` keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The hub's kernel name: `1-1.4`, or `usb1` for a root hub.
    #[serde(default)]
    location: Option<String>,
    /// Or the hub's `vvvv:pppp` (with `serial` when several match).
    #[serde(default)]
    vid_pid: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    port: u8,
    #[serde(default)]
    default: Initial,
    /// `auto` (default), `none`, or the location of the other half of a USB 3 hub.
    #[serde(default)]
    companion: Option<String>,
    /// Where sysfs is (default `/sys`).
    #[serde(default)]
    sysfs_root: Option<PathBuf>,
    /// Simulated hardware, for tests and demos.
    #[serde(default)]
    fake: Option<FakeConfig>,
}

/// `fake:`: a simulated hub at the configured location (or `1-1` when selected by `vid_pid`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeConfig {
    #[serde(default)]
    hub: FakeHubKind,
    /// A file each transfer is appended to, one line each (see [`crate::usb::fake`]).
    #[serde(default)]
    log: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FakeHubKind {
    /// A USB 2 hub with per-port switching.
    #[default]
    Usb2,
    /// A USB 3 hub: the USB 2 half at the location, the SuperSpeed half on the next bus.
    Usb3,
    /// Declares and does ganged switching.
    Ganged,
    /// Claims per-port switching and ignores the requests.
    Ignores,
    /// Listed, but gone when opened.
    Gone,
    /// Listed, but opening it is refused.
    Denied,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Selector {
    Location(String),
    Id { vendor: u16, product: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Companion {
    Auto,
    None,
    At(String),
}

/// Parses `vvvv:pppp`.
fn parse_id(text: &str) -> Option<(u16, u16)> {
    let (v, p) = text.split_once(':')?;
    let hex = |s: &str| {
        (s.len() == 4)
            .then(|| u16::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(v)?, hex(p)?))
}

pub(super) fn parse(node: &Node, path: &str) -> Result<HubPortInner, yaml::Error> {
    let c: Config = yaml::from_node(node, path)?;
    let at = |key: &str, message: String| {
        let n = node.get(key).unwrap_or(node);
        yaml::Error::at(&yaml::join(path, key), n, message)
    };
    let bad_location = |text: &str| {
        format!(
            "`{text}` is not a USB location; write it as the kernel names the hub: \"1-1.4\" \
             (bus 1, port 1, then port 4) or \"usb1\" for a root hub (`jmp-exporter list usb` \
             shows them)"
        )
    };
    let selector =
        match (&c.location, &c.vid_pid) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "vid_pid",
                    "give either `location` or `vid_pid` (with `serial`), not both".into(),
                ))
            }
            (None, None) => return Err(yaml::Error::at(
                path,
                node,
                "select the hub with `location` (such as \"1-1.4\", as `jmp-exporter list usb` \
                 shows it) or with `vid_pid` (and `serial`)",
            )),
            (Some(l), None) => {
                if parse_location(l).is_none() {
                    return Err(at("location", bad_location(l)));
                }
                Selector::Location(l.clone())
            }
            (None, Some(id)) => {
                let (vendor, product) = parse_id(id).ok_or_else(|| {
                    at(
                        "vid_pid",
                        format!("`{id}` is not a USB id; write it as lsusb does: \"2109:2817\""),
                    )
                })?;
                Selector::Id { vendor, product }
            }
        };
    if c.port == 0 {
        return Err(at("port", "hub ports are numbered from 1".into()));
    }
    let companion = match c.companion.as_deref() {
        None | Some("auto") => Companion::Auto,
        Some("none") => Companion::None,
        Some(l) if parse_location(l).is_some() => Companion::At(l.to_string()),
        Some(l) => {
            return Err(at(
                "companion",
                format!("{} (or `auto`, or `none`)", bad_location(l)),
            ))
        }
    };
    let (bus, sysfs): (Arc<dyn UsbBus>, Option<Sysfs>) = match &c.fake {
        Some(fake) => {
            if c.sysfs_root.as_deref() == Some(Path::new(sysfs::SYSTEM_ROOT)) {
                return Err(at(
                    "sysfs_root",
                    "a fake hub with the real /sys would switch this machine's real ports; \
                     point `sysfs_root` at a fake tree or leave it out"
                        .into(),
                ));
            }
            let bus = fake_bus(fake, &selector, c.serial.as_deref(), c.port);
            // With a fake tree, the tree says what is plugged in (see `fake`).
            let bus = match &c.sysfs_root {
                Some(root) => bus.plugged_per(Sysfs::new(root)),
                None => bus,
            };
            (Arc::new(bus), c.sysfs_root.map(Sysfs::new))
        }
        None => {
            let root = Sysfs::new(
                c.sysfs_root
                    .unwrap_or_else(|| PathBuf::from(sysfs::SYSTEM_ROOT)),
            );
            (Arc::new(LibusbBus::new(root.clone())), Some(root))
        }
    };
    Ok(HubPortInner {
        selector,
        serial: c.serial,
        port: c.port,
        initial: c.default,
        companion,
        sysfs,
        bus,
        lock: Mutex::new(()),
    })
}

/// The simulated hardware a `fake:` entry asks for.
fn fake_bus(fake: &FakeConfig, selector: &Selector, serial: Option<&str>, port: u8) -> FakeBus {
    let bus = crate::usb::fake_log(fake.log.clone());
    let (location, id) = match selector {
        Selector::Location(l) => (l.clone(), (0x2109, 0x2817)),
        Selector::Id { vendor, product } => ("1-1".to_string(), (*vendor, *product)),
    };
    let ports = port.max(4);
    let (switching, reaction) = match fake.hub {
        FakeHubKind::Ganged => (PowerSwitching::Ganged, Reaction::Ganged),
        FakeHubKind::Ignores => (PowerSwitching::PerPort, Reaction::Ignores),
        _ => (PowerSwitching::PerPort, Reaction::PerPort),
    };
    let mut device = FakeDevice::hub(
        &location,
        id,
        serial,
        FakeHub::new(false, ports, switching, reaction),
    );
    match fake.hub {
        FakeHubKind::Gone => device = device.with_fault(Fault::Gone),
        FakeHubKind::Denied => device = device.with_fault(Fault::Denied),
        _ => {}
    }
    bus.add(device);
    if fake.hub == FakeHubKind::Usb3 {
        if let Some((b, path)) = parse_location(&location) {
            // The SuperSpeed half: next bus, same port path, another product id.
            bus.add(FakeDevice::hub(
                &location_of(b.wrapping_add(1), &path),
                (id.0, id.1 ^ 0x2000),
                serial,
                FakeHub::new(true, ports, PowerSwitching::PerPort, Reaction::PerPort),
            ));
        }
    }
    bus
}
