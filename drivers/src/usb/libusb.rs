//! The real [`UsbBus`]: libusb through rusb (built from source, no system library needed).
//!
//! One libusb context serves the whole process and is created on first use, so that loading
//! a config never touches USB. Serial numbers come from sysfs where it has them (readable by
//! anyone), so a hub can be selected by serial without permission to open it.

use std::sync::OnceLock;
use std::time::Duration;

use rusb::UsbContext;

use super::sysfs::Sysfs;
use super::transport::{
    ControlRequest, DeviceInfo, Endpoint, EndpointKind, UsbBus, UsbDevice, UsbError, HUB_CLASS,
};

/// Where Linux has the device nodes libusb opens.
const USBFS: &str = "/dev/bus/usb";

static CONTEXT: OnceLock<Result<rusb::Context, rusb::Error>> = OnceLock::new();

fn context() -> Result<&'static rusb::Context, UsbError> {
    CONTEXT
        .get_or_init(rusb::Context::new)
        .as_ref()
        .map_err(|e| {
            let why = if cfg!(target_os = "linux") && !std::path::Path::new(USBFS).exists() {
                format!(": {USBFS} does not exist (no USB controller, or a container without it)")
            } else {
                String::new()
            };
            UsbError::NoUsb(format!("libusb could not start ({e}){why}"))
        })
}

fn usb_error(e: rusb::Error) -> UsbError {
    match e {
        rusb::Error::Access => UsbError::Access,
        rusb::Error::NoDevice | rusb::Error::NotFound => UsbError::NoDevice,
        rusb::Error::Timeout => UsbError::Timeout,
        rusb::Error::Pipe => UsbError::Pipe,
        rusb::Error::Busy => UsbError::Busy,
        other => UsbError::Other(other.to_string()),
    }
}

/// The machine's USB, with sysfs at `sysfs` for serial numbers.
pub struct LibusbBus {
    sysfs: Sysfs,
}

impl LibusbBus {
    pub fn new(sysfs: Sysfs) -> Self {
        Self { sysfs }
    }

    /// The serial string: from sysfs, else (where sysfs does not know the device, as off
    /// Linux) by opening the device, for the kinds of device a config selects by serial.
    fn serial(
        &self,
        info: &DeviceInfo,
        device: &rusb::Device<rusb::Context>,
        descriptor: &rusb::DeviceDescriptor,
    ) -> Option<String> {
        let location = info.location();
        if self.sysfs.has_device(&location) {
            return self.sysfs.attribute(&location, "serial");
        }
        let selectable = info.class == HUB_CLASS
            || (info.vendor_id, info.product_id) == (super::ykush::VID, super::ykush::PID);
        descriptor.serial_number_string_index()?;
        if !selectable {
            return None;
        }
        let handle = device.open().ok()?;
        handle.read_serial_number_string_ascii(descriptor).ok()
    }
}

impl UsbBus for LibusbBus {
    fn devices(&self) -> Result<Vec<DeviceInfo>, UsbError> {
        let list = context()?.devices().map_err(usb_error)?;
        let mut found = Vec::new();
        for device in list.iter() {
            let Ok(descriptor) = device.device_descriptor() else {
                continue;
            };
            let version = descriptor.usb_version();
            let mut info = DeviceInfo {
                bus: device.bus_number(),
                address: device.address(),
                ports: device.port_numbers().unwrap_or_default(),
                vendor_id: descriptor.vendor_id(),
                product_id: descriptor.product_id(),
                class: descriptor.class_code(),
                usb_version: u16::from(version.0) << 8
                    | u16::from(version.1) << 4
                    | u16::from(version.2),
                serial: None,
            };
            info.serial = self.serial(&info, &device, &descriptor);
            found.push(info);
        }
        found.sort_by(|a, b| (a.bus, &a.ports).cmp(&(b.bus, &b.ports)));
        Ok(found)
    }

