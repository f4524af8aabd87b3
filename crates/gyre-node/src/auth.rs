//! Connection and subscription JWT verification with Centrifugo's semantics.
//!
//! jsonwebtoken only checks the signature here; every claim rule is ours,
//! because the crate's defaults differ from Centrifugo's in ways clients
//! notice: Centrifugo has no clock leeway, does not require `exp`, checks `aud`
//! and `iss` only when configured (with optional regexes), and answers an
//! expired-but-authentic token with error 109 so the SDK fetches a new one,
//! while any other failure is a terminal 3500. An expired token is reported
//! only after its signature verified, so 109 never leaks to a forger.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::config::Token;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Authentic but past `exp`.
    #[error("token expired")]
    Expired,
    /// Anything else: bad signature, unknown algorithm, bad claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Per-subscription overrides (`override` claim / API `override`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubOverride {
    /// presence
    pub presence: Option<bool>,
    /// join_leave
    pub join_leave: Option<bool>,
    /// force_push_join_leave
    pub force_push_join_leave: Option<bool>,
    /// force_recovery
    pub force_recovery: Option<bool>,
    /// force_positioning
    pub force_positioning: Option<bool>,
}

impl SubOverride {
    /// Parses `{"presence":{"value":true},...}`.
    pub fn from_json(v: Option<&Value>) -> Self {
        let get = |k: &str| v.and_then(|o| o.get(k)).and_then(|x| x.get("value")).and_then(Value::as_bool);
        SubOverride {
            presence: get("presence"),
            join_leave: get("join_leave"),
            force_push_join_leave: get("force_push_join_leave"),
            force_recovery: get("force_recovery"),
            force_positioning: get("force_positioning"),
        }
    }
}

/// Options of one server-side subscription from the `subs` claim.
#[derive(Debug, Clone, Default)]
pub struct SubOptions {
    /// chan_info
    pub info: Bytes,
    /// data for the subscribe result
    pub data: Bytes,
    /// overrides
    pub overrides: SubOverride,
}

/// Verified connection token.
#[derive(Debug, Clone, Default)]
pub struct ConnectClaims {
    /// User id ("" = anonymous).
    pub user: String,
    /// Connection expiry, unix seconds (`expire_at` overrides `exp`; None = never).
    pub expire_at: Option<i64>,
    /// conn_info
    pub info: Bytes,
    /// Server-side subscriptions, in token order (`subs` wins over `channels`).
    pub subs: Vec<(String, SubOptions)>,
    /// Server-only metadata.
    pub meta: Option<Value>,
}

/// Verified subscription token.
#[derive(Debug, Clone, Default)]
pub struct SubscribeClaims {
    /// Must match the connection's user.
    pub user: String,
    /// Must match the subscribe request.
    pub channel: String,
    /// If set, must match the client id.
    pub client: String,
    /// Subscription expiry (None = never).
    pub expire_at: Option<i64>,
    /// chan_info
    pub info: Bytes,
    /// Data for the subscribe result.
    pub data: Bytes,
    /// Overrides.
    pub overrides: SubOverride,
}

/// Verifies tokens with one set of keys.
#[derive(Debug)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    hmac_previous: Option<(DecodingKey, i64)>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    audience: String,
    audience_re: Option<regex::Regex>,
    issuer: String,
    issuer_re: Option<regex::Regex>,
    user_id_claim: String,
    skip_signature: bool,
    jwks: Option<std::sync::Arc<crate::jwks::Jwks>>,
}

/// A key the config could not load; names the key for the error message.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    /// Config key.
    pub key: String,
    /// Problem.
    pub message: String,
}

