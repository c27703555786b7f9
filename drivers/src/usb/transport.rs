//! The seam between the USB power drivers and USB itself: a small trait over device lookup and
//! the few transfers they make (control transfers to a hub, interrupt reports to a YKUSH), so
//! that the real one ([`super::libusb`]) and the recording fake ([`super::fake`]) are
//! interchangeable. Everything here is blocking; drivers call it from `spawn_blocking`.
//!
//! Also the USB hub class facts the drivers and the fake share (requests, feature selectors,
//! status bits, descriptor layout), so that each lives in one place.

use std::fmt;
use std::time::Duration;

/// `bDeviceClass` of a hub.
pub const HUB_CLASS: u8 = 0x09;

/// One device on the bus, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub bus: u8,
    pub address: u8,
    /// Port numbers from the root hub down to this device; empty for a root hub.
    pub ports: Vec<u8>,
    pub vendor_id: u16,
    pub product_id: u16,
    /// `bDeviceClass`.
    pub class: u8,
    /// `bcdUSB` (0x0210 for USB 2.1, 0x0320 for USB 3.2).
    pub usb_version: u16,
    /// The iSerialNumber string, where the device has one and it could be read.
    pub serial: Option<String>,
}

impl DeviceInfo {
    /// The kernel's name for the device, which is also what `lsusb -t`, uhubctl and the
    /// `location:` config key use: `1-1.4` (bus 1, root port 1, then hub port 4), or `usb1`
    /// for the root hub of bus 1.
    pub fn location(&self) -> String {
        location_of(self.bus, &self.ports)
    }

    pub fn is_hub(&self) -> bool {
        self.class == HUB_CLASS
    }

    /// A SuperSpeed (USB 3) device; for a hub, the USB 3 half of a USB 3 hub.
    pub fn is_superspeed(&self) -> bool {
        self.usb_version >= 0x0300
    }

    /// `vvvv:pppp`, as lsusb prints it.
    pub fn id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.product_id)
    }

    /// The USB version as `2.1`, `3.2`.
    pub fn version(&self) -> String {
        let major = self.usb_version >> 8;
        let minor = (self.usb_version >> 4) & 0xf;
        format!("{major:x}.{minor:x}")
    }

    /// How an error message names the device: `1-1.4 (2109:2817, bus 1 address 5)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, bus {} address {})",
            self.location(),
            self.id(),
            self.bus,
            self.address
        )
    }
}

/// The kernel name of the device at `ports` on `bus`.
pub fn location_of(bus: u8, ports: &[u8]) -> String {
    if ports.is_empty() {
        format!("usb{bus}")
    } else {
        let path: Vec<String> = ports.iter().map(u8::to_string).collect();
        format!("{bus}-{}", path.join("."))
    }
}

/// Parses a kernel device name (`1-1.4`, `usb1`) into bus and port path; `None` if it is
/// not one.
pub fn parse_location(location: &str) -> Option<(u8, Vec<u8>)> {
    if let Some(bus) = location.strip_prefix("usb") {
        return Some((bus.parse().ok()?, Vec::new()));
    }
    let (bus, path) = location.split_once('-')?;
    let ports = path
        .split('.')
        .map(|p| p.parse::<u8>().ok().filter(|p| *p > 0))
        .collect::<Option<Vec<u8>>>()?;
    Some((bus.parse().ok()?, ports))
}

/// The setup packet of a control transfer, less `wLength`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlRequest {
    /// bmRequestType
    pub request_type: u8,
    /// bRequest
    pub request: u8,
    /// wValue
    pub value: u16,
    /// wIndex
    pub index: u16,
}

impl fmt::Display for ControlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x} {:02x} {:04x} {:04x}",
            self.request_type, self.request, self.value, self.index
        )
    }
}

/// USB hub class requests (USB 2.0 §11.24, USB 3.2 §10.14).
pub mod hub {
    use super::ControlRequest;

    /// Class request to a port ("other" recipient), host to device.
    pub const TO_PORT: u8 = 0x23;
    /// Class request to a port, device to host.
    pub const FROM_PORT: u8 = 0xA3;
    /// Class request to the hub itself, device to host.
    pub const FROM_HUB: u8 = 0xA0;

    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_FEATURE: u8 = 3;
    pub const GET_DESCRIPTOR: u8 = 6;

    /// Feature selector PORT_POWER.
    pub const PORT_POWER: u16 = 8;

