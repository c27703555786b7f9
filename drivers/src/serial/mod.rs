//! `PySerial`: a serial console as a byte stream, a drop-in for upstream's driver of the same
//! `type:` and client, with the differences labs asked for.
//!
//! - One owner per device (see `port.rs`, and `fanout.rs` for how its output is shared): the
//!   port is opened once, exclusively, and kept open while the device exists. Every `connect`
//!   stream shares it: what the device prints goes to every open stream (upstream hands each
//!   chunk to whichever stream reads first), what any stream sends goes to the device, and
//!   `set_dtr`/`set_rts` act on the same open port.
//! - Absence is never fatal: with the device missing, at start or later, the exporter runs on
//!   and `connect` answers UNAVAILABLE naming the device; a device that comes back (a replugged
//!   USB adapter behind the same by-id link) is opened again without a restart.
//! - Optional console capture to a bounded, rotated file (`log_file`, see `capture.rs`).
//!
//! `loop://` keeps upstream's meaning: each stream is its own echo, nothing is shared, there is
//! no device to own or capture, and modem-line calls are accepted and ignored.
//!
//! The driver knows nothing of gRPC: the exporter pipes the returned byte stream with HTTP/2
//! flow control as its backpressure.

mod capture;
mod config;
mod fanout;
pub mod list;
mod pace;
mod port;
mod stream;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::yaml::{self, Node};
use crate::{args, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub use config::{Capture, SerialConfig, Target};
use port::{Line, Port};

pub const TYPE: &str = "jumpstarter_driver_pyserial.driver.PySerial";

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let config = Arc::new(config::parse(node, path)?);
    let port = match config.target {
        Target::Loop => None,
        Target::Device(_) | Target::Socket { .. } => Some(Arc::new(Port::new(config.clone()))),
    };
    Ok(Box::new(SerialSpec { config, port }))
}

/// The checked config and, for a real device, its owner, shared by every session's driver.
struct SerialSpec {
    config: Arc<SerialConfig>,
    port: Option<Arc<Port>>,
}

impl DriverSpec for SerialSpec {
    fn device_present(&self) -> Option<bool> {
        match &self.config.target {
            Target::Device(path) => Some(path.exists()),
            Target::Loop | Target::Socket { .. } => None,
        }
    }

    fn client(&self) -> &'static str {
        crate::client::PYSERIAL
    }

    fn start(&self) {
        if let Some(port) = &self.port {
            // The owner opens the device now, at exporter start, unless the config asks for
            // lazy opening; its console capture runs from here on, leased or not.
            port.start();
        }
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(PySerial {
            config: self.config.clone(),
            port: self.port.clone(),
            session: CancellationToken::new(),
            newest: Mutex::new(None),
        })
    }
}

/// The driver of one session.
pub struct PySerial {
    config: Arc<SerialConfig>,
    port: Option<Arc<Port>>,
    /// Ends every stream this session opened.
    session: CancellationToken,
    /// The newest stream, which the `close` method ends.
    newest: Mutex<Option<CancellationToken>>,
}

#[async_trait]
impl Driver for PySerial {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "connect" => Some(MethodKind::ByteStream),
            "close" | "set_dtr" | "set_rts" => Some(MethodKind::Call),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        match method {
            "close" => {
                args::expect_count(method, &args, 0)?;
                if let Some(stream) = self.newest.lock().map_err(poisoned)?.take() {
                    stream.cancel();
                }
                Ok(Json::Null)
            }
            "set_dtr" | "set_rts" => {
                args::expect_count(method, &args, 1)?;
                let level = args::boolean(method, &args, 0)?;
                let line = if method == "set_dtr" {
                    Line::Dtr
                } else {
                    Line::Rts
                };
                match self.port() {
                    // A loop has no modem lines; pyserial's loop handler ignores them.
                    None => {}
                    Some(port) => port.set_line(line, level).await?,
                }
                Ok(Json::Null)
            }
            _ => Err(DriverError::NotImplemented(method.to_string())),
        }
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        let closed = self.session.child_token();
        let io = match self.port() {
            None => {
                let echo = crate::mock::echo_stream(closed.clone());
                match self.config.cps {
                    Some(cps) => Box::new(pace::Paced::new(echo, cps)),
                    None => echo,
                }
            }
            Some(port) => port.connect(closed.clone()).await?,
        };
        // Only the newest stream can be closed by `close`; older ones live on, as upstream.
        *self.newest.lock().map_err(poisoned)? = Some(closed);
        Ok(io)
    }

    async fn reset(&self) -> Result<(), DriverError> {
        self.port();
        Ok(())
    }

    async fn close(&self) {
        self.session.cancel();
    }
}

impl PySerial {
    /// The device's owner, started if the exporter did not start it yet (a session's first
    /// use of a port that was not started with the exporter).
    fn port(&self) -> Option<&Arc<Port>> {
        let port = self.port.as_ref()?;
        port.start();
        Some(port)
    }
}

fn poisoned<T>(_: T) -> DriverError {
    DriverError::Failed("serial driver state is unusable after an earlier failure".into())
}

#[cfg(test)]
mod tests;
