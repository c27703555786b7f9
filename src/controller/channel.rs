//! Channels to the controller and the router: TLS as the exporter config says (`tls.ca` as
//! base64 of a PEM bundle, system roots otherwise, `tls.insecure` to skip verification),
//! HTTP/2 keepalive from `grpcOptions`, and the exporter's identity on every controller call.
//! Channels connect lazily and reconnect by themselves; callers only retry calls.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls::{self, pki_types};
use tokio_rustls::TlsConnector;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{ExporterConfig, Secret, TlsConfig};

/// HTTP/2 keepalive and limits of the controller and router channels, from `grpcOptions`
/// merged over upstream's defaults (PING every 20 s, also while idle).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelOptions {
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(20),
            // Upstream waits 180 s for a PING ack; a peer that silent is gone, and a lease
            // must not hang on it that long.
            keepalive_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl ChannelOptions {
    /// Reads the keepalive keys of `grpcOptions`; other keys are reported back as unused.
    pub fn from_grpc_options(options: &[(String, serde_json::Value)]) -> (Self, Vec<String>) {
        let mut out = Self::default();
        let mut unused = Vec::new();
        for (key, value) in options {
            let millis = value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| Duration::from_millis(v as u64));
            match (key.as_str(), millis) {
                ("grpc.keepalive_time_ms", Some(d)) => out.keepalive_interval = d,
                ("grpc.keepalive_timeout_ms", Some(d)) => out.keepalive_timeout = d,
                // Upstream's own defaults that we follow anyway.
                (
                    "grpc.keepalive_permit_without_calls"
                    | "grpc.http2.max_pings_without_data"
                    | "grpc.lb_policy_name",
                    _,
                ) => {}
                _ => unused.push(key.clone()),
            }
        }
        (out, unused)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("endpoint `{0}` is not host:port")]
    BadEndpoint(String),
    #[error("tls.ca: {0}")]
    BadCa(String),
    #[error("the exporter config has no {0}; a controller needs endpoint, token, metadata.namespace and metadata.name")]
    Missing(&'static str),
    #[error("{}", user_message(.0))]
    Call(Box<Status>),
}

impl From<Status> for ControllerError {
    fn from(status: Status) -> Self {
        ControllerError::Call(Box::new(status))
    }
}

impl ControllerError {
    /// Whether trying again later may help (the controller restarting, the network down).
    /// Identity errors are not: they need the lab owner.
    pub fn is_transient(&self) -> bool {
        match self {
            ControllerError::Call(s) => !matches!(
                s.code(),
                Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::NotFound
            ),
            _ => false,
        }
    }

