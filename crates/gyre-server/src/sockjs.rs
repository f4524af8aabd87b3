//! SockJS at `sockjs.handler_prefix` (Centrifugo v3–v5's fallback transport),
//! plus SockJS's protocol test services behind `sockjs.test_services`.
//!
//! A SockJS session outlives the HTTP requests that carry it: polling
//! transports attach a fresh request for every frame, streaming ones
//! reconnect after `response_limit` bytes, and client→server messages come
//! in separate `xhr_send`/`jsonp_send` requests. So a session is a task that
//! owns a [`SockTransport`]; requests reach it through two channels (one
//! for receiving requests, one for sent messages) found in the node-local
//! [`Registry`]. While no request is attached, writes wait and the
//! connection's bounded queue absorbs what arrives (overflow → 3008, as on
//! every transport); a session nobody attaches to for `disconnect_delay`
//! expires. After a session closes, its close frame is kept for
//! `disconnect_delay` so a polling client still learns the code.
//!
//! Each SockJS message is one Centrifugo JSON frame (one or more
//! `\n`-separated commands or replies); disconnects are `c[code,"reason"]`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gyre_node::config::Config;
use gyre_node::{Client, ClientShared, Disconnect, Encoding, TransportInfo};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::driver::{self, Inbound, PeerGone, Start, Transport};
use crate::http::{self as h, App, Body};
use crate::stream::ChannelBody;
use crate::ws::{WsMode, WsTransport};

/// SockJS frame encoding.
pub mod frames {
    /// Appends `s` as a JSON string, escaping what SockJS clients require
    /// escaped (control characters, and code points some browsers mangle).
    pub fn quote(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20
                    || ('\u{7f}'..='\u{9f}').contains(&c)
                    || ('\u{ad}'..='\u{ad}').contains(&c)
                    || ('\u{200c}'..='\u{200f}').contains(&c)
                    || ('\u{2028}'..='\u{202f}').contains(&c)
                    || ('\u{2060}'..='\u{206f}').contains(&c)
                    || ('\u{fff0}'..='\u{ffff}').contains(&c) =>
                {
                    out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        out.push(b'"');
    }

    /// `a["m1","m2"]`.
    pub fn messages(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msgs.iter().map(|m| m.len() + 8).sum::<usize>() + 3);
        out.extend_from_slice(b"a[");
        for (i, m) in msgs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            quote(&mut out, &String::from_utf8_lossy(m));
        }
        out.push(b']');
        out
    }

    /// Parses a client frame (`xhr_send`, `jsonp_send`, the `websocket`
    /// transport): a JSON array of strings, or (sockjs-go accepts it) one
    /// string. An error is a broken frame.
    pub fn parse_messages(payload: &str) -> Result<Vec<String>, serde_json::Error> {
        serde_json::from_str::<Vec<String>>(payload)
            .or_else(|_| serde_json::from_str::<String>(payload).map(|s| vec![s]))
    }

    /// `c[code,"reason"]`.
    pub fn close(code: u32, reason: &str) -> Vec<u8> {
        let mut out = format!("c[{code},").into_bytes();
        quote(&mut out, reason);
        out.push(b']');
        out
    }
}

/// What a SockJS service runs per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// The Centrifugo client protocol.
    Centrifugo,
    /// Test service: echo every message.
    Echo,
    /// Test service: open, then close with `c[3000,"Go away!"]`.
    Close,
}

/// One SockJS endpoint.
#[derive(Debug, Clone)]
pub struct Service {
    prefix: String,
    websocket: bool,
    cookie_needed: bool,
    app: AppKind,
}

