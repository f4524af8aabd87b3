//! Listeners, routing and graceful shutdown.
//!
//! Every connection task is spawned on one [`TaskTracker`] and watches one
//! [`CancellationToken`]. Shutdown is drain-with-deadline: stop accepting,
//! tell every client 3001 "shutdown" (reconnect advised), let HTTP requests in
//! flight finish, then wait for the tracker until `shutdown.timeout`.
//!
//! Failure modes handled here: a socket that never sends a request (nothing at
//! all, a half HTTP/1 header, or only the HTTP/2 preface) is closed after
//! `http_server.read_header_timeout`, counted from accept — hyper-util's
//! protocol detection and HTTP/2 handshake have no timeout of their own; an
//! idle HTTP/1 keep-alive socket after the same time (hyper's header timer);
//! a dead HTTP/2 peer by keep-alive pings; a request body that stalls after
//! `http_server.read_body_timeout` (408). Until it becomes a client
//! connection a socket is "pending": pending sockets count toward
//! `client.connection_limit`, and over `http_server.max_pending_connections`
//! new sockets are closed at once, so descriptors cannot be run out by
//! sockets that never become clients.
//!
//! With `http_server.tls` (see [`crate::tls`]) the TLS handshake runs inside
//! the socket's task and counts under the same first-request deadline, so a
//! client that stalls mid-handshake is closed like one that stalls before its
//! headers; a failed handshake closes the socket (logged at debug level).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gyre_node::config::Config;
use gyre_node::{Encoding, Node};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::emulation::Sessions;
use crate::stream::ChannelBody;

/// Every response body: fixed bytes or a stream fed by a connection task.
pub type Body = ChannelBody;

fn full(b: Bytes) -> Body {
    ChannelBody::fixed(b)
}

/// Max HTTP API body.
const API_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// HTTP/2 keep-alive: a PING this often on an idle connection, and the
/// connection is closed when its ack is this late (a vanished peer).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted socket, shared by its connection task and (through request
/// extensions) its requests. It counts as pending until a request on it
/// becomes a client connection ([`promote`]) or it closes.
pub(crate) struct SocketSlot {
    pending: Arc<AtomicUsize>,
    /// A request arrived (HTTP/1 headers parsed, or an HTTP/2 stream opened).
    started: AtomicBool,
    promoted: AtomicBool,
}

impl SocketSlot {
    fn new(pending: Arc<AtomicUsize>) -> Arc<Self> {
        pending.fetch_add(1, Ordering::Relaxed);
        Arc::new(SocketSlot { pending, started: AtomicBool::new(false), promoted: AtomicBool::new(false) })
    }

    /// No longer pending: it carries a client connection (counted in `App::conns`).
    pub(crate) fn promote(&self) {
        if !self.promoted.swap(true, Ordering::Relaxed) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.promote();
    }
}

/// Marks the socket a request came on as carrying a client connection, so it
/// stops counting as pending (and is not counted twice against the limit).
pub(crate) fn promote(ext: &http::Extensions) {
    if let Some(slot) = socket_of(ext) {
        slot.promote();
    }
}

/// The socket a request came on (kept by handlers that consume the request
/// before they know whether it becomes a connection).
pub(crate) fn socket_of(ext: &http::Extensions) -> Option<Arc<SocketSlot>> {
    ext.get::<Arc<SocketSlot>>().cloned()
}

