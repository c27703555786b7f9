//! DUT Link (`jumpstarter_driver_dutlink.driver.Dutlink`, drivers.md §9): one board that is
//! three drivers, as upstream reports it: a composite whose children are `power` (on, off,
//! rescue, and readings as a streaming `read`), `storage` (a storage mux with a fixed
//! `storage_device`, written as SD-Wire's card is) and `console` (the board's tty, or
//! `alternate_console`).
//!
//! The board (`2b23:1012`, by `serial` or the first one) is looked up at every command
//! (upstream looks once, in its constructor, and a missing board fails the exporter); its
//! vendor interface (`ff/01/01`) takes vendor requests addressed to the interface: power
//! `0x01` and storage `0x02` with `wValue` the action's index, and readings as `0x00` then an
//! IN `0x04` whose answer is text such as `5.01V 0.45A`.
//!
//! ## Config
//! ```yaml
//! type: jumpstarter_driver_dutlink.driver.Dutlink
//! config:
//!   serial: "c415a913"            # null: the first board
//!   storage_device: /dev/disk/by-id/usb-...   # required
//!   alternate_console: null       # else the tty whose name carries the board's serial
//!   baudrate: 115200
//!   timeout_s: 20                 # USB; power sequences can block it long
//!   storage_timeout: 10
//!   storage_leeway: 6
//!   storage_fsync_timeout: 900
//!   # fake: {log: FILE}           # test and demo aid (not upstream): a simulated board at 1-5
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::block::Roots;
use super::card::{self, Card};
use crate::resource::Resources;
use crate::usb::fake::FakeDevice;
use crate::usb::libusb::LibusbBus;
use crate::usb::sysfs::{self, Sysfs};
use crate::usb::transport::{ControlRequest, DeviceInfo, UsbBus};
use crate::usb::{blocking, device_error, fake_log};
use crate::yaml::{self, Node};
use crate::{args, Driver, DriverError, DriverSpec, Json, MethodKind, ResultStream};

pub const TYPE: &str = "jumpstarter_driver_dutlink.driver.Dutlink";
const POWER_TYPE: &str = "jumpstarter_driver_dutlink.driver.DutlinkPower";
const STORAGE_TYPE: &str = "jumpstarter_driver_dutlink.driver.DutlinkStorageMux";
const CONSOLE_TYPE: &str = "jumpstarter_driver_dutlink.driver.DutlinkSerial";

const ID: (u16, u16) = (0x2b23, 0x1012);
const FAKE_LOCATION: &str = "1-5";
const FAKE_SERIAL: &str = "dl-00001";

const POWER_ACTIONS: [&str; 5] = ["off", "on", "force-off", "force-on", "rescue"];
const STORAGE_ACTIONS: [&str; 3] = ["off", "host", "dut"];
/// `power` among the readings (version, power, voltage, current).
const POWER_READING: u16 = 1;

fn default_baudrate() -> u32 {
    115_200
}
fn default_usb_timeout() -> u64 {
    20
}
fn default_timeout() -> u64 {
    10
}
fn default_leeway() -> u64 {
    6
}
fn default_fsync_timeout() -> u64 {
    900
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    serial: Option<String>,
    storage_device: PathBuf,
    #[serde(default)]
    alternate_console: Option<String>,
    #[serde(default = "default_baudrate")]
    baudrate: u32,
    #[serde(default = "default_usb_timeout")]
    timeout_s: u64,
    #[serde(default = "default_timeout")]
    storage_timeout: u64,
    #[serde(default = "default_leeway")]
    storage_leeway: u64,
    #[serde(default = "default_fsync_timeout")]
    storage_fsync_timeout: u64,
    #[serde(default)]
    fake: Option<FakeConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeConfig {
    #[serde(default)]
    log: Option<PathBuf>,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: Config = yaml::from_node(node, path)?;
    let bus: Arc<dyn UsbBus> = match &c.fake {
        Some(fake) => {
            let bus = fake_log(fake.log.clone());
            let serial = c.serial.as_deref().unwrap_or(FAKE_SERIAL);
            bus.add(FakeDevice::dutlink(FAKE_LOCATION, serial));
            Arc::new(bus)
        }
        None => Arc::new(LibusbBus::new(Sysfs::new(sysfs::SYSTEM_ROOT))),
    };
    let console = match &c.alternate_console {
        Some(url) => url.clone(),
        None => console_of(c.serial.as_deref()),
    };
    // The console is the serial driver's, on the tty found now; its own config is checked as
    // any serial entry's (and a tty that is absent waits for it, as the serial driver does).
    let console_node = yaml::parse(&format!(
        "url: {}\nbaudrate: {}\n",
        serde_json::to_string(&console).unwrap_or_default(),
        c.baudrate
    ))?;
    let console = crate::serial::spec(&console_node, &yaml::join(path, "alternate_console"))?;
    Ok(Box::new(DutlinkSpec {
        board: Arc::new(Board {
            serial: c.serial,
            usb_timeout: Duration::from_secs(c.timeout_s),
            bus,
        }),
        storage_device: c.storage_device,
        card: Arc::new(Card {
            timeout: Duration::from_secs(c.storage_timeout),
            leeway: Duration::from_secs(c.storage_leeway),
            fsync_timeout: Duration::from_secs(c.storage_fsync_timeout),
            roots: Roots::default(),
        }),
        console: Mutex::new(Some(console)),
    }))
}

/// The board's console: the `/dev/serial/by-id` link whose name carries its serial number
/// (udev names them after `ID_SERIAL_SHORT`), or, with no serial or no such link, a name that
/// says what is missing (the serial driver reports it as absent until it appears).
fn console_of(serial: Option<&str>) -> String {
    let by_id = std::path::Path::new("/dev/serial/by-id");
    if let (Some(serial), Ok(entries)) = (serial, std::fs::read_dir(by_id)) {
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(serial))
            })
            .collect();
        found.sort();
        if let Some(first) = found.into_iter().next() {
            return first.display().to_string();
        }
    }
    format!(
        "/dev/serial/by-id/dutlink-{}-console-not-found",
        serial.unwrap_or("any")
    )
}