/// Finds the service under `path`; returns it and the rest of the path.
pub fn service_for(cfg: &Config, path: &str) -> Option<(Service, String)> {
    let s = &cfg.sockjs;
    let mut services = Vec::new();
    if s.enabled {
        services.push(Service {
            prefix: s.handler_prefix.trim_end_matches('/').to_string(),
            websocket: true,
            cookie_needed: s.cookie_needed,
            app: AppKind::Centrifugo,
        });
    }
    if s.test_services {
        let base = s.test_services_prefix.trim_end_matches('/');
        for (name, websocket, cookie_needed, app) in [
            ("echo", true, false, AppKind::Echo),
            ("close", true, false, AppKind::Close),
            ("disabled_websocket_echo", false, false, AppKind::Echo),
            ("cookie_needed_echo", true, true, AppKind::Echo),
        ] {
            services.push(Service { prefix: format!("{base}/{name}"), websocket, cookie_needed, app });
        }
    }
    services.into_iter().find_map(|svc| {
        let rest = path.strip_prefix(svc.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then(|| (svc, rest.to_string()))
    })
}

// ----------------------------------------------------------------------
// Receivers and the session registry
// ----------------------------------------------------------------------

/// How frames are wrapped for one receiving request.
#[derive(Debug, Clone)]
enum Wrap {
    /// `xhr`, `xhr_streaming`: frame + `\n`.
    Line,
    /// `eventsource`: `data: frame\r\n\r\n`.
    EventSource,
    /// `htmlfile`: a script chunk calling `p("frame")`.
    HtmlFile,
    /// `jsonp`: `callback("frame");\r\n`.
    Jsonp(String),
}

impl Wrap {
    fn wrap(&self, frame: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(frame.len() + 32);
        match self {
            Wrap::Line => {
                out.extend_from_slice(frame);
                out.push(b'\n');
            }
            Wrap::EventSource => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(frame);
                out.extend_from_slice(b"\r\n\r\n");
            }
            Wrap::HtmlFile => {
                out.extend_from_slice(b"<script>\np(");
                frames::quote(&mut out, &String::from_utf8_lossy(frame));
                out.extend_from_slice(b");\n</script>\r\n");
            }
            Wrap::Jsonp(cb) => {
                out.extend_from_slice(cb.as_bytes());
                out.push(b'(');
                frames::quote(&mut out, &String::from_utf8_lossy(frame));
                out.extend_from_slice(b");\r\n");
            }
        }
        Bytes::from(out)
    }
}

/// One HTTP request waiting to carry frames to the client.
#[derive(Debug)]
struct Receiver {
    tx: mpsc::Sender<Bytes>,
    wrap: Wrap,
    /// Polling: the response ends after one frame.
    polling: bool,
    sent: usize,
}

#[derive(Clone)]
struct Handle {
    attach: mpsc::Sender<Receiver>,
    inbound: mpsc::Sender<Vec<String>>,
    id: u64,
}

enum Entry {
    Live(Handle),
    Closed { frame: Bytes, until: Instant },
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        matches!(self, Entry::Closed { until, .. } if *until <= now)
    }
}

/// Shards of the registry: a lookup locks one, never all sessions.
const SHARDS: usize = 64;

/// Node-local SockJS sessions, keyed by session id in [`SHARDS`] maps.
///
/// A lookup locks and reads only its session's shard. Closed sessions (kept
/// for `disconnect_delay` so late polls still get the close frame) are
/// removed when looked up after expiry, and each new session sweeps the
/// expired entries of its own shard, so they cannot pile up while sessions
/// are being created. The shard is chosen with a per-process random hash, so
/// clients cannot aim all their session ids at one shard.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    shards: Box<[Mutex<HashMap<String, Entry>>]>,
    hasher: std::collections::hash_map::RandomState,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Arc::new(RegistryInner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: std::collections::hash_map::RandomState::new(),
                next_id: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }
}

type NewSession = (Handle, mpsc::Receiver<Receiver>, mpsc::Receiver<Vec<String>>);

enum Lookup {
    Live(Handle),
    Closed(Bytes),
    Missing,
}

