//! SD-Wire (`jumpstarter_driver_sdwire.driver.SDWire`, drivers.md §9): an SD card mux whose
//! FT200X switches the card between the host's reader and the board. Upstream's config and
//! calls; the mux is looked up at every call (upstream looks once, in its constructor, and a
//! missing mux fails the whole exporter there), so a mux that is unplugged costs its own calls
//! only, and works again once it is back.
//!
//! - Device: `04e8:6001` whose product string is `sd-wire` (as `sd-mux-ctrl --init` programs
//!   it), or a factory FT200X `0403:6015` only when `serial` names it; several candidates and
//!   no `serial` is an error, as upstream.
//! - Switching: vendor OUT `0x0B`, `wValue` `0x20F1` (host) or `0x20F0` (board); `off` is host.
//! - The card's block device: `storage_device`, or the `block` device under the mux's own USB
//!   hub in sysfs (the reader shares the mux's hub), polled every second for
//!   `storage_timeout` after switching to the host. Before the first byte it is checked not to
//!   hold anything of the host's ([`super::block::check_target`]).
//! - `write`: host, wait for the card, write every chunk (progress every 50 MiB), `fsync`
//!   within `storage_fsync_timeout`, wait `storage_leeway`, then (beyond upstream) back to
//!   the board, or an error that says where the card is; `read` streams the card.
//!
//! ## Config
//! ```yaml
//! type: jumpstarter_driver_sdwire.driver.SDWire
//! config:
//!   serial: null             # pick one of several, or a factory FT200X
//!   storage_device: null     # e.g. /dev/disk/by-id/usb-..., found in sysfs when absent
//!   storage_timeout: 10      # s, for the card to appear on the host
//!   storage_leeway: 6        # s, after the sync
//!   storage_fsync_timeout: 900
//!   # fake:                  # test and demo aid (not upstream): a simulated mux at 1-3.2
//!   #   programmed: true
//!   #   log: /tmp/sdwire.log
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::block::Roots;
use super::card::{self, Card};
use crate::resource::Resources;
use crate::usb::fake::FakeDevice;
use crate::usb::libusb::LibusbBus;
use crate::usb::sysfs::{self, Sysfs};
use crate::usb::transport::{ControlRequest, DeviceInfo, UsbBus};
use crate::usb::{blocking, device_error, fake_log};
use crate::yaml::{self, Node};
use crate::{args, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_sdwire.driver.SDWire";

const PROGRAMMED: (u16, u16) = (0x04e8, 0x6001);
const PROGRAMMED_PRODUCT: &str = "sd-wire";
const FACTORY: (u16, u16) = (0x0403, 0x6015);

const TO_HOST: u16 = 0x20F1;
const TO_DUT: u16 = 0x20F0;
const USB_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the fake mux sits, and its serial.
const FAKE_LOCATION: &str = "1-3.2";
const FAKE_SERIAL: &str = "sdw-00001";

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
    #[serde(default)]
    storage_device: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    storage_timeout: u64,
    #[serde(default = "default_leeway")]
    storage_leeway: u64,
    #[serde(default = "default_fsync_timeout")]
    storage_fsync_timeout: u64,
    #[serde(default)]
    fake: Option<FakeConfig>,
}

/// `fake:`: a simulated mux, programmed or a factory FT200X.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeConfig {
    #[serde(default = "programmed_default")]
    programmed: bool,
    #[serde(default)]
    log: Option<PathBuf>,
}

fn programmed_default() -> bool {
    true
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: Config = yaml::from_node(node, path)?;
    let bus: Arc<dyn UsbBus> = match &c.fake {
        Some(fake) => {
            let bus = fake_log(fake.log.clone());
            let serial = c.serial.as_deref().unwrap_or(FAKE_SERIAL);
            bus.add(FakeDevice::sdwire(FAKE_LOCATION, serial, fake.programmed));
            Arc::new(bus)
        }
        None => Arc::new(LibusbBus::new(Sysfs::new(sysfs::SYSTEM_ROOT))),
    };
    Ok(Box::new(SdWireSpec {
        mux: Arc::new(Mux {
            serial: c.serial,
            storage_device: c.storage_device,
            storage_timeout: Duration::from_secs(c.storage_timeout),
            card: Card {
                timeout: Duration::from_secs(c.storage_timeout),
                leeway: Duration::from_secs(c.storage_leeway),
                fsync_timeout: Duration::from_secs(c.storage_fsync_timeout),
                roots: Roots::default(),
            },
            bus,
            sysfs: Sysfs::new(sysfs::SYSTEM_ROOT),
        }),
    }))
}

