//! Serial ports on this host and the stable names udev gives them (`/dev/serial/by-id`,
//! `/dev/serial/by-path`), for `jmp-exporter list serial`: a config should name the link, which
//! survives re-plugging, not the `ttyUSBn` behind it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One serial device and its links.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SerialPort {
    pub device: PathBuf,
    pub by_id: Vec<PathBuf>,
    pub by_path: Vec<PathBuf>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SerialListing {
    pub ports: Vec<SerialPort>,
}

/// Lists the serial ports under `dev` (normally `/dev`).
pub fn list_under(dev: &Path) -> SerialListing {
    let mut ports: BTreeMap<PathBuf, SerialPort> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dev) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ttyUSB")
                || name.starts_with("ttyACM")
                || name.starts_with("ttyAMA")
            {
                let device = entry.path();
                ports.entry(device.clone()).or_insert_with(|| SerialPort {
                    device,
                    ..SerialPort::default()
                });
            }
        }
    }
    for (kind, dir) in [
        ("by-id", dev.join("serial/by-id")),
        ("by-path", dev.join("serial/by-path")),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let link = entry.path();
            let Ok(target) = std::fs::read_link(&link) else {
                continue;
            };
            let device = normalize(&dir.join(target));
            let port = ports.entry(device.clone()).or_insert_with(|| SerialPort {
                device,
                ..SerialPort::default()
            });
            if kind == "by-id" {
                port.by_id.push(link);
            } else {
                port.by_path.push(link);
            }
        }
    }
    let mut ports: Vec<SerialPort> = ports.into_values().collect();
    for p in &mut ports {
        p.by_id.sort();
        p.by_path.sort();
    }
    SerialListing { ports }
}

/// Lists this host's serial ports.
pub fn list_ports() -> SerialListing {
    list_under(Path::new("/dev"))
}

/// Resolves `..` in a link target without touching the file system (the device may be gone).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl fmt::Display for SerialListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Serial ports (name the by-id or by-path link in `url:`)")?;
        if self.ports.is_empty() {
            return writeln!(f, "(none)");
        }
        for port in &self.ports {
            writeln!(f, "{}", port.device.display())?;
            for link in port.by_id.iter().chain(&port.by_path) {
                writeln!(f, "    {}", link.display())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn devices_are_listed_with_their_stable_links() {
        let dev = tempfile::tempdir().unwrap();
        let root = dev.path();
        std::fs::write(root.join("ttyUSB0"), "").unwrap();
        std::fs::write(root.join("ttyACM3"), "").unwrap();
        std::fs::write(root.join("null"), "").unwrap();
        std::fs::create_dir_all(root.join("serial/by-id")).unwrap();
        std::fs::create_dir_all(root.join("serial/by-path")).unwrap();
        std::os::unix::fs::symlink(
            "../../ttyUSB0",
            root.join("serial/by-id/usb-FTDI_A50285BI-if00-port0"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../../ttyUSB0",
            root.join("serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0"),
        )
        .unwrap();
        let listing = list_under(root);
        assert_eq!(listing.ports.len(), 2);
        let usb = &listing.ports[1];
        assert_eq!(usb.device, root.join("ttyUSB0"));
        assert_eq!(
            usb.by_id,
            vec![root.join("serial/by-id/usb-FTDI_A50285BI-if00-port0")]
        );
        assert_eq!(usb.by_path.len(), 1);
        let text = listing.to_string();
        assert!(text.contains("usb-FTDI_A50285BI-if00-port0"), "{text}");
        assert!(!text.contains("null"));
        assert_eq!(
            list_under(&root.join("missing")).to_string(),
            "Serial ports (name the by-id or by-path link in `url:`)\n(none)\n"
        );
    }

    #[test]
    fn listing_this_host_never_fails() {
        let text = list_ports().to_string();
        assert!(text.starts_with("Serial ports"));
    }
}