    pub fn code(&self) -> Option<Code> {
        match self {
            ControllerError::Call(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// A sentence a lab owner can act on.
fn user_message(status: &Status) -> String {
    let hint = match status.code() {
        Code::Unauthenticated => "the controller refused the exporter token; check `token` in the exporter config",
        Code::PermissionDenied => "the controller says this token may not act as this exporter; check `metadata.name`, `metadata.namespace` and `token`",
        Code::NotFound => "the controller has no such exporter; check `metadata.name` and `metadata.namespace`",
        Code::InvalidArgument => "the controller rejected the request",
        Code::Unavailable => "the controller cannot be reached",
        Code::DeadlineExceeded => "the controller did not answer in time",
        Code::Unimplemented => "the controller does not know this call (an older controller?)",
        _ => "the controller call failed",
    };
    format!("{hint} ({:?}: {})", status.code(), status.message())
}

/// Who the exporter is, sent as metadata on every controller call.
#[derive(Clone)]
pub struct Identity {
    bearer: MetadataValue<tonic::metadata::Ascii>,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    name: MetadataValue<tonic::metadata::Ascii>,
}

impl Identity {
    pub fn from_config(config: &ExporterConfig) -> Result<Self, ControllerError> {
        let token = config
            .token
            .as_ref()
            .ok_or(ControllerError::Missing("token"))?;
        let namespace = config
            .namespace
            .as_deref()
            .ok_or(ControllerError::Missing("metadata.namespace"))?;
        let name = config
            .name
            .as_deref()
            .ok_or(ControllerError::Missing("metadata.name"))?;
        Ok(Self {
            bearer: bearer(token).ok_or(ControllerError::Missing(
                "usable token (it has characters a header cannot carry)",
            ))?,
            namespace: namespace
                .parse()
                .map_err(|_| ControllerError::Missing("usable metadata.namespace"))?,
            name: name
                .parse()
                .map_err(|_| ControllerError::Missing("usable metadata.name"))?,
        })
    }

    /// Wraps a message in a request carrying the exporter's credentials.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let m = request.metadata_mut();
        m.insert("authorization", self.bearer.clone());
        m.insert("jumpstarter-kind", MetadataValue::from_static("Exporter"));
        m.insert("jumpstarter-namespace", self.namespace.clone());
        m.insert("jumpstarter-name", self.name.clone());
        request
    }
}

/// `Bearer <token>` as a header value that is never printed.
pub fn bearer(token: &Secret) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    let mut value: MetadataValue<_> = format!("Bearer {}", token.expose()).parse().ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Builds the rustls client settings for `tls`.
pub fn client_tls(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, ControllerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ControllerError::BadCa(e.to_string()))?;
    let mut config = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if tls.ca.trim().is_empty() {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ControllerError::BadCa(
                    "tls.ca is empty and this host has no system CA certificates; set tls.ca to the base64 of the controller's CA bundle".into(),
                ));
            }
        } else {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(tls.ca.trim())
                .map_err(|e| {
                    ControllerError::BadCa(format!(
                        "not base64 ({e}); it holds base64 of a PEM bundle"
                    ))
                })?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ControllerError::BadCa(format!("not a PEM bundle: {e}")))?;
            if certs.is_empty() {
                return Err(ControllerError::BadCa("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| ControllerError::BadCa(e.to_string()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A lazily connecting TLS channel to `host:port`.
pub fn channel(
    target: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &ChannelOptions,
) -> Result<Channel, ControllerError> {
    let (host, port) = target
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| ControllerError::BadEndpoint(target.to_string()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = pki_types::ServerName::try_from(host.clone())
        .map_err(|_| ControllerError::BadEndpoint(target.to_string()))?;
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|_| ControllerError::BadEndpoint(target.to_string()))?
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(true)
        .connect_timeout(options.connect_timeout);
    let address = format!("{host}:{port}");
    let connector = TlsConnector::from(tls);
    let connect = tower::service_fn(move |_uri| {
        let (address, connector, server_name) =
            (address.clone(), connector.clone(), server_name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// `tls.insecure`: accept any certificate, as upstream's trust-on-first-use effectively does.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &pki_types::CertificateDer<'_>,
        _intermediates: &[pki_types::CertificateDer<'_>],
        _server_name: &pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keepalive_options_are_read_and_others_reported() {
        let (o, unused) = ChannelOptions::from_grpc_options(&[
            ("grpc.keepalive_time_ms".into(), json!(1000)),
            ("grpc.keepalive_timeout_ms".into(), json!("2500")),
            ("grpc.max_receive_message_length".into(), json!(1)),
        ]);
        assert_eq!(o.keepalive_interval, Duration::from_secs(1));
        assert_eq!(o.keepalive_timeout, Duration::from_millis(2500));
        assert_eq!(unused, vec!["grpc.max_receive_message_length".to_string()]);
    }

    #[test]
    fn identity_metadata_is_sent_and_the_token_is_sensitive() {
        let config = crate::config::parse(
            "metadata: {namespace: lab, name: bench}\nendpoint: c:443\ntoken: t0ken\n",
            &|_| None,
        )
        .unwrap()
        .config;
        let request = Identity::from_config(&config).unwrap().request(());
        let m = request.metadata();
        assert_eq!(m.get("jumpstarter-kind").unwrap(), "Exporter");
        assert_eq!(m.get("jumpstarter-namespace").unwrap(), "lab");
        assert_eq!(m.get("jumpstarter-name").unwrap(), "bench");
        let auth = m.get("authorization").unwrap();
        assert!(auth.is_sensitive());
        assert!(!format!("{auth:?}").contains("t0ken"));
        let missing = crate::config::parse("metadata: {name: b}\n", &|_| None)
            .unwrap()
            .config;
        assert!(matches!(
            Identity::from_config(&missing),
            Err(ControllerError::Missing("token"))
        ));
    }

    #[test]
    fn bad_ca_and_endpoints_are_explained() {
        let bad = TlsConfig {
            ca: "%%%".into(),
            insecure: false,
        };
        assert!(client_tls(&bad).unwrap_err().to_string().contains("base64"));
        let tls = client_tls(&TlsConfig {
            ca: String::new(),
            insecure: true,
        })
        .unwrap();
        assert!(matches!(
            channel("no-port", tls, &ChannelOptions::default()),
            Err(ControllerError::BadEndpoint(_))
        ));
    }

    #[test]
    fn identity_errors_are_not_transient() {
        let e = ControllerError::from(Status::unauthenticated("bad token"));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("check `token`"));
        assert!(ControllerError::from(Status::unavailable("down")).is_transient());
    }
}