    /// From sysfs, else by opening the device and reading its string descriptor.
    fn product(&self, info: &DeviceInfo) -> Option<String> {
        let location = info.location();
        if self.sysfs.has_device(&location) {
            return self.sysfs.attribute(&location, "product");
        }
        let list = context().ok()?.devices().ok()?;
        let device = list
            .iter()
            .find(|d| d.bus_number() == info.bus && d.address() == info.address)?;
        let descriptor = device.device_descriptor().ok()?;
        device
            .open()
            .ok()?
            .read_product_string_ascii(&descriptor)
            .ok()
    }

    fn open(&self, wanted: &DeviceInfo) -> Result<Box<dyn UsbDevice>, UsbError> {
        let list = context()?.devices().map_err(usb_error)?;
        let device = list
            .iter()
            .find(|d| d.bus_number() == wanted.bus && d.address() == wanted.address)
            .ok_or(UsbError::NoDevice)?;
        let handle = device.open().map_err(usb_error)?;
        Ok(Box::new(LibusbDevice {
            handle,
            claimed: Vec::new(),
        }))
    }
}

struct LibusbDevice {
    handle: rusb::DeviceHandle<rusb::Context>,
    claimed: Vec<u8>,
}

impl UsbDevice for LibusbDevice {
    fn control_in(
        &mut self,
        r: ControlRequest,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let mut buf = vec![0u8; length.into()];
        let n = self
            .handle
            .read_control(
                r.request_type,
                r.request,
                r.value,
                r.index,
                &mut buf,
                timeout,
            )
            .map_err(usb_error)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn control_out(
        &mut self,
        r: ControlRequest,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), UsbError> {
        self.handle
            .write_control(r.request_type, r.request, r.value, r.index, data, timeout)
            .map(|_| ())
            .map_err(usb_error)
    }

    fn find_interface(
        &mut self,
        class: u8,
        subclass: u8,
        protocol: u8,
    ) -> Result<Option<u8>, UsbError> {
        let config = self
            .handle
            .device()
            .active_config_descriptor()
            .map_err(usb_error)?;
        let found = config.interfaces().find(|i| {
            i.descriptors().any(|d| {
                (d.class_code(), d.sub_class_code(), d.protocol_code())
                    == (class, subclass, protocol)
            })
        });
        Ok(found.map(|i| i.number()))
    }

    fn claim_interface(&mut self, interface: u8) -> Result<Vec<Endpoint>, UsbError> {
        // Linux: take the interface from usbhid for as long as we hold it; libusb gives it
        // back on release. Elsewhere this is not supported and not needed.
        let _ = self.handle.set_auto_detach_kernel_driver(true);
        self.handle.claim_interface(interface).map_err(usb_error)?;
        self.claimed.push(interface);
        let config = self
            .handle
            .device()
            .active_config_descriptor()
            .map_err(usb_error)?;
        let endpoints = config
            .interfaces()
            .filter(|i| i.number() == interface)
            .flat_map(|i| i.descriptors())
            .filter(|d| d.setting_number() == 0)
            .flat_map(|d| {
                d.endpoint_descriptors()
                    .filter_map(|e| {
                        let kind = match e.transfer_type() {
                            rusb::TransferType::Interrupt => EndpointKind::Interrupt,
                            rusb::TransferType::Bulk => EndpointKind::Bulk,
                            _ => return None,
                        };
                        Some(Endpoint {
                            address: e.address(),
                            kind,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(endpoints)
    }

    fn write(
        &mut self,
        endpoint: Endpoint,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        match endpoint.kind {
            EndpointKind::Interrupt => self.handle.write_interrupt(endpoint.address, data, timeout),
            EndpointKind::Bulk => self.handle.write_bulk(endpoint.address, data, timeout),
        }
        .map_err(usb_error)
    }

    fn read(
        &mut self,
        endpoint: Endpoint,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let mut buf = vec![0u8; length];
        let n = match endpoint.kind {
            EndpointKind::Interrupt => {
                self.handle
                    .read_interrupt(endpoint.address, &mut buf, timeout)
            }
            EndpointKind::Bulk => self.handle.read_bulk(endpoint.address, &mut buf, timeout),
        }
        .map_err(usb_error)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl Drop for LibusbDevice {
    fn drop(&mut self) {
        for interface in self.claimed.drain(..) {
            let _ = self.handle.release_interface(interface);
        }
    }
}
