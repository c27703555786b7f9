//! `DbusNetwork`: a byte stream to the host's system or session D-Bus, so that a client can
//! talk to the test host's services (NetworkManager, systemd) as if local. The bus address is
//! read from `DBUS_SYSTEM_BUS_ADDRESS` / `DBUS_SESSION_BUS_ADDRESS` when the config is loaded
//! (upstream's defaults otherwise), and a malformed one is a config error there, naming the
//! variable; `unix:path=` and `tcp:host=,port=` addresses, as upstream.

use async_trait::async_trait;
use serde::Deserialize;

use super::within_timeout;
use crate::yaml::{self, Node};
use crate::{BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_network.driver.DbusNetwork";
pub const KIND_LABEL: &str = "jumpstarter.dev/dbusnetwork/kind";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DbusConfig {
    kind: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Bus {
    Unix(std::path::PathBuf),
    Tcp(String, u16),
}

/// The bus address a kind names, from the environment or upstream's default.
fn bus_address(kind: &str, env: &dyn Fn(&str) -> Option<String>) -> (String, String) {
    match kind {
        "system" => (
            "DBUS_SYSTEM_BUS_ADDRESS".into(),
            env("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".into()),
        ),
        _ => (
            "DBUS_SESSION_BUS_ADDRESS".into(),
            env("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|| {
                format!(
                    "unix:path=/run/user/{}/bus",
                    rustix::process::getuid().as_raw()
                )
            }),
        ),
    }
}

/// Parses `scheme:key=value,...` (the first address, when several are given with `;`).
fn parse_bus(address: &str) -> Result<Bus, String> {
    let first = address.split(';').next().unwrap_or_default();
    let (scheme, rest) = first
        .split_once(':')
        .ok_or_else(|| format!("`{address}` has no `scheme:`"))?;
    let mut path = None;
    let mut host = None;
    let mut port = None;
    for part in rest.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{address}`: `{part}` is not key=value"))?;
        match key {
            "path" => path = Some(value.to_string()),
            "host" => host = Some(value.to_string()),
            "port" => {
                port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| format!("`{address}`: port `{value}` is not a port"))?,
                )
            }
            _ => {}
        }
    }
    match scheme {
        "unix" => path.map(|p| Bus::Unix(p.into())).ok_or_else(|| {
            format!("`{address}` has no `path=` (abstract sockets are not supported)")
        }),
        "tcp" => match (host, port) {
            (Some(h), Some(p)) => Ok(Bus::Tcp(h, p)),
            _ => Err(format!("`{address}` needs both `host=` and `port=`")),
        },
        other => Err(format!(
            "`{address}`: scheme `{other}` is not supported (use unix:path= or tcp:host=,port=)"
        )),
    }
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    spec_with_env(node, path, &|name| std::env::var(name).ok())
}

fn spec_with_env(
    node: &Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: DbusConfig = yaml::from_node(node, path)?;
    let kind_at = || {
        (
            yaml::join(path, "kind"),
            node.get("kind").unwrap_or(node).clone(),
        )
    };
    if c.kind != "system" && c.kind != "session" {
        let (p, n) = kind_at();
        return Err(yaml::Error::at(
            &p,
            &n,
            format!("kind `{}` is not a bus: use `system` or `session`", c.kind),
        ));
    }
    let (variable, address) = bus_address(&c.kind, env);
    let bus = parse_bus(&address).map_err(|why| {
        let (p, n) = kind_at();
        yaml::Error::at(
            &p,
            &n,
            format!(
                "the {} bus address from {variable} is unusable: {why}",
                c.kind
            ),
        )
    })?;
    Ok(Box::new(DbusSpec { kind: c.kind, bus }))
}

#[derive(Clone)]
struct DbusSpec {
    kind: String,
    bus: Bus,
}

impl DriverSpec for DbusSpec {
    fn client(&self) -> &'static str {
        crate::client::DBUS_NETWORK
    }

    fn extra_labels(&self) -> Vec<(String, String)> {
        vec![(KIND_LABEL.into(), self.kind.clone())]
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(DbusNetwork(self.clone()))
    }
}

pub struct DbusNetwork(DbusSpec);

#[async_trait]
impl Driver for DbusNetwork {
    fn method(&self, name: &str) -> Option<MethodKind> {
        (name == "connect").then_some(MethodKind::ByteStream)
    }

    async fn call(&self, method: &str, _args: Vec<Json>) -> Result<Json, DriverError> {
        Err(DriverError::NotImplemented(format!(
            "{method} is not a method of DbusNetwork"
        )))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        match &self.0.bus {
            Bus::Unix(path) => {
                let target = format!("the {} bus at {}", self.0.kind, path.display());
                Ok(Box::new(
                    within_timeout(&target, tokio::net::UnixStream::connect(path)).await?,
                ))
            }
            Bus::Tcp(host, port) => {
                let target = format!("the {} bus at {host}:{port}", self.0.kind);
                Ok(Box::new(
                    within_timeout(&target, super::tcp::connect(host, *port)).await?,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_addresses_as_upstream_reads_them() {
        assert_eq!(
            parse_bus("unix:path=/run/dbus/system_bus_socket,guid=1"),
            Ok(Bus::Unix("/run/dbus/system_bus_socket".into()))
        );
        assert_eq!(
            parse_bus("tcp:host=10.0.0.1,port=55556"),
            Ok(Bus::Tcp("10.0.0.1".into(), 55556))
        );
        assert!(parse_bus("unix:abstract=/tmp/x").is_err());
        assert!(parse_bus("tcp:host=a").is_err());
        assert!(parse_bus("nope").is_err());
        assert!(parse_bus("launchd:env=X").is_err());
    }

    #[test]
    fn a_bad_kind_or_bus_address_is_a_config_error_naming_the_variable() {
        let node = yaml::parse("kind: user\n").unwrap();
        let e = spec_with_env(&node, "export.bus.config", &|_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("export.bus.config.kind") && e.contains("system"),
            "{e}"
        );
        let node = yaml::parse("kind: session\n").unwrap();
        let e = spec_with_env(&node, "export.bus.config", &|_| Some("tcp:host=x".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("DBUS_SESSION_BUS_ADDRESS"), "{e}");
        let s = spec_with_env(&node, "export.bus.config", &|_| {
            Some("unix:path=/tmp/bus".into())
        })
        .unwrap();
        assert_eq!(
            s.extra_labels(),
            vec![(KIND_LABEL.to_string(), "session".to_string())]
        );
    }
}