    /// wPortStatus bit for port power on a USB 2 hub.
    pub const PORT_STAT_POWER: u16 = 0x0100;
    /// wPortStatus bit for port power on a SuperSpeed hub (it moved).
    pub const SS_PORT_STAT_POWER: u16 = 0x0200;

    /// Descriptor types: USB 2 hub, SuperSpeed hub.
    pub const DT_HUB: u8 = 0x29;
    pub const DT_SS_HUB: u8 = 0x2A;

    /// SetPortFeature(PORT_POWER) (on) or ClearPortFeature(PORT_POWER) (off).
    pub fn port_power(port: u8, on: bool) -> ControlRequest {
        ControlRequest {
            request_type: TO_PORT,
            request: if on { SET_FEATURE } else { CLEAR_FEATURE },
            value: PORT_POWER,
            index: port.into(),
        }
    }

    /// GetPortStatus: 4 bytes back, wPortStatus then wPortChange.
    pub fn port_status(port: u8) -> ControlRequest {
        ControlRequest {
            request_type: FROM_PORT,
            request: GET_STATUS,
            value: 0,
            index: port.into(),
        }
    }

    /// GetHubDescriptor, of the USB 2 or the SuperSpeed kind.
    pub fn descriptor(superspeed: bool) -> ControlRequest {
        let kind = if superspeed { DT_SS_HUB } else { DT_HUB };
        ControlRequest {
            request_type: FROM_HUB,
            request: GET_DESCRIPTOR,
            value: u16::from(kind) << 8,
            index: 0,
        }
    }

    /// Whether wPortStatus says the port is powered.
    pub fn powered(superspeed: bool, port_status: u16) -> bool {
        let bit = if superspeed {
            SS_PORT_STAT_POWER
        } else {
            PORT_STAT_POWER
        };
        port_status & bit != 0
    }
}

/// How a hub says it switches port power: wHubCharacteristics bits 1:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerSwitching {
    /// All ports together.
    Ganged,
    /// Each port on its own.
    PerPort,
    /// Not at all (the ports are powered whenever the hub is).
    None,
}

impl PowerSwitching {
    pub fn name(self) -> &'static str {
        match self {
            PowerSwitching::Ganged => "ganged",
            PowerSwitching::PerPort => "per-port",
            PowerSwitching::None => "none",
        }
    }
}

/// The parts of a hub descriptor (either kind) the drivers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubDescriptor {
    pub ports: u8,
    pub switching: PowerSwitching,
}

impl HubDescriptor {
    /// Reads bNbrPorts and wHubCharacteristics, which sit at the same offsets in the USB 2 and
    /// the SuperSpeed hub descriptor.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 5 || !matches!(bytes[1], hub::DT_HUB | hub::DT_SS_HUB) {
            return None;
        }
        let characteristics = u16::from_le_bytes([bytes[3], bytes[4]]);
        let switching = match characteristics & 0b11 {
            0b00 => PowerSwitching::Ganged,
            0b01 => PowerSwitching::PerPort,
            _ => PowerSwitching::None,
        };
        Some(Self {
            ports: bytes[2],
            switching,
        })
    }
}

/// The endpoints a driver may talk to after claiming an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// bEndpointAddress; bit 7 set for IN.
    pub address: u8,
    pub kind: EndpointKind,
}

impl Endpoint {
    pub fn is_in(&self) -> bool {
        self.address & 0x80 != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    Interrupt,
    Bulk,
}

/// What a USB operation can fail with, without the device's name (the caller adds it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsbError {
    /// The device node cannot be opened by this user.
    #[error("permission denied")]
    Access,
    /// The device went away (unplugged, or re-enumerated under a new address).
    #[error("the device is gone (unplugged?)")]
    NoDevice,
    #[error("no answer in time")]
    Timeout,
    /// The device stalled the request: it does not support it.
    #[error("the device refused the request (stall)")]
    Pipe,
    /// Another program (or kernel driver) holds the interface.
    #[error("the device is busy (another program holds it)")]
    Busy,
    /// USB itself is not usable here (no usbfs, libusb could not start).
    #[error("USB is not available on this machine: {0}")]
    NoUsb(String),
    #[error("{0}")]
    Other(String),
}

/// Lists and opens devices.
pub trait UsbBus: Send + Sync + 'static {
    /// Every device on every bus. Reading descriptors needs no permission on Linux; the serial
    /// string may be `None` where it cannot be read.
    fn devices(&self) -> Result<Vec<DeviceInfo>, UsbError>;

    /// Opens a device found by [`UsbBus::devices`].
    fn open(&self, device: &DeviceInfo) -> Result<Box<dyn UsbDevice>, UsbError>;

    /// The device's product string, where it has one and it can be read.
    fn product(&self, _device: &DeviceInfo) -> Option<String> {
        None
    }
}

