//! `HttpPower` (`jumpstarter_driver_http_power.driver.HttpPower`, drivers.md §11): a power
//! switch behind HTTP requests, a smart plug's or a PDU's web API. `on` and `off` send their
//! configured request (the body only with POST, PUT and PATCH, as upstream), a status that is
//! not 2xx is an error, and `read` takes one reading from the JSON answer of `power_read`.
//!
//! Beyond upstream: every request has a timeout ([`REQUEST_TIMEOUT`]; upstream has none and
//! can hang a call forever), errors name the switch, the method and the URL (without any
//! credentials in it), and URLs and methods are checked when the config is loaded.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::yaml::{self, Node};
use crate::{args, power, Driver, DriverError, DriverSpec, Json, MethodKind, ResultStream};

pub const TYPE: &str = "jumpstarter_driver_http_power.driver.HttpPower";

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpPowerConfig {
    #[serde(default = "default_name")]
    name: String,
    power_on: EndpointConfig,
    power_off: EndpointConfig,
    #[serde(default)]
    power_read: Option<EndpointConfig>,
    #[serde(default)]
    auth: Option<AuthConfig>,
}

fn default_name() -> String {
    "device".into()
}

fn default_method() -> String {
    "GET".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointConfig {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    voltage_path: Option<String>,
    #[serde(default)]
    current_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default)]
    basic: Option<BasicConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicConfig {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

/// One checked request.
#[derive(Clone)]
struct Endpoint {
    url: reqwest::Url,
    method: reqwest::Method,
    data: Option<String>,
    voltage_path: Option<String>,
    current_path: Option<String>,
}

impl Endpoint {
    /// `METHOD url` for messages, the URL without user or password.
    fn describe(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        format!("{} {url}", self.method)
    }
}

/// Basic credentials; `Debug` never shows the password.
#[derive(Clone)]
struct Basic {
    user: String,
    password: String,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Basic({}, <redacted>)", self.user)
    }
}

#[derive(Clone)]
struct HttpPowerSpec {
    name: String,
    on: Endpoint,
    off: Endpoint,
    read: Option<Endpoint>,
    basic: Option<Basic>,
}

fn endpoint(
    c: EndpointConfig,
    node: &Node,
    path: &str,
    key: &str,
) -> Result<Endpoint, yaml::Error> {
    let at = node.get(key).unwrap_or(node);
    let key_path = yaml::join(path, key);
    let url = reqwest::Url::parse(&c.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            yaml::Error::at(
                &yaml::join(&key_path, "url"),
                at.get("url").unwrap_or(at),
                format!("`{}` is not an http:// or https:// URL", c.url),
            )
        })?;
    let upper = c.method.to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(yaml::Error::at(
            &yaml::join(&key_path, "method"),
            at.get("method").unwrap_or(at),
            format!("method `{}` is not one of {}", c.method, METHODS.join(", ")),
        ));
    }
    let method = reqwest::Method::from_bytes(upper.as_bytes())
        .map_err(|_| yaml::Error::at(&yaml::join(&key_path, "method"), at, "not an HTTP method"))?;
    Ok(Endpoint {
        url,
        method,
        data: c.data,
        voltage_path: c.voltage_path,
        current_path: c.current_path,
    })
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(read_spec(node, path)?))
}

fn read_spec(node: &Node, path: &str) -> Result<HttpPowerSpec, yaml::Error> {
    let c: HttpPowerConfig = yaml::from_node(node, path)?;
    Ok(HttpPowerSpec {
        name: c.name,
        on: endpoint(c.power_on, node, path, "power_on")?,
        off: endpoint(c.power_off, node, path, "power_off")?,
        read: c
            .power_read
            .map(|r| endpoint(r, node, path, "power_read"))
            .transpose()?,
        basic: c.auth.and_then(|a| a.basic).map(|b| Basic {
            user: b.user,
            password: b.password,
        }),
    })
}

impl DriverSpec for HttpPowerSpec {
    fn client(&self) -> &'static str {
        crate::client::POWER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(HttpPower {
            spec: self.clone(),
            timeout: REQUEST_TIMEOUT,
        })
    }
}

pub struct HttpPower {
    spec: HttpPowerSpec,
    timeout: Duration,
}

/// The HTTP client the network power switches share: rustls, the system's roots, a timeout
/// on every request.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, DriverError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| DriverError::Failed(format!("cannot set up an HTTP client: {e}")))
}

/// A failed request as an error naming `what` (the switch and request), never credentials.
pub(crate) fn request_error(what: &str, e: reqwest::Error, timeout: Duration) -> DriverError {
    if e.is_timeout() {
        DriverError::Timeout(format!(
            "{what}: no answer within {} s",
            timeout.as_secs_f64()
        ))
    } else if e.is_connect() {
        DriverError::Unavailable(format!("{what}: cannot connect: {}", e.without_url()))
    } else {
        DriverError::Failed(format!("{what}: {}", e.without_url()))
    }
}

