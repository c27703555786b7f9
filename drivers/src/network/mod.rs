//! Network drivers (`jumpstarter_driver_network`, drivers.md §7): a byte stream to a service
//! the board offers, and where it is. `TcpNetwork` (`connect`, and `address` as upstream:
//! `tcp://<ip>:<port>`, the host resolved here, IPv6 in brackets, INVALID_ARGUMENT when
//! `enable_address` is false) and `UnixNetwork` (`connect`) here; `UdpNetwork`, `VsockNetwork`,
//! `DbusNetwork` and `WebsocketNetwork` in their own modules. A target that refuses is
//! UNAVAILABLE and one that never answers is DEADLINE_EXCEEDED after [`CONNECT_TIMEOUT`],
//! both naming the target (upstream waits for the system's own TCP timeout).
//!
//! Half-close, where the transport has one: the client's GOAWAY shuts the write side of the
//! connection, and the target's end of stream is the client's GOAWAY (the session does both
//! for every byte stream). UDP and websockets have none, as upstream.

pub mod dbus;
pub mod tcp;
pub mod udp;
pub mod vsock;
pub mod websocket;

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::yaml::{self, Node};
use crate::{args, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TCP: &str = "jumpstarter_driver_network.driver.TcpNetwork";
pub const UNIX: &str = "jumpstarter_driver_network.driver.UnixNetwork";

/// How long a connection may take to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn default_true() -> bool {
    true
}

/// `address` with `enable_address: false` (upstream's message).
fn address_enabled(enabled: bool) -> Result<(), DriverError> {
    if enabled {
        Ok(())
    } else {
        Err(DriverError::InvalidArgument(
            "enable_address mode is not true in the exporter configuration".into(),
        ))
    }
}

/// `<scheme>://<ip>:<port>` as upstream gives it: the host resolved on the exporter (left as
/// given when it cannot be), IPv6 in brackets.
async fn address(scheme: &str, host: &str, port: u16) -> String {
    let ip = match tokio::net::lookup_host((host, port)).await {
        Ok(mut found) => found.next().map(|a| a.ip().to_string()),
        Err(_) => None,
    };
    let host = ip.unwrap_or_else(|| host.to_string());
    if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// Waits up to [`CONNECT_TIMEOUT`] for a connection to `target`, naming it in the error.
async fn within_timeout<T>(
    target: &str,
    connecting: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, DriverError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(DriverError::Timeout(format!(
            "{target} did not answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(DriverError::Unavailable(format!(
            "cannot connect to {target}: {e}"
        ))),
        Ok(Ok(io)) => Ok(io),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TcpConfig {
    pub(super) host: String,
    pub(super) port: u16,
    #[serde(default = "default_true")]
    pub(super) enable_address: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnixConfig {
    path: std::path::PathBuf,
}

/// `host:` and `port:` of TcpNetwork and UdpNetwork.
fn check_host_port(host: &str, port: u16, node: &Node, path: &str) -> Result<(), yaml::Error> {
    if port == 0 {
        return Err(yaml::Error::at(
            &yaml::join(path, "port"),
            node.get("port").unwrap_or(node),
            "port 0 is not a port to connect to: give the service's port (1-65535)",
        ));
    }
    if host.trim().is_empty() {
        return Err(yaml::Error::at(
            &yaml::join(path, "host"),
            node.get("host").unwrap_or(node),
            "host is empty: give the board's address or name",
        ));
    }
    Ok(())
}

pub fn tcp_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: TcpConfig = yaml::from_node(node, path)?;
    check_host_port(&c.host, c.port, node, path)?;
    Ok(Box::new(TcpSpec {
        host: c.host,
        port: c.port,
        enable_address: c.enable_address,
    }))
}

pub fn unix_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: UnixConfig = yaml::from_node(node, path)?;
    Ok(Box::new(UnixSpec { path: c.path }))
}

#[derive(Clone)]
struct TcpSpec {
    host: String,
    port: u16,
    enable_address: bool,
}

impl DriverSpec for TcpSpec {
    fn client(&self) -> &'static str {
        crate::client::NETWORK
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(TcpNetwork(self.clone()))
    }
}