/// An open device. Dropping it releases what it claimed and closes it.
pub trait UsbDevice: Send {
    /// A control transfer from the device; returns what it sent (at most `length` bytes).
    fn control_in(
        &mut self,
        request: ControlRequest,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError>;

    /// A control transfer to the device.
    fn control_out(
        &mut self,
        request: ControlRequest,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), UsbError>;

    /// Claims an interface of the active configuration (taking it from a kernel driver for as
    /// long as the device is open) and returns the endpoints of its alternate setting 0.
    fn claim_interface(&mut self, interface: u8) -> Result<Vec<Endpoint>, UsbError>;

    /// The number of the active configuration's interface of this class, subclass and
    /// protocol, if there is one.
    fn find_interface(
        &mut self,
        class: u8,
        subclass: u8,
        protocol: u8,
    ) -> Result<Option<u8>, UsbError>;

    /// Writes `data` to an OUT endpoint; returns how much was sent.
    fn write(
        &mut self,
        endpoint: Endpoint,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError>;

    /// Reads up to `length` bytes from an IN endpoint.
    fn read(
        &mut self,
        endpoint: Endpoint,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_kernel_names() {
        assert_eq!(location_of(1, &[1, 4]), "1-1.4");
        assert_eq!(location_of(3, &[2]), "3-2");
        assert_eq!(location_of(2, &[]), "usb2");
    }

    #[test]
    fn locations_parse() {
        assert_eq!(parse_location("1-1.4"), Some((1, vec![1, 4])));
        assert_eq!(parse_location("usb2"), Some((2, vec![])));
        assert_eq!(parse_location("1-0"), None);
        assert_eq!(parse_location("1-a"), None);
        assert_eq!(parse_location("2109:2817"), None);
    }

    #[test]
    fn hub_requests_are_the_class_requests() {
        assert_eq!(
            hub::port_power(3, false),
            ControlRequest {
                request_type: 0x23,
                request: 1,
                value: 8,
                index: 3
            }
        );
        assert_eq!(hub::port_power(3, true).request, 3);
        assert_eq!(hub::port_status(2).to_string(), "a3 00 0000 0002");
        assert_eq!(hub::descriptor(false).to_string(), "a0 06 2900 0000");
        assert_eq!(hub::descriptor(true).to_string(), "a0 06 2a00 0000");
        assert!(hub::powered(false, 0x0103));
        assert!(!hub::powered(false, 0x0200));
        assert!(hub::powered(true, 0x02a0));
        assert!(!hub::powered(true, 0x0100));
    }

    #[test]
    fn hub_descriptors_tell_ports_and_switching() {
        let usb2 = [0x09, 0x29, 0x04, 0xe9, 0x00, 0x32, 0x64, 0x00, 0xff];
        assert_eq!(
            HubDescriptor::parse(&usb2),
            Some(HubDescriptor {
                ports: 4,
                switching: PowerSwitching::PerPort
            })
        );
        let ganged = [0x09, 0x29, 0x07, 0xe0, 0x00, 0x32, 0x64, 0x00, 0xff];
        assert_eq!(
            HubDescriptor::parse(&ganged).unwrap().switching,
            PowerSwitching::Ganged
        );
        let none = [0x09, 0x29, 0x04, 0x02, 0x00, 0x32, 0x64, 0x00, 0xff];
        assert_eq!(
            HubDescriptor::parse(&none).unwrap().switching,
            PowerSwitching::None
        );
        let ss = [
            0x0c, 0x2a, 0x04, 0x09, 0x00, 0x32, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(HubDescriptor::parse(&ss).unwrap().ports, 4);
        assert_eq!(HubDescriptor::parse(&[0x09, 0x01, 4, 1, 0]), None);
        assert_eq!(HubDescriptor::parse(&[0x09, 0x29]), None);
    }

    #[test]
    fn devices_describe_themselves() {
        let d = DeviceInfo {
            bus: 1,
            address: 5,
            ports: vec![1, 4],
            vendor_id: 0x2109,
            product_id: 0x2817,
            class: HUB_CLASS,
            usb_version: 0x0210,
            serial: None,
        };
        assert_eq!(d.describe(), "1-1.4 (2109:2817, bus 1 address 5)");
        assert_eq!(d.version(), "2.1");
        assert!(d.is_hub() && !d.is_superspeed());
    }
}
