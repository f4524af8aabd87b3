//! Bidirectional emulation: `/connection/http_stream` and `/connection/sse`
//! carry server→client data on one long response; the client's later
//! commands arrive as separate `POST /emulation` requests naming the session
//! and the node that owns it.
//!
//! Those POSTs may land on any node behind a load balancer, so routing is a
//! seam: a request for this node goes to the node-local [`Sessions`]
//! registry; a request naming another node goes to an
//! [`EmulationForwarder`] (the NATS control plane plugs in there; without one
//! the node is unknown and the answer is 404, on which centrifuge-js
//! reconnects). A session that is gone answers 204, as Centrifugo does: the
//! client learns from its stream ending.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gyre_node::{Client, ClientShared, Encoding, TransportInfo};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use crate::driver::{self, Start};
use crate::http::{self as h, App, Body};
use crate::stream::{ChannelBody, StreamFormat, StreamTransport};

/// Commands waiting for one session's connection at most; more is overload.
const INBOUND_CAPACITY: usize = 64;

/// Why a forwarded emulation request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// No node by that id (404).
    UnknownNode,
    /// The control plane failed (500).
    Internal(String),
}

/// Delivers emulation commands to a session on another node.
pub trait EmulationForwarder: Send + Sync + 'static {
    /// Hands `data` to `session` on `node`.
    fn forward(
        &self,
        node: String,
        session: String,
        data: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send>>;
}

/// Where an emulation request goes.
pub enum SessionRoute {
    /// This node owns the session.
    Local,
    /// Another node does; forward through the control plane.
    Remote(Arc<dyn EmulationForwarder>),
    /// Nobody knows that node.
    UnknownNode,
}

/// Outcome of a local delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Queued for the connection.
    Ok,
    /// No such session here (answered 204 all the same).
    NoSession,
    /// The session's inbox stayed full (the connection is not keeping up).
    Busy,
}

/// Forwards emulation commands through the node's control plane (NATS in a
/// cluster): `/emulation` on any node reaches the session on the node that
/// owns its stream. Holds the node weakly: the node owns the handler that
/// owns the registry that owns this forwarder.
struct NodeForwarder {
    node: std::sync::Weak<gyre_node::Node>,
}