struct DutlinkSpec {
    board: Arc<Board>,
    storage_device: PathBuf,
    card: Arc<Card>,
    console: Mutex<Option<Box<dyn DriverSpec>>>,
}

impl DriverSpec for DutlinkSpec {
    fn client(&self) -> &'static str {
        crate::client::COMPOSITE
    }

    fn children(&self) -> Vec<(&'static str, &'static str, Box<dyn DriverSpec>)> {
        let mut children: Vec<(&'static str, &'static str, Box<dyn DriverSpec>)> = vec![
            (
                "power",
                POWER_TYPE,
                Box::new(PowerSpec {
                    board: self.board.clone(),
                }),
            ),
            (
                "storage",
                STORAGE_TYPE,
                Box::new(StorageSpec {
                    board: self.board.clone(),
                    path: self.storage_device.clone(),
                    card: self.card.clone(),
                }),
            ),
        ];
        if let Some(console) = self.console.lock().ok().and_then(|mut c| c.take()) {
            children.push(("console", CONSOLE_TYPE, console));
        }
        children
    }

    /// The board is on the bus (by serial when one is set), as each command looks for it.
    fn device_present(&self) -> Option<bool> {
        Some(self.board.find().is_ok())
    }

    fn build(&self) -> Box<dyn Driver> {
        DriverSpec::build(&crate::composite::Composite)
    }
}

/// What the drivers know of the board; the device itself is found at every command.
struct Board {
    serial: Option<String>,
    usb_timeout: Duration,
    bus: Arc<dyn UsbBus>,
}

impl Board {
    fn find(&self) -> Result<DeviceInfo, DriverError> {
        let devices = self
            .bus
            .devices()
            .map_err(|e| device_error("the USB bus", None, e))?;
        devices
            .into_iter()
            .filter(|d| (d.vendor_id, d.product_id) == ID)
            .find(|d| self.serial.is_none() || d.serial == self.serial)
            .ok_or_else(|| {
                DriverError::Unavailable(format!(
                    "failed to find dutlink device{} (2b23:1012); check the cable, or `lsusb`",
                    self.serial
                        .as_deref()
                        .map(|s| format!(" with serial {s}"))
                        .unwrap_or_default()
                ))
            })
    }

    /// One vendor request to the board's interface; for an IN, first the OUT `0x00` that
    /// selects it, and the answer as text.
    fn control(&self, request: u8, value: u16, read: bool) -> Result<Option<String>, DriverError> {
        let device = self.find()?;
        let what = format!("dutlink {}", device.describe());
        let usb = |e| device_error(&what, Some(&device), e);
        let mut handle = self.bus.open(&device).map_err(usb)?;
        let interface = handle
            .find_interface(0xFF, 0x01, 0x01)
            .map_err(usb)?
            .ok_or_else(|| {
                DriverError::Failed(format!("{what} has no vendor interface ff/01/01"))
            })?;
        let to = |request, value| ControlRequest {
            request_type: 0x41,
            request,
            value,
            index: u16::from(interface),
        };
        if !read {
            handle
                .control_out(to(request, value), &[], self.usb_timeout)
                .map_err(usb)?;
            return Ok(None);
        }
        handle
            .control_out(to(0x00, 0), &[], self.usb_timeout)
            .map_err(usb)?;
        let from = ControlRequest {
            request_type: 0xC1,
            request,
            value,
            index: u16::from(interface),
        };
        let answer = handle
            .control_in(from, 512, self.usb_timeout)
            .map_err(usb)?;
        Ok(Some(String::from_utf8_lossy(&answer).into_owned()))
    }