impl HttpPower {
    async fn request(&self, endpoint: &Endpoint) -> Result<String, DriverError> {
        let what = format!(
            "HTTP power switch {}: {}",
            self.spec.name,
            endpoint.describe()
        );
        let http = client(self.timeout)?;
        let mut request = http.request(endpoint.method.clone(), endpoint.url.clone());
        if let Some(basic) = &self.spec.basic {
            request = request.basic_auth(&basic.user, Some(&basic.password));
        }
        let with_body = matches!(endpoint.method.as_str(), "POST" | "PUT" | "PATCH");
        if let (true, Some(data)) = (with_body, &endpoint.data) {
            request = request.body(data.clone());
        }
        tracing::debug!(switch = %self.spec.name, request = %endpoint.describe(), "HTTP power request");
        let answer = request
            .send()
            .await
            .map_err(|e| request_error(&what, e, self.timeout))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(DriverError::Failed(format!("{what}: answered {status}")));
        }
        answer
            .text()
            .await
            .map_err(|e| request_error(&what, e, self.timeout))
    }
}

/// Walks a dotted path (`meters.0.power`: a number indexes a list).
fn at_path<'a>(data: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(data, |cur, part| match cur {
        Json::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        Json::Object(map) => map.get(part),
        _ => None,
    })
}

/// One reading: a configured path must be there; without one, a missing key is 0.0.
fn reading(data: &Json, path: Option<&str>, default_key: &str) -> Result<f64, DriverError> {
    let key = path.unwrap_or(default_key);
    let Some(value) = at_path(data, key) else {
        return match path {
            Some(_) => Err(DriverError::InvalidArgument(format!(
                "configured path '{key}' not found in read response"
            ))),
            None => Ok(0.0),
        };
    };
    let number = match value {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok(),
        Json::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    number.ok_or_else(|| {
        DriverError::InvalidArgument(format!("value at '{key}' is not numeric (got {value})"))
    })
}

#[async_trait]
impl Driver for HttpPower {
    fn method(&self, name: &str) -> Option<MethodKind> {
        power::method_kind(name)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        let on = power::switch_of(method, &args)?;
        tracing::info!(switch = %self.spec.name, on, "switching power over HTTP");
        self.request(if on { &self.spec.on } else { &self.spec.off })
            .await?;
        Ok(Json::Null)
    }

    async fn streaming_call(
        &self,
        method: &str,
        args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        args::expect_count(method, &args, 0)?;
        let Some(endpoint) = &self.spec.read else {
            return Err(DriverError::InvalidArgument(
                "power_read endpoint is not configured".into(),
            ));
        };
        let text = self.request(endpoint).await?;
        let data: Json = serde_json::from_str(&text).map_err(|e| {
            DriverError::InvalidArgument(format!("read endpoint did not return JSON: {e}"))
        })?;
        let voltage = reading(&data, endpoint.voltage_path.as_deref(), "voltage")?;
        let current = reading(&data, endpoint.current_path.as_deref(), "current")?;
        let item = json!({"voltage": voltage, "current": current});
        Ok(Box::pin(futures::stream::iter([Ok(item)])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_and_defaults_as_upstream() {
        let data = json!({"meters": [{"power": 3.5}, {"v": "12"}], "voltage": 5});
        assert_eq!(reading(&data, Some("meters.0.power"), "x").unwrap(), 3.5);
        assert_eq!(reading(&data, Some("meters.1.v"), "x").unwrap(), 12.0);
        assert_eq!(reading(&data, None, "voltage").unwrap(), 5.0);
        assert_eq!(reading(&data, None, "current").unwrap(), 0.0);
        assert!(matches!(
            reading(&data, Some("meters.5.power"), "x"),
            Err(DriverError::InvalidArgument(m)) if m.contains("meters.5.power")
        ));
        assert!(reading(&data, Some("meters"), "x").is_err());
    }

    #[test]
    fn config_errors_name_the_request_and_the_password_never_shows() {
        let bad = |text: &str| {
            spec(&yaml::parse(text).unwrap(), "export.plug.config")
                .err()
                .unwrap()
                .to_string()
        };
        let e = bad("power_on: {url: 'ftp://x/'}\npower_off: {url: 'http://x/off'}\n");
        assert!(e.contains("export.plug.config.power_on.url"), "{e}");
        let e = bad(
            "power_on: {url: 'http://x/on', method: FETCH}\npower_off: {url: 'http://x/off'}\n",
        );
        assert!(e.contains("power_on.method") && e.contains("FETCH"), "{e}");
        let e = bad("power_on: {url: 'http://x/on'}\n");
        assert!(e.contains("power_off"), "{e}");
        let basic = Basic {
            user: "admin".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{basic:?}").contains("hunter2"));
        let endpoint = Endpoint {
            url: "http://admin:hunter2@plug/on".parse().unwrap(),
            method: reqwest::Method::POST,
            data: None,
            voltage_path: None,
            current_path: None,
        };
        assert_eq!(endpoint.describe(), "POST http://plug/on");
    }

    #[tokio::test]
    async fn a_switch_that_does_not_answer_is_a_timeout_naming_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let (_conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let config = format!(
            "name: bench\npower_on: {{url: 'http://127.0.0.1:{port}/on'}}\npower_off: {{url: 'http://127.0.0.1:{port}/off'}}\n"
        );
        let d = HttpPower {
            spec: read_spec(&yaml::parse(&config).unwrap(), "p").unwrap(),
            timeout: Duration::from_millis(300),
        };
        let e = d.call("on", vec![]).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::Timeout(m) if m.contains("bench") && m.contains(&format!("GET http://127.0.0.1:{port}/on"))),
            "{e:?}"
        );
        let e = d.streaming_call("read", vec![]).await.err().unwrap();
        assert!(matches!(e, DriverError::InvalidArgument(m) if m.contains("power_read")));
    }
}
