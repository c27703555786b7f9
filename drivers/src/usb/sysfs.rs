//! The kernel's view of USB hubs in sysfs, under a configurable root (`/sys` on a real
//! machine, a temp dir in tests and demos).
//!
//! Layout used here (Documentation/ABI/testing/sysfs-bus-usb, and `drivers/usb/core/port.c`,
//! which names each port device `<hub>-port<N>` and makes it a child of the hub's interface):
//!
//! ```text
//! <root>/bus/usb/devices/<hub>/                         the hub: idVendor, idProduct, serial, maxchild, version
//! <root>/bus/usb/devices/<hub>/<hub interface>/<hub>-port<N>/disable   (Linux 6.0+) 1 = port off
//! <root>/bus/usb/devices/<hub>/<hub interface>/<hub>-port<N>/peer      symlink to the companion port
//! ```
//!
//! `<hub>` is the kernel name (`1-1.4`, or `usb1` for a root hub, whose interface is `1-0:1.0`).
//! Writing `disable` makes the kernel switch the port's power itself (and keep it off: it will
//! not power the port back on behind our back); reading it asks the hub for the port status,
//! so it doubles as the read-back. `peer` links a USB 2 port to its SuperSpeed twin on the USB
//! 3 half of the same physical hub, as the kernel paired them.

use std::io;
use std::path::{Path, PathBuf};

/// A sysfs tree.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

/// The default root.
pub const SYSTEM_ROOT: &str = "/sys";

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn devices(&self) -> PathBuf {
        self.root.join("bus/usb/devices")
    }

    /// The directory of the device with this kernel name.
    pub fn device_dir(&self, name: &str) -> PathBuf {
        self.devices().join(name)
    }

    /// Whether this tree knows the device at all.
    pub fn has_device(&self, name: &str) -> bool {
        self.device_dir(name).is_dir()
    }

    /// A trimmed attribute of a device (`serial`, `maxchild`, `idVendor`, ...).
    pub fn attribute(&self, device: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.device_dir(device).join(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The directories of the hub's interfaces (`1-1.4:1.0`), where its ports live.
    fn interface_dirs(&self, hub: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.device_dir(hub)) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(':'))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs
    }

    /// The port device directory `<hub>-port<N>`, if the kernel has one.
    pub fn port_dir(&self, hub: &str, port: u8) -> Option<PathBuf> {
        let name = format!("{hub}-port{port}");
        self.interface_dirs(hub)
            .into_iter()
            .map(|d| d.join(&name))
            .find(|d| d.is_dir())
    }

    /// The port numbers the kernel made port devices for, in order.
    pub fn ports(&self, hub: &str) -> Vec<u8> {
        let prefix = format!("{hub}-port");
        let mut ports: Vec<u8> = self
            .interface_dirs(hub)
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The `disable` attribute of a port, where the kernel offers it (Linux 6.0+).
    pub fn disable_attribute(&self, hub: &str, port: u8) -> Option<PathBuf> {
        let path = self.port_dir(hub, port)?.join("disable");
        path.exists().then_some(path)
    }

    /// The companion port the kernel paired with this one: `(hub, port)`.
    pub fn peer(&self, hub: &str, port: u8) -> Option<(String, u8)> {
        let target = std::fs::read_link(self.port_dir(hub, port)?.join("peer")).ok()?;
        parse_port_name(&target.file_name()?.to_string_lossy())
    }
}

/// Splits a port device name `2-1.4-port3` into `("2-1.4", 3)`.
pub fn parse_port_name(name: &str) -> Option<(String, u8)> {
    let (hub, port) = name.rsplit_once("-port")?;
    Some((hub.to_string(), port.parse().ok()?))
}

/// Whether the port is powered, as `disable` reads (`0` = powered, `1` = off).
pub fn read_powered(disable: &Path) -> io::Result<bool> {
    let text = std::fs::read_to_string(disable)?;
    match text.trim() {
        "0" => Ok(true),
        "1" => Ok(false),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected content {other:?} (expected 0 or 1)"),
        )),
    }
}

/// Asks the kernel to power the port on or off.
pub fn write_powered(disable: &Path, on: bool) -> io::Result<()> {
    std::fs::write(disable, if on { "0" } else { "1" })
}

/// Builds a fake sysfs tree for tests and demos: plain directories and files shaped like the
/// kernel's, with `disable` as an ordinary file (so its read-back is what was last written).
pub mod fake {
    use std::io;
    use std::path::Path;

