//! TLS of the HTTP listeners (`http_server.tls`, `http_server.internal_tls`)
//! and of the gRPC API (`grpc_api.tls`), with rustls and the ring provider. The PEM value forms and the client
//! side (`broker.nats.tls`, proxies) are gyre-node's `tls` module, re-used
//! here.
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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gyre_node::config::Tls;
use gyre_node::tls::{Source, certified, provider, read_sync, roots, source};
pub use gyre_node::tls::{TlsError, client_config};
use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// How often a served certificate's files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

fn err(key: &str, msg: impl Into<String>) -> TlsError {
    TlsError::new(key, msg)
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

#[cfg(test)]
mod tests {
    use super::*;

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
