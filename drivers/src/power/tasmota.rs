//! Tasmota plugs over MQTT (`jumpstarter_driver_tasmota.driver.TasmotaPower`, drivers.md §11):
//! `on`/`off` publish `ON`/`OFF` (QoS 1) to `cmnd_topic` and wait for the plug to say the same
//! word on `stat_topic`; `read` is a plain call answering null, as upstream exports it (so the
//! client's streaming `read()` gets NOT_FOUND). The plug is switched off at every session
//! start (`reset`) and end (`close`), as upstream does.
//!
//! This module owns the broker connection, the config checks and the error messages. It
//! differs from upstream in these ways:
//! - One MQTT connection per switch (connect, subscribe to `stat_topic`, publish, wait for the
//!   answer, disconnect), not one per driver instance opened in the constructor. Nothing runs
//!   between calls, so nothing can leak after `close`, a broker that restarts costs nothing,
//!   and a broker that is down fails only the calls (upstream fails the exporter at start).
//!   The cost is one TCP (and TLS) handshake per switch, nothing for a power plug.
//! - Every wait is bounded: the whole exchange takes at most `timeout` (default
//!   [`DEFAULT_TIMEOUT`]; upstream's default waits forever), and running out is
//!   DEADLINE_EXCEEDED naming the stage, the topic and the timeout (upstream returns as if it
//!   had worked). Only an answer that arrives after our command counts; upstream also accepts
//!   the last state it heard before.
//! - Retained messages on `stat_topic` are ignored: they tell what the plug said once, not
//!   that it obeyed now.
//! - Refused at load (`jmp-exporter check`): topics with MQTT wildcards (upstream compares the
//!   topic literally, so they never match), a password without a username (MQTT 3.1.1 sends a
//!   password only with one), and `transport: unix` with TLS (this MQTT client has no TLS on a
//!   unix socket: write `tls: false`). As upstream, `unix` takes the socket path from `host`
//!   and ignores `port`; `websockets` connects to `ws://host:port/mqtt` (`wss://` with TLS).
//! - The password is never shown: not in logs, errors or `Debug` output.
//!
//! ## Config
//! ```yaml
//! type: jumpstarter_driver_tasmota.driver.TasmotaPower
//! config:
//!   host: broker.lab          # the socket path with transport: unix
//!   port: 1883                # default
//!   tls: true                 # default; system CA certificates
//!   transport: tcp            # tcp (default) | websockets | unix
//!   client_id: bench-3-plug   # default: a fresh random one per connection
//!   username: lab
//!   password: secret
//!   cmnd_topic: cmnd/plug-3/POWER   # required
//!   stat_topic: stat/plug-3/POWER   # required
//!   timeout: 10               # seconds, default 10
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode, TlsConfiguration,
};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::yaml::{self, Node};
use crate::{args, power, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_tasmota.driver.TasmotaPower";

/// How long one `on`/`off` may take when the config gives no `timeout` (upstream: forever).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `timeout` accepted: a session end waits that long for a plug that is gone.
const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// How long the goodbye (DISCONNECT) may take once the exchange is over.
const GOODBYE: Duration = Duration::from_millis(500);

/// The longest string MQTT can carry (a two-byte length).
const MQTT_STRING_MAX: usize = 65_535;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
    Tcp,
    Websockets,
    Unix,
}

fn default_port() -> u16 {
    1883
}

fn default_true() -> bool {
    true
}

fn default_transport() -> Transport {
    Transport::Tcp
}

/// Upstream's keys. No `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_true")]
    tls: bool,
    #[serde(default = "default_transport")]
    transport: Transport,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    cmnd_topic: String,
    stat_topic: String,
    #[serde(default)]
    timeout: Option<f64>,
}

/// A password that prints as `<hidden>` however it is formatted.
#[derive(Clone, Default)]
struct Secret(Option<String>);

impl Secret {
    fn expose(&self) -> &str {
        self.0.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "<hidden>" } else { "None" })
    }
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(parse(node, path)?))
}

