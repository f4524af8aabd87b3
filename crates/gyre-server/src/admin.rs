//! The admin web UI and the admin API it speaks (`admin.enabled`).
//!
//! Routes, under `admin.handler_prefix` (default "": the UI at `/`):
//!
//! * `GET  <prefix>/` — the UI, one dependency-free page compiled into the binary;
//! * `GET  <prefix>/admin/init` — `{"insecure": bool}` so the page knows whether to ask
//!   for a password;
//! * `POST <prefix>/admin/auth` — form (or JSON) field `password` → `{"token": …}`;
//! * `POST <prefix>/admin/api` — the legacy newline command format (`info`, `channels`,
//!   `publish`, `presence`, `history`, `disconnect`, …), and
//!   `POST <prefix>/admin/api/<method>` — the v6 per-method format, both with
//!   `Authorization: token <token>`. Both run through the server-API dispatcher, so
//!   they answer exactly like `/api`.
//!
//! The token is an HS256 JWT (`sub: "admin"`, `exp`) signed with `admin.secret`; it
//! expires after [`TOKEN_TTL_SECS`]. The password is compared in constant time, and
//! `/admin/auth` is rate limited (a password guesser gets 429, not answers).
//! The UI lives on the internal listener unless `admin.external` (see http.rs).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::api;
use crate::http::{self as h, App, Body};
use crate::stream::ChannelBody;

const PAGE: &str = include_str!("../assets/admin.html");

/// How long an admin token is valid.
pub const TOKEN_TTL_SECS: i64 = 8 * 3600;

/// Password attempts per second (with a burst of as many) on one node.
const AUTH_PER_SECOND: u32 = 5;

/// Largest `/admin/auth` body; `/admin/api` takes what `/api` takes.
const AUTH_BODY_LIMIT: usize = 4096;
const API_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The admin paths relative to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Page,
    Init,
    Auth,
    Api,
    ApiMethod(&'a str),
}

fn route_of<'a>(prefix: &str, path: &'a str) -> Option<Route<'a>> {
    let rest = path.strip_prefix(prefix)?;
    Some(match rest {
        "" | "/" => Route::Page,
        "/admin/init" => Route::Init,
        "/admin/auth" => Route::Auth,
        "/admin/api" => Route::Api,
        r => Route::ApiMethod(r.strip_prefix("/admin/api/").filter(|m| !m.is_empty() && !m.contains('/'))?),
    })
}

fn prefix(app: &App) -> &str {
    app.node.config.admin.handler_prefix.trim_end_matches('/')
}

/// Whether `path` is an admin route (the caller already checked `admin.enabled`
/// and the listener).
pub fn handles(app: &App, path: &str) -> bool {
    route_of(prefix(app), path).is_some()
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

/// Mints an admin token valid for `ttl` seconds from `now` (negative: already expired).
pub fn mint_token(secret: &str, now: i64, ttl: i64) -> String {
    let claims = Claims { sub: "admin".into(), exp: now + ttl, iat: now };
    // An HMAC key and a plain struct cannot fail to encode; "" would be refused anyway.
    jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .and_then(|k| jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &k))
        .unwrap_or_default()
}

/// Whether `token` is an unexpired admin token signed with `secret`.
fn token_valid(secret: &str, token: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 0;
    v.validate_exp = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::DecodingKey::from_secret(secret.as_bytes())
        .and_then(|k| jsonwebtoken::decode::<Claims>(token, &k, &v))
        .is_ok_and(|d| d.claims.sub == "admin")
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let cfg = &app.node.config.admin;
    if cfg.insecure {
        return true;
    }
    let Some(a) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = a.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(t), None) if scheme.eq_ignore_ascii_case("token") => token_valid(&cfg.secret, t),
        _ => false,
    }
}

/// The password of an `/admin/auth` body: a form field, or JSON `{"password": …}`.
fn password_of(req_headers: &http::HeaderMap, body: &[u8]) -> Option<String> {
    let json = req_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if json {
        #[derive(Deserialize)]
        struct P {
            password: String,
        }
        return serde_json::from_slice::<P>(body).ok().map(|p| p.password);
    }
    let s = std::str::from_utf8(body).ok()?;
    h::query_decoded(s, "password")
}

