//! Asymmetric tokens: static RSA/ECDSA public keys and a JWKS endpoint served
//! by a real HTTP server on 127.0.0.1 (throwaway keys in tests/fixtures).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gyre_node::auth::{TokenError, TokenVerifier};
use gyre_node::config::Token;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EC_PRIVATE: &str = include_str!("fixtures/ec256-private.pem");
const EC_PUBLIC: &str = include_str!("fixtures/ec256-public.pem");
const RSA_PRIVATE: &str = include_str!("fixtures/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/rsa-public.pem");
const EC_X: &str = "6dSU11-yjMqXr2qA06vATLuulCXETzt9EUiJtY4EiAA";
const EC_Y: &str = "ynfrV3d9DYZFpsN6WDLycLg2-hYXXtBHoSloUt_cKTo";
const NOW: i64 = 1_800_000_000;

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    let claims: HashMap<String, Value> = serde_json::from_value(claims).unwrap();
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

#[test]
fn static_rsa_and_ecdsa_keys() {
    let v = TokenVerifier::new(
        &Token { rsa_public_key: RSA_PUBLIC.into(), ecdsa_public_key: EC_PUBLIC.into(), ..Default::default() },
        "client.token",
        false,
    )
    .unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let t = sign(alg, &rsa, None, json!({"sub":"r","exp": NOW + 10}));
        assert_eq!(v.verify_connect(&t, NOW).unwrap().user, "r", "{alg:?}");
    }
    let t = sign(Algorithm::ES256, &ec, None, json!({"sub":"e"}));
    assert_eq!(v.verify_connect(&t, NOW).unwrap().user, "e");
    // HS256 without an HMAC key configured is refused.
    let hs = sign(Algorithm::HS256, &EncodingKey::from_secret(b"x").unwrap(), None, json!({"sub":"h"}));
    assert!(matches!(v.verify_connect(&hs, NOW), Err(TokenError::Invalid(_))));
}

/// Serves `body` for every GET, counting requests; returns the URL.
async fn serve_jwks(body: String, hits: Arc<AtomicUsize>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let body = body.clone();
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn jwks_endpoint_keys_by_kid_with_rate_limited_refetch() {
    let hits = Arc::new(AtomicUsize::new(0));
    let jwks = json!({"keys": [{"kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y,"kid":"k1","alg":"ES256","use":"sig"}]});
    let url = serve_jwks(jwks.to_string(), hits.clone()).await;
    let v =
        TokenVerifier::new(&Token { jwks_public_endpoint: url, ..Default::default() }, "client.token", false).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let now = gyre_node::node::unix_now();
    let t = sign(Algorithm::ES256, &ec, Some("k1"), json!({"sub":"j","exp": now + 60}));
    assert_eq!(v.verify_connect_async(&t, now).await.unwrap().user, "j");
    assert_eq!(v.verify_connect_async(&t, now).await.unwrap().user, "j");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "keys are cached");
    // Unknown kids: one refetch at most per interval, then refused.
    for i in 0..5 {
        let t = sign(Algorithm::ES256, &ec, Some(&format!("nope{i}")), json!({"sub":"j"}));
        assert!(matches!(v.verify_connect_async(&t, now).await, Err(TokenError::Invalid(_))));
    }
    assert!(hits.load(Ordering::SeqCst) <= 2, "refetch is rate limited: {}", hits.load(Ordering::SeqCst));
    // A token without kid, and an HMAC token, are refused with a JWKS.
    let t = sign(Algorithm::ES256, &ec, None, json!({"sub":"j"}));
    assert!(v.verify_connect_async(&t, now).await.is_err());
    let hs = sign(Algorithm::HS256, &EncodingKey::from_secret(b"x").unwrap(), Some("k1"), json!({"sub":"h"}));
    assert!(v.verify_connect_async(&hs, now).await.is_err());
    // Expired but authentic → Expired (error 109 upstream).
    let t = sign(Algorithm::ES256, &ec, Some("k1"), json!({"sub":"j","exp": now - 1}));
    assert_eq!(v.verify_connect_async(&t, now).await.unwrap_err(), TokenError::Expired);
}
