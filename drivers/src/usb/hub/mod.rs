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
//! Layout: `config` reads the `config:` keys, and builds the simulated hub a `fake:` entry asks
//! for; `switch` works out which hub halves and ports a switch touches and switches them. This
//! module holds the driver, its spec, and the state they share.
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

mod config;
mod switch;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::sysfs::Sysfs;
use super::transport::UsbBus;
use super::{blocking, Initial, PortSwitch};
use crate::yaml::{self, Node};
use crate::{Driver, DriverError, DriverSpec};
use config::{parse, Companion, Selector};
pub(crate) use switch::companion_of;

/// Our own type name for this driver; stable, as lab configs will name it.
pub const TYPE: &str = "jmp_exporter.drivers.UsbHubPort";

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(HubPortSpec {
        inner: Arc::new(parse(node, path)?),
    }))
}

struct HubPortSpec {
    inner: Arc<HubPortInner>,
}

impl DriverSpec for HubPortSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    /// The hub the config selects is on the bus (and is that hub); a bus that cannot be
    /// listed counts as absent, since the driver cannot reach the hub either.
    fn device_present(&self) -> Option<bool> {
        let devices = self.inner.bus.devices().unwrap_or_default();
        Some(self.inner.find_hub(&devices).is_ok())
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
