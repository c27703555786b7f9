//! SNMP-switched outlets (`jumpstarter_driver_snmp.driver.SNMPServer`, drivers.md §11): a PDU
//! such as a Raritan, whose outlet `<plug>` is switched by an SNMPv3 (USM) SET of the INTEGER
//! `<oid>.<plug>` to 1 (on) or 0 (off). Its own client, `SNMPServerClient`, is a PowerClient
//! with `on`/`off` only: there is no `read` method at all, as upstream, so `read` is NOT_FOUND.
//! `on`/`off` answer upstream's string (`Power ON command sent successfully`).
//!
//! Differences from upstream, all on the side of saying what is wrong sooner and more clearly:
//! - The config is checked at load (`jmp-exporter check`), with the YAML path and line of each
//!   problem: a protocol name outside `NONE|MD5|SHA` / `NONE|DES|AES`, an auth or priv protocol
//!   without its key (upstream fails at the first call), a key without its protocol, privacy
//!   without authentication (upstream silently drops to noAuthNoPriv), a key shorter than the
//!   8 octets USM needs, a user name outside 1-32 octets, a malformed OID, port 0.
//! - The host is resolved at each call (upstream resolves it in its constructor, and a name
//!   that does not resolve stops the whole exporter).
//! - Errors name the agent (`SNMP agent <host>:<port>`) and the OID: no answer within `timeout`
//!   is DEADLINE_EXCEEDED, refused credentials (wrong auth key, unknown user) and agent error
//!   statuses (notWritable...) are UNKNOWN with what to check, an unresolvable host is
//!   UNAVAILABLE. A wrong priv_key cannot be told from silence (the agent drops what it cannot
//!   decrypt), so with privacy the timeout's message names it as a possible cause.
//! - `auth_key` and `priv_key` are never shown: not in errors, logs or `Debug`.
//!
//! ## Config
//! ```yaml
//! type: jumpstarter_driver_snmp.driver.SNMPServer
//! config:
//!   host: pdu.lab          # name or address of the agent
//!   user: admin            # USM user
//!   port: 161              # default
//!   plug: 3                # required: the outlet number, appended to `oid`
//!   oid: "1.3.6.1.4.1.13742.6.4.1.2.1.2.1"   # default: Raritan outletSwitchingState
//!   auth_protocol: SHA     # NONE (default) | MD5 | SHA (HMAC-96)
//!   auth_key: "..."        # required with MD5/SHA, at least 8 characters
//!   priv_protocol: AES     # NONE (default) | DES | AES (CFB-128); needs auth_protocol
//!   priv_key: "..."        # required with DES/AES, at least 8 characters
//!   timeout: 5.0           # seconds for the whole SET, engine discovery included
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_snmp::v3::ReportStatus;
use async_snmp::{
    AuthProtocol, Client, DesSaltState, Error as SnmpError, ErrorStatus, Oid,
    PersistedDesSaltState, PrivProtocol, Retry, UsmConfig, Value,
};
use async_trait::async_trait;
use serde::Deserialize;

use crate::yaml::{self, Node};
use crate::{Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_snmp.driver.SNMPServer";

/// Raritan PX `outletSwitchingState`, upstream's default.
pub const DEFAULT_OID: &str = "1.3.6.1.4.1.13742.6.4.1.2.1.2.1";

/// USM derives keys from passphrases of at least this many octets (RFC 3414 §11.2; net-snmp
/// and async-snmp refuse shorter ones).
const MIN_KEY_LEN: usize = 8;

/// SnmpAdminString (RFC 3411) bounds a USM user name to 1-32 octets.
const MAX_USER_LEN: usize = 32;

fn default_port() -> u16 {
    161
}

fn default_oid() -> String {
    DEFAULT_OID.into()
}

fn default_timeout() -> f64 {
    5.0
}

/// A USM passphrase from the config. It has no `Display`, and its `Debug` hides it, so that no
/// error, log line or panic can show it by accident.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
struct Key(String);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<hidden>)")
    }
}

/// Upstream's keys, as upstream names them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    host: String,
    user: String,
    #[serde(default = "default_port")]
    port: u16,
    plug: u32,
    #[serde(default = "default_oid")]
    oid: String,
    #[serde(default)]
    auth_protocol: Option<String>,
    #[serde(default)]
    auth_key: Option<Key>,
    #[serde(default)]
    priv_protocol: Option<String>,
    #[serde(default)]
    priv_key: Option<Key>,
    #[serde(default = "default_timeout")]
    timeout: f64,
}