impl Registry {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        use std::hash::BuildHasher;
        let i = self.inner.hasher.hash_one(key) as usize % SHARDS;
        &self.inner.shards[i]
    }

    fn lookup(&self, key: &str) -> Lookup {
        let mut g = self.shard(key).lock();
        match g.get(key) {
            Some(Entry::Live(h)) => Lookup::Live(h.clone()),
            Some(e) if e.expired(Instant::now()) => {
                g.remove(key);
                Lookup::Missing
            }
            Some(Entry::Closed { frame, .. }) => Lookup::Closed(frame.clone()),
            None => Lookup::Missing,
        }
    }

    /// Creates the session unless it exists; `Err` carries what exists.
    fn create(&self, key: &str) -> Result<NewSession, Lookup> {
        let mut g = self.shard(key).lock();
        let now = Instant::now();
        g.retain(|_, e| !e.expired(now));
        match g.get(key) {
            Some(Entry::Live(h)) => return Err(Lookup::Live(h.clone())),
            Some(Entry::Closed { frame, .. }) => return Err(Lookup::Closed(frame.clone())),
            None => {}
        }
        let (atx, arx) = mpsc::channel(4);
        let (itx, irx) = mpsc::channel(64);
        let id = self.inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let h = Handle { attach: atx, inbound: itx, id };
        g.insert(key.to_string(), Entry::Live(h.clone()));
        Ok((h, arx, irx))
    }

    fn mark_closed(&self, key: &str, id: u64, frame: Bytes, keep: Duration) {
        let mut g = self.shard(key).lock();
        if matches!(g.get(key), Some(Entry::Live(h)) if h.id == id) {
            g.insert(key.to_string(), Entry::Closed { frame, until: Instant::now() + keep });
        }
    }

    fn remove_live(&self, key: &str, id: u64) {
        let mut g = self.shard(key).lock();
        if matches!(g.get(key), Some(Entry::Live(h)) if h.id == id) {
            g.remove(key);
        }
    }

    /// Live and recently closed sessions.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ----------------------------------------------------------------------
// The session transport
// ----------------------------------------------------------------------

/// One SockJS session over HTTP requests, as a [`Transport`].
pub struct SockTransport {
    registry: Registry,
    key: String,
    id: u64,
    attach: mpsc::Receiver<Receiver>,
    inbound: mpsc::Receiver<Vec<String>>,
    pending: VecDeque<Bytes>,
    current: Option<Receiver>,
    opened: bool,
    detached_at: Instant,
    next_heartbeat: Instant,
    heartbeat: Duration,
    disconnect_delay: Duration,
    response_limit: usize,
}

impl SockTransport {
    /// Hands `frame` to the attached receiver if it can take it now.
    fn send_now(&mut self, frame: &[u8]) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let data = cur.wrap.wrap(frame);
        let n = data.len();
        if cur.tx.try_send(data).is_ok() {
            cur.sent += n;
            if cur.polling || cur.sent >= self.response_limit {
                self.detach();
            }
        }
    }

    fn detach(&mut self) {
        // Dropping the sender ends that response.
        self.current = None;
        self.detached_at = Instant::now();
    }

    /// A new receiving request: the first gets `o`; a second one while
    /// another is attached gets `c[2010,...]`.
    fn accept(&mut self, r: Receiver) {
        if self.current.as_ref().is_some_and(|c| !c.tx.is_closed()) {
            let _ = r.tx.try_send(r.wrap.wrap(&frames::close(2010, "Another connection still open")));
            return;
        }
        self.current = Some(r);
        if !self.opened {
            self.opened = true;
            self.send_now(b"o");
        }
    }

    fn expires_at(&self) -> Instant {
        self.detached_at + self.disconnect_delay
    }

    /// Writes the open frame once a receiver is attached (test services).
    async fn open(&mut self) -> Result<(), PeerGone> {
        while !self.opened {
            let r = tokio::time::timeout_at(self.expires_at(), self.attach.recv()).await;
            match r {
                Ok(Some(r)) => self.accept(r),
                _ => return Err(PeerGone),
            }
        }
        Ok(())
    }
}

impl Drop for SockTransport {
    fn drop(&mut self) {
        self.registry.remove_live(&self.key, self.id);
    }
}

impl Transport for SockTransport {
    fn write_timeout(&self) -> Duration {
        self.disconnect_delay + Duration::from_secs(5)
    }

    async fn write(&mut self, messages: &[Bytes]) -> Result<(), PeerGone> {
        let joined = gyre_proto::frame_messages(gyre_proto::ProtocolType::Json, messages);
        let frame = frames::messages(&[&joined]);
        loop {
            if self.current.as_ref().is_some_and(|c| c.tx.is_closed()) {
                self.detach();
            }
            let Some(cur) = self.current.as_mut() else {
                // Wait for the client's next request; the queue absorbs meanwhile.
                match tokio::time::timeout_at(self.expires_at(), self.attach.recv()).await {
                    Ok(Some(r)) => self.accept(r),
                    _ => return Err(PeerGone),
                }
                continue;
            };
            let data = cur.wrap.wrap(&frame);
            let n = data.len();
            if cur.tx.send(data).await.is_err() {
                self.detach();
                continue;
            }
            cur.sent += n;
            if cur.polling || cur.sent >= self.response_limit {
                self.detach();
            }
            return Ok(());
        }
    }

