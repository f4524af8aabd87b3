//! The demo page at `/` (`demo.enabled`; on in the no-config quickstart).
//!
//! It is the first thing a newcomer sees, so it must work with nothing else
//! installed: the centrifuge-js browser build and the SockJS client are
//! compiled into the binary (`assets/`, MIT-licensed, see the LICENSE files
//! there), and `/demo/token` mints a short-lived HS256 connection token for
//! an anonymous demo user so the page can connect under the normal token
//! rules. The token endpoint exists only while the demo is enabled.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::http::{self as h, App, Body};
use crate::stream::ChannelBody;

const PAGE: &str = include_str!("../assets/demo.html");
const CENTRIFUGE_JS: &[u8] = include_bytes!("../assets/centrifuge.js");
const SOCKJS_JS: &[u8] = include_bytes!("../assets/sockjs.min.js");

/// Lifetime of a demo token; centrifuge-js fetches a new one before it expires.
const TOKEN_TTL_SECS: i64 = 600;

fn asset(body: Bytes, ct: &'static str, cache: &'static str) -> Response<Body> {
    let mut r = Response::new(ChannelBody::fixed(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// The page with the endpoints of the transports this server has enabled.
fn page(app: &App) -> String {
    let cfg = &app.node.config;
    // An ordered list: WebSocket first, the fallbacks after it.
    let mut transports = Vec::new();
    if !cfg.websocket.disabled {
        transports.push(json!(["websocket", cfg.websocket.handler_prefix]));
    }
    if cfg.http_stream.enabled {
        transports.push(json!(["http_stream", cfg.http_stream.handler_prefix]));
    }
    if cfg.sse.enabled {
        transports.push(json!(["sse", cfg.sse.handler_prefix]));
    }
    if cfg.sockjs.enabled {
        transports.push(json!(["sockjs", cfg.sockjs.handler_prefix]));
    }
    let config = json!({"transports": transports, "emulation": cfg.emulation.handler_prefix});
    // `</` cannot appear in the JSON of an inline script.
    let config = config.to_string().replace("</", "<\\/");
    PAGE.replace("/*GYRE_CONFIG*/", &config)
}

fn token(app: &App) -> Response<Body> {
    let secret = &app.node.config.client.token.hmac_secret_key;
    if secret.is_empty() {
        // No HMAC key: the page connects without a token (works with
        // anonymous access or `client.insecure`).
        return h::json_response(StatusCode::OK, Bytes::from_static(b"{\"token\":\"\"}"));
    }
    let user = format!("demo-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut claims: HashMap<String, Value> = HashMap::new();
    claims.insert("sub".into(), json!(user));
    claims.insert("exp".into(), json!(gyre_node::node::unix_now() + TOKEN_TTL_SECS));
    let t = gyre_node::auth::sign_hs256(secret, &claims);
    let mut r = h::json_response(StatusCode::OK, Bytes::from(json!({"token": t}).to_string()));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Serves the demo routes; `None` for other paths.
pub fn route(app: &Arc<App>, path: &str, req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let r = match path {
        "/" => asset(Bytes::from(page(app)), "text/html; charset=utf-8", "no-cache"),
        "/demo/centrifuge.js" => {
            asset(Bytes::from_static(CENTRIFUGE_JS), "application/javascript; charset=utf-8", "public, max-age=3600")
        }
        "/demo/sockjs.min.js" => {
            asset(Bytes::from_static(SOCKJS_JS), "application/javascript; charset=utf-8", "public, max-age=3600")
        }
        "/demo/token" => token(app),
        _ => return None,
    };
    Some(r)
}
