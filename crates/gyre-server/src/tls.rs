//! TLS of the HTTP listeners (`http_server.tls`, `http_server.internal_tls`)
//! and of the gRPC API (`grpc_api.tls`), with rustls and the ring provider. The PEM value forms, the
//! client side (`broker.nats.tls`, proxies) and the file reloader are
//! gyre-node's `tls` module, re-used here.
//!
//! Each `*_pem` value of Centrifugo's TLS object is raw PEM, base64-encoded
//! PEM or a file path: a value holding a PEM header is PEM, a value that
//! decodes from base64 to PEM is that PEM, anything else is a path.
//!
//! What is read from files is *reloaded* by a [`Reloader`] task owned by the
//! listener, every [`RELOAD_INTERVAL`] (cert-manager rotation swaps the files
//! of a mounted Secret; nothing restarts): the served certificate and key,
//! and the client CA of mTLS (`client_ca_pem`). New handshakes get the new
//! certificate and are checked against the new CA; established connections
//! keep theirs. Failure modes: a new file that does not parse, or a
//! certificate and key that do not match (one file written, the other not
//! yet), keeps the previous certificate (or CA) and logs a warning; it is
//! tried again when a file changes. Files that vanish keep the previous one
//! too. At start-up a missing or bad certificate or CA is an error naming its
//! key, so the server never serves plain HTTP where TLS was asked for.
//!
//! A client CA from a file is announced to clients with no CA names
//! (`certificate_authorities` left empty): the list would be pinned to the
//! CA at start while the check follows the file, and a client filtering its
//! certificates by stale names would offer none after rotation. An empty list
//! means "any", so clients offer their certificate and the check decides. An
//! inline CA cannot change and keeps its names.

use std::sync::Arc;

use gyre_node::config::Tls;
pub use gyre_node::tls::RELOAD_INTERVAL;
use gyre_node::tls::{Reloader, Slot, Source, certified, provider, roots, source};
pub use gyre_node::tls::{TlsError, client_config};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, ServerConfig};
use tokio_util::sync::CancellationToken;

fn err(key: &str, msg: impl Into<String>) -> TlsError {
    TlsError::new(key, msg)
}

/// The served certificate, from its slot.
#[derive(Debug)]
struct Resolver(Slot<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// The client certificate check of mTLS against a client CA file: the
/// current WebPKI verifier from its slot (see the module docs on CA names).
#[derive(Debug)]
struct ClientCa(Slot<dyn ClientCertVerifier>);

impl ClientCa {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().clone()
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        self.current().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The WebPKI check of client certificates against the CAs of `pem`.
fn client_verifier(key: &str, pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(key, pem)?), provider())
        .build()
        .map_err(|e| err(key, e.to_string()))
}

/// A listener's TLS: the rustls config and the reloader of its files.
#[derive(Clone)]
pub struct ServerTls {
    /// For `tokio_rustls::TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    reloader: Reloader,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("reloader", &self.reloader).finish_non_exhaustive()
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
        let mut reloader = Reloader::new(prefix);
        let files =
            [(format!("{prefix}.cert_pem"), source(&t.cert_pem)), (format!("{prefix}.key_pem"), source(&t.key_pem))];
        let p = prefix.to_string();
        let cert = reloader.load("certificate", &files, move |c| Ok(Arc::new(certified(&p, &c[0], &c[1])?)))?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(prefix, e.to_string()))?;
        let builder = if t.client_ca_pem.trim().is_empty() {
            builder.with_no_client_auth()
        } else {
            let ca_key = format!("{prefix}.client_ca_pem");
            let src = source(&t.client_ca_pem);
            let inline = matches!(src, Source::Inline(_));
            let k = ca_key.clone();
            let slot = reloader.load("client CA", &[(ca_key, src)], move |c| client_verifier(&k, &c[0]))?;
            if inline {
                // Never swapped: use it directly, with its CA names.
                let fixed = slot.read().clone();
                builder.with_client_cert_verifier(fixed)
            } else {
                builder.with_client_cert_verifier(Arc::new(ClientCa(slot)))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(cert)));
        // HTTP/2 when the client offers it (the listener serves both).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { config: Arc::new(config), reloader })
    }

    /// Reloads the files of this TLS object until `stop` (see the module
    /// docs). Returns at once when nothing comes from a file.
    pub async fn watch(self, stop: CancellationToken) {
        self.reloader.run(stop).await;
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
