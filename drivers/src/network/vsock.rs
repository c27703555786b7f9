//! `VsockNetwork`: an AF_VSOCK stream to a port of a virtual machine (`cid`), the way a lab
//! reaches a QEMU guest's agent or shell without a network.

use async_trait::async_trait;
use serde::Deserialize;
use tokio_vsock::{VsockAddr, VsockStream};

use super::within_timeout;
use crate::yaml::{self, Node};
use crate::{BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_network.driver.VsockNetwork";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockConfig {
    cid: u32,
    port: u32,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: VsockConfig = yaml::from_node(node, path)?;
    Ok(Box::new(VsockSpec {
        cid: c.cid,
        port: c.port,
    }))
}

#[derive(Clone, Copy)]
struct VsockSpec {
    cid: u32,
    port: u32,
}

impl DriverSpec for VsockSpec {
    fn client(&self) -> &'static str {
        crate::client::NETWORK
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(VsockNetwork(*self))
    }
}

pub struct VsockNetwork(VsockSpec);

#[async_trait]
impl Driver for VsockNetwork {
    fn method(&self, name: &str) -> Option<MethodKind> {
        (name == "connect").then_some(MethodKind::ByteStream)
    }

    async fn call(&self, method: &str, _args: Vec<Json>) -> Result<Json, DriverError> {
        Err(DriverError::NotImplemented(format!(
            "{method} is not a method of VsockNetwork"
        )))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        let target = format!("vsock cid {} port {}", self.0.cid, self.0.port);
        let stream = within_timeout(
            &target,
            VsockStream::connect(VsockAddr::new(self.0.cid, self.0.port)),
        )
        .await?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guest_that_is_not_there_is_named() {
        // CID 4294967294 is never a running guest; on a host without vsock at all the socket
        // cannot even be made. Either way the error names the target.
        let d = VsockNetwork(VsockSpec {
            cid: 0xFFFF_FFFE,
            port: 22,
        });
        let e = d.connect("connect").await.err().unwrap();
        assert!(
            e.to_string().contains("vsock cid 4294967294 port 22"),
            "{e}"
        );
    }

    #[test]
    fn cid_and_port_are_required_numbers() {
        let node = yaml::parse("cid: three\nport: 22\n").unwrap();
        assert!(spec(&node, "export.guest.config")
            .err()
            .unwrap()
            .to_string()
            .contains("export.guest.config.cid"));
        let node = yaml::parse("cid: 3\n").unwrap();
        assert!(spec(&node, "export.guest.config").is_err());
    }
}
