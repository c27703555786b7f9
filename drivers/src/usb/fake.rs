//! A recording fake of [`UsbBus`], for tests and hardware-free demos.
//!
//! It plays hubs (a hub descriptor, port status with the right power bit for USB 2 and
//! SuperSpeed hubs, hubs that switch per port, gang-switch, or ignore the request) and YKUSH
//! boards (64-byte reports in, a reply out), and it can refuse to open a device (permission) or
//! lose it (unplugged). Every transfer is recorded with its exact bytes, in memory and, when
//! asked, appended to a file one line at a time, so that a test of a separate exporter process
//! can check what was sent.
//!
//! A fake bus can also follow a fake sysfs tree ([`FakeBus::plugged_per`]): a device is then on
//! the bus only while the tree has its directory, so a test in another process unplugs a hub
//! by removing it from the tree and plugs it back by adding it again, as the kernel's sysfs
//! follows the real bus. Transfers on a handle opened before the removal fail with "no device",
//! as libusb's do.
//!
//! Line format of the log (hex, as the setup packet reads: bmRequestType bRequest wValue wIndex):
//! ```text
//! 1-1 control-out 23 01 0008 0003
//! 1-1 control-in a3 00 0000 0003 len 4
//! 3-1 write 01 1100…00      (the whole report)
//! 3-1 read 81 len 64
//! ```

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::sysfs::Sysfs;
use super::transport::{
    hub, parse_location, ControlRequest, DeviceInfo, Endpoint, EndpointKind, PowerSwitching,
    UsbBus, UsbDevice, UsbError, HUB_CLASS,
};

/// One recorded transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transfer {
    ControlOut {
        device: String,
        request: ControlRequest,
        data: Vec<u8>,
    },
    ControlIn {
        device: String,
        request: ControlRequest,
        length: u16,
    },
    Write {
        device: String,
        endpoint: u8,
        data: Vec<u8>,
    },
    Read {
        device: String,
        endpoint: u8,
        length: usize,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transfer::ControlOut {
                device,
                request,
                data,
            } => {
                write!(f, "{device} control-out {request}")?;
                if !data.is_empty() {
                    write!(f, " data {}", hex(data))?;
                }
                Ok(())
            }
            Transfer::ControlIn {
                device,
                request,
                length,
            } => write!(f, "{device} control-in {request} len {length}"),
            Transfer::Write {
                device,
                endpoint,
                data,
            } => write!(f, "{device} write {endpoint:02x} {}", hex(data)),
            Transfer::Read {
                device,
                endpoint,
                length,
            } => write!(f, "{device} read {endpoint:02x} len {length}"),
        }
    }
}

/// What goes wrong with a fake device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Listed, but opening it is refused (no udev rule).
    Denied,
    /// Listed, but gone by the time it is opened (unplugged).
    Gone,
}

/// How a fake hub reacts to port power requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Each port switches on its own.
    PerPort,
    /// All ports share one switch: power is on while any port is asked to be on.
    Ganged,
    /// Accepts the request and changes nothing.
    Ignores,
}

/// A simulated hub.
#[derive(Clone, Debug)]
pub struct FakeHub {
    pub descriptor: Vec<u8>,
    pub reaction: Reaction,
    /// What each port was last asked to be.
    pub requested: Vec<bool>,
}

impl FakeHub {
    /// A hub whose descriptor declares `switching` and which reacts as `reaction`; every
    /// port starts powered.
    pub fn new(superspeed: bool, ports: u8, switching: PowerSwitching, reaction: Reaction) -> Self {
        Self {
            descriptor: hub_descriptor(superspeed, ports, switching),
            reaction,
            requested: vec![true; ports.into()],
        }
    }

    /// Whether the port has power now (1-based).
    pub fn powered(&self, port: u8) -> bool {
        match self.reaction {
            Reaction::PerPort => usize::from(port)
                .checked_sub(1)
                .and_then(|i| self.requested.get(i))
                .copied()
                .unwrap_or(false),
            Reaction::Ganged => self.requested.iter().any(|r| *r),
            Reaction::Ignores => true,
        }
    }
}

