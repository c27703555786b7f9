//! `UdpNetwork`: a connected UDP socket as a byte stream where one DATA payload is one
//! datagram, both ways, and `address` as `udp://<ip>:<port>`.
//!
//! Boundaries hold because the session writes each payload with one `write` (a datagram is
//! sent whole or not at all) and reads into a buffer of at least a frame's size, which is
//! larger than any datagram. UDP has no half-close: the client's GOAWAY sends nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;

use super::{address, address_enabled, check_host_port, within_timeout, TcpConfig};
use crate::yaml::{self, Node};
use crate::{args, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_network.driver.UdpNetwork";

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: TcpConfig = yaml::from_node(node, path)?;
    check_host_port(&c.host, c.port, node, path)?;
    Ok(Box::new(UdpSpec {
        host: c.host,
        port: c.port,
        enable_address: c.enable_address,
    }))
}

#[derive(Clone)]
struct UdpSpec {
    host: String,
    port: u16,
    enable_address: bool,
}

impl DriverSpec for UdpSpec {
    fn client(&self) -> &'static str {
        crate::client::NETWORK
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(UdpNetwork(self.clone()))
    }
}

pub struct UdpNetwork(UdpSpec);

async fn connected(host: &str, port: u16) -> io::Result<UdpSocket> {
    let target = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))?;
    let local: std::net::SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().expect("an address")
    } else {
        "0.0.0.0:0".parse().expect("an address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

#[async_trait]
impl Driver for UdpNetwork {
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
            address("udp", &self.0.host, self.0.port).await,
        ))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        let target = format!("udp {}:{}", self.0.host, self.0.port);
        let socket = within_timeout(&target, connected(&self.0.host, self.0.port)).await?;
        tracing::debug!(target = %target, "UDP socket connected");
        Ok(Box::new(Datagrams(socket)))
    }
}

/// A connected UDP socket read and written a datagram at a time.
pub struct Datagrams(pub UdpSocket);

impl AsyncRead for Datagrams {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_recv(cx, buf)
    }
}

impl AsyncWrite for Datagrams {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn each_write_is_one_datagram_and_each_read_one_back() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = peer.local_addr().unwrap().port();
        let d = UdpNetwork(UdpSpec {
            host: "127.0.0.1".into(),
            port,
            enable_address: true,
        });
        let mut io = d.connect("connect").await.unwrap();
        io.write_all(b"one").await.unwrap();
        io.write_all(b"two!").await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one");
        let (n, _) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"two!");
        peer.send_to(b"ab", from).await.unwrap();
        peer.send_to(b"cde", from).await.unwrap();
        let mut back = [0u8; 64];
        let n = io.read(&mut back).await.unwrap();
        assert_eq!(&back[..n], b"ab");
        let n = io.read(&mut back).await.unwrap();
        assert_eq!(&back[..n], b"cde");
        assert_eq!(
            d.call("address", vec![]).await.unwrap(),
            Json::String(format!("udp://127.0.0.1:{port}"))
        );
    }
}
