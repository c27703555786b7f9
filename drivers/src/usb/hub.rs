//! `UsbHubPort` (type `jmp_exporter.drivers.UsbHubPort`): the power of one port of a USB hub,
//! as a `PowerClient` power switch.
//!
//! How a port is switched, per port and per hub half:
//! - Where the kernel offers the port's sysfs `disable` attribute (Linux 6.0+), write it; the
//!   kernel then switches the port and keeps it off, and reading the attribute back asks the
//!   hub for the port status.
//! - Otherwise send the hub class requests SetPortFeature / ClearPortFeature(PORT_POWER) and
//!   read GetPortStatus back (the power bit is 0x0100 on a USB 2 hub, 0x0200 on a SuperSpeed
//!   one). The hub descriptor tells how many ports the hub has and whether it claims per-port
//!   switching; it goes into the error when a hub ignores the request.
//!
//! A USB 3 hub is two hubs to the host (a USB 2 half and a SuperSpeed half), and the power of
//! a physical port is only cut when both halves switch it off. The twin port is the one the
//! kernel linked as `peer` in sysfs; without sysfs, the hub of the other USB generation from
//! the same vendor at the same port path on the neighbouring bus. Both are switched in the
//! kernel's order: off USB 2 first, on SuperSpeed first (so that a USB 3 device does not fall
//! back to its USB 2 connection).
//!
//! Nothing is opened when the config is loaded or a session starts with `default: keep`; the
//! hub is looked up again for every switch, so a replugged hub is found at its new address.
//!
//! ## Config
//! ```yaml
//! type: jmp_exporter.drivers.UsbHubPort
//! config:
//!   location: "1-1.4"        # the hub as the kernel names it (`usb1` for a root hub), or
//!   # vid_pid: "2109:2817"   # its id, with `serial:` when several hubs have it
//!   # serial: "000000001"    # also checked when given with `location`
//!   port: 3                  # 1-based
//!   default: keep            # keep (default) | on | off, applied at each session start
//!   # companion: auto        # auto (default) | none | the location of the other USB 3 half
//!   # sysfs_root: /sys       # where sysfs is
//!   # fake:                  # test and demo aid: a simulated hub instead of USB
//!   #   hub: usb2            # usb2 | usb3 | ganged | ignores | gone | denied
//!   #   log: /tmp/usb.log    # every transfer, one line each
//! ```
//! With `fake:`, sysfs is used only if `sysfs_root` names a (fake) tree; `/sys` is refused.
//! The simulated hubs are then plugged in only while that tree has them.
//!
//! ## A hub that disappears
//!
//! A hub unplugged (or re-enumerating) makes every call fail with UNAVAILABLE naming the hub
//! (location, id, serial where configured) and the port, whether it was gone at the look-up or
//! went in the middle of the switch. Nothing needs restarting: the hub is looked up afresh at
//! every call, so the first call after it is back switches it, at its new address if it got
//! one. A hub that vanished mid-switch may have switched one half of a USB 3 pair; the next
//! call switches both again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::fake::{FakeBus, FakeDevice, FakeHub, Fault, Reaction};
use super::libusb::LibusbBus;
use super::sysfs::{self, Sysfs};
use super::transport::{
    hub, location_of, parse_location, DeviceInfo, HubDescriptor, PowerSwitching, UsbBus, UsbError,
};
use super::{blocking, device_error, permission_hint, Initial, PortSwitch};
use crate::yaml::{self, Node};
use crate::{Driver, DriverError, DriverSpec};

/// Our own type name for this driver; stable, as lab configs will name it.
pub const TYPE: &str = "jmp_exporter.drivers.UsbHubPort";

