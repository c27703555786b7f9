//! Switching one configured port: finding the hub again on every call, adding the twin port
//! of a USB 3 hub's other half, ordering both as the kernel does, then switching each through
//! sysfs `disable` where the kernel offers it and hub class requests where it does not. Every
//! switch is read back, since many hubs accept the request and do nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::{Companion, Selector};
use super::HubPortInner;
use crate::usb::sysfs::{self, Sysfs};
use crate::usb::transport::{hub, DeviceInfo, HubDescriptor, PowerSwitching, UsbBus, UsbError};
use crate::usb::{device_error, permission_hint};
use crate::DriverError;

/// Time allowed for one control transfer.
pub(super) const TIMEOUT: Duration = Duration::from_secs(2);

/// Longest USB 2 hub descriptor (255 ports); a SuperSpeed one is 12 bytes.
const HUB_DESCRIPTOR_MAX: u16 = 71;
const SS_HUB_DESCRIPTOR_LEN: u16 = 12;

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

    pub(super) fn find_hub(&self, devices: &[DeviceInfo]) -> Result<DeviceInfo, DriverError> {
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
    pub(super) fn switch(&self, on: bool) -> Result<(), DriverError> {
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