    async fn send(self: &Arc<Self>, request: u8, value: u16) -> Result<(), DriverError> {
        let board = self.clone();
        blocking(move || board.control(request, value, false).map(|_| ())).await
    }

    async fn reading(self: &Arc<Self>) -> Result<String, DriverError> {
        let board = self.clone();
        blocking(move || {
            board
                .control(0x04, POWER_READING, true)
                .map(|t| t.unwrap_or_default())
        })
        .await
    }
}

/// `5.01V 0.45A` as upstream reads it: a value per word, its unit the last letter.
fn parse_reading(text: &str) -> Json {
    let (mut voltage, mut current) = (0.0, 0.0);
    for word in text.split_whitespace() {
        let (number, unit) = word.split_at(word.len().saturating_sub(1));
        let Ok(value) = number.parse::<f64>() else {
            continue;
        };
        match unit.to_ascii_uppercase().as_str() {
            "V" => voltage = value,
            "A" => current = value,
            _ => {}
        }
    }
    json!({"voltage": voltage, "current": current})
}

struct PowerSpec {
    board: Arc<Board>,
}

impl DriverSpec for PowerSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(Power {
            board: self.board.clone(),
            last: Mutex::new(None),
        })
    }
}

pub struct Power {
    board: Arc<Board>,
    /// The session's last action: repeating it sends nothing, as upstream.
    last: Mutex<Option<&'static str>>,
}