/// A hub descriptor of either kind for up to 7 ports, declaring `switching`.
pub fn hub_descriptor(superspeed: bool, ports: u8, switching: PowerSwitching) -> Vec<u8> {
    let mode: u8 = match switching {
        PowerSwitching::Ganged => 0b00,
        PowerSwitching::PerPort => 0b01,
        PowerSwitching::None => 0b10,
    };
    // Over-current protection reported per port (bits 4:3 = 01) where power is per port.
    let characteristics = mode | if mode == 0b01 { 0b01 << 3 } else { 0 };
    if superspeed {
        vec![
            12,
            hub::DT_SS_HUB,
            ports,
            characteristics,
            0,
            50,
            0,
            0,
            0,
            0,
            0,
            0,
        ]
    } else {
        vec![9, hub::DT_HUB, ports, characteristics, 0, 50, 100, 0, 0xff]
    }
}

/// A simulated YKUSH: three downstream ports, all powered at first.
#[derive(Clone, Debug)]
pub struct FakeYkush {
    pub ports: [bool; 3],
    reply: Option<Vec<u8>>,
}

impl Default for FakeYkush {
    fn default() -> Self {
        Self {
            ports: [true; 3],
            reply: None,
        }
    }
}

impl FakeYkush {
    /// Applies a command byte as the board does, and queues its reply: byte 0 = 0x01 (done),
    /// byte 1 = the command.
    fn command(&mut self, command: u8) {
        match command {
            0x11..=0x13 => self.ports[usize::from(command - 0x11)] = true,
            0x01..=0x03 => self.ports[usize::from(command - 0x01)] = false,
            0x1A => self.ports = [true; 3],
            0x0A => self.ports = [false; 3],
            _ => {}
        }
        let mut reply = vec![0u8; 64];
        reply[0] = 0x01;
        reply[1] = command;
        self.reply = Some(reply);
    }
}

#[derive(Clone, Debug)]
pub enum FakeKind {
    Hub(FakeHub),
    Ykush(FakeYkush),
    /// An SD-Wire's FT200X: its product string, and whether the card is on the host side.
    SdWire {
        product: String,
        host: bool,
    },
    /// A DUT Link board: what its vendor interface was last told, and its readings' text.
    Dutlink(FakeDutlink),
}

/// A DUT Link board's vendor interface (number [`FakeDutlink::INTERFACE`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeDutlink {
    /// The last power action's index (off, on, force-off, force-on, rescue).
    pub power: Option<u16>,
    /// The last storage action's index (off, host, dut).
    pub storage: Option<u16>,
    /// Which reading the next IN answers (version, power, voltage, current).
    pub selected: u16,
    /// The text of the `power` reading.
    pub reading: String,
}

impl FakeDutlink {
    pub const INTERFACE: u8 = 2;
}

/// One simulated device.
#[derive(Clone, Debug)]
pub struct FakeDevice {
    pub info: DeviceInfo,
    pub kind: FakeKind,
    pub fault: Option<Fault>,
}

impl FakeDevice {
    /// A hub at `location` (`1-1.4`, or `usbN` for a root hub).
    pub fn hub(location: &str, id: (u16, u16), serial: Option<&str>, hub: FakeHub) -> Self {
        let superspeed = hub.descriptor.get(1) == Some(&hub::DT_SS_HUB);
        Self {
            info: info_at(
                location,
                id,
                HUB_CLASS,
                if superspeed { 0x0320 } else { 0x0210 },
                serial,
            ),
            kind: FakeKind::Hub(hub),
            fault: None,
        }
    }

    /// A YKUSH at `location` with this serial.
    pub fn ykush(location: &str, serial: &str) -> Self {
        Self {
            info: info_at(
                location,
                (super::ykush::VID, super::ykush::PID),
                0,
                0x0200,
                Some(serial),
            ),
            kind: FakeKind::Ykush(FakeYkush::default()),
            fault: None,
        }
    }