    async fn read(&mut self) -> Inbound {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Inbound::Data(m);
            }
            let attached = self.current.is_some();
            let expires = self.expires_at();
            let heartbeat = self.next_heartbeat;
            let closed = async {
                match &self.current {
                    Some(c) => c.tx.closed().await,
                    None => std::future::pending().await,
                }
            };
            enum Ev {
                Attach(Option<Receiver>),
                Msgs(Option<Vec<String>>),
                Detached,
                Heartbeat,
                Expired,
            }
            let ev = tokio::select! {
                r = self.attach.recv() => Ev::Attach(r),
                m = self.inbound.recv() => Ev::Msgs(m),
                _ = closed => Ev::Detached,
                _ = tokio::time::sleep_until(heartbeat) => Ev::Heartbeat,
                _ = tokio::time::sleep_until(expires), if !attached => Ev::Expired,
            };
            match ev {
                Ev::Attach(Some(r)) => self.accept(r),
                Ev::Msgs(Some(v)) => self.pending.extend(v.into_iter().map(Bytes::from)),
                Ev::Attach(None) | Ev::Msgs(None) | Ev::Expired => return Inbound::Gone,
                Ev::Detached => self.detach(),
                Ev::Heartbeat => {
                    self.next_heartbeat = Instant::now() + self.heartbeat;
                    self.send_now(b"h");
                }
            }
        }
    }

    async fn close(&mut self, d: &Disconnect) {
        let frame = frames::close(d.code, &d.reason);
        // Later requests to this session get the close frame too.
        self.registry.mark_closed(&self.key, self.id, Bytes::from(frame.clone()), self.disconnect_delay);
        if let Some(cur) = self.current.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), cur.tx.send(cur.wrap.wrap(&frame))).await;
        }
        while let Ok(r) = self.attach.try_recv() {
            let _ = r.tx.try_send(r.wrap.wrap(&frame));
        }
    }
}

/// Runs a test-service session (echo or close) over any transport.
async fn run_test_app<T: Transport>(app: AppKind, t: &mut T, cancel: tokio_util::sync::CancellationToken) {
    if app == AppKind::Close {
        t.close(&Disconnect::custom(3000, "Go away!")).await;
        return;
    }
    loop {
        let ev = tokio::select! {
            ev = t.read() => ev,
            _ = cancel.cancelled() => Inbound::Close(Disconnect::SHUTDOWN),
        };
        match ev {
            Inbound::Data(m) => {
                if tokio::time::timeout(t.write_timeout(), t.write(&[m])).await.map(|r| r.is_err()).unwrap_or(true) {
                    return;
                }
            }
            Inbound::Gone => return,
            Inbound::Close(d) => {
                t.close(&d).await;
                return;
            }
        }
    }
}

// ----------------------------------------------------------------------
// HTTP
// ----------------------------------------------------------------------

const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";

/// CORS and cookie headers of every SockJS response.
///
/// CORS follows `client.allowed_origins` as every other transport does: an
/// allowed Origin is reflected with credentials; a request without Origin
/// (not a browser's cross-origin request) or with `Origin: null` gets `*`
/// without credentials when `null` is allowed; an Origin that is not allowed
/// gets no CORS headers at all, so a browser does not hand the response to
/// that page.
fn common_headers(cfg: &Config, svc: &Service, req: &HeaderMap, resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    let origin = req.get(header::ORIGIN).cloned();
    if h::origin_allowed(&cfg.client.allowed_origins, req) {
        match origin.filter(|o| o.as_bytes() != b"null") {
            Some(o) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            None => {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            }
        }
        if let Some(rh) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned() {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, rh);
        }
    }
    if svc.cookie_needed {
        let value = req
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("JSESSIONID=").map(str::to_string))
            .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
            .unwrap_or_else(|| "dummy".to_string());
        let mut cookie = format!("JSESSIONID={value}; Path=/");
        let sj = &cfg.sockjs;
        if sj.cookie_http_only {
            cookie.push_str("; HttpOnly");
        }
        cookie.push_str("; SameSite=");
        cookie.push_str(sj.cookie_same_site.as_str());
        if sj.cookie_secure {
            cookie.push_str("; Secure");
        }
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(header::SET_COOKIE, v);
        }
    }
}