async fn auth(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let cfg = app.node.config.admin.clone();
    if cfg.insecure {
        return h::json_response(StatusCode::OK, Bytes::from_static(b"{\"token\":\"insecure\"}"));
    }
    if app.admin_auth_limit.check().is_err() {
        return h::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
    }
    let headers = req.headers().clone();
    let body =
        match h::read_body(req.into_body(), AUTH_BODY_LIMIT, app.node.config.http_server.read_body_timeout.0).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let Some(given) = password_of(&headers, &body) else {
        return h::text(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    // Config validation guarantees a password when not insecure; an empty one
    // here must still never match.
    if cfg.password.is_empty() || !h::secret_eq(given.as_bytes(), cfg.password.as_bytes()) {
        tracing::info!("admin login refused: wrong password");
        return h::text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    let token = mint_token(&cfg.secret, gyre_node::node::unix_now(), TOKEN_TTL_SECS);
    let mut r = h::json_response(StatusCode::OK, Bytes::from(serde_json::json!({"token": token}).to_string()));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn admin_api(app: Arc<App>, req: Request<Incoming>, method: Option<&str>) -> Response<Body> {
    if !authorized(&app, &req) {
        return h::text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    let body =
        match h::read_body(req.into_body(), API_BODY_LIMIT, app.node.config.http_server.read_body_timeout.0).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let node = &app.node;
    match method {
        None => match api::legacy(node, &body).await {
            Ok(s) => h::json_response(StatusCode::OK, Bytes::from(s)),
            Err(_) => h::text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        },
        Some("batch") => match api::batch(node, &body).await {
            Ok(v) => h::json_response(StatusCode::OK, Bytes::from(v.to_string())),
            Err(_) => h::text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        },
        Some(m) if api::METHODS.contains(&m) => match api::call(node, m, &body).await {
            Ok(r) => h::json_response(StatusCode::OK, Bytes::from(api::envelope(&r).to_string())),
            Err(_) => h::text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        },
        Some(_) => h::text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn page() -> Response<Body> {
    let mut r = Response::new(ChannelBody::fixed(Bytes::from_static(PAGE.as_bytes())));
    let hs = r.headers_mut();
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page talks only to its own origin and is never framed.
    hs.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    hs.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    hs.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// Serves an admin route (call only when [`handles`] said yes).
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some(route) = route_of(prefix(&app), &path) else {
        return h::text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let post = req.method() == Method::POST;
    match route {
        Route::Page if get => page(),
        Route::Init if get => h::json_response(
            StatusCode::OK,
            Bytes::from(serde_json::json!({"insecure": app.node.config.admin.insecure}).to_string()),
        ),
        Route::Auth if post => auth(app, req).await,
        Route::Api if post => admin_api(app, req, None).await,
        Route::ApiMethod(m) if post => {
            let m = m.to_string();
            admin_api(app, req, Some(&m)).await
        }
        _ => h::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"),
    }
}

/// The `/admin/auth` limiter of a node.
pub(crate) fn auth_limiter() -> governor::DefaultDirectRateLimiter {
    let n = std::num::NonZeroU32::new(AUTH_PER_SECOND).expect("non-zero constant");
    governor::RateLimiter::direct(governor::Quota::per_second(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_under_prefixes() {
        let table: &[(&str, &str, Option<Route>)] = &[
            ("", "/", Some(Route::Page)),
            ("", "/admin/init", Some(Route::Init)),
            ("", "/admin/auth", Some(Route::Auth)),
            ("", "/admin/api", Some(Route::Api)),
            ("", "/admin/api/info", Some(Route::ApiMethod("info"))),
            ("", "/admin/api/", None),
            ("", "/admin/api/a/b", None),
            ("", "/api", None),
            ("", "/connection/websocket", None),
            ("/ops", "/ops", Some(Route::Page)),
            ("/ops", "/ops/", Some(Route::Page)),
            ("/ops", "/ops/admin/auth", Some(Route::Auth)),
            ("/ops", "/admin/auth", None),
            ("/ops", "/opsx/admin/auth", None),
        ];
        for (prefix, path, want) in table {
            assert_eq!(route_of(prefix, path), *want, "{prefix:?} {path:?}");
        }
    }

    #[test]
    fn tokens_expire_and_need_the_secret() {
        let now = gyre_node::node::unix_now();
        let t = mint_token("s3cret", now, 60);
        assert!(token_valid("s3cret", &t));
        assert!(!token_valid("other", &t));
        assert!(!token_valid("", &t));
        assert!(!token_valid("s3cret", &mint_token("s3cret", now, -1)));
        assert!(!token_valid("s3cret", "garbage"));
    }
}
