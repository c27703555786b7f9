//! Discovery for `jmp-exporter list usb`: every hub with its location, id, serial, ports,
//! declared power switching, USB 3 companion and the power of each port, plus YKUSH boards
//! and SD-Wire muxes (with their card's block device), as plain data with a table `Display`. Lab owners copy locations and serials from it into
//! configs.
//!
//! Nothing here needs permission: where a hub cannot be opened, what only the hub can say
//! (its descriptor, and port power without sysfs `disable`) shows as `?` with a note.

use std::fmt;
use std::time::Duration;

use super::hub::companion_of;
use super::libusb::LibusbBus;
use super::sysfs::{self, Sysfs};
use super::transport::{hub, DeviceInfo, HubDescriptor, PowerSwitching, UsbBus, UsbError};

const TIMEOUT: Duration = Duration::from_secs(1);

/// One hub (one half of a USB 3 hub).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRow {
    pub location: String,
    /// `vvvv:pppp`
    pub id: String,
    pub serial: Option<String>,
    /// USB version (`2.1`, `3.2`).
    pub usb: String,
    pub ports: Option<u8>,
    pub switching: Option<PowerSwitching>,
    /// The other half of a USB 3 hub.
    pub companion: Option<String>,
    /// Power of each port (`None`: unknown).
    pub power: Vec<(u8, Option<bool>)>,
    /// How the driver would switch it: `sysfs` (kernel `disable` attribute) or `usb`.
    pub via: &'static str,
}

/// A YKUSH board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YkushRow {
    pub location: String,
    pub serial: Option<String>,
}

/// An SD-Wire mux, with its card's block device where sysfs shows one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdWireRow {
    pub location: String,
    pub serial: Option<String>,
    pub block: Option<String>,
}

/// What `list usb` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsbListing {
    pub hubs: Vec<HubRow>,
    pub ykush: Vec<YkushRow>,
    pub sdwire: Vec<SdWireRow>,
    /// Things the reader should know (no USB here, no permission to open a hub).
    pub notes: Vec<String>,
}

/// Lists this machine's hubs and YKUSH boards.
pub fn list_usb() -> UsbListing {
    let sys = Sysfs::new(sysfs::SYSTEM_ROOT);
    discover(&LibusbBus::new(sys.clone()), Some(&sys))
}

/// Lists what `bus` has, with sysfs at `sysfs`.
pub fn discover(bus: &dyn UsbBus, sysfs: Option<&Sysfs>) -> UsbListing {
    let mut listing = UsbListing::default();
    let devices = match bus.devices() {
        Ok(d) => d,
        Err(e) => {
            listing.notes.push(format!("no USB devices listed: {e}"));
            return listing;
        }
    };
    let mut denied = false;
    for d in devices.iter().filter(|d| d.is_hub()) {
        let (row, was_denied) = hub_row(bus, sysfs, &devices, d);
        denied |= was_denied;
        listing.hubs.push(row);
    }
    listing.ykush = devices
        .iter()
        .filter(|d| (d.vendor_id, d.product_id) == (super::ykush::VID, super::ykush::PID))
        .map(|d| YkushRow {
            location: d.location(),
            serial: d.serial.clone(),
        })
        .collect();
    listing.sdwire = devices
        .iter()
        .filter(|d| crate::storage::sdwire::is_sdwire(bus, d))
        .map(|d| SdWireRow {
            location: d.location(),
            serial: d.serial.clone(),
            block: sysfs
                .and_then(|s| crate::storage::sdwire::block_device_of(s, d))
                .map(|p| p.display().to_string()),
        })
        .collect();
    if denied {
        listing.notes.push(format!(
            "? = no permission to open the hub to ask it: {}",
            super::permission_hint()
        ));
    }
    listing
}

fn hub_row(
    bus: &dyn UsbBus,
    sysfs: Option<&Sysfs>,
    devices: &[DeviceInfo],
    d: &DeviceInfo,
) -> (HubRow, bool) {
    let location = d.location();
    let superspeed = d.is_superspeed();
    let mut denied = false;
    let mut handle = match bus.open(d) {
        Ok(h) => Some(h),
        Err(e) => {
            denied = e == UsbError::Access;
            None
        }
    };
    let descriptor = handle.as_mut().and_then(|h| {
        let length = if superspeed { 12 } else { 71 };
        let bytes = h
            .control_in(hub::descriptor(superspeed), length, TIMEOUT)
            .ok()?;
        HubDescriptor::parse(&bytes)
    });
    let sysfs_ports = sysfs.map(|s| s.ports(&location)).unwrap_or_default();
    let ports = descriptor.map(|x| x.ports).or_else(|| {
        sysfs
            .and_then(|s| s.attribute(&location, "maxchild"))
            .and_then(|m| m.parse().ok())
            .or_else(|| sysfs_ports.last().copied())
    });
    let mut via = "usb";
    let power = (1..=ports.unwrap_or(0))
        .map(|port| {
            if let Some(path) = sysfs.and_then(|s| s.disable_attribute(&location, port)) {
                via = "sysfs";
                return (port, sysfs::read_powered(&path).ok());
            }
            let powered = handle.as_mut().and_then(|h| {
                let status = h.control_in(hub::port_status(port), 4, TIMEOUT).ok()?;
                let [lo, hi, ..] = status[..] else {
                    return None;
                };
                Some(hub::powered(superspeed, u16::from_le_bytes([lo, hi])))
            });
            (port, powered)
        })
        .collect();
    // The companion of the whole hub: the one port 1 is paired with.
    let companion = companion_of(devices, sysfs, d, 1).map(|(c, _)| c.location());
    let row = HubRow {
        location,
        id: d.id(),
        serial: d.serial.clone(),
        usb: d.version(),
        ports,
        switching: descriptor.map(|x| x.switching),
        companion,
        power,
        via,
    };
    (row, denied)
}