/// Wire format of a forwarded request: varint session length, session, data.
pub fn encode_forward(session: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(session.len() + data.len() + 5);
    prost::encoding::encode_varint(session.len() as u64, &mut out);
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// Inverse of [`encode_forward`]; `None` for a truncated or non-UTF-8 session.
pub fn decode_forward(mut b: Bytes) -> Option<(String, Bytes)> {
    let mut slice = &b[..];
    let len = prost::encoding::decode_varint(&mut slice).ok()? as usize;
    let header = b.len() - slice.len();
    if slice.len() < len {
        return None;
    }
    let session = std::str::from_utf8(&slice[..len]).ok()?.to_string();
    let data = b.split_off(header + len);
    Some((session, data))
}

impl EmulationForwarder for NodeForwarder {
    fn forward(
        &self,
        node: String,
        session: String,
        data: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send>> {
        let n = self.node.upgrade();
        Box::pin(async move {
            let n = n.ok_or_else(|| ForwardError::Internal("node is shutting down".into()))?;
            if !n.nodes().iter().any(|i| i.uid == node) {
                return Err(ForwardError::UnknownNode);
            }
            n.send_to_node(&node, encode_forward(&session, &data))
                .await
                .map_err(|e| ForwardError::Internal(e.message.to_string()))
        })
    }
}

/// Routes emulation requests between nodes: installs the forwarder and
/// delivers requests forwarded here to local sessions.
pub fn connect_cluster(node: &Arc<gyre_node::Node>, sessions: &Arc<Sessions>) {
    sessions.set_forwarder(Arc::new(NodeForwarder { node: Arc::downgrade(node) }));
    let sessions = Arc::downgrade(sessions);
    node.on_node_message(Arc::new(move |_from, bytes| {
        let Some((session, data)) = decode_forward(bytes) else {
            tracing::debug!("malformed forwarded emulation request dropped");
            return;
        };
        let Some(sessions) = sessions.upgrade() else { return };
        // Bounded: deliver_local gives up after one second on a full inbox.
        tokio::spawn(async move {
            let _ = sessions.deliver_local(&session, data).await;
        });
    }));
}

/// The node-local registry of emulation sessions.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
    forwarder: RwLock<Option<Arc<dyn EmulationForwarder>>>,
}

impl Sessions {
    /// Installs the control plane used for sessions on other nodes.
    pub fn set_forwarder(&self, f: Arc<dyn EmulationForwarder>) {
        *self.forwarder.write() = Some(f);
    }

    /// Routes a request naming `node`.
    pub fn route(&self, local_node: &str, node: &str) -> SessionRoute {
        if node == local_node {
            return SessionRoute::Local;
        }
        match self.forwarder.read().clone() {
            Some(f) => SessionRoute::Remote(f),
            None => SessionRoute::UnknownNode,
        }
    }

    /// Hands commands to a session of this node (also the entry point for
    /// commands forwarded here from another node).
    pub async fn deliver_local(&self, session: &str, data: Bytes) -> Delivered {
        let Some(tx) = self.map.lock().get(session).cloned() else {
            return Delivered::NoSession;
        };
        match tokio::time::timeout(Duration::from_secs(1), tx.send(data)).await {
            Ok(Ok(())) => Delivered::Ok,
            Ok(Err(_)) => Delivered::NoSession,
            Err(_) => Delivered::Busy,
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn register(self: &Arc<Self>, session: String) -> (mpsc::Receiver<Bytes>, SessionGuard) {
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        self.map.lock().insert(session.clone(), tx);
        (rx, SessionGuard { sessions: self.clone(), session })
    }
}

/// Removes a session from the registry when its connection ends.
struct SessionGuard {
    sessions: Arc<Sessions>,
    session: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.map.lock().remove(&self.session);
    }
}

fn stream_headers(resp: &mut Response<Body>, content_type: &'static str) {
    let hs = resp.headers_mut();
    hs.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    hs.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    hs.insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
    hs.insert("expire", header::HeaderValue::from_static("0"));
    hs.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    hs.insert(header::CONNECTION, header::HeaderValue::from_static("keep-alive"));
}

/// The streaming response plus the spawned connection.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_stream(
    app: &Arc<App>,
    name: &'static str,
    format: StreamFormat,
    encoding: Encoding,
    start: Start,
    inbound: Option<(mpsc::Receiver<Bytes>, Box<dyn Send + Sync>)>,
    session: String,
    http_user: gyre_node::client::ConnRequest,
    origin_headers: &http::HeaderMap,
) -> Response<Body> {
    let node = app.node.clone();
    let unidirectional = matches!(start, Start::Uni(_));
    let info = TransportInfo { name, unidirectional, emulation: !unidirectional, disconnect_push: true };
    let shared = ClientShared::with_session(encoding, info, node.config.client.queue_max_size, session);
    let mut client = Client::new(node.clone(), shared);
    client.set_request(http_user);
    // SSE clients get a first line at once so proxies and EventSource see the stream open.
    let prelude = (format == StreamFormat::Sse).then(|| Bytes::from_static(crate::stream::SSE_PRELUDE));
    let (body, tx) = ChannelBody::new(prelude);
    let (rx, guard) = match inbound {
        Some((rx, g)) => (Some(rx), Some(g)),
        None => (None, None),
    };
    let write_timeout = node.config.websocket.write_timeout.0.max(Duration::from_millis(100));
    let transport = StreamTransport::new(tx, rx, format, encoding, write_timeout, guard);
    app.spawn_conn(driver::drive(node, client, transport, start));
    let mut resp = Response::new(body);
    let ct = match format {
        StreamFormat::Sse => "text/event-stream; charset=utf-8",
        StreamFormat::Protobuf => "application/octet-stream",
        StreamFormat::Lines => "application/json",
    };
    stream_headers(&mut resp, ct);
    h::cors(&app.node.config, origin_headers, &mut resp);
    resp
}

/// `/connection/http_stream` and `/connection/sse`.
pub(crate) async fn connection(app: Arc<App>, req: Request<Incoming>, sse: bool) -> Response<Body> {
    let cfg = app.node.config.clone();
    let headers = req.headers().clone();
    let socket = h::socket_of(req.extensions());
    if req.method() == Method::OPTIONS {
        return h::preflight(&cfg, &headers, "GET, POST, OPTIONS");
    }
    if let Err(r) = app.admit(&headers) {
        return r;
    }
    let limit = if sse { cfg.sse.max_request_body_size } else { cfg.http_stream.max_request_body_size };
    let protobuf = !sse && h::is_octet_stream(&headers);
    let data = match (req.method().clone(), sse) {
        (Method::GET, true) => {
            let q = req.uri().query().unwrap_or("");
            match h::query_decoded(q, "cf_connect") {
                Some(v) if !v.is_empty() => Bytes::from(v),
                _ => return h::text(StatusCode::BAD_REQUEST, "Bad Request\n"),
            }
        }
        (Method::POST, _) => match h::read_body(req.into_body(), limit, cfg.http_server.read_body_timeout.0).await {
            Ok(b) => b,
            Err(r) => return r,
        },
        _ => return h::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"),
    };
    if data.len() > limit {
        return h::text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large\n");
    }
    let (format, encoding, name) = if sse {
        (StreamFormat::Sse, Encoding::Json, "sse")
    } else if protobuf {
        (StreamFormat::Protobuf, Encoding::Protobuf, "http_stream")
    } else {
        (StreamFormat::Lines, Encoding::Json, "http_stream")
    };
    // Refuse what cannot be a command stream before any connection state exists.
    if gyre_proto::decode_commands(encoding.protocol(), &data).is_err() {
        return h::text(StatusCode::BAD_REQUEST, "Bad Request\n");
    }
    let session = uuid::Uuid::new_v4().to_string();
    let (rx, guard) = app.sessions.register(session.clone());
    let http_user = h::conn_request(&app.node, &headers);
    if let Some(s) = &socket {
        s.promote();
    }
    spawn_stream(
        &app,
        name,
        format,
        encoding,
        Start::Data(Box::new(data)),
        Some((rx, Box::new(guard))),
        session,
        http_user,
        &headers,
    )
}

#[derive(serde::Deserialize)]
struct JsonEmulation<'a> {
    #[serde(default)]
    session: String,
    #[serde(default)]
    node: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// Parses a `POST /emulation` body into (session, node, data): a Protobuf
/// `EmulationRequest` when `protobuf`, else JSON whose `data` is a string
/// holding the commands (a raw JSON value is accepted too). `None` is a 400.
/// Pure, so the fuzz targets (crates/gyre-fuzz) exercise exactly this.
pub fn parse_emulation_body(body: &[u8], protobuf: bool) -> Option<(String, String, Bytes)> {
    if protobuf {
        use prost::Message;
        gyre_proto::protocol::EmulationRequest::decode(body).ok().map(|r| (r.session, r.node, r.data))
    } else {
        serde_json::from_slice::<JsonEmulation<'_>>(body).ok().and_then(|r| {
            let raw = r.data?.get();
            // `data` is a JSON string holding the commands; accept a raw object too.
            let data = match serde_json::from_str::<String>(raw) {
                Ok(s) => Bytes::from(s),
                Err(_) => Bytes::copy_from_slice(raw.as_bytes()),
            };
            Some((r.session, r.node, data))
        })
    }
}

