//! Yepkit YKUSH (`jumpstarter_driver_yepkit.driver.Ykush`): upstream's config and behaviour,
//! except that `read` is a streaming call answering UNIMPLEMENTED (upstream exports it as a
//! plain call, so the client's `read()` gets NOT_FOUND).
//!
//! The board is looked up at every command (upstream looks once, in its constructor, and a
//! missing board fails the whole exporter there): no board is UNAVAILABLE `failed to find
//! ykush device ...` for that call only. Each command opens it by serial, claims interface 0 (taking it from usbhid meanwhile), writes one 64-byte report
//! whose byte 0 is the command to the OUT endpoint and reads the 64-byte answer from the IN
//! endpoint, 2 s each. The answer is not interpreted, as upstream.
//!
//! ## Config
//! ```yaml
//! type: jumpstarter_driver_yepkit.driver.Ykush
//! config:
//!   serial: "YK25838"   # none: the first board found (with a warning)
//!   port: "1"           # "1" | "2" | "3" | "all" (default)
//!   default: "off"      # off (default) | on | keep, applied at each session start
//!   # fake:            # test and demo aid (not upstream): a simulated board at 1-2
//!   #   fault: denied   # denied | gone, to rehearse those failures
//!   #   log: /tmp/ykush.log
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::fake::{FakeDevice, Fault};
use super::libusb::LibusbBus;
use super::sysfs::{self, Sysfs};
use super::transport::{DeviceInfo, UsbBus, UsbError};
use super::{blocking, device_error, Initial, PortSwitch};
use crate::yaml::{self, Node};
use crate::{Driver, DriverError, DriverSpec};

pub const TYPE: &str = "jumpstarter_driver_yepkit.driver.Ykush";

pub const VID: u16 = 0x04D8;
pub const PID: u16 = 0xF2F7;

const REPORT_LEN: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Serial used by a fake board when the config names none.
const FAKE_SERIAL: &str = "YK00000";

/// Two entries may drive the same board; its interface can be claimed by one at a time.
static BOARD_IO: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum Port {
    #[serde(rename = "1")]
    One,
    #[serde(rename = "2")]
    Two,
    #[serde(rename = "3")]
    Three,
    #[serde(rename = "all")]
    All,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::One => "1",
            Port::Two => "2",
            Port::Three => "3",
            Port::All => "all",
        }
    }

    /// The command byte: `0x11`-`0x13`/`0x1A` on, `0x01`-`0x03`/`0x0A` off.
    fn command(self, on: bool) -> u8 {
        let low = match self {
            Port::One => 0x01,
            Port::Two => 0x02,
            Port::Three => 0x03,
            Port::All => 0x0A,
        };
        if on {
            low | 0x10
        } else {
            low
        }
    }
}

fn default_port() -> Port {
    Port::All
}

fn default_initial() -> Initial {
    Initial::Off
}

/// Upstream's keys, plus `fake:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    serial: Option<String>,
    #[serde(default = "default_port")]
    port: Port,
    #[serde(default = "default_initial")]
    default: Initial,
    /// Simulated board, for tests and demos.
    #[serde(default)]
    fake: Option<FakeConfig>,
}

/// `fake:`: a simulated YKUSH with the configured serial.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeConfig {
    /// `denied` or `gone`, to rehearse those failures.
    #[serde(default)]
    fault: Option<FakeFault>,
    /// A file each report is appended to, one line each (see [`super::fake`]).
    #[serde(default)]
    log: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FakeFault {
    Denied,
    Gone,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(parse(node, path)?))
}

fn parse(node: &Node, path: &str) -> Result<YkushSpec, yaml::Error> {
    let c: Config = yaml::from_node(node, path)?;
    let bus: Arc<dyn UsbBus> = match &c.fake {
        Some(fake) => {
            let bus = super::fake_log(fake.log.clone());
            let mut board = FakeDevice::ykush("1-2", c.serial.as_deref().unwrap_or(FAKE_SERIAL));
            board.fault = fake.fault.map(|f| match f {
                FakeFault::Denied => Fault::Denied,
                FakeFault::Gone => Fault::Gone,
            });
            bus.add(board);
            Arc::new(bus)
        }
        None => Arc::new(LibusbBus::new(Sysfs::new(sysfs::SYSTEM_ROOT))),
    };
    Ok(YkushSpec {
        serial: c.serial,
        port: c.port,
        initial: c.default,
        bus,
    })
}

struct YkushSpec {
    serial: Option<String>,
    port: Port,
    initial: Initial,
    bus: Arc<dyn UsbBus>,
}

fn boards(bus: &dyn UsbBus) -> Result<Vec<DeviceInfo>, UsbError> {
    Ok(bus
        .devices()?
        .into_iter()
        .filter(|d| (d.vendor_id, d.product_id) == (VID, PID))
        .collect())
}

