//! Native drivers for jmp-exporter, and the one trait they all implement.
//!
//! A driver owns one device. It takes and returns JSON values, or hands out a byte stream;
//! it knows nothing of gRPC, sessions or the controller (the exporter crate depends on this
//! one, never the reverse). Each driver reads its own `config:` through [`yaml::from_node`].
//!
//! Lifecycle, as the upstream exporter has it: the config is parsed and checked once at start
//! ([`DriverSpec`]), and a fresh [`Driver`] is built from it for every session, `reset` when the
//! session starts and `close` when it ends.
//!
//! ## A device problem is never fatal
//!
//! Only a config error stops the exporter. A device that is missing, busy or broken costs its
//! own driver's calls, nothing else, at any time:
//! - [`DriverSpec::build`] cannot fail and touches no device, so laying out a tree (to register
//!   with the controller, or for `check`) has no effect on hardware.
//! - The device is opened in [`Driver::reset`] (session start) or at the first call that needs
//!   it. If that fails, the exporter logs it and serves the session anyway; every call then
//!   answers [`DriverError::Unavailable`] with a message naming the device and the cause (who
//!   holds a busy line, which hub is missing, a permission problem and the group to join), and
//!   tries to open the device again, so the driver works once the device is back, without a
//!   restart.
//! - A driver that owns its device for the life of the process (a serial console that is
//!   captured) starts in [`DriverSpec::start`], which cannot fail either.
//! - A panic in driver code fails only the call that met it (the exporter guards every call);
//!   it is still a bug to fix.
//!
//! ## Adding a driver
//! 1. A module (a folder for a family: `serial/`, `gpio/`, `usb/`) with the type's upstream
//!    `type:` string as `TYPE`, a [`DriverSpec`] and a [`Driver`]; its client label comes from
//!    [`client`] (add it there if it is new).
//! 2. A config reader: a `serde` struct with `deny_unknown_fields` read through
//!    [`yaml::from_node`], checking every value and naming the YAML path in each error.
//! 3. A row in [`BUILTIN`].
//! 4. A fake of the device behind the same trait as the real transport (as `usb::fake`,
//!    `gpio::mock`), so CI runs the same code paths; tests that need the hardware are
//!    `#[ignore = "why"]`.
//! 5. Unit tests beside the driver, and an integration test that drives it with the unchanged
//!    upstream Python client (`tests/integration/`).
//! 6. The contract it keeps is the one in the spec (`drivers.md`, the driver family's
//!    section); differences from upstream are listed in the README.

pub mod access;
pub mod args;
pub mod client;
pub mod composite;
pub mod gpio;
pub mod mock;
pub mod network;
pub mod power;
pub mod resource;
pub mod serial;
pub mod shell;
pub mod ssh;
pub mod storage;
pub mod usb;
pub mod yaml;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite};

pub use serde_json::Value as Json;

/// How a method is reached on the wire. A method called through the wrong kind is NOT_FOUND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// One request, one result.
    Call,
    /// One request, zero or more results.
    Streaming,
    /// A duplex byte stream, opened with no arguments.
    ByteStream,
}

impl MethodKind {
    /// The name upstream gives the marker of this kind; it appears in NOT_FOUND messages that
    /// clients may match on.
    pub fn marker(self) -> &'static str {
        match self {
            MethodKind::Call => "marker_drivercall",
            MethodKind::Streaming => "marker_streamingdrivercall",
            MethodKind::ByteStream => "marker_streamcall",
        }
    }
}

/// What a driver call can fail with. Each variant maps to one gRPC code in the exporter.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The method exists but this driver cannot do it (UNIMPLEMENTED).
    #[error("{0}")]
    NotImplemented(String),
    /// Wrong number, type or value of arguments (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The device did not answer in time (DEADLINE_EXCEEDED).
    #[error("{0}")]
    Timeout(String),
    /// The device is absent or busy right now; trying later may work (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else, with a message that names the device (UNKNOWN).
    #[error("{0}")]
    Failed(String),
}

/// A byte stream to a device.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

pub type BoxedIo = Box<dyn Duplex>;

/// The results of a streaming call.
pub type ResultStream = BoxStream<'static, Result<Json, DriverError>>;

