//! TLS of the HTTP listeners (`http_server.tls`, `http_server.internal_tls`),
//! of the gRPC API (`grpc_api.tls`)
//! and of the NATS connection (`broker.nats.tls`), with rustls and the ring
//! provider.
//!
//! Each `*_pem` value of Centrifugo's TLS object is raw PEM, base64-encoded
//! PEM or a file path: a value holding a PEM header is PEM, a value that
//! decodes from base64 to PEM is that PEM, anything else is a path.
//!
//! A served certificate read from files is *reloaded*: a task owned by the
//! server polls the files' size and modification time every
//! [`RELOAD_INTERVAL`] (cert-manager rotation swaps the files of a mounted
//! Secret; nothing restarts). New handshakes get the new certificate,
//! established connections keep theirs. Failure modes: a new file that does
//! not parse, or a certificate and key that do not match (one file written,
//! the other not yet), keeps the previous certificate and logs a warning; the
//! pair is tried again when either file changes. Files that vanish keep the
//! previous certificate too. At start-up a missing or bad certificate is an
//! error naming its key, so the server never serves plain HTTP where TLS was
//! asked for. The client CA of mTLS (`client_ca_pem`) is read at start only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use gyre_node::config::Tls;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// How often a served certificate's files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A TLS setting that cannot be used; the message starts with the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct TlsError {
    /// Full key, e.g. `http_server.tls.cert_pem`.
    pub key: String,
    /// What is wrong (never the value: it may be a key).
    pub msg: String,
}

fn err(key: &str, msg: impl Into<String>) -> TlsError {
    TlsError { key: key.to_string(), msg: msg.into() }
}

/// The provider every TLS config here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a `*_pem` value's PEM comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Inline(Vec<u8>),
    File(PathBuf),
}

fn source(value: &str) -> Source {
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

/// Reads a source (at start-up: a one-off small read before serving).
fn read_sync(key: &str, src: &Source) -> Result<Vec<u8>, TlsError> {
    match src {
        Source::Inline(b) => Ok(b.clone()),
        Source::File(p) => std::fs::read(p).map_err(|e| err(key, format!("cannot read {}: {e}", p.display()))),
    }
}

fn parse_certs(key: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

fn parse_key(key: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| err(key, format!("not a PEM private key: {e}")))
}

/// A certificate chain and its key, checked to belong together.
fn certified(prefix: &str, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let cert_key = format!("{prefix}.cert_pem");
    let key_key = format!("{prefix}.key_pem");
    let chain = parse_certs(&cert_key, cert)?;
    let der = parse_key(&key_key, key)?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| err(&key_key, format!("unusable with {cert_key}: {e}")))
}

fn roots(key: &str, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in parse_certs(key, pem)? {
        store.add(c).map_err(|e| err(key, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The served certificate, swapped whole by the reloader; handshakes only
/// clone the `Arc` (the lock is never held across anything but that).
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// What a served certificate is read from, for the reloader.
#[derive(Debug, Clone)]
struct Files {
    prefix: String,
    cert: Source,
    key: Source,
    /// Stamps of the files as loaded at start, taken before reading them: a
    /// change between start-up and the watcher's first look is still seen.
    loaded: (Stamp, Stamp),
}

/// Size and modification time of a file source (`None`: inline, or unreadable).
type Stamp = Option<(u64, SystemTime)>;

/// A listener's TLS: the rustls config and, when the certificate comes from
/// files, what the reloader must watch.
#[derive(Clone)]
pub struct ServerTls {
    /// For `tokio_rustls::TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    files: Files,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("prefix", &self.files.prefix).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `t` (the TLS object at `prefix`, e.g. `http_server.tls`).
    /// Errors name the key at fault.
    pub fn load(prefix: &str, t: &Tls) -> Result<ServerTls, TlsError> {
        if t.cert_pem.trim().is_empty() {
            return Err(err(&format!("{prefix}.cert_pem"), "required when TLS is enabled"));
        }
        if t.key_pem.trim().is_empty() {
            return Err(err(&format!("{prefix}.key_pem"), "required when TLS is enabled"));
        }
        let (cert_src, key_src) = (source(&t.cert_pem), source(&t.key_pem));
        let loaded = (stamp_sync(&cert_src), stamp_sync(&key_src));
        let files = Files { prefix: prefix.to_string(), cert: cert_src, key: key_src, loaded };
        let cert = read_sync(&format!("{prefix}.cert_pem"), &files.cert)?;
        let key = read_sync(&format!("{prefix}.key_pem"), &files.key)?;
        let ck = certified(prefix, &cert, &key)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(ck))));
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(prefix, e.to_string()))?;
        let builder = if t.client_ca_pem.trim().is_empty() {
            builder.with_no_client_auth()
        } else {
            let ca_key = format!("{prefix}.client_ca_pem");
            let pem = read_sync(&ca_key, &source(&t.client_ca_pem))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_key, &pem)?), provider())
                .build()
                .map_err(|e| err(&ca_key, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // HTTP/2 when the client offers it (the listener serves both).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { config: Arc::new(config), resolver, files })
    }

    /// Polls the certificate's files until `stop`, swapping in a changed
    /// pair that loads (see the module docs). Nothing to do (returns at once)
    /// when neither comes from a file.
    pub async fn watch(self, stop: CancellationToken) {
        if !matches!(self.files.cert, Source::File(_)) && !matches!(self.files.key, Source::File(_)) {
            return;
        }
        let mut seen = self.files.loaded;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            let now = (stamp(&self.files.cert).await, stamp(&self.files.key).await);
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload().await {
                Ok(()) => tracing::info!(tls = %self.files.prefix, "certificate reloaded from its files"),
                Err(e) => tracing::warn!("{e}; keeping the previous certificate until the files change again"),
            }
        }
    }

    async fn reload(&self) -> Result<(), TlsError> {
        let p = &self.files.prefix;
        let cert = read_async(&format!("{p}.cert_pem"), &self.files.cert).await?;
        let key = read_async(&format!("{p}.key_pem"), &self.files.key).await?;
        let ck = certified(p, &cert, &key)?;
        *self.resolver.0.write() = Arc::new(ck);
        Ok(())
    }
}

