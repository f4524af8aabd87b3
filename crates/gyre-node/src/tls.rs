//! Centrifugo's TLS object ([`Tls`]) turned into rustls configuration: the
//! PEM value forms, the client side (proxies' `http.tls` / `grpc.tls`,
//! `broker.nats.tls`) and the [`Reloader`] of file-backed PEM. The server
//! side (listeners) lives in gyre-server's `tls` module and builds on the
//! helpers here, so there is one loader and one reloader for every place the
//! object appears.
//!
//! Each `*_pem` value is raw PEM, base64-encoded PEM or a file path: a value
//! holding a PEM header is PEM, a value that decodes from base64 to PEM is
//! that PEM, anything else is a path. Every error names the key at fault and
//! never prints the value (it may be a private key).
//!
//! PEM read from files is *reloaded* by a [`Reloader`] task, which polls the
//! files' size and modification time every [`RELOAD_INTERVAL`] (cert-manager
//! rotation swaps the files of a mounted Secret; nothing restarts). Each
//! reloadable piece (a certificate with its key, a CA) sits in a slot that
//! handshakes read by cloning an `Arc`; the reloader reads changed files with
//! tokio, builds the new piece and swaps it in, so new handshakes use it and
//! established connections keep what they negotiated. A changed file that
//! does not load (does not parse, a certificate and key that do not match
//! because one is written and the other not yet, a file that vanished) keeps
//! the previous piece and logs a warning; it is tried again when a file
//! changes again. Inline PEM cannot change and is not watched.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use parking_lot::RwLock;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

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
/// serving); the [`Reloader`] reads with [`read_async`] instead.
pub fn read_sync(key: &str, src: &Source) -> Result<Vec<u8>, TlsError> {
    match src {
        Source::Inline(b) => Ok(b.clone()),
        Source::File(p) => std::fs::read(p).map_err(|e| err(key, format!("cannot read {}: {e}", p.display()))),
    }
}

/// Reads a source with tokio (the reloader's reads, on a running runtime).
pub async fn read_async(key: &str, src: &Source) -> Result<Vec<u8>, TlsError> {
    match src {
        Source::Inline(b) => Ok(b.clone()),
        Source::File(p) => tokio::fs::read(p).await.map_err(|e| err(key, format!("cannot read {}: {e}", p.display()))),
    }
}

/// How often the [`Reloader`] checks its files for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Size and modification time of a file source (`None`: inline, or
/// unreadable). The metadata follows symlinks, so a Kubernetes Secret
/// volume's `..data` swap shows as a change.
type Stamp = Option<(u64, SystemTime)>;