fn with_type(mut r: Response<Body>, ct: &'static str) -> Response<Body> {
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    h::text(status, body)
}

fn options(cfg: &Config, svc: &Service, req: &HeaderMap, methods: &'static str) -> Response<Body> {
    let mut r = h::empty(StatusCode::NO_CONTENT);
    let hs = r.headers_mut();
    hs.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000"));
    hs.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("31536000"));
    if let Ok(v) = HeaderValue::from_str(&httpdate_in_a_year()) {
        hs.insert(header::EXPIRES, v);
    }
    common_headers(cfg, svc, req, &mut r);
    r
}

/// An HTTP date one year from now (for cacheable preflights).
fn httpdate_in_a_year() -> String {
    let secs = gyre_node::node::unix_now() + 365 * 24 * 3600;
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(m - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT", tod / 3600, tod % 3600 / 60, tod % 60)
}

fn iframe_page(url: &str) -> String {
    let mut esc = String::new();
    for c in url.chars() {
        match c {
            '"' => esc.push_str("&quot;"),
            '<' => esc.push_str("&lt;"),
            '>' => esc.push_str("&gt;"),
            '&' => esc.push_str("&amp;"),
            c => esc.push(c),
        }
    }
    format!(
        "<!DOCTYPE html>\n<html>\n<head>\n  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n  <script src=\"{esc}\"></script>\n  <script>\n    document.domain = document.domain;\n    SockJS.bootstrap_iframe();\n  </script>\n</head>\n<body>\n  <h2>Don't panic!</h2>\n  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n</body>\n</html>"
    )
}

fn htmlfile_prelude(callback: &str) -> Bytes {
    let mut s = format!(
        "<!doctype html>\n<html><head>\n  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n</head><body><h2>Don't panic!</h2>\n  <script>\n    document.domain = document.domain;\n    var c = parent.{callback};\n    c.start();\n    function p(d) {{c.message(d);}};\n    window.onload = function() {{c.stop();}};\n  </script>"
    );
    // Browsers render (and run) nothing until 1 KiB arrived.
    while s.len() < 1024 {
        s.push(' ');
    }
    s.push_str("\r\n");
    Bytes::from(s)
}

#[allow(clippy::result_large_err)] // once per request; a Box buys nothing
fn callback_param(query: &str) -> Result<String, Response<Body>> {
    match h::query_decoded(query, "c") {
        None => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, "\"callback\" parameter required")),
        Some(c) if c.is_empty() => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, "\"callback\" parameter required")),
        Some(c) if c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') => Ok(c),
        Some(_) => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, "invalid \"callback\" parameter")),
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && !s.contains('.')
}

/// Handles one request under a SockJS service prefix.
pub async fn handle(app: Arc<App>, svc: Service, rest: String, mut req: Request<Incoming>) -> Response<Body> {
    let cfg = app.node.config.clone();
    let headers = req.headers().clone();
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut r = match rest.as_str() {
        "" | "/" if method == Method::GET => {
            with_type(plain(StatusCode::OK, "Welcome to SockJS!\n"), "text/plain; charset=UTF-8")
        }
        "/info" if method == Method::GET => {
            let entropy: u32 = rand::random();
            let body = serde_json::json!({
                "websocket": svc.websocket,
                "cookie_needed": svc.cookie_needed,
                "origins": ["*:*"],
                "entropy": entropy,
            });
            let mut r = h::json_response(StatusCode::OK, Bytes::from(body.to_string()));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
            r
        }
        "/info" if method == Method::OPTIONS => return options(&cfg, &svc, &headers, "OPTIONS, GET"),
        p if p.starts_with("/iframe") && p.ends_with(".html") && !p[1..].contains('/') => {
            let page = iframe_page(&cfg.sockjs.sockjs_url);
            let etag = format!("\"{:x}\"", {
                use sha2::Digest;
                let d = sha2::Sha256::digest(page.as_bytes());
                u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
            });
            if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
                return h::empty(StatusCode::NOT_MODIFIED);
            }
            let mut r = with_type(h::json_response(StatusCode::OK, Bytes::from(page)), "text/html; charset=UTF-8");
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            return r;
        }
        "/websocket" => {
            if !svc.websocket {
                return plain(StatusCode::NOT_FOUND, "404 page not found\n");
            }
            return websocket(app, svc, &mut req, true).await;
        }
        _ => {
            let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
            if parts.len() != 3 || !valid_id(parts[0]) || !valid_id(parts[1]) {
                return plain(StatusCode::NOT_FOUND, "404 page not found\n");
            }
            let key = format!("{}/{}", svc.prefix, parts[1]);
            return session_request(app, svc, key, parts[2].to_string(), query, req).await;
        }
    };
    common_headers(&cfg, &svc, &headers, &mut r);
    r
}