impl DriverSpec for YkushSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    /// A board (with the configured serial, if any) is on the bus; a bus that cannot be listed
    /// counts as absent.
    fn device_present(&self) -> Option<bool> {
        let found = boards(self.bus.as_ref()).unwrap_or_default();
        Some(found.iter().any(|d| {
            self.serial
                .as_deref()
                .is_none_or(|s| d.serial.as_deref() == Some(s))
        }))
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(Ykush {
            inner: Arc::new(Board {
                serial: self.serial.clone(),
                location: Mutex::new(None),
                port: self.port,
                initial: self.initial,
                bus: self.bus.clone(),
            }),
        })
    }
}

/// The board one session's driver talks to.
struct Board {
    serial: Option<String>,
    /// Where a board without a configured serial was found first; it is found there again.
    location: Mutex<Option<String>>,
    port: Port,
    initial: Initial,
    bus: Arc<dyn UsbBus>,
}

impl Board {
    /// Finds the board among those connected now, as upstream's constructor does (no board:
    /// `failed to find ykush device`); without a configured serial, the first one found,
    /// remembered for the rest of the session.
    fn find(&self) -> Result<DeviceInfo, DriverError> {
        let not_found = |detail: String| {
            DriverError::Unavailable(format!("failed to find ykush device: {detail}"))
        };
        let found = boards(self.bus.as_ref()).map_err(|e| not_found(e.to_string()))?;
        if let Some(serial) = &self.serial {
            return found
                .iter()
                .find(|d| d.serial.as_deref() == Some(serial.as_str()))
                .cloned()
                .ok_or_else(|| {
                    let seen: Vec<String> = found
                        .iter()
                        .map(|d| d.serial.clone().unwrap_or_else(|| d.location()))
                        .collect();
                    not_found(if seen.is_empty() {
                        format!("none with serial {serial} is connected")
                    } else {
                        format!("none with serial {serial}; found {}", seen.join(", "))
                    })
                });
        }
        let mut location = self.location.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = location.as_deref() {
            return found
                .iter()
                .find(|d| d.location() == at)
                .cloned()
                .ok_or_else(|| {
                    DriverError::Unavailable(format!("ykush {at} is gone (unplugged?)"))
                });
        }
        let board = found
            .first()
            .cloned()
            .ok_or_else(|| not_found(format!("no {VID:04x}:{PID:04x} is connected")))?;
        tracing::warn!(
            "No serial number provided for ykush, using the first one found: {}",
            board.serial.as_deref().unwrap_or("(none)")
        );
        *location = Some(board.location());
        Ok(board)
    }

    fn send(&self, command: u8) -> Result<(), DriverError> {
        let _one_at_a_time = BOARD_IO.lock().unwrap_or_else(|e| e.into_inner());
        let device = self.find()?;
        let name = device.serial.clone().unwrap_or_else(|| device.location());
        let what = format!("ykush {name} ({})", device.describe());
        let usb_error = |e: UsbError| device_error(&what, Some(&device), e);
        let mut handle = self.bus.open(&device).map_err(usb_error)?;
        let endpoints = handle.claim_interface(0).map_err(usb_error)?;
        let (Some(out), Some(input)) = (
            endpoints.iter().find(|e| !e.is_in()),
            endpoints.iter().find(|e| e.is_in()),
        ) else {
            return Err(DriverError::Failed(format!(
                "{what}: could not find both IN and OUT endpoints on interface 0"
            )));
        };
        let mut report = [0u8; REPORT_LEN];
        report[0] = command;
        handle.write(*out, &report, TIMEOUT).map_err(usb_error)?;
        handle
            .read(*input, REPORT_LEN, TIMEOUT)
            .map_err(usb_error)?;
        Ok(())
    }
}

/// The driver of one session.
pub struct Ykush {
    inner: Arc<Board>,
}

impl Ykush {
    async fn power(&self, on: bool) -> Result<(), DriverError> {
        let board = self.inner.clone();
        tracing::info!(
            "Power {} for Ykush {} on port {}",
            if on { "ON" } else { "OFF" },
            board.serial.as_deref().unwrap_or("None"),
            board.port.name()
        );
        let port = board.port.name();
        // A board that is unplugged is found again at the next call; say which port waited.
        blocking(move || board.send(board.port.command(on)))
            .await
            .map_err(|e| match e {
                DriverError::Unavailable(m) => DriverError::Unavailable(format!(
                    "cannot switch port {port} {}: {m}; the board is looked up again at every \
                     call, so this works as soon as it is back",
                    if on { "on" } else { "off" }
                )),
                other => other,
            })
    }
}

#[async_trait]
impl PortSwitch for Ykush {
    const WHAT: &'static str = "a YKUSH";