    /// An SD-Wire at `location`, programmed (`04e8:6001`, product `sd-wire`) or, with
    /// `programmed` false, a factory FT200X (`0403:6015`).
    pub fn sdwire(location: &str, serial: &str, programmed: bool) -> Self {
        let (id, product) = if programmed {
            ((0x04e8, 0x6001), "sd-wire")
        } else {
            ((0x0403, 0x6015), "FT200X USB I2C")
        };
        Self {
            info: info_at(location, id, 0, 0x0200, Some(serial)),
            kind: FakeKind::SdWire {
                product: product.into(),
                host: false,
            },
            fault: None,
        }
    }

    /// A DUT Link board (`2b23:1012`) at `location` with this serial.
    pub fn dutlink(location: &str, serial: &str) -> Self {
        Self {
            info: info_at(location, (0x2b23, 0x1012), 0xEF, 0x0200, Some(serial)),
            kind: FakeKind::Dutlink(FakeDutlink {
                reading: "5.01V 0.45A".into(),
                ..FakeDutlink::default()
            }),
            fault: None,
        }
    }

    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

fn info_at(
    location: &str,
    id: (u16, u16),
    class: u8,
    usb_version: u16,
    serial: Option<&str>,
) -> DeviceInfo {
    let (bus, ports) = parse_location(location).unwrap_or((1, vec![1]));
    DeviceInfo {
        bus,
        // Distinct and stable: derived from the port path.
        address: ports
            .iter()
            .fold(1u8, |a, p| a.wrapping_mul(7).wrapping_add(*p)),
        ports,
        vendor_id: id.0,
        product_id: id.1,
        class,
        usb_version,
        serial: serial.map(str::to_string),
    }
}

#[derive(Default)]
struct State {
    devices: Vec<FakeDevice>,
    transfers: Vec<Transfer>,
    log: Option<PathBuf>,
    /// When set, a device is present only while this tree has it.
    plugged: Option<Sysfs>,
}

impl State {
    fn record(&mut self, t: Transfer) {
        if let Some(path) = &self.log {
            // A test aid: a failure to log must not change what the driver sees.
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{t}");
            }
        }
        self.transfers.push(t);
    }

    fn device(&mut self, location: &str) -> Result<&mut FakeDevice, UsbError> {
        if !self.present(location) {
            return Err(UsbError::NoDevice);
        }
        self.devices
            .iter_mut()
            .find(|d| d.info.location() == location)
            .ok_or(UsbError::NoDevice)
    }

    fn present(&self, location: &str) -> bool {
        self.plugged
            .as_ref()
            .is_none_or(|tree| tree.has_device(location))
    }
}

/// The fake bus. Clones share the same devices and records.
#[derive(Clone, Default)]
pub struct FakeBus {
    state: Arc<Mutex<State>>,
}

impl FakeBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Also appends every transfer to this file.
    pub fn with_log(self, path: PathBuf) -> Self {
        self.state().log = Some(path);
        self
    }

    /// Makes a device present only while `tree` has its directory (see the module docs).
    pub fn plugged_per(self, tree: Sysfs) -> Self {
        self.state().plugged = Some(tree);
        self
    }

    pub fn add(&self, device: FakeDevice) -> &Self {
        self.state().devices.push(device);
        self
    }

    /// Removes the device, as unplugging it would.
    pub fn unplug(&self, location: &str) {
        self.state()
            .devices
            .retain(|d| d.info.location() != location);
    }

    pub fn set_fault(&self, location: &str, fault: Option<Fault>) {
        if let Ok(d) = self.state().device(location) {
            d.fault = fault;
        }
    }

    /// Every transfer so far.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.state().transfers.clone()
    }

    /// Every transfer so far, forgetting them.
    pub fn take_transfers(&self) -> Vec<Transfer> {
        std::mem::take(&mut self.state().transfers)
    }

    /// Whether a hub port is powered now.
    pub fn hub_port_powered(&self, location: &str, port: u8) -> Option<bool> {
        let mut state = self.state();
        match &state.device(location).ok()?.kind {
            FakeKind::Hub(h) => Some(h.powered(port)),
            _ => None,
        }
    }

    /// What the fake DUT Link at `location` was last told.
    pub fn dutlink(&self, location: &str) -> Option<FakeDutlink> {
        let mut state = self.state();
        match &state.device(location).ok()?.kind {
            FakeKind::Dutlink(board) => Some(board.clone()),
            _ => None,
        }
    }

    /// Whether the fake SD-Wire at `location` has its card on the host side.
    pub fn sdwire_on_host(&self, location: &str) -> Option<bool> {
        let mut state = self.state();
        match &state.device(location).ok()?.kind {
            FakeKind::SdWire { host, .. } => Some(*host),
            _ => None,
        }
    }

    /// The power of a YKUSH's three ports now.
    pub fn ykush_ports(&self, location: &str) -> Option<[bool; 3]> {
        let mut state = self.state();
        match &state.device(location).ok()?.kind {
            FakeKind::Ykush(y) => Some(y.ports),
            _ => None,
        }
    }
}