/// `POST /emulation`.
pub(crate) async fn emulation(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let cfg = app.node.config.clone();
    let headers = req.headers().clone();
    if req.method() == Method::OPTIONS {
        return h::preflight(&cfg, &headers, "POST, OPTIONS");
    }
    if req.method() != Method::POST {
        return h::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    if !h::origin_allowed(&cfg.client.allowed_origins, &headers) {
        return h::text(StatusCode::FORBIDDEN, "Forbidden\n");
    }
    let body =
        match h::read_body(req.into_body(), cfg.emulation.max_request_body_size, cfg.http_server.read_body_timeout.0)
            .await
        {
            Ok(b) => b,
            Err(r) => return r,
        };
    let Some((session, node, data)) = parse_emulation_body(&body, h::is_octet_stream(&headers)) else {
        return h::text(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    let mut resp = match app.sessions.route(&app.node.uid, &node) {
        SessionRoute::Local => match app.sessions.deliver_local(&session, data).await {
            Delivered::Ok | Delivered::NoSession => h::empty(StatusCode::NO_CONTENT),
            Delivered::Busy => h::text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n"),
        },
        SessionRoute::Remote(f) => match f.forward(node, session, data).await {
            Ok(()) => h::empty(StatusCode::NO_CONTENT),
            Err(ForwardError::UnknownNode) => h::text(StatusCode::NOT_FOUND, "Not Found\n"),
            Err(ForwardError::Internal(e)) => {
                tracing::warn!(error = %e, "emulation forward failed");
                h::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        },
        SessionRoute::UnknownNode => h::text(StatusCode::NOT_FOUND, "Not Found\n"),
    };
    h::cors(&cfg, &headers, &mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_requests_round_trip() {
        let b = encode_forward("sess-1", b"{\"id\":2}");
        assert_eq!(decode_forward(b), Some(("sess-1".to_string(), Bytes::from_static(b"{\"id\":2}"))));
        assert_eq!(decode_forward(Bytes::from_static(&[0x05, b'a'])), None);
    }
}