/// The security level and what it needs, as the two protocols choose it. SNMPv3 has no
/// noAuthPriv, so privacy without authentication cannot be written down here.
#[derive(Clone, Debug)]
enum Security {
    NoAuth,
    Auth {
        auth: AuthProtocol,
        auth_key: Key,
    },
    AuthPrivacy {
        auth: AuthProtocol,
        auth_key: Key,
        privacy: PrivProtocol,
        priv_key: Key,
    },
}

impl Security {
    fn level(&self) -> &'static str {
        match self {
            Security::NoAuth => "noAuthNoPriv",
            Security::Auth { .. } => "authNoPriv",
            Security::AuthPrivacy { .. } => "authPriv",
        }
    }

    /// async-snmp's user; its errors carry no passphrase (it checks lengths and backends).
    fn usm(&self, user: &str) -> Result<UsmConfig, String> {
        let base = UsmConfig::new(user.as_bytes().to_vec());
        match self {
            Security::NoAuth => Ok(base),
            Security::Auth { auth, auth_key } => base.auth(*auth, auth_key.0.as_bytes()),
            Security::AuthPrivacy {
                auth,
                auth_key,
                privacy,
                priv_key,
            } => base.auth_priv(
                *auth,
                auth_key.0.as_bytes(),
                *privacy,
                priv_key.0.as_bytes(),
            ),
        }
        .map_err(|e| e.to_string())
    }
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(parse(node, path)?))
}

/// The node of `key` (for its line), or the whole config when the key is absent.
fn at<'a>(node: &'a Node, key: &str) -> &'a Node {
    node.get(key).unwrap_or(node)
}

fn parse(node: &Node, path: &str) -> Result<SnmpSpec, yaml::Error> {
    let c: Config = yaml::from_node(node, path)?;
    let err = |key: &str, message: String| {
        yaml::Error::at(&yaml::join(path, key), at(node, key), message)
    };

    if c.host.trim().is_empty() {
        return Err(err(
            "host",
            "host is empty: give the SNMP agent's name or address".into(),
        ));
    }
    if c.port == 0 {
        return Err(err(
            "port",
            "port 0 is not a port to send to: give the agent's SNMP port (161 unless it was changed)"
                .into(),
        ));
    }
    if c.user.is_empty() || c.user.len() > MAX_USER_LEN {
        return Err(err(
            "user",
            format!(
                "user must be an SNMPv3 (USM) user name of 1 to {MAX_USER_LEN} characters, as configured on the agent"
            ),
        ));
    }
    let base = Oid::parse(c.oid.trim()).map_err(|e| {
        err(
            "oid",
            format!(
                "`{}` is not an OID ({e}): write it dotted, like {DEFAULT_OID}",
                c.oid
            ),
        )
    })?;
    let mut arcs = base.arcs().to_vec();
    arcs.push(c.plug);
    let target = Oid::from(arcs.as_slice());

    if !(c.timeout.is_finite() && c.timeout > 0.0 && c.timeout <= 3600.0) {
        return Err(err(
            "timeout",
            format!(
                "timeout {} is not a time to wait: give seconds, more than 0 and at most 3600",
                c.timeout
            ),
        ));
    }
    let timeout = Duration::from_secs_f64(c.timeout);

    let auth = match c.auth_protocol.as_deref() {
        None => None,
        Some(name) => protocol(
            name,
            &[
                ("NONE", None),
                ("MD5", Some(AuthProtocol::Md5)),
                ("SHA", Some(AuthProtocol::Sha1)),
            ],
        )
        .map_err(|m| err("auth_protocol", m))?,
    };
    let privacy = match c.priv_protocol.as_deref() {
        None => None,
        Some(name) => protocol(
            name,
            &[
                ("NONE", None),
                ("DES", Some(PrivProtocol::Des)),
                ("AES", Some(PrivProtocol::Aes128)),
            ],
        )
        .map_err(|m| err("priv_protocol", m))?,
    };
    let auth_key = checked_key(c.auth_key, "auth_key").map_err(|m| err("auth_key", m))?;
    let priv_key = checked_key(c.priv_key, "priv_key").map_err(|m| err("priv_key", m))?;

    let security =
        match (auth, auth_key, privacy, priv_key) {
            (None, None, None, None) => Security::NoAuth,
            (None, _, Some(_), _) => return Err(err(
                "priv_protocol",
                "priv_protocol needs auth_protocol: SNMPv3 has no privacy without authentication \
                 (set auth_protocol to MD5 or SHA, with auth_key)"
                    .into(),
            )),
            (None, Some(_), _, _) => {
                return Err(err(
                    "auth_key",
                    "auth_key is set but auth_protocol is NONE: set auth_protocol (MD5 or SHA) or \
                 remove auth_key"
                        .into(),
                ))
            }
            (_, _, None, Some(_)) => {
                return Err(err(
                    "priv_key",
                    "priv_key is set but priv_protocol is NONE: set priv_protocol (DES or AES) or \
                 remove priv_key"
                        .into(),
                ))
            }
            (Some(_), None, _, _) => {
                return Err(err(
                    "auth_protocol",
                    "auth_protocol needs auth_key, the user's authentication passphrase".into(),
                ))
            }
            (Some(_), Some(_), Some(_), None) => {
                return Err(err(
                    "priv_protocol",
                    "priv_protocol needs priv_key, the user's privacy passphrase".into(),
                ))
            }
            (Some(auth), Some(auth_key), None, None) => Security::Auth { auth, auth_key },
            (Some(auth), Some(auth_key), Some(privacy), Some(priv_key)) => Security::AuthPrivacy {
                auth,
                auth_key,
                privacy,
                priv_key,
            },
        };
    // The same checks the calls will meet, now rather than at the first `on`.
    security
        .usm(&c.user)
        .map_err(|m| err("user", format!("the SNMPv3 user cannot be set up: {m}")))?;

    Ok(SnmpSpec {
        host: c.host.trim().to_string(),
        port: c.port,
        user: c.user,
        target,
        plug: c.plug,
        security,
        timeout,
    })
}