/// Resolves once `deadline` passed without a first request on the socket;
/// never if one came, or without a deadline (no limit).
async fn first_request_deadline(slot: &SocketSlot, deadline: Option<tokio::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
        if !slot.started.load(Ordering::Relaxed) {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Shared state of the HTTP layer.
pub struct App {
    /// The node.
    pub node: Arc<Node>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    conns: AtomicUsize,
    /// Accepted sockets of the client listener not (yet) carrying a client.
    pending: Arc<AtomicUsize>,
    /// `client.connection_rate_limit`: new connections per second, with a
    /// burst of one second's worth (a token bucket, as Centrifugo's).
    conn_rate: Option<governor::DefaultDirectRateLimiter>,
    /// Listener serves the internal endpoints (API, health, metrics).
    split_internal: bool,
    /// Rate limit of admin password attempts (`POST /admin/auth`).
    pub(crate) admin_auth_limit: governor::DefaultDirectRateLimiter,
    /// Emulation sessions of this node.
    pub sessions: Arc<Sessions>,
    /// SockJS sessions of this node.
    pub sockjs: crate::sockjs::Registry,
    /// Where long-lived connection tasks run. The binary keeps HTTP request
    /// handling (the server API above all) on a separate runtime thread, so
    /// a publish request is never queued behind thousands of connection
    /// tasks woken by the previous fan-out. `None`: the current runtime.
    conn_rt: Option<tokio::runtime::Handle>,
}

impl App {
    /// Runs a connection as a tracked task, counted against `client.connection_limit`.
    pub(crate) fn spawn_conn(self: &Arc<Self>, f: impl Future<Output = ()> + Send + 'static) {
        let app = self.clone();
        app.conns.fetch_add(1, Ordering::Relaxed);
        // Not `async move { f.await; ... }`: an async block that awaits a
        // future it captured keeps room for both, doubling every connection's
        // task (measured: 8.5 KiB instead of 4.2 KiB per WebSocket).
        let task = futures_util::FutureExt::map(f, move |()| {
            app.conns.fetch_sub(1, Ordering::Relaxed);
        });
        match &self.conn_rt {
            Some(h) => drop(self.tracker.spawn_on(task, h)),
            None => drop(self.tracker.spawn(task)),
        }
    }

    /// Cancelled when the server shuts down.
    pub(crate) fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Checks a new real-time connection: not shutting down, origin allowed,
    /// under the connection limit and the connection rate limit.
    #[allow(clippy::result_large_err)] // once per request; a Box buys nothing
    pub(crate) fn admit(&self, headers: &HeaderMap) -> Result<(), Response<Body>> {
        if self.node.is_shutting_down() {
            return Err(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
        }
        if !origin_allowed(&self.node.config.client.allowed_origins, headers) {
            return Err(text(StatusCode::FORBIDDEN, "Forbidden\n"));
        }
        let limit = self.node.config.client.connection_limit;
        // Pending sockets count from accept; the asking socket is one of
        // them and about to become the connection, so it is not counted twice.
        let pending = self.pending.load(Ordering::Relaxed).saturating_sub(1);
        if limit > 0 && self.conns.load(Ordering::Relaxed) + pending >= limit {
            return Err(text(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached\n"));
        }
        // Checked last, so a refused request does not spend a token.
        if self.conn_rate.as_ref().is_some_and(|r| r.check().is_err()) {
            return Err(text(StatusCode::SERVICE_UNAVAILABLE, "connection rate limit reached\n"));
        }
        Ok(())
    }
}

/// A running server.
pub struct Running {
    /// External listener address.
    pub addr: SocketAddr,
    /// Internal listener address (same as `addr` unless split).
    pub internal_addr: SocketAddr,
    /// gRPC API listener address (`grpc_api.enabled`).
    pub grpc_addr: Option<SocketAddr>,
    /// The node.
    pub node: Arc<Node>,
    app: Arc<App>,
}

impl Running {
    /// The emulation session registry (the NATS control plane installs its
    /// forwarder here and delivers forwarded commands through it).
    pub fn sessions(&self) -> Arc<Sessions> {
        self.app.sessions.clone()
    }
}

pub(crate) fn bind_addr(address: &str, port: u16) -> String {
    if address.is_empty() {
        format!("0.0.0.0:{port}")
    } else if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Accept queue length asked for (the kernel caps it at `net.core.somaxconn`).
/// Larger than tokio's default 1024, as Go's listeners use somaxconn: in a
/// burst of connects (a reconnect storm) a full queue drops handshakes, and a
/// client whose final ACK was dropped believes it is connected to a server
/// that never saw it.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` ("host:port") with [`LISTEN_BACKLOG`].
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let sa = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "address resolves to nothing"))?;
    let socket = if sa.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As std's and tokio's own bind do on Unix: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(sa)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the listeners and starts serving, all on the current runtime.
pub async fn start(node: Arc<Node>) -> anyhow::Result<Running> {
    start_with(node, None).await
}

/// Binds the listeners and starts serving; connection tasks go to `conn_rt`
/// when given, HTTP request handling stays on the current runtime.
pub async fn start_with(node: Arc<Node>, conn_rt: Option<tokio::runtime::Handle>) -> anyhow::Result<Running> {
    let cfg = node.config.clone();
    let split = cfg.http_server.internal_port != 0 && cfg.http_server.internal_port != cfg.http_server.port;
    // Before binding: a bad certificate stops start-up naming its key, and
    // nothing ever listens in plain text where TLS was asked for.
    let tls = crate::tls::ListenerTls::load(&cfg.http_server, split)?;
    let ext = listen(&bind_addr(&cfg.http_server.address, cfg.http_server.port))
        .await
        .map_err(|e| anyhow::anyhow!("http_server.port {}: {e}", cfg.http_server.port))?;
    let addr = ext.local_addr()?;
    let app = Arc::new(App {
        node: node.clone(),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        conns: AtomicUsize::new(0),
        pending: Arc::new(AtomicUsize::new(0)),
        conn_rate: u32::try_from(cfg.client.connection_rate_limit)
            .ok()
            .and_then(std::num::NonZeroU32::new)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n))),
        split_internal: split,
        admin_auth_limit: crate::admin::auth_limiter(),
        sessions: Arc::new(Sessions::default()),
        sockjs: crate::sockjs::Registry::default(),
        conn_rt,
    });
    crate::emulation::connect_cluster(&node, &app.sessions);
    let mut internal_addr = addr;
    if split {
        let iaddr = if cfg.http_server.internal_address.is_empty() {
            &cfg.http_server.address
        } else {
            &cfg.http_server.internal_address
        };
        let int = listen(&bind_addr(iaddr, cfg.http_server.internal_port))
            .await
            .map_err(|e| anyhow::anyhow!("http_server.internal_port {}: {e}", cfg.http_server.internal_port))?;
        internal_addr = int.local_addr()?;
        // Its own pending count: a flood of the client port must not lock
        // health checks and the API out of the internal one.
        let acceptor = tls.internal.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        app.tracker.spawn(accept_loop(app.clone(), int, Listener::Internal, Arc::new(AtomicUsize::new(0)), acceptor));
    }
    // One reloader per certificate (the internal listener may share the external one's).
    let mut watched: Vec<crate::tls::ServerTls> = Vec::new();
    for t in [&tls.external, &tls.internal].into_iter().flatten() {
        if !watched.iter().any(|w| Arc::ptr_eq(&w.config, &t.config)) {
            watched.push(t.clone());
        }
    }
    for t in watched {
        app.tracker.spawn(t.watch(app.cancel.clone()));
    }
    let grpc_addr = if cfg.grpc_api.enabled {
        Some(crate::grpc::start(node.clone(), &app.tracker, app.cancel.clone()).await?)
    } else {
        None
    };
    let kind = if split { Listener::External } else { Listener::Both };
    let acceptor = tls.external.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    app.tracker.spawn(accept_loop(app.clone(), ext, kind, app.pending.clone(), acceptor));
    Ok(Running { addr, internal_addr, grpc_addr, node, app })
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

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    kind: Listener,
    pending: Arc<AtomicUsize>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let hs = &app.node.config.http_server;
    let (header_timeout, max_pending) = (hs.read_header_timeout.0, hs.max_pending_connections);
    // Sockets closed over the cap since the last warning (warned at most every 10 s).
    let mut refused = 0u64;
    let mut warned_at: Option<tokio::time::Instant> = None;
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
        if max_pending > 0 && pending.load(Ordering::Relaxed) >= max_pending {
            drop(stream);
            refused += 1;
            if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(refused, max_pending, "http_server.max_pending_connections reached: new sockets closed");
                warned_at = Some(tokio::time::Instant::now());
                refused = 0;
            }
            continue;
        }
        let slot = SocketSlot::new(pending.clone());
        let _ = stream.set_nodelay(true);
        let deadline = (!header_timeout.is_zero()).then(|| tokio::time::Instant::now() + header_timeout);
        let app2 = app.clone();
        let cancel = app.cancel.clone();
        let tls = tls.clone();
        app.tracker.spawn(async move {
            let io = match tls {
                None => Either::Left(stream),
                Some(acceptor) => tokio::select! {
                    r = acceptor.accept(stream) => match r {
                        Ok(s) => Either::Right(Box::new(s)),
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed; socket closed");
                            return;
                        }
                    },
                    () = first_request_deadline(&slot, deadline) => {
                        tracing::debug!("TLS handshake not done within http_server.read_header_timeout; socket closed");
                        return;
                    }
                    _ = cancel.cancelled() => return,
                },
            };
            let slot2 = slot.clone();
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let app = app2.clone();
                slot2.started.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(slot2.clone());
                async move { Ok::<_, Infallible>(route(app, kind, req).await) }
            });
            // Protocol detection waits for bytes with no timer of its own: a
            // socket that never gets to a request is dropped by the deadline.
            let (h2, io) = tokio::select! {
                r = crate::conn::detect(io) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "read failed before the first request; socket closed");
                        return;
                    }
                },
                () = first_request_deadline(&slot, deadline) => {
                    tracing::debug!("no request within http_server.read_header_timeout; socket closed");
                    return;
                }
                _ = cancel.cancelled() => return,
            };
            let io = TokioIo::new(io);
            if h2 {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                    .serve_connection(io, svc);
                serve_until(conn, |c| c.graceful_shutdown(), &slot, deadline, &cancel).await;
            } else {
                let header_read_timeout = (!header_timeout.is_zero()).then_some(header_timeout);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(io, svc)
                    .with_upgrades();
                serve_until(conn, |c| c.graceful_shutdown(), &slot, deadline, &cancel).await;
            }
        });
    }
}