fn parse(node: &Node, path: &str) -> Result<TasmotaSpec, yaml::Error> {
    let c: Config = yaml::from_node(node, path)?;
    // Each error points at the key's value when it is written, else at the mapping.
    let at = |key: &str, message: String| {
        yaml::Error::at(
            &yaml::join(path, key),
            node.get(key).unwrap_or(node),
            message,
        )
    };
    if c.host.trim().is_empty() {
        return Err(at(
            "host",
            match c.transport {
                Transport::Unix => {
                    "host is empty: with transport: unix it is the broker's socket path".into()
                }
                _ => "host is empty: give the MQTT broker's address or name".into(),
            },
        ));
    }
    if c.port == 0 && c.transport != Transport::Unix {
        return Err(at(
            "port",
            "port 0 is not a port to connect to: give the MQTT broker's port (1883, 8883 for TLS)"
                .into(),
        ));
    }
    if c.transport == Transport::Unix && c.tls {
        let key = if node.get("tls").is_some() {
            "tls"
        } else {
            "transport"
        };
        return Err(at(
            key,
            "transport: unix with TLS is not supported here (the MQTT client has no TLS on a unix \
             socket); write `tls: false` (tls defaults to true)"
                .into(),
        ));
    }
    for (key, topic) in [("cmnd_topic", &c.cmnd_topic), ("stat_topic", &c.stat_topic)] {
        if let Some(problem) = topic_problem(topic) {
            return Err(at(key, format!("{key} `{topic}` {problem}")));
        }
    }
    let client_id = c.client_id.filter(|id| !id.is_empty());
    if client_id
        .as_ref()
        .is_some_and(|id| id.len() > MQTT_STRING_MAX)
    {
        return Err(at(
            "client_id",
            format!("client_id is longer than MQTT allows ({MQTT_STRING_MAX} bytes)"),
        ));
    }
    let username = c.username.filter(|u| !u.is_empty());
    let password = c.password.filter(|p| !p.is_empty());
    if password.is_some() && username.is_none() {
        return Err(at(
            "password",
            "a password without a username: MQTT 3.1.1 sends a password only with a username; \
             add `username`"
                .into(),
        ));
    }
    if username.as_ref().is_some_and(|u| u.len() > MQTT_STRING_MAX)
        || password.as_ref().is_some_and(|p| p.len() > MQTT_STRING_MAX)
    {
        return Err(at(
            "username",
            format!("username or password is longer than MQTT allows ({MQTT_STRING_MAX} bytes)"),
        ));
    }
    let timeout = match c.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS => Duration::from_secs_f64(t),
        Some(t) => {
            return Err(at(
                "timeout",
                format!(
                    "timeout {t} is not a number of seconds between 0 and {MAX_TIMEOUT_SECS} \
                     (default {})",
                    DEFAULT_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    Ok(TasmotaSpec(Arc::new(Broker {
        host: c.host,
        port: c.port,
        tls: c.tls,
        transport: c.transport,
        client_id,
        username,
        password: Secret(password),
        cmnd_topic: c.cmnd_topic,
        stat_topic: c.stat_topic,
        timeout,
        tls_config: Mutex::new(None),
    })))
}

/// Why a topic cannot be published to or matched literally, if it cannot.
fn topic_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("is empty: give the plug's topic (Tasmota: cmnd/<topic>/POWER, stat/<topic>/POWER)")
    } else if topic.contains(['+', '#']) {
        Some("has an MQTT wildcard (+ or #): give the plug's exact topic")
    } else if topic.contains('\0') {
        Some("has a NUL character")
    } else if topic.len() > MQTT_STRING_MAX {
        Some("is longer than MQTT allows")
    } else {
        None
    }
}

/// Where the plug's broker is and how to talk to it; shared by the sessions' drivers.
struct Broker {
    host: String,
    port: u16,
    tls: bool,
    transport: Transport,
    client_id: Option<String>,
    username: Option<String>,
    password: Secret,
    cmnd_topic: String,
    stat_topic: String,
    timeout: Duration,
    /// The TLS settings, built at the first TLS connection (reading the system's CAs once);
    /// a failure is not kept, so installing the CAs is enough.
    tls_config: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("transport", &self.transport)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("cmnd_topic", &self.cmnd_topic)
            .field("stat_topic", &self.stat_topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What an exchange was waiting for when it ended, for the error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Subscribing,
    Answering,
}

impl Broker {
    /// The host as it goes in an address or URL (IPv6 in brackets).
    fn bracketed_host(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}:{}/mqtt", self.bracketed_host(), self.port)
    }

    /// The broker as every error names it.
    fn name(&self) -> String {
        match self.transport {
            Transport::Tcp => format!("MQTT broker {}:{}", self.bracketed_host(), self.port),
            Transport::Websockets => format!("MQTT broker {}", self.ws_url()),
            Transport::Unix => format!("MQTT broker unix:{}", self.host),
        }
    }

    fn seconds(&self) -> String {
        format!("{} s", self.timeout.as_secs_f64())
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, DriverError> {
        let mut cached = self.tls_config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = cached.as_ref() {
            return Ok(config.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(DriverError::Failed(format!(
                "{}: tls is true but this host has no system CA certificates (install \
                 ca-certificates), or write `tls: false` for a broker without TLS",
                self.name()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DriverError::Failed(format!("{}: TLS settings: {e}", self.name())))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = Arc::new(config);
        *cached = Some(config.clone());
        Ok(config)
    }

    fn options(&self) -> Result<MqttOptions, DriverError> {
        let id = self.client_id.clone().unwrap_or_else(random_client_id);
        let mut options = match self.transport {
            Transport::Websockets => MqttOptions::new(id, self.ws_url(), self.port),
            Transport::Tcp | Transport::Unix => MqttOptions::new(id, self.host.clone(), self.port),
        };
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password.expose().to_string());
        }
        let transport = match (self.transport, self.tls) {
            (Transport::Tcp, false) => rumqttc::Transport::Tcp,
            (Transport::Tcp, true) => {
                rumqttc::Transport::Tls(TlsConfiguration::Rustls(self.tls_config()?))
            }
            (Transport::Websockets, false) => rumqttc::Transport::Ws,
            (Transport::Websockets, true) => {
                rumqttc::Transport::Wss(TlsConfiguration::Rustls(self.tls_config()?))
            }
            // TLS with unix is refused at load.
            (Transport::Unix, _) => rumqttc::Transport::Unix,
        };
        options.set_transport(transport);
        Ok(options)
    }

    /// Publishes `word` to `cmnd_topic` and waits for the same word on `stat_topic`, all
    /// within `timeout`, on a connection of its own that is closed before returning.
    async fn switch(&self, word: &'static str) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.timeout;
        let (client, mut events) = AsyncClient::new(self.options()?, 4);
        // rumqttc's own connect timeout is whole seconds; ours (the deadline) comes first.
        let mut network = events.network_options();
        network.set_connection_timeout(self.timeout.as_secs() + 1);
        events.set_network_options(network);
        // Queued now, sent as soon as the broker has accepted the connection: the command is
        // published only once the subscription is confirmed, so the answer cannot be missed.
        let queued = client.try_subscribe(self.stat_topic.clone(), QoS::AtMostOnce);
        let result = match queued {
            Ok(()) => self.exchange(&client, &mut events, word, deadline).await,
            Err(e) => Err(DriverError::Failed(format!("{}: {e}", self.name()))),
        };
        goodbye(&client, &mut events).await;
        result
    }

    async fn exchange(
        &self,
        client: &AsyncClient,
        events: &mut EventLoop,
        word: &'static str,
        deadline: Instant,
    ) -> Result<(), DriverError> {
        let mut stage = Stage::Connecting;
        let mut acknowledged = false;
        let mut last_answer: Option<String> = None;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.poll()).await {
                Err(_) => return Err(self.timed_out(stage, word, acknowledged, last_answer)),
                Ok(Err(e)) => return Err(self.connection_error(e, stage)),
                Ok(Ok(event)) => event,
            };
            let Event::Incoming(packet) = event else {
                continue;
            };
            match packet {
                Packet::ConnAck(_) => stage = Stage::Subscribing,
                Packet::SubAck(ack) if stage == Stage::Subscribing => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(DriverError::Failed(format!(
                            "{} refused the subscription to stat_topic `{}` (is this user \
                             allowed to read it?)",
                            self.name(),
                            self.stat_topic
                        )));
                    }
                    client
                        .try_publish(self.cmnd_topic.clone(), QoS::AtLeastOnce, false, word)
                        .map_err(|e| DriverError::Failed(format!("{}: {e}", self.name())))?;
                    stage = Stage::Answering;
                }
                Packet::PubAck(_) => acknowledged = true,
                // A retained message is an old state, not the answer to this command.
                Packet::Publish(p)
                    if stage == Stage::Answering && !p.retain && p.topic == self.stat_topic =>
                {
                    if p.payload.as_ref() == word.as_bytes() {
                        return Ok(());
                    }
                    last_answer = Some(String::from_utf8_lossy(&p.payload).into_owned());
                }
                _ => {}
            }
        }
    }

    fn timed_out(
        &self,
        stage: Stage,
        word: &str,
        acknowledged: bool,
        last_answer: Option<String>,
    ) -> DriverError {
        let name = self.name();
        let within = self.seconds();
        DriverError::Timeout(match stage {
            Stage::Connecting => format!("{name} did not accept a connection within {within}"),
            Stage::Subscribing => format!(
                "{name} did not confirm the subscription to stat_topic `{}` within {within}",
                self.stat_topic
            ),
            Stage::Answering => {
                let mut m = format!(
                    "no {word} on stat_topic `{}` within {within} (timeout) after publishing \
                     {word} to cmnd_topic `{}` via {name}",
                    self.stat_topic, self.cmnd_topic
                );
                if !acknowledged {
                    m.push_str("; the broker did not acknowledge the command either");
                }
                match last_answer {
                    Some(a) => m.push_str(&format!("; the plug answered `{a}`")),
                    None => m.push_str("; is the plug online, and are its topics right?"),
                }
                m
            }
        })
    }

    fn connection_error(&self, e: ConnectionError, stage: Stage) -> DriverError {
        let name = self.name();
        let user = self
            .username
            .as_deref()
            .map(|u| format!(" of user `{u}`"))
            .unwrap_or_else(|| " (none given)".into());
        match e {
            ConnectionError::ConnectionRefused(code) => match code {
                ConnectReturnCode::BadUserNamePassword => DriverError::Failed(format!(
                    "{name} refused the credentials{user}: bad user name or password; check \
                     username and password in the config"
                )),
                ConnectReturnCode::NotAuthorized => DriverError::Failed(format!(
                    "{name} refused the credentials{user}: not authorised; check username and \
                     password in the config"
                )),
                ConnectReturnCode::BadClientId => DriverError::Failed(format!(
                    "{name} refused the client id {}",
                    self.client_id
                        .as_deref()
                        .map(|id| format!("`{id}`"))
                        .unwrap_or_else(|| "(a random one)".into())
                )),
                ConnectReturnCode::ServiceUnavailable => {
                    DriverError::Unavailable(format!("{name} says it is unavailable"))
                }
                ConnectReturnCode::RefusedProtocolVersion => DriverError::Failed(format!(
                    "{name} does not accept MQTT 3.1.1, the version this driver speaks"
                )),
                ConnectReturnCode::Success => {
                    DriverError::Failed(format!("{name}: unexpected connection answer"))
                }
            },
            ConnectionError::NetworkTimeout => DriverError::Timeout(format!(
                "{name} did not accept a connection within {}",
                self.seconds()
            )),
            other if stage == Stage::Connecting => {
                let hint = if self.tls {
                    " (tls is true, upstream's default: write `tls: false` for a broker without TLS)"
                } else {
                    ""
                };
                DriverError::Unavailable(format!("cannot reach {name}: {other}{hint}"))
            }
            other => DriverError::Unavailable(format!("lost the connection to {name}: {other}")),
        }
    }
}

/// Sends DISCONNECT, briefly, so the broker ends the connection cleanly; the socket closes
/// when the event loop is dropped either way.
async fn goodbye(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(GOODBYE, async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A client id for one connection (upstream lets paho pick a random one): at most 23
/// alphanumerics, which every MQTT 3.1.1 broker must accept.
fn random_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("jmp{:016x}", h.finish())
}

#[derive(Debug)]
struct TasmotaSpec(Arc<Broker>);

impl DriverSpec for TasmotaSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(TasmotaPower {
            broker: self.0.clone(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }
}

/// The driver of one session.
pub struct TasmotaPower {
    broker: Arc<Broker>,
    /// One exchange at a time: a fixed `client_id` cannot be connected twice, and the plug's
    /// answers could not be told apart.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl TasmotaPower {
    async fn power(&self, on: bool) -> Result<(), DriverError> {
        let word = if on { "ON" } else { "OFF" };
        let _turn = self.one_at_a_time.lock().await;
        tracing::info!(
            "Power {word} for Tasmota {} via {}",
            self.broker.cmnd_topic,
            self.broker.name()
        );
        self.broker.switch(word).await
    }
}

#[async_trait]
impl Driver for TasmotaPower {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "on" | "off" | "read" => Some(MethodKind::Call),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        if method == "read" {
            // Upstream exports `read` as a plain call that returns nothing.
            args::expect_count(method, &args, 0)?;
            return Ok(Json::Null);
        }
        let on = power::switch_of(method, &args)?;
        self.power(on).await?;
        Ok(Json::Null)
    }

    /// Off at session start, as upstream; a failure is the tree's to log.
    async fn reset(&self) -> Result<(), DriverError> {
        self.power(false).await
    }

    /// Off at session end, as upstream; bounded by `timeout` like every call.
    async fn close(&self) {
        if let Err(e) = self.power(false).await {
            tracing::warn!(error = %e, "could not switch the Tasmota plug off at session end");
        }
    }
}

#[cfg(test)]
mod tests;
