//! Listeners, routing and graceful shutdown.
//!
//! Every connection task is spawned on one [`TaskTracker`] and watches one
//! [`CancellationToken`]. Shutdown is drain-with-deadline: stop accepting,
//! tell every client 3001 "shutdown" (reconnect advised), let HTTP requests in
//! flight finish, then wait for the tracker until `shutdown.timeout`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gyre_node::{Encoding, Node};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;

type Body = Full<Bytes>;

/// Max HTTP API body.
const API_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Shared state of the HTTP layer.
pub struct App {
    /// The node.
    pub node: Arc<Node>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    conns: AtomicUsize,
    /// Listener serves the internal endpoints (API, health, metrics).
    split_internal: bool,
}

/// A running server.
pub struct Running {
    /// External listener address.
    pub addr: SocketAddr,
    /// Internal listener address (same as `addr` unless split).
    pub internal_addr: SocketAddr,
    /// The node.
    pub node: Arc<Node>,
    app: Arc<App>,
}

fn bind_addr(address: &str, port: u16) -> String {
    if address.is_empty() {
        format!("0.0.0.0:{port}")
    } else if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Binds the listeners and starts serving.
pub async fn start(node: Arc<Node>) -> anyhow::Result<Running> {
    let cfg = node.config.clone();
    let ext = TcpListener::bind(bind_addr(&cfg.http_server.address, cfg.http_server.port))
        .await
        .map_err(|e| anyhow::anyhow!("http_server.port {}: {e}", cfg.http_server.port))?;
    let addr = ext.local_addr()?;
    let split = cfg.http_server.internal_port != 0 && cfg.http_server.internal_port != cfg.http_server.port;
    let app = Arc::new(App {
        node: node.clone(),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        conns: AtomicUsize::new(0),
        split_internal: split,
    });
    let mut internal_addr = addr;
    if split {
        let iaddr = if cfg.http_server.internal_address.is_empty() {
            &cfg.http_server.address
        } else {
            &cfg.http_server.internal_address
        };
        let int = TcpListener::bind(bind_addr(iaddr, cfg.http_server.internal_port))
            .await
            .map_err(|e| anyhow::anyhow!("http_server.internal_port {}: {e}", cfg.http_server.internal_port))?;
        internal_addr = int.local_addr()?;
        app.tracker.spawn(accept_loop(app.clone(), int, Listener::Internal));
    }
    app.tracker.spawn(accept_loop(app.clone(), ext, if split { Listener::External } else { Listener::Both }));
    Ok(Running { addr, internal_addr, node, app })
}

impl Running {
    /// Drain with a deadline: stop accepting, disconnect clients with 3001,
    /// wait for every task until `timeout`. Returns false if the deadline hit.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.node.shutdown();
        self.app.cancel.cancel();
        self.app.tracker.close();
        tokio::time::timeout(timeout, self.app.tracker.wait()).await.is_ok()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    External,
    Internal,
    Both,
}

async fn accept_loop(app: Arc<App>, listener: TcpListener, kind: Listener) {
    loop {
        let (stream, _) = tokio::select! {
            _ = app.cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends clear up over time; don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app2 = app.clone();
        let cancel = app.cancel.clone();
        app.tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app2.clone();
                async move { Ok::<_, Infallible>(route(app, kind, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                }
            }
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(status: StatusCode, v: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(v));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

async fn route(app: Arc<App>, kind: Listener, req: Request<Incoming>) -> Response<Body> {
    let cfg = app.node.config.clone();
    let path = req.uri().path().to_string();
    let external = kind != Listener::Internal;
    let internal = kind != Listener::External;
    let api_here =
        !cfg.http_api.disabled && (if cfg.http_api.external || !app.split_internal { external } else { internal });
    let prefix = cfg.http_api.handler_prefix.trim_end_matches('/').to_string();
    if external && !cfg.websocket.disabled && path == cfg.websocket.handler_prefix {
        return websocket(app, req).await;
    }
    if api_here && (path == prefix || path.starts_with(&format!("{prefix}/"))) {
        return http_api(app, req, &prefix).await;
    }
    if internal && cfg.health.enabled && path == cfg.health.handler_prefix {
        // Not ready while an engine is (e.g. NATS connecting or lost): 503 with the reason.
        return match app.node.health() {
            gyre_node::engine::EngineHealth::Ready => json_response(StatusCode::OK, Bytes::from_static(b"{}")),
            gyre_node::engine::EngineHealth::NotReady(m) | gyre_node::engine::EngineHealth::Fatal(m) => {
                json_response(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(serde_json::json!({"error": m}).to_string()))
            }
        };
    }
    if external && cfg.init.enabled && path == cfg.init.handler_prefix && req.method() == Method::GET {
        return json_response(StatusCode::OK, Bytes::from_static(b"{}"));
    }
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Origin check: no Origin header passes; otherwise it must match a pattern.
pub fn origin_allowed(patterns: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let origin = origin.to_ascii_lowercase();
    patterns.iter().any(|p| p == "*" || glob_match::glob_match(&p.to_ascii_lowercase(), &origin))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

async fn websocket(app: Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    let node = app.node.clone();
    if node.is_shutting_down() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if !origin_allowed(&node.config.client.allowed_origins, req.headers()) {
        return text(StatusCode::FORBIDDEN, "Forbidden\n");
    }
    let limit = node.config.client.connection_limit;
    if limit > 0 && app.conns.load(Ordering::Relaxed) >= limit {
        return text(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached\n");
    }
    let h = req.headers();
    let is_upgrade =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    if !is_upgrade || req.method() != Method::GET {
        return text(StatusCode::BAD_REQUEST, "Bad Request\n");
    }
    let query = req.uri().query().unwrap_or("").to_string();
    if query_param(&query, "cf_protocol_version") == Some("v1") {
        return text(StatusCode::BAD_REQUEST, "protocol v1 is not supported\n");
    }
    let protocols: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let mut encoding = Encoding::Json;
    let mut chosen = None;
    if protocols.iter().any(|p| p == "centrifuge-protobuf") {
        encoding = Encoding::Protobuf;
        chosen = Some("centrifuge-protobuf");
    } else if protocols.iter().any(|p| p == "centrifuge-json") {
        chosen = Some("centrifuge-json");
    }
    if matches!(query_param(&query, "format"), Some("protobuf"))
        || matches!(query_param(&query, "cf_protocol"), Some("protobuf"))
    {
        encoding = Encoding::Protobuf;
    }
    let http_user = if node.config.client.user_id_http_header.is_empty() {
        None
    } else {
        h.get(node.config.client.user_id_http_header.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string)
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let app2 = app.clone();
    app.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                app2.conns.fetch_add(1, Ordering::Relaxed);
                crate::ws::serve(app2.node.clone(), upgraded, encoding, http_user).await;
                app2.conns.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut resp = empty(StatusCode::SWITCHING_PROTOCOLS);
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
    if let Some(p) = chosen {
        rh.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

fn api_key_ok(cfg: &gyre_node::config::Config, req: &Request<Incoming>) -> bool {
    if cfg.http_api.insecure {
        return true;
    }
    let want = cfg.http_api.key.as_bytes();
    if want.is_empty() {
        return false;
    }
    let h = req.headers();
    let given: Option<String> = if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(k.to_string())
    } else if let Some(a) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = a.split_whitespace().collect();
        (parts.len() == 2 && parts[0].eq_ignore_ascii_case("apikey")).then(|| parts[1].to_string())
    } else {
        req.uri().query().and_then(|q| query_param(q, "api_key")).map(str::to_string)
    };
    let Some(given) = given else { return false };
    // Compare digests so neither content nor length leaks through timing.
    use sha2::Digest;
    let a = sha2::Sha256::digest(given.as_bytes());
    let b = sha2::Sha256::digest(want);
    a.ct_eq(&b).into()
}

async fn http_api(app: Arc<App>, req: Request<Incoming>, prefix: &str) -> Response<Body> {
    let node = app.node.clone();
    let cfg = node.config.clone();
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    if !api_key_ok(&cfg, &req) {
        return empty(StatusCode::UNAUTHORIZED);
    }
    let method = req.uri().path()[prefix.len()..].trim_start_matches('/').to_string();
    let transport_mode = cfg.http_api.error_mode == "transport"
        || req.headers().get("x-centrifugo-error-mode").and_then(|v| v.to_str().ok()) == Some("transport");
    let body = match Limited::new(req.into_body(), API_BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"),
    };
    if method.is_empty() {
        if node.is_shutting_down() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
        }
        return match api::legacy(&node, &body).await {
            Ok(s) => json_response(StatusCode::OK, Bytes::from(s)),
            Err(_) => text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        };
    }
    if method == "batch" {
        return match api::batch(&node, &body).await {
            Ok(v) => json_response(StatusCode::OK, Bytes::from(v.to_string())),
            Err(_) => text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        };
    }
    if !api::METHODS.contains(&method.as_str()) {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    match api::call(&node, &method, &body).await {
        Err(_) => text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        Ok(Err(e)) if transport_mode => {
            let status = StatusCode::from_u16(api::transport_status(&e)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, Bytes::from(api::error_body(&e).to_string()))
        }
        Ok(r) => json_response(StatusCode::OK, Bytes::from(api::envelope(&r).to_string())),
    }
}