/// Time allowed for one control transfer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Longest USB 2 hub descriptor (255 ports); a SuperSpeed one is 12 bytes.
const HUB_DESCRIPTOR_MAX: u16 = 71;
const SS_HUB_DESCRIPTOR_LEN: u16 = 12;

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
    /// A file each transfer is appended to, one line each (see [`super::fake`]).
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
enum Selector {
    Location(String),
    Id { vendor: u16, product: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Companion {
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

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(HubPortSpec {
        inner: Arc::new(parse(node, path)?),
    }))
}

fn parse(node: &Node, path: &str) -> Result<HubPortInner, yaml::Error> {
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
    let bus = super::fake_log(fake.log.clone());
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

struct HubPortSpec {
    inner: Arc<HubPortInner>,
}

impl DriverSpec for HubPortSpec {
    fn client(&self) -> &'static str {
        crate::POWER_CLIENT
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(UsbHubPort {
            inner: self.inner.clone(),
        })
    }
}

/// Shared by every session's driver of one config entry.
struct HubPortInner {
    selector: Selector,
    serial: Option<String>,
    port: u8,
    initial: Initial,
    companion: Companion,
    sysfs: Option<Sysfs>,
    bus: Arc<dyn UsbBus>,
    /// One switch at a time.
    lock: Mutex<()>,
}

/// One port of one hub half to switch.
struct Target {
    hub: DeviceInfo,
    port: u8,
    /// The sysfs `disable` attribute, where the kernel offers it.
    disable: Option<PathBuf>,
}

impl HubPortInner {
    fn selection(&self) -> String {
        let serial = self
            .serial
            .as_ref()
            .map(|s| format!(" with serial {s}"))
            .unwrap_or_default();
        match &self.selector {
            Selector::Location(l) => format!("{l}{serial}"),
            Selector::Id { vendor, product } => format!("{vendor:04x}:{product:04x}{serial}"),
        }
    }