impl TokenVerifier {
    /// Builds a verifier; `prefix` names the config section for errors
    /// (`client.token` or `client.subscription_token`).
    pub fn new(cfg: &Token, prefix: &str, skip_signature: bool) -> Result<Self, KeyError> {
        let err = |k: &str, m: String| KeyError { key: format!("{prefix}.{k}"), message: m };
        let rsa = if cfg.rsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(pem_bytes(&cfg.rsa_public_key).as_bytes())
                    .map_err(|e| err("rsa_public_key", e.to_string()))?,
            )
        };
        let ecdsa = if cfg.ecdsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_ec_pem(pem_bytes(&cfg.ecdsa_public_key).as_bytes())
                    .map_err(|e| err("ecdsa_public_key", e.to_string()))?,
            )
        };
        let re = |k: &str, s: &str| -> Result<Option<regex::Regex>, KeyError> {
            if s.is_empty() { Ok(None) } else { regex::Regex::new(s).map(Some).map_err(|e| err(k, e.to_string())) }
        };
        Ok(TokenVerifier {
            hmac: if cfg.hmac_secret_key.is_empty() {
                None
            } else {
                Some(
                    DecodingKey::from_secret(cfg.hmac_secret_key.as_bytes())
                        .map_err(|e| err("hmac_secret_key", e.to_string()))?,
                )
            },
            hmac_previous: if cfg.hmac_previous_secret_key.is_empty() {
                None
            } else {
                let k = DecodingKey::from_secret(cfg.hmac_previous_secret_key.as_bytes())
                    .map_err(|e| err("hmac_previous_secret_key", e.to_string()))?;
                Some((k, cfg.hmac_previous_secret_key_valid_until))
            },
            rsa,
            ecdsa,
            audience: cfg.audience.clone(),
            audience_re: re("audience_regex", &cfg.audience_regex)?,
            issuer: cfg.issuer.clone(),
            issuer_re: re("issuer_regex", &cfg.issuer_regex)?,
            user_id_claim: if cfg.user_id_claim.is_empty() { "sub".into() } else { cfg.user_id_claim.clone() },
            skip_signature,
            jwks: if cfg.jwks_public_endpoint.is_empty() {
                None
            } else {
                Some(std::sync::Arc::new(
                    crate::jwks::Jwks::new(&cfg.jwks_public_endpoint).map_err(|e| err("jwks_public_endpoint", e))?,
                ))
            },
        })
    }

    /// Whether any key is configured (tokens can be verified at all).
    pub fn has_keys(&self) -> bool {
        self.hmac.is_some() || self.rsa.is_some() || self.ecdsa.is_some() || self.skip_signature || self.jwks.is_some()
    }

    /// With a JWKS endpoint: the key the token's `kid` names (fetched if needed).
    async fn jwks_key(&self, token: &str) -> Result<Option<DecodingKey>, TokenError> {
        let Some(jwks) = &self.jwks else { return Ok(None) };
        if self.skip_signature {
            return Ok(None);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let kid = header.kid.ok_or_else(|| TokenError::Invalid("token has no kid for the JWKS".into()))?;
        jwks.key(&kid).await.map(Some).map_err(TokenError::Invalid)
    }

    /// Verifies a connection token, fetching JWKS keys when configured.
    pub async fn verify_connect_async(&self, token: &str, now: i64) -> Result<ConnectClaims, TokenError> {
        let key = self.jwks_key(token).await?;
        self.verify_connect_with(token, now, key.as_ref())
    }

    /// Verifies a subscription token, fetching JWKS keys when configured.
    pub async fn verify_subscribe_async(&self, token: &str, now: i64) -> Result<SubscribeClaims, TokenError> {
        let key = self.jwks_key(token).await?;
        self.verify_subscribe_with(token, now, key.as_ref())
    }

    /// Checks the signature (unless skipped) and returns the claims. Both
    /// paths decode the claims with the same function after the signature
    /// decision, so a valid signature never changes how claims are read:
    /// jsonwebtoken's `decode` would also run its own spec-claim parser,
    /// which refuses some shapes (an object `sub`) with errors of its own.
    fn verify_signature(
        &self,
        token: &str,
        now: i64,
        jwk: Option<&DecodingKey>,
    ) -> Result<Map<String, Value>, TokenError> {
        let inv = |m: &str| TokenError::Invalid(m.to_string());
        let claims = || {
            jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                .map_err(|e| TokenError::Invalid(e.to_string()))
        };
        if self.skip_signature {
            return claims();
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let (message, signature) = token.rsplit_once('.').ok_or_else(|| inv("malformed token"))?;
        // The key's family must match the algorithm (checked by the crypto
        // provider: a mismatch is an error, not a failed comparison).
        let try_key =
            |key: &DecodingKey| match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, header.alg) {
                Ok(true) => Ok(()),
                Ok(false) => Err(inv("invalid signature")),
                Err(e) => Err(TokenError::Invalid(e.to_string())),
            };
        if self.jwks.is_some() {
            // With a JWKS, static keys are not used (Centrifugo semantics).
            let key = jwk.ok_or_else(|| inv("no JWKS key for this token"))?;
            match header.alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    return Err(inv("HMAC tokens are not accepted with a JWKS"));
                }
                _ => try_key(key)?,
            }
            return claims();
        }
        match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = self.hmac.as_ref().ok_or_else(|| inv("HMAC key not configured"))?;
                if let Err(e) = try_key(secret) {
                    match &self.hmac_previous {
                        Some((prev, until)) if *until == 0 || now < *until => try_key(prev)?,
                        _ => return Err(e),
                    }
                }
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                try_key(self.rsa.as_ref().ok_or_else(|| inv("RSA key not configured"))?)?;
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                try_key(self.ecdsa.as_ref().ok_or_else(|| inv("ECDSA key not configured"))?)?;
            }
            other => return Err(TokenError::Invalid(format!("unsupported algorithm {other:?}"))),
        }
        claims()
    }

    fn check_claims(&self, c: &Map<String, Value>, now: i64) -> Result<(), TokenError> {
        let inv = |m: &str| TokenError::Invalid(m.to_string());
        timestamp_claim(c, "iat")?;
        timestamp_claim(c, "expire_at")?;
        if let Some(nbf) = timestamp_claim(c, "nbf")?
            && now < nbf
        {
            return Err(inv("token not valid yet (nbf)"));
        }
        if !self.audience.is_empty() || self.audience_re.is_some() {
            let auds: Vec<&str> = match c.get("aud") {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = auds.iter().any(|a| {
                (!self.audience.is_empty() && *a == self.audience)
                    || self.audience_re.as_ref().is_some_and(|re| re.is_match(a))
            });
            if !ok {
                return Err(inv("audience mismatch"));
            }
        }
        if !self.issuer.is_empty() || self.issuer_re.is_some() {
            let iss = c.get("iss").and_then(Value::as_str).unwrap_or("");
            let ok = (!self.issuer.is_empty() && iss == self.issuer)
                || self.issuer_re.as_ref().is_some_and(|re| re.is_match(iss));
            if !ok {
                return Err(inv("issuer mismatch"));
            }
        }
        if let Some(exp) = timestamp_claim(c, "exp")?
            && exp <= now
        {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn verify(&self, token: &str, now: i64, jwk: Option<&DecodingKey>) -> Result<Map<String, Value>, TokenError> {
        let claims = self.verify_signature(token, now, jwk)?;
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    /// The user id of a connection or subscription token, one rule for both:
    /// absent or null is anonymous (""), a string is itself, a number (such
    /// as `42`) is its JSON text ("42"). A subscription
    /// token must name the connection's user under the same rule, so a token
    /// for user 42 never passes as an anonymous one. Objects, arrays and
    /// booleans are refused: no backend means a JSON document as a user id.
    fn user_claim(&self, c: &Map<String, Value>) -> Result<String, TokenError> {
        match c.get(&self.user_id_claim) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(n @ Value::Number(_)) => Ok(n.to_string()),
            Some(_) => Err(TokenError::Invalid(format!("{} must be a string or a number", self.user_id_claim))),
        }
    }

    /// Verifies a connection token with static keys (no JWKS fetch).
    pub fn verify_connect(&self, token: &str, now: i64) -> Result<ConnectClaims, TokenError> {
        self.verify_connect_with(token, now, None)
    }

    fn verify_connect_with(
        &self,
        token: &str,
        now: i64,
        jwk: Option<&DecodingKey>,
    ) -> Result<ConnectClaims, TokenError> {
        let c = self.verify(token, now, jwk)?;
        if c.contains_key("channel") {
            return Err(TokenError::Invalid("connection token must not have a channel claim".into()));
        }
        let user = self.user_claim(&c)?;
        let mut subs: Vec<(String, SubOptions)> = Vec::new();
        if let Some(Value::Object(m)) = c.get("subs") {
            for (ch, o) in m {
                subs.push((ch.clone(), sub_options(o)?));
            }
        }
        if let Some(chs) = c.get("channels") {
            let chs = chs.as_array().ok_or_else(|| TokenError::Invalid("channels must be an array".into()))?;
            for ch in chs {
                let ch = ch.as_str().ok_or_else(|| TokenError::Invalid("channels must be strings".into()))?;
                if !subs.iter().any(|(c, _)| c == ch) {
                    subs.push((ch.to_string(), SubOptions::default()));
                }
            }
        }
        Ok(ConnectClaims { user, expire_at: expiry(&c)?, info: info_claim(&c)?, subs, meta: c.get("meta").cloned() })
    }

    /// Verifies a subscription token with static keys (no JWKS fetch).
    pub fn verify_subscribe(&self, token: &str, now: i64) -> Result<SubscribeClaims, TokenError> {
        self.verify_subscribe_with(token, now, None)
    }

    fn verify_subscribe_with(
        &self,
        token: &str,
        now: i64,
        jwk: Option<&DecodingKey>,
    ) -> Result<SubscribeClaims, TokenError> {
        let c = self.verify(token, now, jwk)?;
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let channel = s("channel");
        if channel.is_empty() {
            return Err(TokenError::Invalid("subscription token without channel".into()));
        }
        Ok(SubscribeClaims {
            user: self.user_claim(&c)?,
            channel,
            client: s("client"),
            expire_at: expiry(&c)?,
            info: info_claim(&c)?,
            data: data_claim(&c, "data", "b64data")?,
            overrides: SubOverride::from_json(c.get("override")),
        })
    }
}

/// PEM given as raw text or base64 of the PEM text (files are resolved by the loader).
fn pem_bytes(s: &str) -> String {
    if s.contains("-----BEGIN") {
        return s.to_string();
    }
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| s.to_string())
}

/// Largest token timestamp accepted, in absolute value (year ~33,700).
/// Anything beyond is a forged or broken token, not a date: refused as
/// invalid rather than saturated, because a saturated `expire_at` made a
/// refreshed connection immortal and overflowed (a panic in debug builds)
/// when a deadline was computed from it.
pub const MAX_TIMESTAMP: f64 = 1e12;

/// A timestamp claim (`exp`, `iat`, `nbf`, `expire_at`) as whole seconds:
/// a finite number with |t| ≤ [`MAX_TIMESTAMP`], else invalid.
pub fn timestamp_claim(c: &Map<String, Value>, key: &str) -> Result<Option<i64>, TokenError> {
    let Some(v) = c.get(key) else { return Ok(None) };
    let t = v.as_f64().ok_or_else(|| TokenError::Invalid(format!("{key} must be a number")))?;
    if !t.is_finite() || t.abs() > MAX_TIMESTAMP {
        return Err(TokenError::Invalid(format!("{key} out of range")));
    }
    Ok(Some(t as i64))
}

fn expiry(c: &Map<String, Value>) -> Result<Option<i64>, TokenError> {
    if let Some(at) = timestamp_claim(c, "expire_at")? {
        return Ok(if at == 0 { None } else { Some(at) });
    }
    timestamp_claim(c, "exp")
}

fn info_claim(c: &Map<String, Value>) -> Result<Bytes, TokenError> {
    data_claim(c, "info", "b64info")
}

fn data_claim(c: &Map<String, Value>, key: &str, b64key: &str) -> Result<Bytes, TokenError> {
    if let Some(b) = c.get(b64key).and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|_| TokenError::Invalid(format!("{b64key} is not valid base64")));
    }
    Ok(match c.get(key) {
        None | Some(Value::Null) => Bytes::new(),
        Some(v) => Bytes::from(v.to_string()),
    })
}

