//! USB power switching: a hub port's power ([`hub::UsbHubPort`], our own driver type) and
//! Yepkit YKUSH boards ([`ykush`], upstream's type), both reporting `PowerClient`, plus the
//! discovery behind `jmp-exporter list usb` ([`list`]).
//!
//! USB itself sits behind the small [`transport::UsbBus`] trait: [`libusb`] is the real one,
//! [`fake`] records every transfer and plays hubs and YKUSH boards for tests and demos. The
//! kernel's own port switch (sysfs `disable`, Linux 6.0+) is in [`sysfs`], under a configurable
//! root. Drivers here block only inside `spawn_blocking`.
//!
//! Permissions: opening a hub or a YKUSH needs write access to its `/dev/bus/usb/BBB/DDD`
//! node, and switching through sysfs needs write access to the port's `disable` file. The
//! rules file [`UDEV_RULES`] grants both to group [`USB_GROUP`]; every permission error says so.

pub mod fake;
pub mod hub;
pub mod libusb;
pub mod list;
pub mod sysfs;
pub mod transport;
pub mod ykush;

use serde::Deserialize;

use async_trait::async_trait;

use crate::{power, Driver, DriverError, Json, MethodKind, ResultStream};
use transport::{DeviceInfo, UsbError};

/// The udev rules file in the jmp-exporter sources that gives the service access.
pub const UDEV_RULES: &str = "udev/60-jmp-exporter-usb.rules";

/// The group those rules grant access to (the systemd unit's group).
pub const USB_GROUP: &str = "jumpstarter";

/// What to do to fix a permission error.
pub fn permission_hint() -> String {
    format!(
        "install {UDEV_RULES} from the jmp-exporter sources into /etc/udev/rules.d/, make sure \
         the exporter's user is in group `{USB_GROUP}`, then run `udevadm control --reload && \
         udevadm trigger` (or replug the device)"
    )
}

/// The state applied when a session starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    On,
    Off,
    /// Leave the power as it is.
    #[default]
    Keep,
}

/// What a USB hub port and a YKUSH port share: a power switch without readings, put into its
/// `Initial` state at every session start. Implementing this makes the type a [`Driver`]
/// with the PowerClient contract.
#[async_trait]
pub trait PortSwitch: Send + Sync + 'static {
    /// The kind of switch, as errors name it ("a YKUSH").
    const WHAT: &'static str;
    fn initial(&self) -> Initial;
    async fn switch(&self, on: bool) -> Result<(), DriverError>;
}

#[async_trait]
impl<T: PortSwitch> Driver for T {
    fn method(&self, name: &str) -> Option<MethodKind> {
        power::method_kind(name)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        self.switch(power::switch_of(method, &args)?).await?;
        Ok(Json::Null)
    }

    async fn streaming_call(
        &self,
        method: &str,
        _args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        Err(power::no_readings(method, T::WHAT))
    }

    async fn reset(&self) -> Result<(), DriverError> {
        match self.initial() {
            Initial::Keep => Ok(()),
            Initial::On => self.switch(true).await,
            Initial::Off => self.switch(false).await,
        }
    }
}

/// `usbfs` node of a device, for messages.
pub fn device_node(d: &DeviceInfo) -> String {
    format!("/dev/bus/usb/{:03}/{:03}", d.bus, d.address)
}

/// Turns a USB failure on `what` (a description naming the device) into the driver error the
/// client sees.
pub fn device_error(what: &str, device: Option<&DeviceInfo>, e: UsbError) -> DriverError {
    match e {
        UsbError::Access => {
            let node = device
                .map(|d| format!(" ({})", device_node(d)))
                .unwrap_or_default();
            DriverError::Failed(format!(
                "permission denied opening {what}{node}: {}",
                permission_hint()
            ))
        }
        UsbError::NoDevice => DriverError::Unavailable(format!("{what} is gone (unplugged?)")),
        UsbError::Timeout => DriverError::Timeout(format!("{what} did not answer in time")),
        UsbError::Busy => {
            DriverError::Unavailable(format!("{what} is busy: another program holds it"))
        }
        UsbError::NoUsb(m) => DriverError::Unavailable(format!("{what}: {m}")),
        other => DriverError::Failed(format!("{what}: {other}")),
    }
}

/// Runs blocking USB work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DriverError::Failed(format!("USB operation did not finish: {e}")))?
}

/// Config keys that make a driver use the fake bus (a test and demo aid): where to log the
/// transfers.
pub(crate) fn fake_log(path: Option<std::path::PathBuf>) -> fake::FakeBus {
    match path {
        Some(p) => fake::FakeBus::new().with_log(p),
        None => fake::FakeBus::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_name_the_device_and_the_fix() {
        let d = DeviceInfo {
            bus: 1,
            address: 7,
            ports: vec![1],
            vendor_id: 0x2109,
            product_id: 0x2817,
            class: transport::HUB_CLASS,
            usb_version: 0x0210,
            serial: None,
        };
        let e = device_error(
            &format!("USB hub {}", d.describe()),
            Some(&d),
            UsbError::Access,
        );
        let DriverError::Failed(m) = e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains("USB hub 1-1 (2109:2817, bus 1 address 7)"),
            "{m}"
        );
        assert!(m.contains("/dev/bus/usb/001/007"), "{m}");
        assert!(
            m.contains(UDEV_RULES) && m.contains("group `jumpstarter`"),
            "{m}"
        );
        assert!(matches!(
            device_error("x", None, UsbError::NoDevice),
            DriverError::Unavailable(_)
        ));
        assert!(matches!(
            device_error("x", None, UsbError::Timeout),
            DriverError::Timeout(_)
        ));
    }
}