    fn initial(&self) -> Initial {
        self.inner.initial
    }

    async fn switch(&self, on: bool) -> Result<(), DriverError> {
        self.power(on).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeBus, Transfer};
    use super::*;
    use crate::MethodKind;

    fn parse_src(src: &str) -> Result<YkushSpec, yaml::Error> {
        parse(&yaml::parse(src).unwrap(), "export.power.config")
    }

    /// A spec from `src` (without `fake:`) over `bus`.
    fn spec_on(src: &str, bus: &FakeBus) -> YkushSpec {
        let mut s = parse_src(src).unwrap();
        s.bus = Arc::new(bus.clone());
        s
    }

    fn board(serial: &str, location: &str) -> FakeDevice {
        FakeDevice::ykush(location, serial)
    }

    fn report(command: u8) -> Vec<u8> {
        let mut r = vec![0u8; 64];
        r[0] = command;
        r
    }

    #[test]
    fn presence_is_a_board_with_the_serial_on_the_bus() {
        let bus = FakeBus::new();
        let wanted = spec_on("serial: YK1\n", &bus);
        let any = spec_on("{}", &bus);
        assert_eq!(any.device_present(), Some(false));
        bus.add(board("YK2", "1-2"));
        assert_eq!(any.device_present(), Some(true));
        assert_eq!(wanted.device_present(), Some(false), "another board");
        bus.add(board("YK1", "1-3"));
        assert_eq!(wanted.device_present(), Some(true));
        bus.unplug("1-3");
        assert_eq!(wanted.device_present(), Some(false), "unplugged");
        assert!(bus.transfers().is_empty());
    }

    #[test]
    fn upstream_keys_and_defaults() {
        let s = parse_src("{}").unwrap();
        assert_eq!(s.port, Port::All);
        assert_eq!(
            s.initial,
            Initial::Off,
            "upstream switches off at session start"
        );
        assert_eq!(s.serial, None);
        let s = parse_src("serial: YK25838\nport: \"2\"\ndefault: keep\n").unwrap();
        assert_eq!((s.port, s.initial), (Port::Two, Initial::Keep));
        assert_eq!(parse_src("port: 3\n").unwrap().port, Port::Three);
        let e = parse_src("port: \"4\"\n").err().unwrap();
        assert_eq!(e.path, "export.power.config.port");
        assert!(e.message.contains("1, 2, 3, all"), "{e}");
        let e = parse_src("default: maybe\n").err().unwrap();
        assert!(e.message.contains("on, off, keep"), "{e}");
        let e = parse_src("serial: YK1\nports: all\n").err().unwrap();
        assert!(e.message.contains("unknown field `ports`"), "{e}");
    }

    #[test]
    fn command_bytes_are_upstreams() {
        let all = [Port::One, Port::Two, Port::Three, Port::All];
        let on: Vec<u8> = all.iter().map(|p| p.command(true)).collect();
        let off: Vec<u8> = all.iter().map(|p| p.command(false)).collect();
        assert_eq!(on, [0x11, 0x12, 0x13, 0x1A]);
        assert_eq!(off, [0x01, 0x02, 0x03, 0x0A]);
    }

    #[tokio::test]
    async fn on_and_off_send_exact_reports_and_read_the_answer() {
        let bus = FakeBus::new();
        bus.add(board("YK1", "1-2"));
        bus.add(board("YK2", "1-3"));
        let d = spec_on("serial: YK2\nport: \"2\"\n", &bus).build();
        d.call("off", vec![]).await.unwrap();
        assert_eq!(bus.ykush_ports("1-3"), Some([true, false, true]));
        assert_eq!(bus.ykush_ports("1-2"), Some([true, true, true]));
        d.call("on", vec![]).await.unwrap();
        assert_eq!(
            bus.take_transfers(),
            vec![
                Transfer::Write {
                    device: "1-3".into(),
                    endpoint: 0x01,
                    data: report(0x02)
                },
                Transfer::Read {
                    device: "1-3".into(),
                    endpoint: 0x81,
                    length: 64
                },
                Transfer::Write {
                    device: "1-3".into(),
                    endpoint: 0x01,
                    data: report(0x12)
                },
                Transfer::Read {
                    device: "1-3".into(),
                    endpoint: 0x81,
                    length: 64
                },
            ]
        );
        let d = spec_on("serial: YK1\n", &bus).build();
        d.call("off", vec![]).await.unwrap();
        assert_eq!(bus.ykush_ports("1-2"), Some([false; 3]));
        assert_eq!(
            bus.take_transfers()[0],
            Transfer::Write {
                device: "1-2".into(),
                endpoint: 0x01,
                data: report(0x0A)
            }
        );
    }