/// A protocol by its upstream name (capitals, as upstream's enums spell them).
fn protocol<T: Copy>(name: &str, known: &[(&str, Option<T>)]) -> Result<Option<T>, String> {
    if let Some((_, p)) = known.iter().find(|(n, _)| *n == name) {
        return Ok(*p);
    }
    let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
    let hint = known
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(n, _)| format!(" (write it `{n}`, in capitals, as upstream does)"))
        .unwrap_or_default();
    Err(format!(
        "`{name}` is not a protocol this driver knows{hint}: use one of {}",
        names.join(", ")
    ))
}

/// An optional passphrase, refused when too short for USM. Its text is never in the message.
fn checked_key(key: Option<Key>, name: &str) -> Result<Option<Key>, String> {
    match key {
        Some(k) if k.0.len() < MIN_KEY_LEN => Err(format!(
            "{name} is too short: USM needs a passphrase of at least {MIN_KEY_LEN} characters"
        )),
        other => Ok(other),
    }
}

#[derive(Clone, Debug)]
struct SnmpSpec {
    host: String,
    port: u16,
    user: String,
    /// `<oid>.<plug>`.
    target: Oid,
    plug: u32,
    security: Security,
    timeout: Duration,
}

impl DriverSpec for SnmpSpec {
    fn client(&self) -> &'static str {
        crate::client::SNMP
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(SnmpServer(self.clone()))
    }
}

/// The driver of one session. Each call sets up its own SNMP client (as upstream makes an
/// engine per operation): discovery of the agent's engine is one extra round trip, and an
/// agent that restarted between calls is met afresh.
pub struct SnmpServer(SnmpSpec);

impl SnmpServer {
    fn agent(&self) -> String {
        if self.0.host.contains(':') {
            format!("SNMP agent [{}]:{}", self.0.host, self.0.port)
        } else {
            format!("SNMP agent {}:{}", self.0.host, self.0.port)
        }
    }