/// Serves one HTTP connection until it ends, its first request does not
/// come in time (the HTTP/2 handshake waits for bytes with no timer of its
/// own), or the server stops (graceful shutdown, bounded to 5 s).
async fn serve_until<C: Future>(
    conn: C,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
    slot: &SocketSlot,
    deadline: Option<tokio::time::Instant>,
    cancel: &CancellationToken,
) {
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = first_request_deadline(slot, deadline) => {
            tracing::debug!("no request within http_server.read_header_timeout; socket closed");
        }
        _ = cancel.cancelled() => {
            shutdown(conn.as_mut());
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
        }
    }
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub(crate) fn json_response(status: StatusCode, v: Bytes) -> Response<Body> {
    let mut r = Response::new(full(v));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
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
    if external {
        if cfg.http_stream.enabled && path == cfg.http_stream.handler_prefix {
            return crate::emulation::connection(app, req, false).await;
        }
        if cfg.sse.enabled && path == cfg.sse.handler_prefix {
            return crate::emulation::connection(app, req, true).await;
        }
        if (cfg.sse.enabled || cfg.http_stream.enabled) && path == cfg.emulation.handler_prefix {
            return crate::emulation::emulation(app, req).await;
        }
        if cfg.uni_websocket.enabled && path == cfg.uni_websocket.handler_prefix {
            return uni_websocket(app, req).await;
        }
        if cfg.uni_sse.enabled && path == cfg.uni_sse.handler_prefix {
            return crate::uni::http(app, req, true).await;
        }
        if cfg.uni_http_stream.enabled && path == cfg.uni_http_stream.handler_prefix {
            return crate::uni::http(app, req, false).await;
        }
        if let Some((service, rest)) = crate::sockjs::service_for(&cfg, &path) {
            return crate::sockjs::handle(app, service, rest, req).await;
        }
    }
    // The admin UI sits with the other internal endpoints (metrics, health, API)
    // unless `admin.external`; it is matched before the demo page, which also
    // wants `/` when both are on one listener.
    let admin_here = cfg.admin.enabled && (if cfg.admin.external || !app.split_internal { external } else { internal });
    if admin_here && crate::admin::handles(&app, &path) {
        return crate::admin::handle(app, req).await;
    }
    if api_here && (path == prefix || path.starts_with(&format!("{prefix}/"))) {
        return http_api(app, req, &prefix).await;
    }
    if internal
        && cfg.health.enabled
        && let Some(probe) = crate::health::probe_for(&cfg.health.handler_prefix, &path)
    {
        // Liveness is independent of NATS; readiness says why it is 503 (see health.rs).
        let (status, body) = crate::health::answer(probe, &app.node.health(), app.node.is_shutting_down());
        return json_response(status, Bytes::from(body));
    }
    if internal && cfg.prometheus.enabled && path == cfg.prometheus.handler_prefix {
        let mut r = text(StatusCode::OK, "");
        *r.body_mut() = ChannelBody::fixed(Bytes::from(gyre_node::metrics::render(&app.node)));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return r;
    }
    if external && cfg.init.enabled && path == cfg.init.handler_prefix && req.method() == Method::GET {
        return json_response(StatusCode::OK, Bytes::from_static(b"{}"));
    }
    if external
        && cfg.demo.enabled
        && let Some(r) = crate::demo::route(&app, &path, &req)
    {
        return r;
    }
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// CORS headers for connection endpoints when the origin passes `allowed_origins`.
pub(crate) fn cors(cfg: &Config, req: &HeaderMap, resp: &mut Response<Body>) {
    let Some(origin) = req.get(header::ORIGIN).cloned() else {
        return;
    };
    if !origin_allowed(&cfg.client.allowed_origins, req) {
        return;
    }
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    if let Some(rh) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned() {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, rh);
    }
}