/// One driver instance, alive for one session.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The kind of an exported method, or `None` if the driver has no such method.
    fn method(&self, name: &str) -> Option<MethodKind>;

    /// A plain call. Only called for methods whose kind is [`MethodKind::Call`].
    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError>;

    /// A plain call that may open resource handles among its arguments (flash, dump); the
    /// session calls this, and drivers that take files override it.
    async fn call_with(
        &self,
        method: &str,
        args: Vec<Json>,
        _resources: &dyn resource::Resources,
    ) -> Result<Json, DriverError> {
        self.call(method, args).await
    }

    /// A streaming call. Only called for methods whose kind is [`MethodKind::Streaming`].
    async fn streaming_call(
        &self,
        method: &str,
        _args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        Err(DriverError::NotImplemented(format!(
            "{method} is not a streaming method of this driver"
        )))
    }

    /// Opens a byte stream. Only called for methods whose kind is [`MethodKind::ByteStream`].
    async fn connect(&self, method: &str) -> Result<BoxedIo, DriverError> {
        Err(DriverError::NotImplemented(format!(
            "{method} is not a byte stream of this driver"
        )))
    }

    /// Brings the device to its known state at session start.
    async fn reset(&self) -> Result<(), DriverError> {
        Ok(())
    }

    /// Releases what the session opened.
    async fn close(&self) {}
}

/// A driver entry's checked configuration; builds a fresh [`Driver`] for each session.
pub trait DriverSpec: Send + Sync + 'static {
    /// The Python client class path reported as `jumpstarter.dev/client`.
    fn client(&self) -> &'static str;

    /// Driver-specific report labels, added to the entry's own.
    fn extra_labels(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Help for the driver's methods from its own config (Shell's `description:` keys), added
    /// to the entry's `methods_description` and taking precedence, as upstream's do.
    fn methods_description(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Children the config must give this entry, by name, with what each must be (SSHWrapper
    /// needs `tcp`); a missing one is a config error at the entry.
    fn required_children(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Whether the device is there now, for the metrics (`None`: nothing to tell, no device or
    /// one that cannot be looked at cheaply). Must not open or change the device.
    fn device_present(&self) -> Option<bool> {
        None
    }

    /// Called once when the exporter starts serving, for a driver that owns its device for the
    /// life of the process (a serial port whose console is captured). It must not fail: a
    /// device that is absent is the owner's to wait for.
    fn start(&self) {}

    /// Children the driver brings with it (name, the `type` they report under, spec), after
    /// any its config lists: a board whose parts are drivers of their own (DUT Link's power,
    /// storage and console).
    fn children(&self) -> Vec<(&'static str, &'static str, Box<dyn DriverSpec>)> {
        Vec::new()
    }

    /// A fresh driver for one session. It must not open or touch the device: that happens in
    /// [`Driver::reset`] and in the calls, so that laying out a tree (registration, `check`)
    /// has no effect on hardware and a device that is absent or busy costs only its own calls.
    fn build(&self) -> Box<dyn Driver>;
}

/// Parses and checks one entry's `config:` node (found at the given YAML path).
pub type Factory = fn(&yaml::Node, &str) -> Result<Box<dyn DriverSpec>, yaml::Error>;

/// Every driver this build knows, keyed by the upstream Python `type:` string a lab's config
/// already uses.
pub static BUILTIN: &[(&str, Factory)] = &[
    (composite::TYPE, composite::spec),
    (mock::MOCK_POWER, mock::power_spec),
    (mock::SYNC_MOCK_POWER, mock::power_spec),
    (mock::ECHO_NETWORK, mock::echo_spec),
    (network::TCP, network::tcp_spec),
    (network::UNIX, network::unix_spec),
    (network::udp::TYPE, network::udp::spec),
    (network::vsock::TYPE, network::vsock::spec),
    (network::dbus::TYPE, network::dbus::spec),
    (network::websocket::TYPE, network::websocket::spec),
    (power::http::TYPE, power::http::spec),
    (power::energenie::TYPE, power::energenie::spec),
    (serial::TYPE, serial::spec),
    (shell::TYPE, shell::spec),
    (ssh::TYPE, ssh::spec),
    (usb::hub::TYPE, usb::hub::spec),
    (usb::ykush::TYPE, usb::ykush::spec),
    (power::snmp::TYPE, power::snmp::spec),
    (power::tasmota::TYPE, power::tasmota::spec),
    (gpio::DIGITAL_OUTPUT, gpio::output_spec),
    (gpio::DIGITAL_INPUT, gpio::input_spec),
    (gpio::POWER_SWITCH, gpio::power_switch_spec),
    (storage::MOCK_STORAGE_MUX, storage::mock_mux_spec),
    (
        storage::MOCK_STORAGE_MUX_FLASHER,
        storage::mock_mux_flasher_spec,
    ),
    (storage::MOCK_FLASHER, storage::mock_flasher_spec),
    (storage::sdwire::TYPE, storage::sdwire::spec),
    (storage::dutlink::TYPE, storage::dutlink::spec),
];

/// The factory for a `type:` string.
pub fn factory(type_name: &str) -> Option<Factory> {
    BUILTIN
        .iter()
        .find(|(name, _)| *name == type_name)
        .map(|(_, f)| *f)
}