    #[tokio::test]
    async fn default_is_applied_at_every_session_start() {
        let bus = FakeBus::new();
        bus.add(board("YK1", "1-2"));
        let spec = spec_on("serial: YK1\nport: \"1\"\n", &bus);
        spec.build().reset().await.unwrap();
        assert_eq!(bus.ykush_ports("1-2"), Some([false, true, true]));
        spec.build().call("on", vec![]).await.unwrap();
        spec.build().reset().await.unwrap();
        assert_eq!(bus.ykush_ports("1-2"), Some([false, true, true]));
        bus.take_transfers();
        spec_on("serial: YK1\ndefault: keep\n", &bus)
            .build()
            .reset()
            .await
            .unwrap();
        assert!(bus.transfers().is_empty());
        spec_on("serial: YK1\ndefault: on\n", &bus)
            .build()
            .reset()
            .await
            .unwrap();
        assert_eq!(bus.ykush_ports("1-2"), Some([true; 3]));
    }

    #[tokio::test]
    async fn finding_the_board_at_every_call() {
        let bus = FakeBus::new();
        // Building never looks for the board: a missing one fails its calls only.
        let d = spec_on("{}", &bus).build();
        let e = d.reset().await.unwrap_err();
        assert!(matches!(e, DriverError::Unavailable(_)));
        assert_eq!(
            e.to_string(),
            "cannot switch port all off: failed to find ykush device: no 04d8:f2f7 is connected; the board is looked up again at every call, so this works as soon as it is back"
        );
        bus.add(board("YK1", "1-2"));
        let e = spec_on("serial: YK9\n", &bus)
            .build()
            .call("on", vec![])
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("failed to find ykush device: none with serial YK9; found YK1"),
            "{e}"
        );
        // The first driver finds the board now that it is there (upstream warns and uses the
        // first one when no serial is configured).
        d.call("on", vec![]).await.unwrap();
        assert_eq!(bus.ykush_ports("1-2"), Some([true; 3]));
        let d = spec_on("port: \"3\"\n", &bus).build();
        d.call("off", vec![]).await.unwrap();
        assert_eq!(bus.ykush_ports("1-2"), Some([true, true, false]));
    }

    #[tokio::test]
    async fn permission_and_unplug_errors_name_the_board() {
        let bus = FakeBus::new();
        bus.add(board("YK1", "1-2").with_fault(Fault::Denied));
        let d = spec_on("serial: YK1\n", &bus).build();
        let e = d.call("on", vec![]).await.unwrap_err().to_string();
        assert!(
            e.starts_with("permission denied opening ykush YK1 (1-2 (04d8:f2f7, bus 1 address 9)) (/dev/bus/usb/001/009): install udev/60-jmp-exporter-usb.rules"),
            "{e}"
        );
        bus.set_fault("1-2", Some(Fault::Gone));
        assert!(matches!(
            d.call("on", vec![]).await,
            Err(DriverError::Unavailable(_))
        ));
        bus.unplug("1-2");
        let e = d.call("on", vec![]).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot switch port all on: failed to find ykush device: none with serial YK1 is \
             connected; the board is looked up again at every call, so this works as soon as it \
             is back"
        );
        // Plugged back in (at another place): found by its serial, no new driver needed.
        bus.add(board("YK1", "1-4"));
        d.call("on", vec![]).await.unwrap();
        assert_eq!(bus.ykush_ports("1-4"), Some([true; 3]));
        let e = d.streaming_call("read", vec![]).await.err().unwrap();
        assert!(matches!(e, DriverError::NotImplemented(_)));
        assert_eq!(d.method("read"), Some(MethodKind::Streaming));
    }

    #[tokio::test]
    async fn the_fake_selected_from_the_config_logs_reports_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ykush.log");
        let src = format!(
            "serial: YK7\nport: \"1\"\nfake:\n  log: {}\n",
            log.display()
        );
        let s = spec(&yaml::parse(&src).unwrap(), "p").unwrap();
        assert_eq!(s.client(), crate::client::POWER);
        let d = s.build();
        d.reset().await.unwrap();
        d.call("on", vec![]).await.unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let zeros = "00".repeat(63);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                format!("1-2 write 01 01{zeros}"),
                "1-2 read 81 len 64".to_string(),
                format!("1-2 write 01 11{zeros}"),
                "1-2 read 81 len 64".to_string(),
            ]
        );
        let s = spec(&yaml::parse("fake: {fault: denied}\n").unwrap(), "p").unwrap();
        let e = s.build().call("off", vec![]).await.unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
    }

    #[test]
    #[ignore = "needs a YKUSH board (and permission to open it)"]
    fn a_real_board_switches_all_ports() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let d = spec(&yaml::parse("default: keep\n").unwrap(), "p")
                .unwrap()
                .build();
            d.call("off", vec![]).await.unwrap();
            d.call("on", vec![]).await.unwrap();
        });
    }
}