struct SdWireSpec {
    mux: Arc<Mux>,
}

impl DriverSpec for SdWireSpec {
    fn client(&self) -> &'static str {
        crate::client::STORAGE_MUX_FLASHER
    }

    /// Exactly one mux matching the config is on the bus.
    fn device_present(&self) -> Option<bool> {
        Some(self.mux.find().is_ok())
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(SdWire {
            mux: self.mux.clone(),
        })
    }
}

/// What the driver knows of its mux; the device itself is found at every call.
struct Mux {
    serial: Option<String>,
    storage_device: Option<PathBuf>,
    storage_timeout: Duration,
    card: Card,
    bus: Arc<dyn UsbBus>,
    sysfs: Sysfs,
}

impl Mux {
    /// The one mux this entry drives, or why there is none.
    fn find(&self) -> Result<DeviceInfo, DriverError> {
        let devices = self
            .bus
            .devices()
            .map_err(|e| device_error("the USB bus", None, e))?;
        let mut found: Vec<DeviceInfo> = devices
            .iter()
            .filter(|d| is_sdwire(self.bus.as_ref(), d))
            .filter(|d| self.serial.is_none() || d.serial == self.serial)
            .cloned()
            .collect();
        if let Some(serial) = &self.serial {
            // A factory FT200X looks like any other FT200X: only taken by its serial.
            found.extend(
                devices
                    .iter()
                    .filter(|d| (d.vendor_id, d.product_id) == FACTORY)
                    .filter(|d| d.serial.as_deref() == Some(serial))
                    .cloned(),
            );
        }
        match found.len() {
            0 => Err(DriverError::Unavailable(format!(
                "failed to find sd-wire device{} (looked for 04e8:6001 with product \"sd-wire\"{}); check the cable, or `lsusb`",
                self.serial
                    .as_deref()
                    .map(|s| format!(" with serial {s}"))
                    .unwrap_or_default(),
                if self.serial.is_some() {
                    " and a factory FT200X 0403:6015"
                } else {
                    ""
                }
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(DriverError::InvalidArgument(format!(
                "found {} sd-wire devices ({}); set `serial:` to pick one",
                found.len(),
                found
                    .iter()
                    .map(|d| format!(
                        "{} serial {}",
                        d.location(),
                        d.serial.as_deref().unwrap_or("?")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn select(&self, value: u16) -> Result<DeviceInfo, DriverError> {
        let device = self.find()?;
        let what = format!("sd-wire {}", device.describe());
        let mut handle = self
            .bus
            .open(&device)
            .map_err(|e| device_error(&what, Some(&device), e))?;
        let request = ControlRequest {
            request_type: 0x40,
            request: 0x0B,
            value,
            index: 0,
        };
        handle
            .control_out(request, &[], USB_TIMEOUT)
            .map_err(|e| device_error(&what, Some(&device), e))?;
        Ok(device)
    }

    /// The card's block device, as configured or as sysfs shows it under the mux's hub.
    fn storage(&self, device: &DeviceInfo) -> Option<PathBuf> {
        if let Some(path) = &self.storage_device {
            return path.exists().then(|| path.clone());
        }
        block_device_of(&self.sysfs, device)
    }

    /// Waits for the card to show on the host, up to `storage_timeout`.
    async fn await_storage(self: &Arc<Self>, device: &DeviceInfo) -> Result<PathBuf, DriverError> {
        let deadline = tokio::time::Instant::now() + self.storage_timeout;
        loop {
            if let Some(path) = self.storage(device) {
                return Ok(path);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DriverError::Timeout(format!(
                    "the SD card of sd-wire {} did not appear on the host within storage_timeout ({} s){}",
                    device.location(),
                    self.storage_timeout.as_secs(),
                    self.storage_device
                        .as_ref()
                        .map(|p| format!(": {} is not there", p.display()))
                        .unwrap_or_else(|| ": no block device under its USB hub".into())
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Whether `device` is a programmed SD-Wire (`04e8:6001`, product `sd-wire`).
pub fn is_sdwire(bus: &dyn UsbBus, device: &DeviceInfo) -> bool {
    (device.vendor_id, device.product_id) == PROGRAMMED
        && bus.product(device).as_deref() == Some(PROGRAMMED_PRODUCT)
}

/// The block device of an SD-Wire's card, as sysfs shows it under the mux's own USB hub (the
/// card reader shares that hub).
pub fn block_device_of(sysfs: &Sysfs, device: &DeviceInfo) -> Option<PathBuf> {
    let location = device.location();
    let hub = location.rsplit_once('.').map(|(h, _)| h.to_string())?;
    find_block(&sysfs.device_dir(&hub), 12).map(|name| PathBuf::from("/dev").join(name))
}

/// The first block device name below `dir` in sysfs (`.../block/sdb`), not following links.
fn find_block(dir: &Path, depth: usize) -> Option<String> {
    if depth == 0 {
        return None;
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut dirs = Vec::new();
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() {
            continue;
        }
        if entry.file_name() == "block" {
            let mut names: Vec<String> = std::fs::read_dir(entry.path())
                .ok()?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            if let Some(name) = names.into_iter().next() {
                return Some(name);
            }
        }
        dirs.push(entry.path());
    }
    dirs.sort();
    dirs.iter().find_map(|d| find_block(d, depth - 1))
}

pub struct SdWire {
    mux: Arc<Mux>,
}

/// `e` with a note on where the card is now.
fn noted(e: DriverError, note: &str) -> DriverError {
    match e {
        DriverError::NotImplemented(m) => DriverError::NotImplemented(format!("{m}; {note}")),
        DriverError::InvalidArgument(m) => DriverError::InvalidArgument(format!("{m}; {note}")),
        DriverError::Timeout(m) => DriverError::Timeout(format!("{m}; {note}")),
        DriverError::Unavailable(m) => DriverError::Unavailable(format!("{m}; {note}")),
        DriverError::Failed(m) => DriverError::Failed(format!("{m}; {note}")),
    }
}

impl SdWire {
    async fn switch(&self, value: u16) -> Result<DeviceInfo, DriverError> {
        let mux = self.mux.clone();
        blocking(move || mux.select(value)).await
    }

    /// Beyond upstream: a write ends with the card back on the board's side, or says where it
    /// is left.
    async fn write(&self, handle: &Json, resources: &dyn Resources) -> Result<Json, DriverError> {
        let device = self.switch(TO_HOST).await?;
        let written = match self.mux.await_storage(&device).await {
            Ok(path) => {
                let what = format!(
                    "the SD card {} (sd-wire {})",
                    path.display(),
                    device.location()
                );
                card::write(&path, &what, &self.mux.card, handle, resources).await
            }
            Err(e) => Err(e),
        };
        match (written, self.switch(TO_DUT).await) {
            (Ok(done), Ok(_)) => Ok(done),
            (Ok(_), Err(e)) => Err(noted(e, "the image was written, but the card could not be switched back to the board; it is on the host side")),
            (Err(e), Ok(_)) => Err(noted(e, "the card is switched back to the board")),
            (Err(e), Err(_)) => Err(noted(e, "the card is left on the host side (switching it back failed too)")),
        }
    }

    async fn read(&self, handle: &Json, resources: &dyn Resources) -> Result<Json, DriverError> {
        let device = self.switch(TO_HOST).await?;
        let path = self.mux.await_storage(&device).await?;
        let what = format!(
            "the SD card {} (sd-wire {})",
            path.display(),
            device.location()
        );
        card::read(&path, &what, handle, resources).await
    }
}

#[async_trait]
impl Driver for SdWire {
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
            "host" | "off" => {
                args::expect_count(method, &args, 0)?;
                self.switch(TO_HOST).await?;
                Ok(Json::Null)
            }
            "dut" => {
                args::expect_count(method, &args, 0)?;
                self.switch(TO_DUT).await?;
                Ok(Json::Null)
            }
            "write" => {
                args::expect_count(method, &args, 1)?;
                self.write(&args[0], resources).await
            }
            "read" => {
                args::expect_count(method, &args, 1)?;
                self.read(&args[0], resources).await
            }
            _ => Err(DriverError::NotImplemented(format!(
                "{method} is not a method of SDWire"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{cut_short, Cut};
    use crate::usb::fake::FakeBus;

    fn mux(bus: FakeBus, serial: Option<&str>, storage: Option<PathBuf>) -> Arc<Mux> {
        Arc::new(Mux {
            serial: serial.map(str::to_string),
            storage_device: storage,
            storage_timeout: Duration::from_millis(1500),
            card: Card {
                timeout: Duration::from_millis(1500),
                leeway: Duration::ZERO,
                fsync_timeout: Duration::from_secs(5),
                roots: Roots::default(),
            },
            bus: Arc::new(bus),
            sysfs: Sysfs::new("/nonexistent"),
        })
    }

    #[test]
    fn presence_is_one_matching_mux_on_the_bus() {
        let bus = FakeBus::new();
        let spec = SdWireSpec {
            mux: mux(bus.clone(), None, None),
        };
        assert_eq!(spec.device_present(), Some(false));
        bus.add(FakeDevice::sdwire("1-3.2", "a", true));
        assert_eq!(spec.device_present(), Some(true));
        bus.unplug("1-3.2");
        assert_eq!(spec.device_present(), Some(false), "unplugged");
        assert!(bus.transfers().is_empty());
    }

    #[test]
    fn the_mux_is_found_by_id_and_product_and_a_factory_one_only_by_serial() {
        let bus = FakeBus::new();
        assert!(matches!(
            mux(bus.clone(), None, None).find(),
            Err(DriverError::Unavailable(m)) if m.contains("failed to find sd-wire device")
        ));
        bus.add(FakeDevice::sdwire("1-4.2", "f1", false));
        assert!(
            mux(bus.clone(), None, None).find().is_err(),
            "a factory FT200X needs its serial"
        );
        assert_eq!(
            mux(bus.clone(), Some("f1"), None)
                .find()
                .unwrap()
                .location(),
            "1-4.2"
        );
        bus.add(FakeDevice::sdwire("1-3.2", "a", true));
        assert_eq!(
            mux(bus.clone(), None, None).find().unwrap().location(),
            "1-3.2"
        );
        bus.add(FakeDevice::sdwire("1-5.2", "b", true));
        let e = mux(bus.clone(), None, None).find().unwrap_err();
        assert!(
            matches!(&e, DriverError::InvalidArgument(m) if m.contains("found 2 sd-wire devices") && m.contains("set `serial:`")),
            "{e:?}"
        );
        assert_eq!(
            mux(bus, Some("b"), None).find().unwrap().location(),
            "1-5.2"
        );
    }

    #[tokio::test]
    async fn switching_sends_upstreams_requests_and_a_missing_mux_fails_only_its_call() {
        let bus = FakeBus::new();
        let driver = SdWire {
            mux: mux(bus.clone(), None, None),
        };
        let e = driver.call("host", vec![]).await.unwrap_err();
        assert!(matches!(e, DriverError::Unavailable(_)), "{e:?}");
        bus.add(FakeDevice::sdwire("1-3.2", "a", true));
        driver.call("host", vec![]).await.unwrap();
        assert_eq!(bus.sdwire_on_host("1-3.2"), Some(true));
        driver.call("dut", vec![]).await.unwrap();
        assert_eq!(bus.sdwire_on_host("1-3.2"), Some(false));
        driver.call("off", vec![]).await.unwrap();
        assert_eq!(
            bus.sdwire_on_host("1-3.2"),
            Some(true),
            "off is host, as upstream"
        );
        let requests: Vec<String> = bus.transfers().iter().map(|t| t.to_string()).collect();
        assert!(
            requests.iter().any(|t| t.contains("40 0b 20f1 0000"))
                && requests.iter().any(|t| t.contains("40 0b 20f0 0000")),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn a_card_that_never_appears_times_out_naming_it() {
        let bus = FakeBus::new();
        bus.add(FakeDevice::sdwire("1-3.2", "a", true));
        let missing = PathBuf::from("/nonexistent/sdcard");
        let m = mux(bus, None, Some(missing));
        let device = m.find().unwrap();
        let e = m.await_storage(&device).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::Timeout(t) if t.contains("/nonexistent/sdcard") && t.contains("storage_timeout")),
            "{e:?}"
        );
    }

    #[test]
    fn the_cards_block_device_is_found_under_the_muxs_hub() {
        let root = tempfile::tempdir().unwrap();
        let dev = root
            .path()
            .join("1-3/1-3.1/1-3.1:1.0/host2/target2:0:0/2:0:0:0/block/sdq");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(root.path().join("1-3/1-3.2")).unwrap();
        assert_eq!(
            find_block(&root.path().join("1-3"), 12).as_deref(),
            Some("sdq")
        );
        assert_eq!(find_block(&root.path().join("1-3/1-3.2"), 12), None);
    }

    /// An upload from memory, for the driver's own tests.
    struct Upload(Vec<u8>);

    #[async_trait]
    impl Resources for Upload {
        async fn open_read(
            &self,
            _handle: &Json,
        ) -> Result<crate::resource::ByteSource, DriverError> {
            Ok(Box::new(std::io::Cursor::new(self.0.clone())))
        }

        async fn open_write(
            &self,
            _handle: &Json,
        ) -> Result<crate::resource::ByteSink, DriverError> {
            Err(DriverError::InvalidArgument("no dumps here".into()))
        }
    }

    #[tokio::test]
    async fn a_write_ends_with_the_card_on_the_board_or_says_where_it_is() {
        let bus = FakeBus::new();
        bus.add(FakeDevice::sdwire("1-3.2", "a", true));
        let dir = tempfile::tempdir().unwrap();
        let card = dir.path().join("card.img");
        std::fs::write(&card, b"old").unwrap();
        let driver = SdWire {
            mux: mux(bus.clone(), None, Some(card.clone())),
        };
        let handle = serde_json::json!({"kind": "client_stream"});
        driver
            .call_with(
                "write",
                vec![handle.clone()],
                &Upload(b"new image".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(&card).unwrap(), b"new image");
        assert_eq!(
            bus.sdwire_on_host("1-3.2"),
            Some(false),
            "back on the board"
        );

        let e = driver
            .call_with("write", vec![handle], &crate::resource::NoResources)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DriverError::InvalidArgument(m) if m.contains("the card is switched back to the board")),
            "{e:?}"
        );
        assert_eq!(bus.sdwire_on_host("1-3.2"), Some(false));
    }

    #[test]
    fn a_card_gone_mid_write_is_unavailable_naming_the_bytes() {
        let e = cut_short(
            "writing",
            "the upload",
            "the SD card /dev/sdq",
            1 << 20,
            Cut::Sink(std::io::Error::from_raw_os_error(
                rustix::io::Errno::NOMEDIUM.raw_os_error(),
            )),
        );
        assert!(
            matches!(&e, DriverError::Unavailable(m) if m.contains("after 1048576 bytes")),
            "{e:?}"
        );
    }

    /// The same code paths on real hardware: `JMP_TEST_SDWIRE_SERIAL` picks the mux when there
    /// are several.
    #[tokio::test]
    #[ignore = "needs an SD-Wire with a card on this machine's USB, and permission to open it"]
    async fn a_real_sdwire_shows_its_card_on_the_host_and_switches_back() {
        let system = Sysfs::new(sysfs::SYSTEM_ROOT);
        let m = Arc::new(Mux {
            serial: std::env::var("JMP_TEST_SDWIRE_SERIAL").ok(),
            storage_device: None,
            storage_timeout: Duration::from_secs(10),
            card: Card {
                timeout: Duration::from_secs(10),
                leeway: Duration::ZERO,
                fsync_timeout: Duration::from_secs(60),
                roots: Roots::default(),
            },
            bus: Arc::new(LibusbBus::new(system.clone())),
            sysfs: system,
        });
        let driver = SdWire { mux: m.clone() };
        driver.call("host", vec![]).await.unwrap();
        let device = m.find().unwrap();
        let card = m.await_storage(&device).await.unwrap();
        assert!(card.starts_with("/dev"), "{card:?}");
        driver.call("dut", vec![]).await.unwrap();
    }

    #[test]
    fn a_transfer_cut_short_names_the_bytes_and_the_end() {
        let e = cut_short(
            "writing",
            "the upload",
            "the SD card /dev/sdq",
            4096,
            Cut::Sink(std::io::Error::other("EIO")),
        );
        assert!(
            matches!(&e, DriverError::Failed(m) if m.contains("after 4096 bytes") && m.contains("/dev/sdq")),
            "{e:?}"
        );
    }
}