/// `OPTIONS` → 204 with CORS headers.
pub(crate) fn preflight(cfg: &Config, req: &HeaderMap, methods: &'static str) -> Response<Body> {
    let mut r = empty(StatusCode::NO_CONTENT);
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    r.headers_mut().insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("300"));
    cors(cfg, req, &mut r);
    r
}

/// `Content-Type: application/octet-stream` (selects Protobuf on emulation).
pub(crate) fn is_octet_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/octet-stream"))
}

/// Reads a request body of at most `limit` bytes within `timeout`
/// (`http_server.read_body_timeout`, zero = none): more is 413, a broken body
/// 400, a body that stalls 408 (hyper then closes the socket, since the rest
/// of the body was never read).
pub(crate) async fn read_body(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, Response<Body>> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large\n"));
    }
    let collect = Limited::new(body, limit).collect();
    let collected = if timeout.is_zero() {
        collect.await
    } else {
        match tokio::time::timeout(timeout, collect).await {
            Ok(r) => r,
            Err(_) => return Err(text(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n")),
        }
    };
    match collected {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large\n"))
        }
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "Bad Request\n")),
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space); `None`
/// for broken escapes or non-UTF-8 results.
pub(crate) fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A decoded query parameter.
pub(crate) fn query_decoded(query: &str, key: &str) -> Option<String> {
    query_param(query, key).and_then(form_decode)
}

