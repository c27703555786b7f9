//! `SSHWrapper` (`jumpstarter_driver_ssh.driver.SSHWrapper`, drivers.md §7a): what the client's
//! `j ssh` needs to reach the board, whose SSH port is the entry's `tcp` child (a TcpNetwork,
//! or a `ref:` to one; a missing child is a config error at the entry). Three calls: the
//! default user, the `ssh` command line, and the identity, given as key text or as a file read
//! at the first call that asks (as upstream). The key is handed to the client and to no one
//! else: it is never logged, and an unreadable file is named without its content.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::yaml::{self, Node};
use crate::{args, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_ssh.driver.SSHWrapper";

const DEFAULT_COMMAND: &str =
    "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";

fn default_command() -> String {
    DEFAULT_COMMAND.into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshConfig {
    #[serde(default)]
    default_username: String,
    #[serde(default = "default_command")]
    ssh_command: String,
    #[serde(default)]
    ssh_identity: Option<String>,
    #[serde(default)]
    ssh_identity_file: Option<PathBuf>,
}

/// The identity as configured. Its `Debug` never shows key text.
#[derive(Clone)]
enum Identity {
    None,
    Text(String),
    File(PathBuf),
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::None => f.write_str("None"),
            Identity::Text(_) => f.write_str("Text(<redacted>)"),
            Identity::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

#[derive(Clone, Debug)]
struct SshSpec {
    username: String,
    command: String,
    identity: Identity,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: SshConfig = yaml::from_node(node, path)?;
    let identity = match (c.ssh_identity, c.ssh_identity_file) {
        (Some(_), Some(_)) => {
            return Err(yaml::Error::at(
                &yaml::join(path, "ssh_identity_file"),
                node.get("ssh_identity_file").unwrap_or(node),
                "give the key as `ssh_identity` (its text) or as `ssh_identity_file` (a path), not both",
            ))
        }
        (Some(text), None) => Identity::Text(text),
        (None, Some(file)) => Identity::File(file),
        (None, None) => Identity::None,
    };
    if c.ssh_command.trim().is_empty() {
        return Err(yaml::Error::at(
            &yaml::join(path, "ssh_command"),
            node.get("ssh_command").unwrap_or(node),
            "`ssh_command` is empty: leave it out for upstream's default, or give the ssh command line",
        ));
    }
    Ok(Box::new(SshSpec {
        username: c.default_username,
        command: c.ssh_command,
        identity,
    }))
}

impl DriverSpec for SshSpec {
    fn client(&self) -> &'static str {
        crate::client::SSH_WRAPPER
    }

    fn required_children(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "tcp",
            "a jumpstarter_driver_network.driver.TcpNetwork to the board's SSH port, or a `ref:` to one",
        )]
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(SshWrapper {
            spec: self.clone(),
            key: OnceCell::new(),
        })
    }
}

pub struct SshWrapper {
    spec: SshSpec,
    /// The key file's text, read once per session.
    key: OnceCell<String>,
}

impl SshWrapper {
    async fn identity(&self) -> Result<Json, DriverError> {
        match &self.spec.identity {
            Identity::None => Ok(Json::Null),
            Identity::Text(text) => Ok(Json::String(text.clone())),
            Identity::File(path) => {
                let text = self
                    .key
                    .get_or_try_init(|| async {
                        tokio::fs::read_to_string(path).await.map_err(|e| {
                            DriverError::Failed(format!(
                                "cannot read ssh_identity_file {}: {e}",
                                path.display()
                            ))
                        })
                    })
                    .await?;
                Ok(Json::String(text.clone()))
            }
        }
    }
}

#[async_trait]
impl Driver for SshWrapper {
    fn method(&self, name: &str) -> Option<MethodKind> {
        matches!(
            name,
            "get_default_username" | "get_ssh_command" | "get_ssh_identity"
        )
        .then_some(MethodKind::Call)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        args::expect_count(method, &args, 0)?;
        match method {
            "get_default_username" => Ok(Json::String(self.spec.username.clone())),
            "get_ssh_command" => Ok(Json::String(self.spec.command.clone())),
            "get_ssh_identity" => self.identity().await,
            _ => Err(DriverError::NotImplemented(format!(
                "{method} is not a method of SSHWrapper"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapper(config: &str) -> Box<dyn Driver> {
        spec(&yaml::parse(config).unwrap(), "export.ssh.config")
            .unwrap()
            .build()
    }

    #[tokio::test]
    async fn the_three_calls_answer_as_upstream() {
        let d = wrapper("{}");
        assert_eq!(
            d.call("get_default_username", vec![]).await.unwrap(),
            Json::String(String::new())
        );
        assert_eq!(
            d.call("get_ssh_command", vec![]).await.unwrap(),
            Json::String(DEFAULT_COMMAND.into())
        );
        assert_eq!(
            d.call("get_ssh_identity", vec![]).await.unwrap(),
            Json::Null
        );
        let d = wrapper("default_username: root\nssh_identity: KEYTEXT\n");
        assert_eq!(
            d.call("get_default_username", vec![]).await.unwrap(),
            Json::String("root".into())
        );
        assert_eq!(
            d.call("get_ssh_identity", vec![]).await.unwrap(),
            Json::String("KEYTEXT".into())
        );
    }

    #[tokio::test]
    async fn a_key_file_is_read_at_the_first_call_and_named_without_its_content_when_it_cannot_be()
    {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let d = wrapper(&format!("ssh_identity_file: {}\n", key.display()));
        let e = d.call("get_ssh_identity", vec![]).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::Failed(m) if m.contains(&key.display().to_string())),
            "{e:?}"
        );
        std::fs::write(&key, "SECRET KEY").unwrap();
        assert_eq!(
            d.call("get_ssh_identity", vec![]).await.unwrap(),
            Json::String("SECRET KEY".into())
        );
    }

    #[test]
    fn both_identity_forms_are_a_config_error_and_debug_hides_the_key() {
        let node = yaml::parse("ssh_identity: SECRET\nssh_identity_file: /k\n").unwrap();
        let e = spec(&node, "export.ssh.config").err().unwrap().to_string();
        assert!(e.contains("export.ssh.config.ssh_identity_file"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let spec = SshSpec {
            username: String::new(),
            command: DEFAULT_COMMAND.into(),
            identity: Identity::Text("SECRET".into()),
        };
        assert!(!format!("{spec:?}").contains("SECRET"));
    }
}
