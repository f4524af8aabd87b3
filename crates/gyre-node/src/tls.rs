//! Centrifugo's TLS object ([`Tls`]) turned into rustls configuration: the
//! PEM value forms and the client side (proxies' `http.tls` / `grpc.tls`,
//! `broker.nats.tls`). The server side (listeners, certificate reloading)
//! lives in gyre-server's `tls` module and builds on the helpers here, so
//! there is one loader for every place the object appears.
//!
//! Each `*_pem` value is raw PEM, base64-encoded PEM or a file path: a value
//! holding a PEM header is PEM, a value that decodes from base64 to PEM is
//! that PEM, anything else is a path. Every error names the key at fault and
//! never prints the value (it may be a private key).

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

use crate::config::Tls;

/// A TLS setting that cannot be used; the message starts with the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct TlsError {
    /// Full key, e.g. `http_server.tls.cert_pem`.
    pub key: String,
    /// What is wrong (never the value: it may be a key).
    pub msg: String,
}

impl TlsError {
    /// An error about `key`.
    pub fn new(key: &str, msg: impl Into<String>) -> TlsError {
        TlsError { key: key.to_string(), msg: msg.into() }
    }
}

fn err(key: &str, msg: impl Into<String>) -> TlsError {
    TlsError::new(key, msg)
}

/// The provider every TLS config of Gyre uses (ring, as async-nats,
/// hyper-rustls and kube already do).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a `*_pem` value's PEM comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The value itself (raw PEM, or base64 of PEM decoded).
    Inline(Vec<u8>),
    /// A file to read.
    File(PathBuf),
}

/// Classifies a `*_pem` value (see the module docs).
pub fn source(value: &str) -> Source {
    let v = value.trim();
    if v.contains("-----BEGIN") {
        return Source::Inline(v.as_bytes().to_vec());
    }
    let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(compact.as_bytes())
        && decoded.windows(10).any(|w| w == b"-----BEGIN")
    {
        return Source::Inline(decoded);
    }
    Source::File(PathBuf::from(v))
}

/// Reads a source. Blocking: for start-up only (a one-off small read before
/// serving); the server's reloader reads with tokio instead.
pub fn read_sync(key: &str, src: &Source) -> Result<Vec<u8>, TlsError> {
    match src {
        Source::Inline(b) => Ok(b.clone()),
        Source::File(p) => std::fs::read(p).map_err(|e| err(key, format!("cannot read {}: {e}", p.display()))),
    }
}

/// The certificates of a PEM value (at least one, each parseable).
pub fn parse_certs(key: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err(key, "no CERTIFICATE block in the PEM"));
    }
    for c in &certs {
        rustls::server::ParsedCertificate::try_from(c)
            .map_err(|e| err(key, format!("not a valid certificate: {e}")))?;
    }
    Ok(certs)
}

/// The private key of a PEM value (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(key: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| err(key, format!("not a PEM private key: {e}")))
}

/// A certificate chain and its key (of the TLS object at `prefix`), checked
/// to belong together: a key of another certificate fails here, naming
/// `key_pem`, instead of at the first handshake.
pub fn certified(prefix: &str, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let cert_key = format!("{prefix}.cert_pem");
    let key_key = format!("{prefix}.key_pem");
    let chain = parse_certs(&cert_key, cert)?;
    let der = parse_key(&key_key, key)?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| err(&key_key, format!("unusable with {cert_key}: {e}")))
}