pub struct TcpNetwork(TcpSpec);

impl TcpNetwork {
    fn target(&self) -> String {
        format!("{}:{}", self.0.host, self.0.port)
    }
}

#[async_trait]
impl Driver for TcpNetwork {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "connect" => Some(MethodKind::ByteStream),
            "address" => Some(MethodKind::Call),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        args::expect_count(method, &args, 0)?;
        address_enabled(self.0.enable_address)?;
        Ok(Json::String(
            address("tcp", &self.0.host, self.0.port).await,
        ))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        let target = self.target();
        let stream = within_timeout(&target, tcp::connect(&self.0.host, self.0.port)).await?;
        let _ = stream.set_nodelay(true);
        tracing::debug!(target = %target, "TCP connection opened");
        Ok(Box::new(stream))
    }
}

#[derive(Clone)]
struct UnixSpec {
    path: std::path::PathBuf,
}

impl DriverSpec for UnixSpec {
    fn client(&self) -> &'static str {
        crate::client::NETWORK
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(UnixNetwork(self.clone()))
    }
}

pub struct UnixNetwork(UnixSpec);

#[async_trait]
impl Driver for UnixNetwork {
    fn method(&self, name: &str) -> Option<MethodKind> {
        (name == "connect").then_some(MethodKind::ByteStream)
    }

    async fn call(&self, method: &str, _args: Vec<Json>) -> Result<Json, DriverError> {
        Err(DriverError::NotImplemented(format!(
            "{method} is not a method of UnixNetwork"
        )))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        let path = &self.0.path;
        let stream = within_timeout(
            &path.display().to_string(),
            tokio::net::UnixStream::connect(path),
        )
        .await?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tcp(host: &str, port: u16, enable_address: bool) -> TcpNetwork {
        TcpNetwork(TcpSpec {
            host: host.into(),
            port,
            enable_address,
        })
    }

    #[tokio::test]
    async fn connect_reaches_the_target_and_address_is_upstreams() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let driver = tcp("localhost", port, true);
        let mut io = driver.connect("connect").await.unwrap();
        io.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        let address = driver.call("address", vec![]).await.unwrap();
        let address = address.as_str().unwrap();
        assert!(
            address == format!("tcp://127.0.0.1:{port}")
                || address == format!("tcp://[::1]:{port}"),
            "{address}"
        );
        assert_eq!(
            tcp("::1", 22, true).call("address", vec![]).await.unwrap(),
            Json::String("tcp://[::1]:22".into())
        );
        let e = tcp("localhost", port, false)
            .call("address", vec![])
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::InvalidArgument(m) if m.contains("enable_address")));
    }

    #[tokio::test]
    async fn a_refusing_target_is_unavailable_naming_it() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = tcp("127.0.0.1", port, true)
            .connect("connect")
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&e, DriverError::Unavailable(m) if m.contains(&format!("127.0.0.1:{port}"))),
            "{e:?}"
        );
        let missing = UnixNetwork(UnixSpec {
            path: "/nonexistent/socket".into(),
        });
        let e = missing.connect("connect").await.err().unwrap();
        assert!(
            matches!(&e, DriverError::Unavailable(m) if m.contains("/nonexistent/socket")),
            "{e:?}"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let node = yaml::parse("host: ''\nport: 22\n").unwrap();
        let e = tcp_spec(&node, "export.ssh.config").err().unwrap();
        assert!(e.to_string().contains("host"), "{e}");
        let node = yaml::parse("host: board\nport: 0\n").unwrap();
        let e = tcp_spec(&node, "export.ssh.config").err().unwrap();
        assert!(e.to_string().contains("port"), "{e}");
        let node = yaml::parse("host: board\nport: 70000\n").unwrap();
        assert!(tcp_spec(&node, "export.ssh.config").is_err());
    }
}