impl UsbBus for FakeBus {
    fn devices(&self) -> Result<Vec<DeviceInfo>, UsbError> {
        let state = self.state();
        let mut devices: Vec<DeviceInfo> = state
            .devices
            .iter()
            .filter(|d| state.present(&d.info.location()))
            .map(|d| d.info.clone())
            .collect();
        drop(state);
        devices.sort_by(|a, b| (a.bus, &a.ports).cmp(&(b.bus, &b.ports)));
        Ok(devices)
    }

    fn product(&self, device: &DeviceInfo) -> Option<String> {
        let mut state = self.state();
        match &state.device(&device.location()).ok()?.kind {
            FakeKind::SdWire { product, .. } => Some(product.clone()),
            _ => None,
        }
    }

    fn open(&self, device: &DeviceInfo) -> Result<Box<dyn UsbDevice>, UsbError> {
        let location = device.location();
        let mut state = self.state();
        let d = state.device(&location)?;
        match d.fault {
            Some(Fault::Denied) => Err(UsbError::Access),
            Some(Fault::Gone) => Err(UsbError::NoDevice),
            None => Ok(Box::new(FakeHandle {
                bus: self.clone(),
                location,
            })),
        }
    }
}

struct FakeHandle {
    bus: FakeBus,
    location: String,
}

const YKUSH_OUT: Endpoint = Endpoint {
    address: 0x01,
    kind: EndpointKind::Interrupt,
};
const YKUSH_IN: Endpoint = Endpoint {
    address: 0x81,
    kind: EndpointKind::Interrupt,
};

impl UsbDevice for FakeHandle {
    fn control_in(
        &mut self,
        request: ControlRequest,
        length: u16,
        _timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let mut state = self.bus.state();
        state.record(Transfer::ControlIn {
            device: self.location.clone(),
            request,
            length,
        });
        let d = state.device(&self.location)?;
        if let FakeKind::Dutlink(board) = &d.kind {
            let index = u16::from(FakeDutlink::INTERFACE);
            return if (request.request_type, request.request, request.index) == (0xC1, 0x04, index)
            {
                let text = match board.selected {
                    0 => "fake-dutlink 0.1".to_string(),
                    _ => board.reading.clone(),
                };
                let mut bytes = text.into_bytes();
                bytes.truncate(length.into());
                Ok(bytes)
            } else {
                Err(UsbError::Pipe)
            };
        }
        if let FakeKind::SdWire { host, .. } = &d.kind {
            // The mux's state: vendor IN 0x0C, bit 0 set while the card is on the host.
            return if request.request_type == 0xC0 && request.request == 0x0C {
                Ok(vec![u8::from(*host)])
            } else {
                Err(UsbError::Pipe)
            };
        }
        let FakeKind::Hub(h) = &d.kind else {
            return Err(UsbError::Pipe);
        };
        let superspeed = h.descriptor[1] == hub::DT_SS_HUB;
        let ports = h.requested.len() as u16;
        let mut reply = if request == hub::descriptor(superspeed) {
            h.descriptor.clone()
        } else if request.request_type == hub::FROM_PORT
            && request.request == hub::GET_STATUS
            && (1..=ports).contains(&request.index)
        {
            let port = request.index as u8;
            let status = if h.powered(port) {
                // Powered, and the board on it connected.
                let power = if superspeed {
                    hub::SS_PORT_STAT_POWER
                } else {
                    hub::PORT_STAT_POWER
                };
                power | 0x0001
            } else {
                0
            };
            let [lo, hi] = status.to_le_bytes();
            vec![lo, hi, 0, 0]
        } else {
            return Err(UsbError::Pipe);
        };
        reply.truncate(length.into());
        Ok(reply)
    }