async fn websocket(app: Arc<App>, svc: Service, req: &mut Request<Incoming>, raw: bool) -> Response<Body> {
    // Test services too: each session is a task holding a socket, so they
    // pass the same admission (origin, limits, shutdown) as real clients.
    if let Err(r) = app.admit(req.headers()) {
        return r;
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    let upgrade_ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let conn_ok = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    if !upgrade_ok {
        return plain(StatusCode::BAD_REQUEST, "Can \"Upgrade\" only to \"WebSocket\".");
    }
    if !conn_ok {
        return plain(StatusCode::BAD_REQUEST, "\"Connection\" must be \"Upgrade\".");
    }
    let node = app.node.clone();
    let cancel = app.cancelled();
    let heartbeat = node.config.sockjs.heartbeat_delay.0.max(Duration::from_millis(100));
    let user = h::conn_request(&node, req.headers());
    h::upgrade(&app, req, None, move |up| async move {
        let io = crate::ws::WsIo::from_upgraded(up);
        let wt = node.config.websocket.write_timeout.0.max(Duration::from_millis(100));
        let mode = if raw { WsMode::Raw } else { WsMode::SockJs { heartbeat } };
        let mut t = WsTransport::new(io, node.config.websocket.message_size_limit, mode, wt, Encoding::Json);
        if !raw && tokio::time::timeout(wt, t.send_text(b"o")).await.is_err() {
            return;
        }
        match svc.app {
            AppKind::Centrifugo => {
                let info =
                    TransportInfo { name: "sockjs", unidirectional: false, emulation: false, disconnect_push: false };
                let shared = ClientShared::new(Encoding::Json, info, node.config.client.queue_max_size);
                let mut client = Client::new(node.clone(), shared);
                client.set_request(user);
                driver::drive(node, client, t, Start::Idle).await;
            }
            other => run_test_app(other, &mut t, cancel).await,
        }
    })
}

/// Transport kinds carried by plain HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Xhr,
    XhrStreaming,
    EventSource,
    HtmlFile,
    Jsonp,
}