/// Origin check: no Origin header passes; otherwise it must match a pattern.
pub fn origin_allowed(patterns: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let origin = origin.to_ascii_lowercase();
    patterns.iter().any(|p| p == "*" || glob_match::glob_match(&p.to_ascii_lowercase(), &origin))
}

pub(crate) fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

async fn websocket(app: Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    let node = app.node.clone();
    if let Err(r) = app.admit(req.headers()) {
        return r;
    }
    let h = req.headers();
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
    let http_user = conn_request(&node, h);
    upgrade(&app, &mut req, chosen, move |upgraded| crate::ws::serve(node, upgraded, encoding, http_user))
}

async fn uni_websocket(app: Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = app.admit(req.headers()) {
        return r;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let user = conn_request(&app.node, req.headers());
    let app2 = app.clone();
    upgrade(&app, &mut req, None, move |up| crate::uni::websocket(app2, up, query, user))
}

/// Answers a WebSocket upgrade and runs `serve` on the upgraded connection
/// as a tracked, counted connection task.
pub(crate) fn upgrade<F, Fut>(
    app: &Arc<App>,
    req: &mut Request<Incoming>,
    protocol: Option<&'static str>,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(hyper::upgrade::Upgraded) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let h = req.headers();
    let is_upgrade =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    if !is_upgrade || req.method() != Method::GET {
        return text(StatusCode::BAD_REQUEST, "Bad Request\n");
    }
    let accept = crate::wsframe::accept_key(key.as_bytes());
    promote(req.extensions());
    // `then`, not an async block: the block would keep `serve`'s captures
    // (node, HTTP user, ...) and the upgrade future in every connection's
    // task for its whole life; `then` holds them only until the upgrade.
    let task = futures_util::FutureExt::then(hyper::upgrade::on(req), move |r| match r {
        Ok(upgraded) => futures_util::future::Either::Left(serve(upgraded)),
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            futures_util::future::Either::Right(std::future::ready(()))
        }
    });
    app.spawn_conn(task);
    let mut resp = empty(StatusCode::SWITCHING_PROTOCOLS);
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
    if let Some(p) = protocol {
        rh.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// The user id from the trusted `client.user_id_http_header`, if configured.
pub(crate) fn http_user(cfg: &Config, h: &HeaderMap) -> Option<String> {
    if cfg.client.user_id_http_header.is_empty() {
        return None;
    }
    h.get(cfg.client.user_id_http_header.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// What a connection keeps of its HTTP request: the trusted user header and
/// the headers some proxy forwards (`http_headers`).
pub(crate) fn conn_request(node: &gyre_node::Node, h: &HeaderMap) -> gyre_node::client::ConnRequest {
    gyre_node::client::ConnRequest::from_headers(
        http_user(&node.config, h),
        node.proxies.header_names(),
        h.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
    )
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
    secret_eq(given.as_bytes(), want)
}

/// Compares a presented secret (API key, admin password) with the configured
/// one in constant time: digests are compared, so neither content nor length
/// leaks through timing.
pub(crate) fn secret_eq(given: &[u8], want: &[u8]) -> bool {
    use sha2::Digest;
    let a = sha2::Sha256::digest(given);
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
    let transport_mode = cfg.http_api.error_mode == gyre_node::config::ErrorMode::Transport
        || req.headers().get("x-centrifugo-error-mode").and_then(|v| v.to_str().ok()) == Some("transport");
    let body_timeout = cfg.http_server.read_body_timeout.0;
    let body = match read_body(req.into_body(), API_BODY_LIMIT, body_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
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