    fn control_out(
        &mut self,
        request: ControlRequest,
        data: &[u8],
        _timeout: Duration,
    ) -> Result<(), UsbError> {
        let mut state = self.bus.state();
        state.record(Transfer::ControlOut {
            device: self.location.clone(),
            request,
            data: data.to_vec(),
        });
        let d = state.device(&self.location)?;
        if let FakeKind::Dutlink(board) = &mut d.kind {
            if request.request_type != 0x41 || request.index != u16::from(FakeDutlink::INTERFACE) {
                return Err(UsbError::Pipe);
            }
            match (request.request, request.value) {
                (0x00, _) => board.selected = 1,
                (0x01, v @ 0..=4) => board.power = Some(v),
                (0x02, v @ 0..=2) => board.storage = Some(v),
                _ => return Err(UsbError::Pipe),
            }
            return Ok(());
        }
        if let FakeKind::SdWire { host, .. } = &mut d.kind {
            // CBUS bit-bang: vendor OUT 0x0B, wValue 0x20F1 (host) or 0x20F0 (DUT).
            return match (request.request_type, request.request, request.value) {
                (0x40, 0x0B, 0x20F1) => {
                    *host = true;
                    Ok(())
                }
                (0x40, 0x0B, 0x20F0) => {
                    *host = false;
                    Ok(())
                }
                _ => Err(UsbError::Pipe),
            };
        }
        let FakeKind::Hub(h) = &mut d.kind else {
            return Err(UsbError::Pipe);
        };
        let port = request.index;
        let valid = request.request_type == hub::TO_PORT
            && matches!(request.request, hub::SET_FEATURE | hub::CLEAR_FEATURE)
            && request.value == hub::PORT_POWER
            && (1..=h.requested.len() as u16).contains(&port);
        if !valid {
            return Err(UsbError::Pipe);
        }
        h.requested[usize::from(port) - 1] = request.request == hub::SET_FEATURE;
        Ok(())
    }

    fn find_interface(
        &mut self,
        class: u8,
        subclass: u8,
        protocol: u8,
    ) -> Result<Option<u8>, UsbError> {
        let mut state = self.bus.state();
        let d = state.device(&self.location)?;
        Ok(match &d.kind {
            FakeKind::Dutlink(_) if (class, subclass, protocol) == (0xFF, 0x01, 0x01) => {
                Some(FakeDutlink::INTERFACE)
            }
            _ => None,
        })
    }

    fn claim_interface(&mut self, interface: u8) -> Result<Vec<Endpoint>, UsbError> {
        let mut state = self.bus.state();
        let d = state.device(&self.location)?;
        match (&d.kind, interface) {
            (FakeKind::Ykush(_), 0) => Ok(vec![YKUSH_IN, YKUSH_OUT]),
            _ => Err(UsbError::Other(format!("no interface {interface}"))),
        }
    }

    fn write(
        &mut self,
        endpoint: Endpoint,
        data: &[u8],
        _timeout: Duration,
    ) -> Result<usize, UsbError> {
        let mut state = self.bus.state();
        state.record(Transfer::Write {
            device: self.location.clone(),
            endpoint: endpoint.address,
            data: data.to_vec(),
        });
        let d = state.device(&self.location)?;
        match &mut d.kind {
            FakeKind::Ykush(y) if endpoint == YKUSH_OUT => {
                y.command(data.first().copied().unwrap_or(0));
                Ok(data.len())
            }
            _ => Err(UsbError::Pipe),
        }
    }