    /// Adds a hub device `name` with `ports` ports (each with a `disable` file reading `0`,
    /// powered) and the attributes the drivers and `list usb` read.
    pub fn add_hub(
        root: &Path,
        name: &str,
        vendor_product: (u16, u16),
        ports: u8,
        with_disable: bool,
    ) -> io::Result<()> {
        let dev = root.join("bus/usb/devices").join(name);
        let interface = match name.strip_prefix("usb") {
            Some(bus) => dev.join(format!("{bus}-0:1.0")),
            None => dev.join(format!("{name}:1.0")),
        };
        std::fs::create_dir_all(&interface)?;
        std::fs::write(dev.join("idVendor"), format!("{:04x}\n", vendor_product.0))?;
        std::fs::write(dev.join("idProduct"), format!("{:04x}\n", vendor_product.1))?;
        std::fs::write(dev.join("maxchild"), format!("{ports}\n"))?;
        for port in 1..=ports {
            let port_dir = interface.join(format!("{name}-port{port}"));
            std::fs::create_dir_all(&port_dir)?;
            if with_disable {
                std::fs::write(port_dir.join("disable"), "0\n")?;
            }
        }
        Ok(())
    }

    /// Links two ports as companions, with relative `peer` symlinks both ways, as the kernel
    /// does.
    pub fn link_peers(root: &Path, a: (&str, u8), b: (&str, u8)) -> io::Result<()> {
        let port = |(hub, port): (&str, u8)| {
            let interface = match hub.strip_prefix("usb") {
                Some(bus) => format!("{bus}-0:1.0"),
                None => format!("{hub}:1.0"),
            };
            (
                root.join("bus/usb/devices")
                    .join(hub)
                    .join(&interface)
                    .join(format!("{hub}-port{port}")),
                format!("../../../{hub}/{interface}/{hub}-port{port}"),
            )
        };
        let (a_dir, a_rel) = port(a);
        let (b_dir, b_rel) = port(b);
        std::os::unix::fs::symlink(b_rel, a_dir.join("peer"))?;
        std::os::unix::fs::symlink(a_rel, b_dir.join("peer"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_peers_and_disable_in_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        fake::add_hub(dir.path(), "1-1", (0x2109, 0x2817), 4, true).unwrap();
        fake::add_hub(dir.path(), "2-1", (0x2109, 0x0817), 4, true).unwrap();
        fake::add_hub(dir.path(), "usb3", (0x1d6b, 0x0002), 2, false).unwrap();
        fake::link_peers(dir.path(), ("1-1", 3), ("2-1", 3)).unwrap();
        let sys = Sysfs::new(dir.path());

        assert_eq!(sys.ports("1-1"), vec![1, 2, 3, 4]);
        assert_eq!(sys.ports("usb3"), vec![1, 2]);
        assert!(sys
            .port_dir("usb3", 2)
            .unwrap()
            .ends_with("3-0:1.0/usb3-port2"));
        assert_eq!(sys.disable_attribute("usb3", 1), None);
        assert_eq!(sys.port_dir("1-1", 5), None);
        assert_eq!(sys.peer("1-1", 3), Some(("2-1".to_string(), 3)));
        assert_eq!(sys.peer("2-1", 3), Some(("1-1".to_string(), 3)));
        assert_eq!(sys.peer("1-1", 2), None);
        assert_eq!(sys.attribute("1-1", "idProduct").as_deref(), Some("2817"));

        let disable = sys.disable_attribute("1-1", 3).unwrap();
        assert!(read_powered(&disable).unwrap());
        write_powered(&disable, false).unwrap();
        assert_eq!(std::fs::read_to_string(&disable).unwrap(), "1");
        assert!(!read_powered(&disable).unwrap());
        std::fs::write(&disable, "maybe").unwrap();
        assert!(read_powered(&disable).is_err());
    }

    #[test]
    fn port_names_split_at_the_last_port_suffix() {
        assert_eq!(parse_port_name("2-1.4-port3"), Some(("2-1.4".into(), 3)));
        assert_eq!(parse_port_name("usb2-port1"), Some(("usb2".into(), 1)));
        assert_eq!(parse_port_name("2-1.4"), None);
    }

    #[test]
    fn a_missing_tree_knows_nothing() {
        let sys = Sysfs::new("/nonexistent/sysfs");
        assert!(!sys.has_device("1-1"));
        assert!(sys.ports("1-1").is_empty());
        assert_eq!(sys.peer("1-1", 1), None);
    }
}
