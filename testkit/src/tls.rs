//! Test-time TLS material for the fakes: one self-signed leaf certificate (`CA:FALSE`, SANs
//! `IP:127.0.0.1` and `DNS:localhost`) that is both the server certificate and the trust anchor
//! the configs carry in `tls.ca`. rustls/webpki refuses a CA certificate used as an end entity,
//! and gRPC core checks the dialled IP against an IP SAN, so both properties matter.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A freshly generated certificate and its private key.
#[derive(Clone)]
pub struct TestCert {
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    pem: String,
    key_pem: String,
}

impl TestCert {
    /// Generates a new key pair and a self-signed leaf certificate for 127.0.0.1 and localhost.
    pub fn generate() -> TestCert {
        let key = rcgen::KeyPair::generate().expect("generate a key pair");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("certificate parameters");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jmp-testkit fake controller");
        let cert = params.self_signed(&key).expect("self-sign the certificate");
        TestCert {
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The certificate in PEM form (also the trust anchor).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The private key in PEM form, for servers the tests start in other processes.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A TLS acceptor presenting this certificate, ALPN `h2` only.
    pub fn acceptor(&self) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// A TLS connector that trusts only this certificate, ALPN `h2` (for tests acting as
    /// clients of the fakes).
    pub fn connector(&self) -> TlsConnector {
        connector_trusting(&self.pem)
    }
}

/// A TLS connector (ALPN `h2`) trusting only the certificates of a PEM bundle.
pub fn connector_trusting(pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pem_certs(pem) {
        roots.add(cert).expect("add a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// The DER certificates of a PEM bundle (a minimal reader: base64 between the usual markers).
fn rustls_pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(b64) = body.take() {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64 inside a PEM certificate");
                out.push(CertificateDer::from(der));
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}