/// A root store of the CA certificates of a PEM value.
pub fn roots(key: &str, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in parse_certs(key, pem)? {
        store.add(c).map_err(|e| err(key, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The client side of a TLS object (`broker.nats.tls`, a proxy's `http.tls`
/// or `grpc.tls`): `server_ca_pem` (the system roots when empty),
/// `cert_pem`/`key_pem` as the client certificate (mutual TLS),
/// `server_name`, `insecure_skip_verify`. `client_ca_pem` is a server-side
/// setting and is not used here (Centrifugo ignores it on a client too).
/// ALPN is left empty for the caller to set. Errors name the key.
pub fn client_config(prefix: &str, t: &Tls) -> Result<ClientConfig, TlsError> {
    let ca_key = format!("{prefix}.server_ca_pem");
    let store = if t.server_ca_pem.trim().is_empty() {
        let mut store = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = store.add(c);
        }
        store
    } else {
        roots(&ca_key, &read_sync(&ca_key, &source(&t.server_ca_pem))?)?
    };
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| err(&ca_key, e.to_string()))?;
    let verifier =
        Arc::new(Verifier { inner: webpki, server_name: server_name(prefix, t)?, insecure: t.insecure_skip_verify });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(prefix, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let has_cert = !t.cert_pem.trim().is_empty();
    let has_key = !t.key_pem.trim().is_empty();
    match (has_cert, has_key) {
        (false, false) => Ok(builder.with_no_client_auth()),
        (true, false) => Err(err(&format!("{prefix}.key_pem"), "required with cert_pem (client certificate)")),
        (false, true) => Err(err(&format!("{prefix}.cert_pem"), "required with key_pem (client certificate)")),
        (true, true) => {
            let cert = read_sync(&format!("{prefix}.cert_pem"), &source(&t.cert_pem))?;
            let key = read_sync(&format!("{prefix}.key_pem"), &source(&t.key_pem))?;
            let ck = certified(prefix, &cert, &key)?;
            let chain = ck.cert.clone();
            let der = parse_key(&format!("{prefix}.key_pem"), &key)?;
            builder.with_client_auth_cert(chain, der).map_err(|e| err(&format!("{prefix}.key_pem"), e.to_string()))
        }
    }
}

/// `server_name` of a TLS object, checked (`None` when empty).
pub fn server_name(prefix: &str, t: &Tls) -> Result<Option<ServerName<'static>>, TlsError> {
    let name = t.server_name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    ServerName::try_from(name.to_string()).map(Some).map_err(|e| err(&format!("{prefix}.server_name"), e.to_string()))
}

/// Server certificate check of the client side: WebPKI against the roots,
/// for `server_name` when set (else the name dialled); or nothing at all with
/// `insecure_skip_verify` (signatures of the handshake are still checked).
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    server_name: Option<ServerName<'static>>,
    insecure: bool,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        let name = self.server_name.as_ref().unwrap_or(server_name);
        self.inner.verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_value_forms() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        // (value, expected source)
        let cases: Vec<(String, Source)> = vec![
            (pem.to_string(), Source::Inline(pem.trim().as_bytes().to_vec())),
            (format!("  {pem}  "), Source::Inline(pem.trim().as_bytes().to_vec())),
            (b64.clone(), Source::Inline(pem.as_bytes().to_vec())),
            (format!("{}\n{}", &b64[..20], &b64[20..]), Source::Inline(pem.as_bytes().to_vec())),
            ("/etc/tls/tls.crt".into(), Source::File("/etc/tls/tls.crt".into())),
            ("cert.pem".into(), Source::File("cert.pem".into())),
            // Base64 of something that is not PEM is a path, not silently accepted bytes.
            ("aGVsbG8=".into(), Source::File("aGVsbG8=".into())),
        ];
        for (value, want) in cases {
            assert_eq!(source(&value), want, "{value:?}");
        }
    }

    #[test]
    fn client_side_errors_name_the_key_and_never_the_value() {
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let p = "rpc.proxy.grpc.tls";
        // (object, expected error prefix)
        let cases: Vec<(Tls, String)> = vec![
            (Tls { enabled: true, key_pem: secret.into(), ..Default::default() }, format!("{p}.cert_pem: required")),
            (Tls { enabled: true, cert_pem: "c.pem".into(), ..Default::default() }, format!("{p}.key_pem: required")),
            (
                Tls { enabled: true, server_ca_pem: "/nonexistent/ca.pem".into(), ..Default::default() },
                format!("{p}.server_ca_pem: cannot read /nonexistent/ca.pem"),
            ),
            (
                Tls { enabled: true, server_name: "not a name!".into(), ..Default::default() },
                format!("{p}.server_name: "),
            ),
            (
                Tls {
                    enabled: true,
                    cert_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
                    key_pem: secret.into(),
                    ..Default::default()
                },
                format!("{p}.cert_pem: "),
            ),
        ];
        for (t, want) in cases {
            let e = client_config(p, &t).unwrap_err().to_string();
            assert!(e.starts_with(&want), "{e}");
            assert!(!e.contains("c2VjcmV0"), "{e}");
        }
    }
}