impl fmt::Display for UsbListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "LOCATION",
            "ID",
            "USB",
            "SERIAL",
            "PORTS",
            "SWITCHING",
            "COMPANION",
            "VIA",
            "POWER",
        ];
        let dash = || "-".to_string();
        let rows: Vec<Vec<String>> = self
            .hubs
            .iter()
            .map(|h| {
                vec![
                    h.location.clone(),
                    h.id.clone(),
                    h.usb.clone(),
                    h.serial.clone().unwrap_or_else(dash),
                    h.ports.map_or("?".into(), |p| p.to_string()),
                    h.switching.map_or("?".into(), |s| s.name().to_string()),
                    h.companion.clone().unwrap_or_else(dash),
                    h.via.to_string(),
                    if h.power.is_empty() {
                        dash()
                    } else {
                        h.power
                            .iter()
                            .map(|(port, on)| {
                                let state = match on {
                                    Some(true) => "on",
                                    Some(false) => "off",
                                    None => "?",
                                };
                                format!("{port}:{state}")
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    },
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            let last = cells.len() - 1;
            for (i, cell) in cells.iter().enumerate() {
                if i == last {
                    writeln!(f, "{cell}")?;
                } else {
                    write!(f, "{cell:<width$}  ", width = widths[i])?;
                }
            }
            Ok(())
        };
        writeln!(f, "USB hubs")?;
        line(f, &header)?;
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(f, &cells)?;
        }
        if rows.is_empty() {
            writeln!(f, "(none)")?;
        }
        if !self.ykush.is_empty() {
            writeln!(f)?;
            writeln!(f, "YKUSH boards")?;
            writeln!(f, "LOCATION  SERIAL")?;
            for y in &self.ykush {
                writeln!(
                    f,
                    "{:<8}  {}",
                    y.location,
                    y.serial.as_deref().unwrap_or("-")
                )?;
            }
        }
        if !self.sdwire.is_empty() {
            writeln!(f)?;
            writeln!(f, "SD-Wire muxes")?;
            writeln!(f, "LOCATION  SERIAL        BLOCK")?;
            for m in &self.sdwire {
                writeln!(
                    f,
                    "{:<8}  {:<12}  {}",
                    m.location,
                    m.serial.as_deref().unwrap_or("-"),
                    m.block
                        .as_deref()
                        .unwrap_or("- (no card reader under its hub)")
                )?;
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeBus, FakeDevice, FakeHub, Fault, Reaction};
    use super::super::sysfs::fake as tree;
    use super::*;

    #[test]
    fn hubs_with_companions_switching_and_power() {
        let bus = FakeBus::new();
        bus.add(FakeDevice::hub(
            "1-1",
            (0x2109, 0x2817),
            Some("000000001"),
            FakeHub::new(false, 4, PowerSwitching::PerPort, Reaction::PerPort),
        ));
        bus.add(FakeDevice::hub(
            "2-1",
            (0x2109, 0x0817),
            Some("000000001"),
            FakeHub::new(true, 4, PowerSwitching::PerPort, Reaction::PerPort),
        ));
        bus.add(
            FakeDevice::hub(
                "1-2",
                (0x05e3, 0x0610),
                None,
                FakeHub::new(false, 2, PowerSwitching::Ganged, Reaction::Ganged),
            )
            .with_fault(Fault::Denied),
        );
        bus.add(FakeDevice::ykush("1-1.3", "YK25838"));
        // Switch one port off through the fake, as a driver would have.
        let mut h = bus.open(&bus.devices().unwrap()[0]).unwrap();
        h.control_out(hub::port_power(2, false), &[], TIMEOUT)
            .unwrap();
        drop(h);

        let listing = discover(&bus, None);
        assert_eq!(listing.hubs.len(), 3);
        let first = &listing.hubs[0];
        assert_eq!(
            first,
            &HubRow {
                location: "1-1".into(),
                id: "2109:2817".into(),
                serial: Some("000000001".into()),
                usb: "2.1".into(),
                ports: Some(4),
                switching: Some(PowerSwitching::PerPort),
                companion: Some("2-1".into()),
                power: vec![
                    (1, Some(true)),
                    (2, Some(false)),
                    (3, Some(true)),
                    (4, Some(true))
                ],
                via: "usb",
            }
        );
        let denied = &listing.hubs[1];
        assert_eq!(denied.location, "1-2");
        assert_eq!((denied.ports, denied.switching), (None, None));
        assert_eq!(listing.hubs[2].companion.as_deref(), Some("1-1"));
        assert_eq!(listing.ykush[0].serial.as_deref(), Some("YK25838"));
        assert!(
            listing.notes[0].contains("no permission"),
            "{:?}",
            listing.notes
        );

        let text = listing.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "USB hubs");
        assert!(
            lines[1].starts_with("LOCATION  ID         USB  SERIAL     PORTS  SWITCHING"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("1-1       2109:2817  2.1  000000001  4      per-port   2-1"),
            "{text}"
        );
        assert!(lines[2].ends_with("usb  1:on 2:off 3:on 4:on"), "{text}");
        assert!(lines[3].contains(" ?      ?  "), "{text}");
        assert!(
            text.contains("YKUSH boards\nLOCATION  SERIAL\n1-1.3     YK25838\n"),
            "{text}"
        );
        assert!(text.contains("note: ? = no permission"), "{text}");
    }

    #[test]
    fn sysfs_gives_ports_power_and_peers_without_opening_anything() {
        let dir = tempfile::tempdir().unwrap();
        tree::add_hub(dir.path(), "1-1", (0x2109, 0x2817), 4, true).unwrap();
        tree::add_hub(dir.path(), "2-1", (0x2109, 0x0817), 4, true).unwrap();
        tree::link_peers(dir.path(), ("1-1", 1), ("2-1", 1)).unwrap();
        std::fs::write(
            Sysfs::new(dir.path()).disable_attribute("1-1", 4).unwrap(),
            "1\n",
        )
        .unwrap();
        let bus = FakeBus::new();
        for (loc, ss) in [("1-1", false), ("2-1", true)] {
            bus.add(
                FakeDevice::hub(
                    loc,
                    (0x2109, 0x2817),
                    None,
                    FakeHub::new(ss, 4, PowerSwitching::PerPort, Reaction::PerPort),
                )
                .with_fault(Fault::Denied),
            );
        }
        let listing = discover(&bus, Some(&Sysfs::new(dir.path())));
        let first = &listing.hubs[0];
        assert_eq!(first.ports, Some(4));
        assert_eq!(first.via, "sysfs");
        assert_eq!(first.companion.as_deref(), Some("2-1"));
        assert_eq!(first.power[3], (4, Some(false)));
        assert_eq!(first.switching, None);
    }

    #[test]
    fn sdwire_muxes_are_listed_with_their_cards_block_device() {
        let root = tempfile::tempdir().unwrap();
        let sys = Sysfs::new(root.path());
        std::fs::create_dir_all(
            sys.device_dir("1-3")
                .join("1-3.1/1-3.1:1.0/host2/block/sdq"),
        )
        .unwrap();
        let bus = FakeBus::new();
        bus.add(FakeDevice::sdwire("1-3.2", "sdw7", true));
        bus.add(FakeDevice::sdwire("1-6.2", "ft1", false));
        let listing = discover(&bus, Some(&sys));
        assert_eq!(
            listing.sdwire,
            vec![SdWireRow {
                location: "1-3.2".into(),
                serial: Some("sdw7".into()),
                block: Some("/dev/sdq".into()),
            }],
            "a factory FT200X is not listed: any FT200X looks alike"
        );
        let text = listing.to_string();
        assert!(
            text.contains("SD-Wire muxes") && text.contains("/dev/sdq"),
            "{text}"
        );
    }

    #[test]
    fn no_usb_is_a_note_under_an_empty_table() {
        struct NoUsb;
        impl UsbBus for NoUsb {
            fn devices(&self) -> Result<Vec<DeviceInfo>, UsbError> {
                Err(UsbError::NoUsb("libusb could not start".into()))
            }
            fn open(
                &self,
                _: &DeviceInfo,
            ) -> Result<Box<dyn super::super::transport::UsbDevice>, UsbError> {
                Err(UsbError::NoDevice)
            }
        }
        let text = discover(&NoUsb, None).to_string();
        assert!(
            text.starts_with("USB hubs\nLOCATION  ID  USB  SERIAL  PORTS"),
            "{text}"
        );
        assert!(
            text.contains("(none)\nnote: no USB devices listed: USB is not available"),
            "{text}"
        );
    }

    #[test]
    fn this_machine_lists_without_failing() {
        let text = list_usb().to_string();
        println!("{text}");
        assert!(text.starts_with("USB hubs\nLOCATION"), "{text}");
    }
}