/// The [`Stamp`] of a source. The metadata follows symlinks, so a Kubernetes
/// Secret volume's `..data` swap shows as a change.
async fn stamp(src: &Source) -> Stamp {
    let Source::File(p) = src else { return None };
    let m = tokio::fs::metadata(p).await.ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// [`stamp`] at start-up (a one-off metadata read before serving).
fn stamp_sync(src: &Source) -> Stamp {
    let Source::File(p) = src else { return None };
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?))
}

async fn read_async(key: &str, src: &Source) -> Result<Vec<u8>, TlsError> {
    match src {
        Source::Inline(b) => Ok(b.clone()),
        Source::File(p) => tokio::fs::read(p).await.map_err(|e| err(key, format!("cannot read {}: {e}", p.display()))),
    }
}

/// The TLS of the two HTTP listeners, from `http_server.*`: the external one
/// uses `tls`; a separate internal one uses `internal_tls` when enabled, else
/// `tls` unless `tls_external`. One listener (no separate internal port)
/// uses `tls`.
#[derive(Debug, Default, Clone)]
pub struct ListenerTls {
    /// External (or the only) listener.
    pub external: Option<ServerTls>,
    /// Separate internal listener.
    pub internal: Option<ServerTls>,
}

impl ListenerTls {
    /// Loads what `http_server` asks for; `split`: a separate internal port.
    pub fn load(hs: &gyre_node::config::HttpServer, split: bool) -> Result<ListenerTls, TlsError> {
        let external = if hs.tls.enabled { Some(ServerTls::load("http_server.tls", &hs.tls)?) } else { None };
        let internal = if !split {
            None
        } else if hs.internal_tls.enabled {
            Some(ServerTls::load("http_server.internal_tls", &hs.internal_tls)?)
        } else if hs.tls_external {
            None
        } else {
            external.clone()
        };
        Ok(ListenerTls { external, internal })
    }
}

/// The client side of a TLS object (`broker.nats.tls`): `server_ca_pem` (the
/// system roots when empty), `cert_pem`/`key_pem` as the client certificate
/// (mTLS), `server_name`, `insecure_skip_verify`. Errors name the key.
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
    let server_name = if t.server_name.trim().is_empty() {
        None
    } else {
        Some(
            ServerName::try_from(t.server_name.trim().to_string())
                .map_err(|e| err(&format!("{prefix}.server_name"), e.to_string()))?,
        )
    };
    let verifier = Arc::new(Verifier { inner: webpki, server_name, insecure: t.insecure_skip_verify });
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
    fn errors_name_the_key_and_never_the_value() {
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let cases: Vec<(Tls, &str)> = vec![
            (Tls { enabled: true, ..Default::default() }, "http_server.tls.cert_pem: required"),
            (
                Tls { enabled: true, cert_pem: "x.pem".into(), ..Default::default() },
                "http_server.tls.key_pem: required",
            ),
            (
                Tls {
                    enabled: true,
                    cert_pem: "/nonexistent/c.pem".into(),
                    key_pem: secret.into(),
                    ..Default::default()
                },
                "http_server.tls.cert_pem: cannot read /nonexistent/c.pem",
            ),
            (
                Tls {
                    enabled: true,
                    cert_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
                    key_pem: secret.into(),
                    ..Default::default()
                },
                "http_server.tls.cert_pem: ",
            ),
        ];
        for (t, want) in cases {
            let e = ServerTls::load("http_server.tls", &t).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
            assert!(!e.contains("c2VjcmV0"), "{e}");
        }
    }
}
