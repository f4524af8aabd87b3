//! JSON Web Key Set fetching for token verification (`jwks_public_endpoint`).
//!
//! Keys are looked up by the token header's `kid`. The set is fetched on first
//! use and again when a token names an unknown `kid` (key rotation at the
//! identity provider), at most once per [`REFETCH_AFTER`], so a flood of tokens
//! with random `kid`s cannot turn Gyre into a request amplifier. A fetch
//! failure leaves the cached keys in place: a brief outage of the provider does
//! not log everyone out.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

/// Minimum time between two fetches.
pub const REFETCH_AFTER: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A cached key set behind a URL.
pub struct Jwks {
    url: hyper::Uri,
    client: HttpsClient,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

impl Jwks {
    /// A key set at `url` (http or https).
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Jwks {
            url: uri,
            client: Client::builder(TokioExecutor::new()).build(https),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The key for `kid`, fetching the set if it is unknown (rate limited).
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, String> {
        if let Some(k) = self.keys.read().get(kid) {
            return Ok(k.clone());
        }
        let _guard = self.fetch_lock.lock().await;
        if let Some(k) = self.keys.read().get(kid) {
            return Ok(k.clone()); // fetched by a concurrent caller
        }
        let due = self.last_fetch.lock().is_none_or(|t| t.elapsed() >= REFETCH_AFTER);
        if due {
            *self.last_fetch.lock() = Some(Instant::now());
            if let Err(e) = self.fetch().await {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
            }
        }
        self.keys.read().get(kid).cloned().ok_or_else(|| format!("no key with kid {kid:?} in the JWKS"))
    }

    async fn fetch(&self) -> Result<(), String> {
        let res = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(self.url.clone()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(res.into_body(), MAX_BODY).collect())
            .await
            .map_err(|_| "body timed out".to_string())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    keys.insert(kid, k);
                }
                Err(e) => tracing::warn!(kid, error = %e, "unusable JWK skipped"),
            }
        }
        *self.keys.write() = keys;
        Ok(())
    }
}