async fn stamp(src: &Source) -> Stamp {
    let Source::File(p) = src else { return None };
    let m = tokio::fs::metadata(p).await.ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// [`stamp`] at start-up (a one-off metadata read next to [`read_sync`]).
fn stamp_sync(src: &Source) -> Stamp {
    let Source::File(p) = src else { return None };
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// A reloadable piece of TLS state: handshakes clone the `Arc` out (the lock
/// is never held across anything but that), the [`Reloader`] swaps it whole.
pub type Slot<T> = Arc<RwLock<Arc<T>>>;

type Apply = Arc<dyn Fn(&[Vec<u8>]) -> Result<(), TlsError> + Send + Sync>;

/// One piece the reloader watches: its files (key name, source) and what
/// turns their contents into the new piece and swaps it in.
#[derive(Clone)]
struct Watched {
    what: &'static str,
    files: Vec<(String, Source)>,
    /// Stamps as loaded, taken before reading: a change between start-up and
    /// the first poll is still seen.
    loaded: Vec<Stamp>,
    apply: Apply,
}

/// The file-backed pieces of one TLS object (see the module docs) and the
/// task that reloads them. Built by [`Reloader::load`] calls while loading
/// the object; [`Reloader::run`] is spawned by whoever owns the TLS config
/// (a listener, the NATS engine) with that owner's stop signal. Nothing runs
/// until then, so an unrun reloader is a config that never changes.
#[derive(Clone, Default)]
pub struct Reloader {
    prefix: String,
    items: Vec<Watched>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watched: Vec<&str> = self.items.iter().map(|w| w.what).collect();
        f.debug_struct("Reloader").field("prefix", &self.prefix).field("watched", &watched).finish()
    }
}

impl Reloader {
    /// An empty reloader for the TLS object at `prefix` (for log lines).
    pub fn new(prefix: &str) -> Reloader {
        Reloader { prefix: prefix.to_string(), items: Vec::new() }
    }

    /// Whether any file is watched (else [`Reloader::run`] returns at once).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reads `files` now (blocking: start-up only), builds the piece with
    /// `build` and returns its slot; when any of them is a file, the piece is
    /// rebuilt with `build` and swapped into the slot whenever one changes.
    /// `what` names the piece in log lines ("client CA"). Errors are
    /// `build`'s or a file that cannot be read, naming its key.
    pub fn load<T, F>(&mut self, what: &'static str, files: &[(String, Source)], build: F) -> Result<Slot<T>, TlsError>
    where
        T: ?Sized + Send + Sync + 'static,
        F: Fn(&[Vec<u8>]) -> Result<Arc<T>, TlsError> + Send + Sync + 'static,
    {
        let loaded: Vec<Stamp> = files.iter().map(|(_, s)| stamp_sync(s)).collect();
        let contents = files.iter().map(|(k, s)| read_sync(k, s)).collect::<Result<Vec<_>, _>>()?;
        let slot: Slot<T> = Arc::new(RwLock::new(build(&contents)?));
        if files.iter().any(|(_, s)| matches!(s, Source::File(_))) {
            let target = slot.clone();
            let apply: Apply = Arc::new(move |contents| {
                let new = build(contents)?;
                *target.write() = new;
                Ok(())
            });
            self.items.push(Watched { what, files: files.to_vec(), loaded, apply });
        }
        Ok(slot)
    }

    /// Polls the watched files until `stop`, swapping in each piece whose
    /// files changed and load (see the module docs). Returns at once when
    /// nothing is watched.
    pub async fn run(self, stop: CancellationToken) {
        if self.items.is_empty() {
            return;
        }
        let mut seen: Vec<Vec<Stamp>> = self.items.iter().map(|w| w.loaded.clone()).collect();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            for (w, seen) in self.items.iter().zip(seen.iter_mut()) {
                let mut now = Vec::with_capacity(w.files.len());
                for (_, src) in &w.files {
                    now.push(stamp(src).await);
                }
                if now == *seen {
                    continue;
                }
                *seen = now;
                match self.reload(w).await {
                    Ok(()) => tracing::info!(tls = %self.prefix, what = w.what, "reloaded from its files"),
                    Err(e) => {
                        tracing::warn!("{e}; keeping the previous {} until its files change again", w.what)
                    }
                }
            }
        }
    }

    async fn reload(&self, w: &Watched) -> Result<(), TlsError> {
        let mut contents = Vec::with_capacity(w.files.len());
        for (key, src) in &w.files {
            contents.push(read_async(key, src).await?);
        }
        (w.apply)(&contents)
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
///
/// The config never changes; [`client_tls`] gives one that follows its
/// files.
pub fn client_config(prefix: &str, t: &Tls) -> Result<ClientConfig, TlsError> {
    Ok(client_tls(prefix, t)?.config)
}

/// A client config whose server CA and client certificate follow their
/// files, and the reloader that makes them (see [`client_config`] for the
/// keys).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The config; each handshake made with it (every reconnect) uses the
    /// current CA and client certificate.
    pub config: ClientConfig,
    /// To spawn by the config's owner: until it runs, nothing changes.
    pub reloader: Reloader,
}

/// Loads the client side of the TLS object at `prefix` (see
/// [`client_config`]), with the file-backed CA and client certificate
/// reloadable.
pub fn client_tls(prefix: &str, t: &Tls) -> Result<ClientTls, TlsError> {
    let mut reloader = Reloader::new(prefix);
    let ca_key = format!("{prefix}.server_ca_pem");
    let server_roots = if t.server_ca_pem.trim().is_empty() {
        let mut store = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = store.add(c);
        }
        Arc::new(RwLock::new(server_verifier(&ca_key, store)?))
    } else {
        let k = ca_key.clone();
        reloader
            .load("server CA", &[(ca_key, source(&t.server_ca_pem))], move |c| server_verifier(&k, roots(&k, &c[0])?))?
    };
    let verifier = Arc::new(Verifier {
        roots: server_roots,
        server_name: server_name(prefix, t)?,
        insecure: t.insecure_skip_verify,
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(prefix, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let has_cert = !t.cert_pem.trim().is_empty();
    let has_key = !t.key_pem.trim().is_empty();
    let config = match (has_cert, has_key) {
        (false, false) => builder.with_no_client_auth(),
        (true, false) => return Err(err(&format!("{prefix}.key_pem"), "required with cert_pem (client certificate)")),
        (false, true) => return Err(err(&format!("{prefix}.cert_pem"), "required with key_pem (client certificate)")),
        (true, true) => {
            let files = [
                (format!("{prefix}.cert_pem"), source(&t.cert_pem)),
                (format!("{prefix}.key_pem"), source(&t.key_pem)),
            ];
            let p = prefix.to_string();
            let slot =
                reloader.load("client certificate", &files, move |c| Ok(Arc::new(certified(&p, &c[0], &c[1])?)))?;
            builder.with_client_cert_resolver(Arc::new(ClientCert(slot)))
        }
    };
    Ok(ClientTls { config, reloader })
}

/// The WebPKI server check against `store` (`key`: the CA's key, for errors).
fn server_verifier(key: &str, store: RootCertStore) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| err(key, e.to_string()))
}

/// The client certificate of mutual TLS, from its slot: every handshake
/// offers the current one, whatever CA names the server hints at (the
/// server's check decides; a client has only this one certificate).
#[derive(Debug)]
struct ClientCert(Slot<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }

    fn has_certs(&self) -> bool {
        true
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
    /// The roots' check, swapped by the reloader when `server_ca_pem` is a file.
    roots: Slot<rustls::client::WebPkiServerVerifier>,
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
        let inner = self.roots.read().clone();
        inner.verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.roots.read().clone().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.roots.read().clone().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.roots.read().clone().supported_verify_schemes()
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