async fn session_request(
    app: Arc<App>,
    svc: Service,
    key: String,
    transport: String,
    query: String,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let cfg = app.node.config.clone();
    let headers = req.headers().clone();
    let method = req.method().clone();
    // Every request of a session passes the origin check, not only the one
    // that created it: a page of a disallowed origin that learns a session id
    // must not be able to read from it or send into it.
    if method != Method::OPTIONS && !h::origin_allowed(&cfg.client.allowed_origins, &headers) {
        return plain(StatusCode::FORBIDDEN, "Forbidden\n");
    }
    let kind = match (transport.as_str(), &method) {
        ("websocket", _) => {
            if !svc.websocket {
                return plain(StatusCode::NOT_FOUND, "404 page not found\n");
            }
            return websocket(app, svc, &mut req, false).await;
        }
        ("xhr" | "xhr_streaming" | "xhr_send", &Method::OPTIONS) => {
            return options(&cfg, &svc, &headers, "OPTIONS, POST");
        }
        ("jsonp_send", &Method::OPTIONS) => return options(&cfg, &svc, &headers, "OPTIONS, POST"),
        ("xhr_send", &Method::POST) => {
            let mut r = send(&app, &key, req, false).await;
            common_headers(&cfg, &svc, &headers, &mut r);
            return r;
        }
        ("jsonp_send", &Method::POST) => {
            let mut r = send(&app, &key, req, true).await;
            common_headers(&cfg, &svc, &headers, &mut r);
            return r;
        }
        ("xhr", &Method::POST) => Kind::Xhr,
        ("xhr_streaming", &Method::POST) => Kind::XhrStreaming,
        ("eventsource", &Method::GET) => Kind::EventSource,
        ("htmlfile", &Method::GET) => Kind::HtmlFile,
        ("jsonp", &Method::GET) => Kind::Jsonp,
        ("xhr" | "xhr_streaming" | "xhr_send" | "jsonp_send" | "eventsource" | "htmlfile" | "jsonp", _) => {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        }
        _ => return plain(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    let (wrap, prelude, ct): (Wrap, Option<Bytes>, &'static str) = match kind {
        Kind::Xhr => (Wrap::Line, None, "application/javascript; charset=UTF-8"),
        Kind::XhrStreaming => {
            let mut p = BytesMut::from(&[b'h'; 2048][..]);
            p.extend_from_slice(b"\n");
            (Wrap::Line, Some(p.freeze()), "application/javascript; charset=UTF-8")
        }
        Kind::EventSource => (Wrap::EventSource, Some(Bytes::from_static(b"\r\n")), "text/event-stream"),
        Kind::HtmlFile => match callback_param(&query) {
            Ok(cb) => (Wrap::HtmlFile, Some(htmlfile_prelude(&cb)), "text/html; charset=UTF-8"),
            Err(r) => return r,
        },
        Kind::Jsonp => match callback_param(&query) {
            Ok(cb) => (Wrap::Jsonp(cb), None, "application/javascript; charset=UTF-8"),
            Err(r) => return r,
        },
    };
    let polling = matches!(kind, Kind::Xhr | Kind::Jsonp);
    let respond = |body: ChannelBody| {
        let mut r = Response::new(body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
        common_headers(&cfg, &svc, &headers, &mut r);
        r
    };
    let handle = match app.sockjs.lookup(&key) {
        Lookup::Live(hd) => hd,
        Lookup::Closed(frame) => {
            let mut b = BytesMut::new();
            if let Some(p) = &prelude {
                b.extend_from_slice(p);
            }
            b.extend_from_slice(&wrap.wrap(&frame));
            return respond(ChannelBody::fixed(b.freeze()));
        }
        Lookup::Missing => {
            if let Err(r) = app.admit(&headers) {
                return r;
            }
            match app.sockjs.create(&key) {
                Ok((hd, attach, inbound)) => {
                    start_session(
                        &app,
                        &svc,
                        key.clone(),
                        hd.id,
                        attach,
                        inbound,
                        h::conn_request(&app.node, &headers),
                    );
                    hd
                }
                Err(Lookup::Live(hd)) => hd,
                Err(Lookup::Closed(frame)) => {
                    return respond(ChannelBody::fixed(Bytes::from(wrap.wrap(&frame).to_vec())));
                }
                Err(Lookup::Missing) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"),
            }
        }
    };
    // This socket now carries a session's frames (counted in the connection
    // count), so it no longer counts as pending.
    h::promote(req.extensions());
    let (body, tx) = ChannelBody::new(prelude);
    let receiver = Receiver { tx, wrap, polling, sent: 0 };
    if handle.attach.send(receiver).await.is_err() {
        // The session ended between lookup and attach.
        let frame = frames::close(Disconnect::CONNECTION_CLOSED.code, "Go away!");
        return respond(ChannelBody::fixed(Bytes::from(Wrap::Line.wrap(&frame).to_vec())));
    }
    respond(body)
}

fn start_session(
    app: &Arc<App>,
    svc: &Service,
    key: String,
    id: u64,
    attach: mpsc::Receiver<Receiver>,
    inbound: mpsc::Receiver<Vec<String>>,
    http_user: gyre_node::client::ConnRequest,
) {
    let cfg = &app.node.config.sockjs;
    let now = Instant::now();
    let heartbeat = cfg.heartbeat_delay.0.max(Duration::from_millis(100));
    let mut t = SockTransport {
        registry: app.sockjs.clone(),
        key,
        id,
        attach,
        inbound,
        pending: VecDeque::new(),
        current: None,
        opened: false,
        detached_at: now,
        next_heartbeat: now + heartbeat,
        heartbeat,
        disconnect_delay: cfg.disconnect_delay.0.max(Duration::from_millis(100)),
        response_limit: cfg.response_limit.max(1),
    };
    let node = app.node.clone();
    match svc.app {
        AppKind::Centrifugo => app.spawn_conn(async move {
            let info =
                TransportInfo { name: "sockjs", unidirectional: false, emulation: false, disconnect_push: false };
            let shared = ClientShared::new(Encoding::Json, info, node.config.client.queue_max_size);
            let mut client = Client::new(node.clone(), shared);
            client.set_request(http_user);
            driver::drive(node, client, t, Start::Idle).await;
        }),
        other => {
            let cancel = app.cancelled();
            // Counted like a client connection (see `websocket`).
            app.spawn_conn(async move {
                if t.open().await.is_ok() {
                    run_test_app(other, &mut t, cancel).await;
                }
            })
        }
    }
}

/// `xhr_send` / `jsonp_send`: a JSON array of messages for the session.
async fn send(app: &Arc<App>, key: &str, req: Request<Incoming>, jsonp: bool) -> Response<Body> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    let limit = app.node.config.websocket.message_size_limit;
    let body = match h::read_body(req.into_body(), limit, app.node.config.http_server.read_body_timeout.0).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let payload: Option<String> = if jsonp && form {
        std::str::from_utf8(&body).ok().and_then(|s| h::query_decoded(s, "d"))
    } else {
        String::from_utf8(body.to_vec()).ok()
    };
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "Payload expected.");
    };
    let msgs: Vec<String> = match frames::parse_messages(&payload) {
        Ok(m) => m,
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "Broken JSON encoding."),
    };
    let handle = match app.sockjs.lookup(key) {
        Lookup::Live(h) => h,
        _ => return plain(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    if !msgs.is_empty() {
        match tokio::time::timeout(Duration::from_secs(5), handle.inbound.send(msgs)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return plain(StatusCode::NOT_FOUND, "404 page not found\n"),
            Err(_) => return plain(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n"),
        }
    }
    if jsonp {
        with_type(plain(StatusCode::OK, "ok"), "text/plain; charset=UTF-8")
    } else {
        with_type(h::empty(StatusCode::NO_CONTENT), "text/plain; charset=UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_escape_like_sockjs() {
        assert_eq!(frames::messages(&[b"{\"a\":\"x\"}"]), b"a[\"{\\\"a\\\":\\\"x\\\"}\"]".to_vec());
        assert_eq!(frames::close(3001, "shutdown"), b"c[3001,\"shutdown\"]".to_vec());
        let mut out = Vec::new();
        frames::quote(&mut out, "\u{2028}\u{1}é");
        assert_eq!(String::from_utf8(out).unwrap(), "\"\\u2028\\u0001é\"");
    }

    #[tokio::test(start_paused = true)]
    async fn registry_keeps_closed_sessions_for_the_delay_then_forgets_them() {
        let r = Registry::default();
        let (h, _a, _i) = r.create("svc/s1").ok().expect("created");
        assert!(matches!(r.lookup("svc/s1"), Lookup::Live(_)));
        assert!(matches!(r.create("svc/s1"), Err(Lookup::Live(_))));
        r.mark_closed("svc/s1", h.id, Bytes::from_static(b"c[3000,\"x\"]"), Duration::from_secs(5));
        assert!(matches!(r.lookup("svc/s1"), Lookup::Closed(_)));
        // A stale owner (another id) cannot remove or close what is there now.
        r.remove_live("svc/s1", h.id);
        assert_eq!(r.len(), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(r.lookup("svc/s1"), Lookup::Missing));
        assert_eq!(r.len(), 0);
        // Expired entries that nobody looks up are swept when sessions are created.
        for i in 0..200 {
            let key = format!("svc/c{i}");
            let (h, _a, _i) = r.create(&key).ok().expect("created");
            r.mark_closed(&key, h.id, Bytes::new(), Duration::from_secs(1));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..2000 {
            let _ = r.create(&format!("svc/n{i}"));
        }
        assert_eq!(r.len(), 2000, "expired closed sessions were not swept");
    }

    #[test]
    fn http_date_is_well_formed() {
        let d = httpdate_in_a_year();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }

    #[test]
    fn services_match_prefixes() {
        let mut cfg = Config::default();
        cfg.sockjs.enabled = true;
        cfg.sockjs.test_services = true;
        let (s, rest) = service_for(&cfg, "/connection/sockjs/info").unwrap();
        assert_eq!((s.app, rest.as_str()), (AppKind::Centrifugo, "/info"));
        let (s, _) = service_for(&cfg, "/sockjs_test/disabled_websocket_echo/1/2/xhr").unwrap();
        assert_eq!(s.app, AppKind::Echo);
        assert!(!s.websocket);
        assert!(service_for(&cfg, "/connection/sockjsx").is_none());
    }
}