    fn find_hub(&self, devices: &[DeviceInfo]) -> Result<DeviceInfo, DriverError> {
        let serial_ok = |d: &DeviceInfo| match &self.serial {
            Some(s) => d.serial.as_deref() == Some(s.as_str()),
            None => true,
        };
        match &self.selector {
            Selector::Location(location) => {
                let d = devices
                    .iter()
                    .find(|d| d.location() == *location)
                    .ok_or_else(|| {
                        DriverError::Unavailable(format!(
                            "no USB device at {location}: the hub is unplugged or the location \
                             is wrong (`jmp-exporter list usb` shows the hubs present)"
                        ))
                    })?;
                if !d.is_hub() {
                    return Err(DriverError::Failed(format!(
                        "the USB device at {location} ({}) is not a hub",
                        d.id()
                    )));
                }
                if !serial_ok(d) {
                    return Err(DriverError::Failed(format!(
                        "the hub at {location} has serial {}, not {}",
                        d.serial.as_deref().unwrap_or("(none)"),
                        self.serial.as_deref().unwrap_or_default()
                    )));
                }
                Ok(d.clone())
            }
            Selector::Id { vendor, product } => {
                let found: Vec<&DeviceInfo> = devices
                    .iter()
                    .filter(|d| {
                        d.is_hub()
                            && d.vendor_id == *vendor
                            && d.product_id == *product
                            && serial_ok(d)
                    })
                    .collect();
                match found.as_slice() {
                    [one] => Ok((*one).clone()),
                    [] => Err(DriverError::Unavailable(format!(
                        "no USB hub {} is connected (`jmp-exporter list usb` shows the hubs present)",
                        self.selection()
                    ))),
                    many => Err(DriverError::Failed(format!(
                        "{} hubs match {}: {}; add `serial:` or select the hub by `location:`",
                        many.len(),
                        self.selection(),
                        many.iter()
                            .map(|d| d.location())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    fn companion(
        &self,
        devices: &[DeviceInfo],
        hub: &DeviceInfo,
    ) -> Result<Option<(DeviceInfo, u8)>, DriverError> {
        match &self.companion {
            Companion::None => Ok(None),
            Companion::Auto => Ok(companion_of(devices, self.sysfs.as_ref(), hub, self.port)),
            Companion::At(location) => devices
                .iter()
                .find(|d| d.location() == *location && d.is_hub())
                .map(|d| Some((d.clone(), self.port)))
                .ok_or_else(|| {
                    DriverError::Unavailable(format!(
                        "no USB hub at {location} (the configured companion of {})",
                        hub.location()
                    ))
                }),
        }
    }

    fn target(&self, hub: DeviceInfo, port: u8) -> Result<Target, DriverError> {
        let location = hub.location();
        let disable = self
            .sysfs
            .as_ref()
            .and_then(|s| s.disable_attribute(&location, port));
        if disable.is_none() {
            if let Some(s) = &self.sysfs {
                let ports = s.ports(&location);
                if !ports.is_empty() && !ports.contains(&port) {
                    return Err(DriverError::Failed(format!(
                        "USB hub {} has no port {port} (its ports: {})",
                        hub.describe(),
                        ports
                            .iter()
                            .map(u8::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        Ok(Target { hub, port, disable })
    }

    /// Switches the port (and its USB 3 twin) and checks that the hub did it; a hub that is
    /// gone is said to be so, naming the port.
    fn switch(&self, on: bool) -> Result<(), DriverError> {
        self.switch_once(on).map_err(|e| match e {
            DriverError::Unavailable(m) => DriverError::Unavailable(format!(
                "cannot switch port {} of USB hub {} {}: {m}; the hub is looked up again at every \
                 call, so this works as soon as it is back",
                self.port,
                self.selection(),
                if on { "on" } else { "off" },
            )),
            other => other,
        })
    }

    fn switch_once(&self, on: bool) -> Result<(), DriverError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let devices = self
            .bus
            .devices()
            .map_err(|e| device_error(&format!("USB hub {}", self.selection()), None, e))?;
        let hub = self.find_hub(&devices)?;
        let mut targets = vec![self.target(hub.clone(), self.port)?];
        if let Some((twin, port)) = self.companion(&devices, &hub)? {
            targets.push(self.target(twin, port)?);
        }
        // The kernel's order: on SuperSpeed first, off USB 2 first.
        targets.sort_by_key(|t| t.hub.is_superspeed() != on);
        for t in &targets {
            apply(self.bus.as_ref(), t, on)?;
        }
        let also = targets
            .iter()
            .filter(|t| t.hub.location() != hub.location())
            .map(|t| {
                format!(
                    " (and its USB 3 companion {} port {})",
                    t.hub.location(),
                    t.port
                )
            })
            .collect::<String>();
        tracing::info!(
            "Power {} for USB hub {} port {}{also}",
            if on { "ON" } else { "OFF" },
            hub.location(),
            self.port
        );
        Ok(())
    }
}

/// The twin of `port` on the other half of a USB 3 hub, if `hub` is half of one: the port
/// sysfs links as `peer` where sysfs knows the hub, else the hub of the other USB generation
/// from the same vendor at the same port path on another bus (the nearest bus number wins).
pub(crate) fn companion_of(
    devices: &[DeviceInfo],
    sysfs: Option<&Sysfs>,
    hub: &DeviceInfo,
    port: u8,
) -> Option<(DeviceInfo, u8)> {
    let location = hub.location();
    if let Some(sys) = sysfs.filter(|s| s.has_device(&location)) {
        let (peer_hub, peer_port) = sys.peer(&location, port)?;
        return devices
            .iter()
            .find(|d| d.location() == peer_hub)
            .map(|d| (d.clone(), peer_port));
    }
    if hub.ports.is_empty() {
        // Root hubs number their ports independently; only the kernel knows the pairs.
        return None;
    }
    devices
        .iter()
        .filter(|d| {
            d.is_hub()
                && d.bus != hub.bus
                && d.ports == hub.ports
                && d.vendor_id == hub.vendor_id
                && d.is_superspeed() != hub.is_superspeed()
        })
        .min_by_key(|d| d.bus.abs_diff(hub.bus))
        .map(|d| (d.clone(), port))
}

fn sysfs_error(what: &str, path: &Path, e: std::io::Error) -> DriverError {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => DriverError::Failed(format!(
            "permission denied writing {} for {what}: {}",
            path.display(),
            permission_hint()
        )),
        std::io::ErrorKind::NotFound => {
            DriverError::Unavailable(format!("{what} is gone (unplugged?)"))
        }
        _ => DriverError::Failed(format!("{what}: {}: {e}", path.display())),
    }
}

const MANY_HUBS: &str = "Many hubs do not switch power per port: some switch all ports \
    together, some never cut VBUS; see the jmp-exporter README on which hubs really cut power";

fn switching_note(switching: Option<PowerSwitching>, port: u8) -> String {
    match switching {
        Some(PowerSwitching::PerPort) => {
            "Its hub descriptor claims per-port power switching, which it does not honour. ".into()
        }
        Some(PowerSwitching::Ganged) => format!(
            "Its hub descriptor declares ganged power switching: all ports switch together, so \
             port {port} loses power only when every port is off. "
        ),
        Some(PowerSwitching::None) => "Its hub descriptor declares no power switching. ".into(),
        None => String::new(),
    }
}

/// Switches one port of one hub half and reads the result back.
fn apply(bus: &dyn UsbBus, t: &Target, on: bool) -> Result<(), DriverError> {
    let what = format!("USB hub {}", t.hub.describe());
    let state = if on { "on" } else { "off" };
    let still = if on { "unpowered" } else { "powered" };
    if let Some(path) = &t.disable {
        sysfs::write_powered(path, on).map_err(|e| sysfs_error(&what, path, e))?;
        let powered = sysfs::read_powered(path).map_err(|e| sysfs_error(&what, path, e))?;
        if powered != on {
            return Err(DriverError::Failed(format!(
                "{what} ignored the request to switch port {} {state}: after writing {} to {} \
                 the kernel still reads the port as {still}. {MANY_HUBS}",
                t.port,
                if on { 0 } else { 1 },
                path.display()
            )));
        }
        return Ok(());
    }
    let usb_error = |e: UsbError| device_error(&what, Some(&t.hub), e);
    let mut dev = bus.open(&t.hub).map_err(usb_error)?;
    let superspeed = t.hub.is_superspeed();
    let length = if superspeed {
        SS_HUB_DESCRIPTOR_LEN
    } else {
        HUB_DESCRIPTOR_MAX
    };
    let descriptor = match dev.control_in(hub::descriptor(superspeed), length, TIMEOUT) {
        Ok(bytes) => HubDescriptor::parse(&bytes),
        Err(e @ (UsbError::NoDevice | UsbError::Timeout | UsbError::Access)) => {
            return Err(usb_error(e))
        }
        // A hub that will not describe itself may still switch; the read-back decides.
        Err(_) => None,
    };
    if let Some(d) = descriptor {
        if t.port > d.ports {
            return Err(DriverError::Failed(format!(
                "{what} has {} ports; there is no port {}",
                d.ports, t.port
            )));
        }
    }
    dev.control_out(hub::port_power(t.port, on), &[], TIMEOUT)
        .map_err(usb_error)?;
    let status = dev
        .control_in(hub::port_status(t.port), 4, TIMEOUT)
        .map_err(usb_error)?;
    let [lo, hi, ..] = status[..] else {
        return Err(DriverError::Failed(format!(
            "{what} sent a short port status ({} bytes)",
            status.len()
        )));
    };
    if hub::powered(superspeed, u16::from_le_bytes([lo, hi])) != on {
        return Err(DriverError::Failed(format!(
            "{what} ignored the request to switch port {} {state}: after {}PortFeature(PORT_POWER) \
             its port status still reads {still}. {}{MANY_HUBS}",
            t.port,
            if on { "Set" } else { "Clear" },
            switching_note(descriptor.map(|d| d.switching), t.port)
        )));
    }
    Ok(())
}

/// The driver of one session.
pub struct UsbHubPort {
    inner: Arc<HubPortInner>,
}

#[async_trait]
impl PortSwitch for UsbHubPort {
    const WHAT: &'static str = "a USB hub port";

    fn initial(&self) -> Initial {
        self.inner.initial
    }

    async fn switch(&self, on: bool) -> Result<(), DriverError> {
        let inner = self.inner.clone();
        blocking(move || inner.switch(on)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeBus, FakeDevice, FakeHub, Reaction, Transfer};
    use super::super::sysfs::fake as tree;
    use super::super::transport::{ControlRequest, PowerSwitching};
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
        let c =
            parse_src("vid_pid: 2109:2817\nserial: ABC\nport: 1\ndefault: off\ncompanion: none\n")
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
        assert_eq!(spec.client(), crate::POWER_CLIENT);
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
            m.contains("cannot switch port 2 of USB hub 1-2 on")
                && m.contains("no USB device at 1-2"),
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
}