fn sub_options(o: &Value) -> Result<SubOptions, TokenError> {
    let m = match o {
        Value::Object(m) => m,
        _ => return Ok(SubOptions::default()),
    };
    Ok(SubOptions {
        info: data_claim(m, "info", "b64info")?,
        data: data_claim(m, "data", "b64data")?,
        overrides: SubOverride::from_json(m.get("override")),
    })
}

/// Mints an HS256 token (CLI `gentoken`/`gensubtoken`, tests).
pub fn sign_hs256(secret: &str, claims: &HashMap<String, Value>) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("any byte string is an HMAC key"),
    )
    .expect("HS256 signing of a JSON map cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> HashMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn verifier(f: impl FnOnce(&mut Token)) -> TokenVerifier {
        let mut t = Token { hmac_secret_key: "secret".into(), ..Default::default() };
        f(&mut t);
        TokenVerifier::new(&t, "client.token", false).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn hmac_connect_token_with_claims() {
        let v = verifier(|_| {});
        let t = sign_hs256(
            "secret",
            &claims(json!({"sub":"42","exp":NOW+60,"info":{"n":1},"channels":["a","b"],"subs":{"a":{"info":{"x":1}}}})),
        );
        let c = v.verify_connect(&t, NOW).unwrap();
        assert_eq!(c.user, "42");
        assert_eq!(c.expire_at, Some(NOW + 60));
        assert_eq!(&c.info[..], br#"{"n":1}"#);
        assert_eq!(c.subs.len(), 2);
        assert_eq!(&c.subs[0].1.info[..], br#"{"x":1}"#);
    }

    #[test]
    fn expiry_is_strict_and_reported_only_for_authentic_tokens() {
        let v = verifier(|_| {});
        let t = sign_hs256("secret", &claims(json!({"sub":"1","exp":NOW})));
        assert_eq!(v.verify_connect(&t, NOW).unwrap_err(), TokenError::Expired);
        let forged = sign_hs256("other", &claims(json!({"sub":"1","exp":NOW - 10})));
        assert!(matches!(v.verify_connect(&forged, NOW), Err(TokenError::Invalid(_))));
        // No exp: valid forever.
        let t = sign_hs256("secret", &claims(json!({"sub":"1"})));
        assert_eq!(v.verify_connect(&t, NOW).unwrap().expire_at, None);
        // expire_at 0 = never, even with exp.
        let t = sign_hs256("secret", &claims(json!({"sub":"1","exp":NOW+5,"expire_at":0})));
        assert_eq!(v.verify_connect(&t, NOW).unwrap().expire_at, None);
    }

    #[test]
    fn audience_issuer_nbf() {
        let v = verifier(|t| {
            t.audience = "gyre".into();
            t.issuer = "backend".into();
        });
        let ok = sign_hs256("secret", &claims(json!({"sub":"1","aud":["x","gyre"],"iss":"backend"})));
        assert!(v.verify_connect(&ok, NOW).is_ok());
        let bad_aud = sign_hs256("secret", &claims(json!({"sub":"1","aud":"x","iss":"backend"})));
        assert!(matches!(v.verify_connect(&bad_aud, NOW), Err(TokenError::Invalid(_))));
        let bad_iss = sign_hs256("secret", &claims(json!({"sub":"1","aud":"gyre","iss":"evil"})));
        assert!(matches!(v.verify_connect(&bad_iss, NOW), Err(TokenError::Invalid(_))));
        let v = verifier(|_| {});
        let nbf = sign_hs256("secret", &claims(json!({"sub":"1","nbf":NOW+10})));
        assert!(matches!(v.verify_connect(&nbf, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn refuses_wrong_family_garbage_and_channel_claim() {
        let v = verifier(|_| {});
        assert!(matches!(v.verify_connect("a.b.c", NOW), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify_connect("", NOW), Err(TokenError::Invalid(_))));
        let t = sign_hs256("secret", &claims(json!({"sub":"1","channel":"x"})));
        assert!(matches!(v.verify_connect(&t, NOW), Err(TokenError::Invalid(_))));
        // alg none
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIn0.";
        assert!(matches!(v.verify_connect(none, NOW), Err(TokenError::Invalid(_))));
        // RS256 header without an RSA key configured
        let rs = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2ln";
        assert!(matches!(v.verify_connect(rs, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn previous_hmac_key_until_deadline() {
        let v = verifier(|t| {
            t.hmac_previous_secret_key = "old".into();
            t.hmac_previous_secret_key_valid_until = NOW + 100;
        });
        let t = sign_hs256("old", &claims(json!({"sub":"1"})));
        assert!(v.verify_connect(&t, NOW).is_ok());
        assert!(v.verify_connect(&t, NOW + 100).is_err());
    }

    #[test]
    fn numeric_sub_is_the_same_user_in_both_token_kinds() {
        let v = verifier(|_| {});
        let conn = sign_hs256("secret", &claims(json!({"sub":42})));
        assert_eq!(v.verify_connect(&conn, NOW).unwrap().user, "42");
        let sub = sign_hs256("secret", &claims(json!({"sub":42,"channel":"$p"})));
        assert_eq!(v.verify_subscribe(&sub, NOW).unwrap().user, "42");
        let anon = sign_hs256("secret", &claims(json!({"sub":null,"channel":"$p"})));
        assert_eq!(v.verify_subscribe(&anon, NOW).unwrap().user, "");
    }

    #[test]
    fn sub_shapes_are_read_alike_with_and_without_signature_check() {
        // (claims, user or None when refused). Found by the jwt_claims fuzz
        // target: with an object `sub` the signed path failed inside
        // jsonwebtoken's own claim parser while the signature-skipping path
        // accepted the object's JSON text as the user.
        let rows = [
            (json!({"sub":"u"}), Some("u")),
            (json!({"sub":7}), Some("7")),
            (json!({"sub":null}), Some("")),
            (json!({}), Some("")),
            (json!({"sub":{"n":1},"channels":{}}), None),
            (json!({"sub":{"n":1}}), None),
            (json!({"sub":[1]}), None),
            (json!({"sub":true}), None),
        ];
        let signed = verifier(|_| {});
        let skip = TokenVerifier::new(&Token::default(), "client.token", true).unwrap();
        for (c, want) in rows {
            let t = sign_hs256("secret", &claims(c.clone()));
            let (a, b) = (signed.verify_connect(&t, NOW), skip.verify_connect(&t, NOW));
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{c}");
            assert_eq!(a.ok().map(|c| c.user), want.map(str::to_string), "{c}");
            let mut sc = c.clone();
            sc["channel"] = json!("$p");
            let t = sign_hs256("secret", &claims(sc));
            let (a, b) = (signed.verify_subscribe(&t, NOW), skip.verify_subscribe(&t, NOW));
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{c}");
            assert_eq!(a.ok().map(|c| c.user), want.map(str::to_string), "{c}");
        }
    }

    #[test]
    fn timestamps_out_of_range_are_invalid_not_saturated() {
        let v = verifier(|_| {});
        // (claims, connect ok?) for values at and beyond the range.
        let rows = [
            (json!({"sub":"1","expire_at":-1e30}), false),
            (json!({"sub":"1","expire_at":1e30}), false),
            (json!({"sub":"1","exp":1e30}), false),
            (json!({"sub":"1","exp":-1e30}), false),
            (json!({"sub":"1","iat":1e300}), false),
            (json!({"sub":"1","nbf":-1e13}), false),
            (json!({"sub":"1","expire_at":1e12}), true),
            (json!({"sub":"1","exp":NOW + 10,"iat":NOW}), true),
        ];
        for (i, (c, ok)) in rows.into_iter().enumerate() {
            let t = sign_hs256("secret", &claims(c.clone()));
            let r = v.verify_connect(&t, NOW);
            assert_eq!(r.is_ok(), ok, "row {i}: {c} -> {r:?}");
            if !ok {
                assert!(matches!(r, Err(TokenError::Invalid(_))), "row {i}: {r:?}");
            }
            let mut sc = c.clone();
            sc["channel"] = json!("x");
            let r = v.verify_subscribe(&sign_hs256("secret", &claims(sc)), NOW);
            assert_eq!(r.is_ok(), ok, "subscription row {i}: {r:?}");
        }
    }

    #[test]
    fn subscription_token() {
        let v = verifier(|_| {});
        let t = sign_hs256(
            "secret",
            &claims(json!({"sub":"1","channel":"$x","exp":NOW+30,"override":{"presence":{"value":true}}})),
        );
        let c = v.verify_subscribe(&t, NOW).unwrap();
        assert_eq!(c.channel, "$x");
        assert_eq!(c.overrides.presence, Some(true));
        let no_channel = sign_hs256("secret", &claims(json!({"sub":"1"})));
        assert!(v.verify_subscribe(&no_channel, NOW).is_err());
    }
}