    async fn switch(&self, on: bool) -> Result<Json, DriverError> {
        let state = if on { "ON" } else { "OFF" };
        tracing::info!(
            "Sending power {state} command to {} (plug {}, {})",
            self.agent(),
            self.0.plug,
            self.0.security.level()
        );
        let value = i32::from(on);
        match tokio::time::timeout(self.0.timeout, self.set(value)).await {
            Ok(Ok(())) => Ok(Json::String(format!(
                "Power {state} command sent successfully"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.no_answer()),
        }
    }

    fn no_answer(&self) -> DriverError {
        // An agent that decrypts with another key reads garbage and drops it without a word
        // (net-snmp: "error parsing ScopedPDU"), so with privacy silence may be a wrong key.
        let privacy = if matches!(self.0.security, Security::AuthPrivacy { .. }) {
            ", and that priv_key and priv_protocol are the agent's (a request it cannot decrypt \
             goes unanswered)"
        } else {
            ""
        };
        DriverError::Timeout(format!(
            "{} did not answer within {} s (SET {}): check that the agent is up and reachable, \
             that {} is its SNMP port, and that it speaks SNMPv3{privacy}",
            self.agent(),
            seconds(self.0.timeout),
            self.0.target,
            self.0.port
        ))
    }

    async fn set(&self, value: i32) -> Result<(), DriverError> {
        let addr = self.resolve().await?;
        let usm = self.0.security.usm(&self.0.user).map_err(|m| {
            DriverError::Failed(format!(
                "{}: the SNMPv3 user cannot be set up: {m}",
                self.agent()
            ))
        })?;
        // Two tries within the timeout: a SET of the same value is safe to repeat, and one
        // lost datagram should not cost the call. The caller bounds the whole exchange.
        let per_try = self.0.timeout / 2;
        let retry = Retry::fixed(1, Duration::ZERO).unwrap_or_else(|_| Retry::none());
        let mut builder = Client::builder(addr, usm);
        if matches!(
            self.0.security,
            Security::AuthPrivacy {
                privacy: PrivProtocol::Des,
                ..
            }
        ) {
            builder = builder.des_salt_state(des_salts().map_err(|m| {
                DriverError::Failed(format!(
                    "{}: DES privacy cannot be set up: {m}",
                    self.agent()
                ))
            })?);
        }
        let client = builder
            .request_timeout(per_try)
            .construction_timeout(self.0.timeout)
            .retry(retry)
            // An agent that refuses the credentials says so in a Report it cannot authenticate
            // (usmStatsWrongDigests, usmStatsUnknownUserNames: RFC 3414 sends these unsigned).
            // async-snmp drops unsigned replies on an authenticated session by default, so a
            // wrong key would look like a dead agent (a timeout); upstream (pysnmp) reports
            // them. Accepting them costs little here: a forged one must still match our random
            // msgID and the agent's engine ID, and can only fail this one call or pick the time
            // fields of one resent SET (to an outlet; a SET of the same value is harmless).
            .allow_unauthenticated_v3_time_correction(true)
            .connect()
            .await
            .map_err(|e| self.call_error(&e))?;
        let response = client
            .set(&self.0.target, Value::Integer(value))
            .await
            .map_err(|e| self.call_error(&e))?;
        if !response.anomalies.is_empty() {
            // The agent accepted the SET (no error status); an odd echo is only worth a note.
            tracing::debug!(agent = %self.agent(), anomalies = ?response.anomalies, "SET answered with an unusual response");
        }
        Ok(())
    }

    async fn resolve(&self) -> Result<SocketAddr, DriverError> {
        let found = tokio::net::lookup_host((self.0.host.as_str(), self.0.port))
            .await
            .map_err(|e| {
                DriverError::Unavailable(format!(
                    "{}: cannot resolve {}: {e}",
                    self.agent(),
                    self.0.host
                ))
            })?;
        let mut found: Vec<SocketAddr> = found.collect();
        // IPv4 first, as upstream (gethostbyname) only ever used IPv4.
        found.sort_by_key(|a| !a.is_ipv4());
        found.into_iter().next().ok_or_else(|| {
            DriverError::Unavailable(format!(
                "{}: {} resolves to no address",
                self.agent(),
                self.0.host
            ))
        })
    }

    /// What an async-snmp error means for the person at the client.
    fn call_error(&self, e: &SnmpError) -> DriverError {
        let agent = self.agent();
        let oid = &self.0.target;
        let user = &self.0.user;
        let refused = |why: &str| {
            DriverError::Failed(format!(
                "{agent} refused the credentials of user `{user}` ({}): {why}",
                self.0.security.level()
            ))
        };
        match e.exchange_source() {
            SnmpError::Timeout { .. } | SnmpError::ConstructionTimeout { .. } => self.no_answer(),
            SnmpError::Network { source, .. } => DriverError::Unavailable(format!(
                "cannot reach {agent}: {source}; check that the agent is up and that {} is its \
                 SNMP port",
                self.0.port
            )),
            SnmpError::Auth { .. } => refused(
                "its answer did not authenticate with auth_key: check auth_protocol and auth_key",
            ),
            SnmpError::Report { status, .. } => match status.as_ref() {
                ReportStatus::UnknownUserName { .. } => {
                    refused("the agent has no such user: check `user`")
                }
                ReportStatus::WrongDigest { .. } => {
                    refused("wrong digest, so auth_key or auth_protocol differs from the agent's")
                }
                ReportStatus::DecryptionError { .. } => refused(
                    "it could not decrypt the request, so priv_key or priv_protocol differs from \
                     the agent's",
                ),
                ReportStatus::UnsupportedSecurityLevel { .. } => refused(
                    "the user is not configured on the agent for this security level: check \
                     auth_protocol and priv_protocol",
                ),
                other => {
                    DriverError::Failed(format!("{agent} refused SET {oid} with a report: {other}"))
                }
            },
            SnmpError::Snmp { status, .. } => {
                let hint = match status {
                    ErrorStatus::NoSuchName
                    | ErrorStatus::NoAccess
                    | ErrorStatus::NotWritable
                    | ErrorStatus::NoCreation => {
                        ": check that plug and oid name an outlet the agent has, and that the user may write it"
                    }
                    ErrorStatus::AuthorizationError => {
                        ": the user is not allowed to write this OID (check the agent's access rules)"
                    }
                    ErrorStatus::WrongType | ErrorStatus::WrongValue | ErrorStatus::BadValue => {
                        ": this OID does not take INTEGER 1/0 (check oid)"
                    }
                    _ => "",
                };
                DriverError::Failed(format!("{agent} refused SET {oid}: {status}{hint}"))
            }
            other => DriverError::Failed(format!("{agent}: SET {oid} failed: {other}")),
        }
    }
}

/// The sender state DES privacy needs: each DES salt is an epoch and a counter, and a salt must
/// never be used twice with one key. async-snmp wants the epoch kept durably across restarts;
/// the exporter keeps no state, so the epoch is the process's start time in seconds (a restart
/// a second or more later starts a new one), shared by every DES driver of the process.
fn des_salts() -> Result<DesSaltState, String> {
    static STATE: OnceLock<Result<DesSaltState, String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            // 1..=2^31-2, so that the next epoch is still a valid one.
            let epoch = (now % (i32::MAX as u64 - 2)) as u32 + 1;
            let previous = PersistedDesSaltState::new(epoch).map_err(|e| e.to_string())?;
            DesSaltState::restart(previous, |_| Ok::<(), std::convert::Infallible>(()))
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// A duration as seconds, without a trailing `.0` for whole ones.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

#[async_trait]
impl Driver for SnmpServer {
    fn method(&self, name: &str) -> Option<MethodKind> {
        // on and off only: upstream exports no `read`, so the client's read is NOT_FOUND.
        matches!(name, "on" | "off").then_some(MethodKind::Call)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        let on = super::switch_of(method, &args)?;
        self.switch(on).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_AUTH: &str = "auth-SECRET-1234";
    const SECRET_PRIV: &str = "priv-SECRET-5678";

    fn parse_src(src: &str) -> Result<SnmpSpec, yaml::Error> {
        parse(&yaml::parse(src).unwrap(), "export.pdu.config")
    }

    fn error_of(src: &str) -> String {
        match parse_src(src) {
            Ok(s) => panic!("{src:?} should be refused, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn driver(src: &str) -> SnmpServer {
        SnmpServer(parse_src(src).unwrap())
    }

    #[test]
    fn defaults_are_upstreams() {
        let s = parse_src("host: pdu\nuser: admin\nplug: 3\n").unwrap();
        assert_eq!(s.port, 161);
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.target.to_string(), format!("{DEFAULT_OID}.3"));
        assert!(matches!(s.security, Security::NoAuth));
        assert_eq!(
            s.client(),
            "jumpstarter_driver_snmp.client.SNMPServerClient"
        );
    }

    #[test]
    fn the_protocols_choose_the_security_level() {
        let s = parse_src(&format!(
            "host: pdu\nuser: admin\nplug: 1\nauth_protocol: MD5\nauth_key: {SECRET_AUTH}\n"
        ))
        .unwrap();
        assert!(matches!(
            s.security,
            Security::Auth {
                auth: AuthProtocol::Md5,
                ..
            }
        ));
        let s = parse_src(&format!(
            "host: pdu\nuser: admin\nplug: 1\noid: .1.3.6.1.4.1.99\nauth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_protocol: AES\npriv_key: {SECRET_PRIV}\ntimeout: 0.5\n"
        ))
        .unwrap();
        assert!(matches!(
            s.security,
            Security::AuthPrivacy {
                auth: AuthProtocol::Sha1,
                privacy: PrivProtocol::Aes128,
                ..
            }
        ));
        assert_eq!(s.target.to_string(), "1.3.6.1.4.1.99.1");
        assert_eq!(s.timeout, Duration::from_millis(500));
        let s = parse_src(&format!(
            "host: pdu\nuser: admin\nplug: 1\nauth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_protocol: DES\npriv_key: {SECRET_PRIV}\n"
        ))
        .unwrap();
        assert!(matches!(
            s.security,
            Security::AuthPrivacy {
                privacy: PrivProtocol::Des,
                ..
            }
        ));
        // NONE written out is the same as leaving the key out.
        let s = parse_src(
            "host: pdu\nuser: admin\nplug: 1\nauth_protocol: NONE\npriv_protocol: NONE\n",
        )
        .unwrap();
        assert!(matches!(s.security, Security::NoAuth));
    }

    #[test]
    fn config_errors_name_the_key_and_line() {
        let base = "host: pdu\nuser: admin\nplug: 1\n";
        let e = error_of(&format!("{base}auth_protocol: SHA256\n"));
        assert!(
            e.starts_with("export.pdu.config.auth_protocol (line 4)"),
            "{e}"
        );
        assert!(e.contains("NONE, MD5, SHA"), "{e}");
        let e = error_of(&format!(
            "{base}auth_protocol: sha\nauth_key: {SECRET_AUTH}\n"
        ));
        assert!(e.contains("write it `SHA`"), "{e}");
        let e = error_of(&format!("{base}priv_protocol: 3DES\n"));
        assert!(
            e.contains("priv_protocol (line 4)") && e.contains("NONE, DES, AES"),
            "{e}"
        );
        let e = error_of(&format!("{base}auth_protocol: MD5\n"));
        assert!(
            e.contains("auth_key") && e.contains("needs auth_key"),
            "{e}"
        );
        let e = error_of(&format!(
            "{base}priv_protocol: AES\npriv_key: {SECRET_PRIV}\n"
        ));
        assert!(
            e.contains("priv_protocol (line 4)") && e.contains("no privacy without authentication"),
            "{e}"
        );
        let e = error_of(&format!(
            "{base}auth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_protocol: AES\n"
        ));
        assert!(
            e.contains("priv_protocol (line 6)") && e.contains("needs priv_key"),
            "{e}"
        );
        let e = error_of(&format!("{base}auth_key: {SECRET_AUTH}\n"));
        assert!(e.contains("auth_protocol is NONE"), "{e}");
        let e = error_of(&format!(
            "{base}auth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_key: {SECRET_PRIV}\n"
        ));
        assert!(e.contains("priv_protocol is NONE"), "{e}");
        let e = error_of("host: pdu\nuser: admin\n");
        assert!(e.contains("plug"), "{e}");
        let e = error_of(&format!("{base}port: 0\n"));
        assert!(e.contains("config.port (line 4)"), "{e}");
        let e = error_of(&format!("{base}port: 70000\n"));
        assert!(e.contains("port"), "{e}");
        let e = error_of(&format!("{base}oid: 1.3.six\n"));
        assert!(
            e.contains("config.oid (line 4)") && e.contains("not an OID"),
            "{e}"
        );
        let e = error_of(&format!("{base}timeout: 0\n"));
        assert!(e.contains("timeout"), "{e}");
        let e = error_of(&format!("{base}timeout: .nan\n"));
        assert!(e.contains("timeout"), "{e}");
        let e = error_of("host: ''\nuser: admin\nplug: 1\n");
        assert!(e.contains("host is empty"), "{e}");
        let e = error_of("host: pdu\nuser: ''\nplug: 1\n");
        assert!(e.contains("config.user"), "{e}");
        let e = error_of("host: pdu\nuser: admin\nplug: -1\n");
        assert!(e.contains("plug"), "{e}");
        let e = error_of(&format!("{base}community: public\n"));
        assert!(e.contains("community"), "{e}");
    }

    #[test]
    fn keys_never_show() {
        // A key too short for USM: the error says so without the key.
        let e =
            error_of("host: pdu\nuser: admin\nplug: 1\nauth_protocol: SHA\nauth_key: short7!\n");
        assert!(e.contains("auth_key is too short"), "{e}");
        assert!(!e.contains("short7!"), "{e}");
        let e = error_of(&format!(
            "host: pdu\nuser: admin\nplug: 1\nauth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_protocol: AES\npriv_key: tiny\n"
        ));
        assert!(!e.contains("tiny") && !e.contains(SECRET_AUTH), "{e}");
        // Refused combinations name the key, never its value.
        for src in [
            format!("host: pdu\nuser: admin\nplug: 1\nauth_key: {SECRET_AUTH}\n"),
            format!("host: pdu\nuser: admin\nplug: 1\npriv_protocol: AES\npriv_key: {SECRET_PRIV}\n"),
            format!("host: pdu\nuser: admin\nplug: 1\nauth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_key: {SECRET_PRIV}\n"),
            format!("host: pdu\nuser: admin\nplug: 1\nauth_protocol: BAD\nauth_key: {SECRET_AUTH}\npriv_protocol: AES\npriv_key: {SECRET_PRIV}\n"),
        ] {
            let e = error_of(&src);
            assert!(!e.contains("SECRET"), "{e}");
        }
        // Debug of the checked config, and of a driver, hides both keys.
        let s = parse_src(&format!(
            "host: pdu\nuser: admin\nplug: 1\nauth_protocol: SHA\nauth_key: {SECRET_AUTH}\npriv_protocol: AES\npriv_key: {SECRET_PRIV}\n"
        ))
        .unwrap();
        let shown = format!("{s:?} {:#?}", s.security);
        assert!(
            shown.contains("admin") && shown.contains("<hidden>"),
            "{shown}"
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        let usm = format!("{:?}", s.security.usm(&s.user).unwrap());
        assert!(!usm.contains("SECRET"), "{usm}");
    }

    #[test]
    fn methods_are_on_and_off_only() {
        let d = driver("host: pdu\nuser: admin\nplug: 1\n");
        assert_eq!(d.method("on"), Some(MethodKind::Call));
        assert_eq!(d.method("off"), Some(MethodKind::Call));
        assert_eq!(d.method("read"), None, "upstream exports no read");
        assert_eq!(d.method("cycle"), None);
    }

    #[tokio::test]
    async fn a_silent_agent_is_a_timeout_naming_it_within_the_timeout() {
        // A socket that takes every datagram and answers none.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let d = driver(&format!(
            "host: 127.0.0.1\nport: {port}\nuser: admin\nplug: 4\nauth_protocol: SHA\nauth_key: {SECRET_AUTH}\ntimeout: 0.4\n"
        ));
        let started = std::time::Instant::now();
        let e = d.call("on", vec![]).await.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        let DriverError::Timeout(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.contains(&format!("SNMP agent 127.0.0.1:{port}")), "{m}");
        assert!(
            m.contains("0.4 s") && m.contains(&format!("{DEFAULT_OID}.4")),
            "{m}"
        );
        assert!(!m.contains("SECRET"), "{m}");
        drop(silent);
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_naming_the_agent() {
        // Nobody listens: loopback answers ICMP port unreachable, or nothing at all.
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let d = driver(&format!(
            "host: 127.0.0.1\nport: {port}\nuser: admin\nplug: 1\ntimeout: 1\n"
        ));
        let started = std::time::Instant::now();
        let e = d.call("off", vec![]).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(&e, DriverError::Unavailable(m) | DriverError::Timeout(m) if m.contains(&format!("SNMP agent 127.0.0.1:{port}"))),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_is_unavailable_at_call_time() {
        let d = driver("host: no-such-host.invalid\nuser: admin\nplug: 1\ntimeout: 2\n");
        let e = d.call("on", vec![]).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::Unavailable(m) | DriverError::Timeout(m) if m.contains("no-such-host.invalid")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn arguments_are_refused() {
        let d = driver("host: 127.0.0.1\nuser: admin\nplug: 1\n");
        let e = d.call("on", vec![Json::from(1)]).await.unwrap_err();
        assert!(matches!(e, DriverError::InvalidArgument(_)), "{e:?}");
    }
}
