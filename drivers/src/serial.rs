//! `PySerial`: a serial console as a byte stream. This build serves `loop://` (each stream its
//! own echo buffer, as pyserial's loop handler); real ports come with the serial issue, and
//! until then opening one fails with a message that says so.

use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::yaml::{self, Node};
use crate::{args, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_pyserial.driver.PySerial";
pub const CLIENT: &str = "jumpstarter_driver_pyserial.client.PySerialClient";

fn default_baudrate() -> u32 {
    115_200
}

fn default_true() -> bool {
    true
}

/// The upstream keys and defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub url: String,
    #[serde(default = "default_baudrate")]
    pub baudrate: u32,
    #[serde(default = "default_true")]
    pub check_present: bool,
    #[serde(default)]
    pub cps: Option<f64>,
    #[serde(default)]
    pub disable_hupcl: bool,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let config: SerialConfig = yaml::from_node(node, path)?;
    let at = |key: &str, message: String| {
        let n = node.get(key).unwrap_or(node);
        yaml::Error::at(&yaml::join(path, key), n, message)
    };
    if config.baudrate == 0 {
        return Err(at(
            "baudrate",
            "baudrate must be a positive number of bits per second".into(),
        ));
    }
    if let Some(cps) = config.cps {
        if !(cps.is_finite() && cps > 0.0) {
            return Err(at(
                "cps",
                format!("cps must be a positive number of characters per second, got {cps}"),
            ));
        }
    }
    if config.url.trim().is_empty() {
        return Err(at(
            "url",
            "url is empty; give a device path such as /dev/serial/by-id/... or loop://".into(),
        ));
    }
    Ok(Box::new(config))
}

impl DriverSpec for SerialConfig {
    fn client(&self) -> &'static str {
        CLIENT
    }

    fn build(&self) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(PySerial {
            config: self.clone(),
            current: Mutex::new(None),
        }))
    }
}

pub struct PySerial {
    config: SerialConfig,
    /// The most recent `connect` stream, which `close` ends.
    current: Mutex<Option<CancellationToken>>,
}

impl PySerial {
    fn is_loop(&self) -> bool {
        self.config.url == "loop://"
    }

    fn not_yet(&self) -> DriverError {
        DriverError::NotImplemented(format!(
            "serial port {}: this jmp-exporter build serves only loop:// consoles",
            self.config.url
        ))
    }
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
                if let Some(stream) = self.current.lock().map_err(poisoned)?.take() {
                    stream.cancel();
                }
                Ok(Json::Null)
            }
            "set_dtr" | "set_rts" => {
                args::expect_count(method, &args, 1)?;
                args::boolean(method, &args, 0)?;
                // A loop has no modem lines; pyserial's loop handler accepts and ignores them.
                if self.is_loop() {
                    Ok(Json::Null)
                } else {
                    Err(self.not_yet())
                }
            }
            _ => Err(DriverError::NotImplemented(method.to_string())),
        }
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        if !self.is_loop() {
            return Err(self.not_yet());
        }
        let stop = CancellationToken::new();
        if let Some(previous) = self.current.lock().map_err(poisoned)?.replace(stop.clone()) {
            // Only the newest stream can be closed by `close`; older ones live on, as upstream.
            drop(previous);
        }
        Ok(crate::mock::echo_stream(stop))
    }

    async fn close(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some(stream) = current.take() {
                stream.cancel();
            }
        }
    }
}

fn poisoned<T>(_: T) -> DriverError {
    DriverError::Failed("serial driver state is unusable after an earlier failure".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parse(src: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
        spec(&yaml::parse(src).unwrap(), "export.serial.config")
    }

    #[test]
    fn defaults_and_errors() {
        let s = parse("url: loop://\n").unwrap();
        assert_eq!(s.client(), CLIENT);
        let err = parse("url: loop://\nbaudrate: fast\n").err().unwrap();
        assert_eq!(err.path, "export.serial.config.baudrate");
        assert_eq!(err.mark.unwrap().line, 2);
        let err = parse("url: loop://\nbaud: 9600\n").err().unwrap();
        assert!(err.message.contains("unknown field `baud`"), "{err}");
        let err = parse("url: loop://\nbaudrate: 0\n").err().unwrap();
        assert_eq!(err.path, "export.serial.config.baudrate");
        assert!(parse("baudrate: 9600\n")
            .err()
            .unwrap()
            .message
            .contains("missing field `url`"));
    }

    #[tokio::test]
    async fn loop_echoes_and_close_ends_the_stream() {
        let driver = parse("url: loop://\n").unwrap().build().unwrap();
        let mut io = driver.connect("connect").await.unwrap();
        io.write_all(b"login: ").await.unwrap();
        let mut buf = [0u8; 7];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"login: ");
        driver.call("close", vec![]).await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            driver
                .call("set_dtr", vec![Json::Bool(true)])
                .await
                .unwrap(),
            Json::Null
        );
    }

    #[tokio::test]
    async fn real_ports_say_they_are_not_served_yet() {
        let driver = parse("url: /dev/ttyUSB0\n").unwrap().build().unwrap();
        let err = driver.connect("connect").await.err().unwrap();
        assert!(err.to_string().contains("/dev/ttyUSB0"), "{err}");
    }
}