    fn read(
        &mut self,
        endpoint: Endpoint,
        length: usize,
        _timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let mut state = self.bus.state();
        state.record(Transfer::Read {
            device: self.location.clone(),
            endpoint: endpoint.address,
            length,
        });
        let d = state.device(&self.location)?;
        match &mut d.kind {
            FakeKind::Ykush(y) if endpoint == YKUSH_IN => {
                let mut reply = y.reply.take().ok_or(UsbError::Timeout)?;
                reply.truncate(length);
                Ok(reply)
            }
            _ => Err(UsbError::Pipe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn a_hub_answers_like_one_and_every_transfer_is_recorded() {
        let bus = FakeBus::new();
        bus.add(FakeDevice::hub(
            "1-1",
            (0x2109, 0x2817),
            None,
            FakeHub::new(false, 4, PowerSwitching::PerPort, Reaction::PerPort),
        ));
        let info = bus.devices().unwrap().remove(0);
        assert_eq!(info.location(), "1-1");
        let mut dev = bus.open(&info).unwrap();
        dev.control_out(hub::port_power(2, false), &[], T).unwrap();
        assert_eq!(
            dev.control_in(hub::port_status(2), 4, T).unwrap(),
            vec![0, 0, 0, 0]
        );
        assert_eq!(
            dev.control_in(hub::port_status(1), 4, T).unwrap(),
            vec![0x01, 0x01, 0, 0]
        );
        assert_eq!(
            dev.control_in(hub::port_status(5), 4, T),
            Err(UsbError::Pipe)
        );
        assert_eq!(
            dev.control_in(hub::descriptor(true), 12, T),
            Err(UsbError::Pipe),
            "a USB 2 hub has no SuperSpeed descriptor"
        );
        let lines: Vec<String> = bus.transfers().iter().map(|t| t.to_string()).collect();
        assert_eq!(
            lines,
            [
                "1-1 control-out 23 01 0008 0002",
                "1-1 control-in a3 00 0000 0002 len 4",
                "1-1 control-in a3 00 0000 0001 len 4",
                "1-1 control-in a3 00 0000 0005 len 4",
                "1-1 control-in a0 06 2a00 0000 len 12",
            ]
        );
    }

    #[test]
    fn ganged_and_ignoring_hubs_keep_power() {
        let mut ganged = FakeHub::new(false, 2, PowerSwitching::Ganged, Reaction::Ganged);
        ganged.requested[0] = false;
        assert!(ganged.powered(1));
        ganged.requested[1] = false;
        assert!(!ganged.powered(1));
        let mut liar = FakeHub::new(false, 2, PowerSwitching::PerPort, Reaction::Ignores);
        liar.requested[0] = false;
        assert!(liar.powered(1));
    }

    #[test]
    fn faults_show_on_open_and_the_log_file_gets_each_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("usb.log");
        let bus = FakeBus::new().with_log(log.clone());
        bus.add(FakeDevice::ykush("3-1", "YK1").with_fault(Fault::Denied));
        let info = bus.devices().unwrap().remove(0);
        assert_eq!(bus.open(&info).err(), Some(UsbError::Access));
        bus.set_fault("3-1", Some(Fault::Gone));
        assert_eq!(bus.open(&info).err(), Some(UsbError::NoDevice));
        bus.set_fault("3-1", None);
        let mut dev = bus.open(&info).unwrap();
        let eps = dev.claim_interface(0).unwrap();
        assert_eq!(eps.len(), 2);
        let mut report = vec![0u8; 64];
        report[0] = 0x02;
        dev.write(YKUSH_OUT, &report, T).unwrap();
        assert_eq!(bus.ykush_ports("3-1"), Some([true, false, true]));
        let reply = dev.read(YKUSH_IN, 64, T).unwrap();
        assert_eq!(&reply[..2], &[0x01, 0x02]);
        assert_eq!(dev.read(YKUSH_IN, 64, T), Err(UsbError::Timeout));
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("3-1 write 01 02{}", "00".repeat(63)));
        assert_eq!(lines[1], "3-1 read 81 len 64");
        bus.unplug("3-1");
        assert_eq!(dev.read(YKUSH_IN, 64, T), Err(UsbError::NoDevice));
    }
}
