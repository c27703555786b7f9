//! Drivers that need no hardware: `MockPower` (and `SyncMockPower`, the same on the wire) and
//! `EchoNetwork`. They serve demos, tests and benchmarks, and are the reference for how a
//! plain call, a streaming call and a byte stream look.

use async_trait::async_trait;
use futures::stream;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::yaml::{self, Node};
use crate::{
    args, power, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind, ResultStream,
};

pub const MOCK_POWER: &str = "jumpstarter_driver_power.driver.MockPower";
pub const SYNC_MOCK_POWER: &str = "jumpstarter_driver_power.driver.SyncMockPower";
pub const ECHO_NETWORK: &str = "jumpstarter_driver_network.driver.EchoNetwork";

/// Neither mock takes any settings; an unknown key is still an error, as upstream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConfig {}

pub fn power_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let NoConfig {} = yaml::from_node(node, path)?;
    Ok(Box::new(MockPowerSpec))
}

pub fn echo_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let NoConfig {} = yaml::from_node(node, path)?;
    Ok(Box::new(EchoSpec))
}

struct MockPowerSpec;

impl DriverSpec for MockPowerSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(MockPower)
    }
}

/// Logs what a power switch would do and reports two fixed readings.
pub struct MockPower;

#[async_trait]
impl Driver for MockPower {
    fn method(&self, name: &str) -> Option<MethodKind> {
        power::method_kind(name)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        if power::switch_of(method, &args)? {
            tracing::info!("power on");
        } else {
            tracing::info!("power off");
        }
        Ok(Json::Null)
    }

    async fn streaming_call(
        &self,
        method: &str,
        args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        args::expect_count(method, &args, 0)?;
        let readings = [
            json!({"voltage": 0.0, "current": 0.0}),
            json!({"voltage": 5.0, "current": 2.0}),
        ];
        Ok(Box::pin(stream::iter(readings.map(Ok))))
    }
}

struct EchoSpec;

impl DriverSpec for EchoSpec {
    fn client(&self) -> &'static str {
        crate::client::NETWORK
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(EchoNetwork)
    }
}

/// Sends every byte back on the same stream.
pub struct EchoNetwork;

#[async_trait]
impl Driver for EchoNetwork {
    fn method(&self, name: &str) -> Option<MethodKind> {
        (name == "connect").then_some(MethodKind::ByteStream)
    }

    async fn call(&self, method: &str, _args: Vec<Json>) -> Result<Json, DriverError> {
        Err(DriverError::NotImplemented(method.to_string()))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        Ok(echo_stream(CancellationToken::new()))
    }
}

/// Buffer between the two ends of an echo; bounded, so a client that stops reading stops the
/// echo instead of growing a queue.
const ECHO_BUFFER: usize = 64 * 1024;

/// A byte stream whose far end writes back what it reads, until the near end closes its write
/// side or `stop` is cancelled.
pub(crate) fn echo_stream(stop: CancellationToken) -> BoxedIo {
    let (near, far) = tokio::io::duplex(ECHO_BUFFER);
    tokio::spawn(async move {
        let (mut rx, mut tx) = tokio::io::split(far);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => break,
                read = rx.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
            };
            let written = tokio::select! {
                _ = stop.cancelled() => break,
                w = tx.write_all(&buf[..n]) => w,
            };
            if written.is_err() {
                break;
            }
        }
        let _ = tx.shutdown().await;
    });
    Box::new(near)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn mock_power_calls_and_readings() {
        let p = MockPower;
        assert_eq!(p.call("on", vec![]).await.unwrap(), Json::Null);
        assert!(matches!(
            p.call("off", vec![json!(1)]).await,
            Err(DriverError::InvalidArgument(_))
        ));
        let items: Vec<_> = p
            .streaming_call("read", vec![])
            .await
            .unwrap()
            .collect()
            .await;
        let items: Vec<Json> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            items,
            vec![
                json!({"voltage": 0.0, "current": 0.0}),
                json!({"voltage": 5.0, "current": 2.0})
            ]
        );
        assert_eq!(p.method("read"), Some(MethodKind::Streaming));
        assert_eq!(p.method("cycle"), None);
    }

    #[tokio::test]
    async fn echo_returns_bytes_and_ends_after_half_close() {
        let mut io = EchoNetwork.connect("connect").await.unwrap();
        io.write_all(b"hello").await.unwrap();
        io.shutdown().await.unwrap();
        let mut back = Vec::new();
        io.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
    }

    #[tokio::test]
    async fn echo_stops_when_cancelled() {
        let stop = CancellationToken::new();
        let mut io = echo_stream(stop.clone());
        stop.cancel();
        let mut back = Vec::new();
        io.read_to_end(&mut back).await.unwrap();
        assert!(back.is_empty());
    }
}
