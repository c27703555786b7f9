//! `EnerGenie` (`jumpstarter_driver_energenie.driver.EnerGenie`, drivers.md §11): one socket of
//! an EnerGenie EG-PMS2-LAN surge protector, switched through its web page: a login form post
//! with the password, then a form post setting `cte<slot>`, each within 10 s, as upstream.
//!
//! Beyond upstream, which logs a failure and answers the call as if it had worked: a refused
//! login, a failed switch, a device that cannot be reached or does not answer are errors of
//! the call, naming the device (never the password). `read` is not implemented, as upstream
//! (a plain call there, so the client's streaming `read` is NOT_FOUND with both exporters).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{client, request_error};
use crate::yaml::{self, Node};
use crate::{power, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_energenie.driver.EnerGenie";

/// Upstream's timeout for each of the two requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn default_password() -> String {
    "1".into()
}

fn default_slot() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnerGenieConfig {
    host: Option<String>,
    #[serde(default = "default_password")]
    password: String,
    #[serde(default = "default_slot")]
    slot: i64,
}

#[derive(Clone)]
struct EnerGenieSpec {
    host: String,
    password: String,
    slot: u8,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(read_spec(node, path)?))
}

fn read_spec(node: &Node, path: &str) -> Result<EnerGenieSpec, yaml::Error> {
    let c: EnerGenieConfig = yaml::from_node(node, path)?;
    let host = c.host.filter(|h| !h.trim().is_empty()).ok_or_else(|| {
        yaml::Error::at(
            &yaml::join(path, "host"),
            node.get("host").unwrap_or(node),
            "host is missing: give the EnerGenie's address",
        )
    })?;
    let slot = u8::try_from(c.slot)
        .ok()
        .filter(|s| (1..=4).contains(s))
        .ok_or_else(|| {
            yaml::Error::at(
                &yaml::join(path, "slot"),
                node.get("slot").unwrap_or(node),
                format!("slot {} is not a socket of the device: use 1 to 4", c.slot),
            )
        })?;
    Ok(EnerGenieSpec {
        host,
        password: c.password,
        slot,
    })
}

impl DriverSpec for EnerGenieSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(EnerGenie {
            spec: self.clone(),
            timeout: REQUEST_TIMEOUT,
        })
    }
}

pub struct EnerGenie {
    spec: EnerGenieSpec,
    timeout: Duration,
}

impl EnerGenie {
    async fn switch(&self, on: bool) -> Result<(), DriverError> {
        let base = format!("http://{}", self.spec.host);
        let device = format!("EnerGenie {} socket {}", self.spec.host, self.spec.slot);
        let http = client(self.timeout)?;
        let login = http
            .post(format!("{base}/login.html"))
            .form(&[("pw", self.spec.password.as_str())])
            .send()
            .await
            .map_err(|e| request_error(&format!("{device}: login"), e, self.timeout))?;
        if login.status() != reqwest::StatusCode::OK {
            return Err(DriverError::Failed(format!(
                "{device}: the login was refused ({}): check `password:`",
                login.status()
            )));
        }
        let state = if on { "1" } else { "0" };
        let key = format!("cte{}", self.spec.slot);
        let answer = http
            .post(format!("{base}/"))
            .form(&[(key.as_str(), state)])
            .send()
            .await
            .map_err(|e| request_error(&format!("{device}: switching"), e, self.timeout))?;
        if answer.status() != reqwest::StatusCode::OK {
            return Err(DriverError::Failed(format!(
                "{device}: switching {} failed ({})",
                if on { "on" } else { "off" },
                answer.status()
            )));
        }
        tracing::info!(device = %device, on, "EnerGenie socket switched");
        Ok(())
    }
}

#[async_trait]
impl Driver for EnerGenie {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "on" | "off" | "read" => Some(MethodKind::Call),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        if method == "read" {
            return Err(power::no_readings(method, "an EnerGenie socket"));
        }
        let on = power::switch_of(method, &args)?;
        self.switch(on).await?;
        Ok(Json::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_slot_are_checked_at_load() {
        let bad = |text: &str| {
            read_spec(&yaml::parse(text).unwrap(), "export.pdu.config")
                .err()
                .unwrap()
                .to_string()
        };
        assert!(bad("slot: 2\n").contains("export.pdu.config.host"));
        assert!(bad("host: pdu\nslot: 5\n").contains("export.pdu.config.slot"));
        assert!(bad("host: pdu\nslot: 0\n").contains("1 to 4"));
        let s = read_spec(&yaml::parse("host: pdu\n").unwrap(), "p").unwrap();
        assert_eq!((s.password.as_str(), s.slot), ("1", 1));
    }

    #[tokio::test]
    async fn an_unreachable_device_is_an_error_of_the_call_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = EnerGenie {
            spec: read_spec(
                &yaml::parse(&format!("host: '127.0.0.1:{port}'\npassword: s3cret\n")).unwrap(),
                "p",
            )
            .unwrap(),
            timeout: Duration::from_secs(2),
        };
        let e = d.call("on", vec![]).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::Unavailable(m) if m.contains(&format!("127.0.0.1:{port} socket 1"))),
            "{e:?}"
        );
        assert!(!e.to_string().contains("s3cret"));
    }
}
