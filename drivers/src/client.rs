//! The Python client classes drivers report as `jumpstarter.dev/client`, in one place: several
//! drivers share a client (every power switch is a `PowerClient`), and the label is what the
//! unchanged upstream client builds its object from, so it must be spelt exactly.

pub const COMPOSITE: &str = "jumpstarter_driver_composite.client.CompositeClient";
pub const POWER: &str = "jumpstarter_driver_power.client.PowerClient";
pub const NETWORK: &str = "jumpstarter_driver_network.client.NetworkClient";
pub const PYSERIAL: &str = "jumpstarter_driver_pyserial.client.PySerialClient";
pub const DIGITAL_OUTPUT: &str = "jumpstarter_driver_gpiod.client.DigitalOutputClient";
pub const DIGITAL_INPUT: &str = "jumpstarter_driver_gpiod.client.DigitalInputClient";
pub const STORAGE_MUX: &str = "jumpstarter_driver_opendal.client.StorageMuxClient";
pub const STORAGE_MUX_FLASHER: &str = "jumpstarter_driver_opendal.client.StorageMuxFlasherClient";
pub const FLASHER: &str = "jumpstarter_driver_opendal.client.FlasherClient";
pub const SHELL: &str = "jumpstarter_driver_shell.client.ShellClient";
pub const SSH_WRAPPER: &str = "jumpstarter_driver_ssh.client.SSHWrapperClient";
pub const DBUS_NETWORK: &str = "jumpstarter_driver_network.client.DbusNetworkClient";
pub const SNMP: &str = "jumpstarter_driver_snmp.client.SNMPServerClient";