#[async_trait]
impl Driver for Power {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "on" | "off" | "rescue" => Some(MethodKind::Call),
            "read" => Some(MethodKind::Streaming),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        args::expect_count(method, &args, 0)?;
        let Some(index) = POWER_ACTIONS.iter().position(|a| *a == method) else {
            return Err(DriverError::NotImplemented(format!(
                "{method} is not a method of DutlinkPower"
            )));
        };
        let action = POWER_ACTIONS[index];
        if *self.last.lock().unwrap_or_else(|p| p.into_inner()) == Some(action) {
            return Ok(Json::Null);
        }
        self.board.send(0x01, index as u16).await?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(action);
        Ok(Json::Null)
    }

    /// A reading now and each time it changes, polled every second, for as long as the
    /// client reads.
    async fn streaming_call(
        &self,
        method: &str,
        args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        args::expect_count(method, &args, 0)?;
        let board = self.board.clone();
        let readings = futures::stream::unfold(
            (board, None::<Json>, true),
            |(board, previous, first)| async move {
                if !first {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                loop {
                    match board.reading().await {
                        Ok(text) => {
                            let now = parse_reading(&text);
                            if previous.as_ref() != Some(&now) {
                                return Some((Ok(now.clone()), (board, Some(now), false)));
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Some((Err(e), (board, previous, false))),
                    }
                }
            },
        );
        Ok(readings.boxed())
    }
}

struct StorageSpec {
    board: Arc<Board>,
    path: PathBuf,
    card: Arc<Card>,
}

impl DriverSpec for StorageSpec {
    fn client(&self) -> &'static str {
        crate::client::STORAGE_MUX_FLASHER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(Storage {
            board: self.board.clone(),
            path: self.path.clone(),
            card: self.card.clone(),
        })
    }
}

pub struct Storage {
    board: Arc<Board>,
    path: PathBuf,
    card: Arc<Card>,
}

impl Storage {
    async fn select(&self, action: &str) -> Result<(), DriverError> {
        let index = STORAGE_ACTIONS
            .iter()
            .position(|a| *a == action)
            .unwrap_or_default();
        self.board.send(0x02, index as u16).await
    }

    fn what(&self) -> String {
        format!("the DUT Link storage {}", self.path.display())
    }
}

#[async_trait]
impl Driver for Storage {
    fn method(&self, name: &str) -> Option<MethodKind> {
        super::mux_method(name)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        self.call_with(method, args, &crate::resource::NoResources)
            .await
    }

    async fn call_with(
        &self,
        method: &str,
        args: Vec<Json>,
        resources: &dyn Resources,
    ) -> Result<Json, DriverError> {
        match method {
            "host" | "dut" | "off" => {
                args::expect_count(method, &args, 0)?;
                self.select(method).await?;
                Ok(Json::Null)
            }
            "write" => {
                args::expect_count(method, &args, 1)?;
                self.select("host").await?;
                card::write(&self.path, &self.what(), &self.card, &args[0], resources).await
            }
            "read" => {
                args::expect_count(method, &args, 1)?;
                self.select("host").await?;
                card::read(&self.path, &self.what(), &args[0], resources).await
            }
            _ => Err(DriverError::NotImplemented(format!(
                "{method} is not a method of DutlinkStorageMux"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usb::fake::FakeBus;

    fn board(bus: &FakeBus, serial: Option<&str>) -> Arc<Board> {
        Arc::new(Board {
            serial: serial.map(str::to_string),
            usb_timeout: Duration::from_secs(1),
            bus: Arc::new(bus.clone()),
        })
    }

    #[test]
    fn readings_are_read_as_upstream_reads_them() {
        assert_eq!(
            parse_reading("5.01V 0.45A"),
            json!({"voltage": 5.01, "current": 0.45})
        );
        assert_eq!(
            parse_reading("0.45a"),
            json!({"voltage": 0.0, "current": 0.45})
        );
        assert_eq!(
            parse_reading("garbage"),
            json!({"voltage": 0.0, "current": 0.0})
        );
    }

    #[tokio::test]
    async fn power_and_storage_send_upstreams_requests_to_the_vendor_interface() {
        let bus = FakeBus::new();
        bus.add(FakeDevice::dutlink("1-5", "b1"));
        let power = Power {
            board: board(&bus, Some("b1")),
            last: Mutex::new(None),
        };
        power.call("on", vec![]).await.unwrap();
        assert_eq!(bus.dutlink("1-5").unwrap().power, Some(1));
        power.call("rescue", vec![]).await.unwrap();
        assert_eq!(bus.dutlink("1-5").unwrap().power, Some(4));
        let before = bus.transfers().len();
        power.call("rescue", vec![]).await.unwrap();
        assert_eq!(
            bus.transfers().len(),
            before,
            "a repeated action sends nothing"
        );
        let first = power
            .streaming_call("read", vec![])
            .await
            .unwrap()
            .next()
            .await;
        assert_eq!(
            first.unwrap().unwrap(),
            json!({"voltage": 5.01, "current": 0.45})
        );

        let storage = Storage {
            board: board(&bus, None),
            path: "/nonexistent".into(),
            card: Arc::new(Card {
                timeout: Duration::from_millis(100),
                leeway: Duration::ZERO,
                fsync_timeout: Duration::from_secs(1),
                roots: Roots::default(),
            }),
        };
        storage.call("dut", vec![]).await.unwrap();
        assert_eq!(bus.dutlink("1-5").unwrap().storage, Some(2));
        let requests: Vec<String> = bus.transfers().iter().map(|t| t.to_string()).collect();
        assert!(
            requests.iter().any(|t| t.contains("41 02 0002 0002")),
            "{requests:?}"
        );
        assert!(
            requests.iter().any(|t| t.contains("c1 04 0001 0002")),
            "{requests:?}"
        );
    }

    /// The same code paths on real hardware: `JMP_TEST_DUTLINK_SERIAL` picks the board.
    #[tokio::test]
    #[ignore = "needs a DUT Link board on this machine's USB, and permission to open it"]
    async fn a_real_board_switches_power_and_gives_a_reading() {
        let system = Sysfs::new(sysfs::SYSTEM_ROOT);
        let power = Power {
            board: Arc::new(Board {
                serial: std::env::var("JMP_TEST_DUTLINK_SERIAL").ok(),
                usb_timeout: Duration::from_secs(20),
                bus: Arc::new(LibusbBus::new(system)),
            }),
            last: Mutex::new(None),
        };
        power.call("off", vec![]).await.unwrap();
        let reading = power
            .streaming_call("read", vec![])
            .await
            .unwrap()
            .next()
            .await;
        assert!(reading.unwrap().unwrap()["voltage"].is_number());
    }

    #[tokio::test]
    async fn a_missing_board_fails_only_the_call_and_names_the_serial() {
        let bus = FakeBus::new();
        let power = Power {
            board: board(&bus, Some("zz")),
            last: Mutex::new(None),
        };
        let e = power.call("on", vec![]).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::Unavailable(m) if m.contains("failed to find dutlink device with serial zz")),
            "{e:?}"
        );
        bus.add(FakeDevice::dutlink("1-5", "zz"));
        power.call("on", vec![]).await.unwrap();
    }
}
