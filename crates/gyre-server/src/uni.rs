//! Unidirectional transports: `/connection/uni_websocket`,
//! `/connection/uni_sse` and `/connection/uni_http_stream`.
//!
//! The client sends one ConnectRequest (query `cf_connect`, POST body, or the
//! first WebSocket message) and then only listens: bare pushes, `{}` pings,
//! and a disconnect push at the end. Only server-side subscriptions exist, so
//! the same client state machine serves them through
//! `Client::connect_unidirectional`; a bad request is refused before any
//! connection state exists (HTTP 400, or Close 3501 on WebSocket).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gyre_node::{Client, ClientShared, Disconnect, Encoding, TransportInfo};
use gyre_proto::protocol::ConnectRequest;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::driver::{self, Start};
use crate::http::{self as h, App, Body};
use crate::stream::StreamFormat;
use crate::ws::{WsMode, WsTransport};

/// Parses a JSON ConnectRequest object (empty input = `{}`).
pub fn parse_connect(data: &[u8]) -> Option<ConnectRequest> {
    let data = if data.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { data };
    // Validate it is exactly one JSON object before embedding it in a command.
    let v: &serde_json::value::RawValue = serde_json::from_slice(data).ok()?;
    if !v.get().trim_start().starts_with('{') {
        return None;
    }
    let cmd = format!("{{\"id\":1,\"connect\":{}}}", v.get());
    gyre_proto::json::decode_command(cmd.as_bytes()).ok()?.connect
}

/// `/connection/uni_sse` and `/connection/uni_http_stream`.
pub(crate) async fn http(app: Arc<App>, req: Request<Incoming>, sse: bool) -> Response<Body> {
    let cfg = app.node.config.clone();
    let headers = req.headers().clone();
    let socket = h::socket_of(req.extensions());
    if req.method() == Method::OPTIONS {
        return h::preflight(&cfg, &headers, if sse { "GET, POST, OPTIONS" } else { "POST, OPTIONS" });
    }
    if let Err(r) = app.admit(&headers) {
        return r;
    }
    let limit = if sse { cfg.uni_sse.max_request_body_size } else { cfg.uni_http_stream.max_request_body_size };
    let data = match req.method().clone() {
        Method::GET if sse => {
            Bytes::from(h::query_decoded(req.uri().query().unwrap_or(""), "cf_connect").unwrap_or_default())
        }
        Method::POST => match h::read_body(req.into_body(), limit, cfg.http_server.read_body_timeout.0).await {
            Ok(b) => b,
            Err(r) => return r,
        },
        _ => return h::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"),
    };
    if data.len() > limit {
        return h::text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large\n");
    }
    let Some(connect) = parse_connect(&data) else {
        return h::text(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    let (format, name) = if sse { (StreamFormat::Sse, "uni_sse") } else { (StreamFormat::Lines, "uni_http_stream") };
    let session = uuid::Uuid::new_v4().to_string();
    let http_user = h::conn_request(&app.node, &headers);
    if let Some(s) = &socket {
        s.promote();
    }
    crate::emulation::spawn_stream(
        &app,
        name,
        format,
        Encoding::JsonUni,
        Start::Uni(Box::new(connect)),
        None,
        session,
        http_user,
        &headers,
    )
}

/// Runs one upgraded `/connection/uni_websocket` connection.
pub(crate) async fn websocket(
    app: Arc<App>,
    upgraded: hyper::upgrade::Upgraded,
    query: String,
    http_user: gyre_node::client::ConnRequest,
) {
    let node = app.node.clone();
    let cfg = &node.config;
    let io = crate::ws::WsIo::from_upgraded(upgraded);
    let ping = cfg.client.ping_interval.0.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(25));
    let pong = cfg.client.pong_timeout.0.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(10));
    let mode = WsMode::Uni {
        join: cfg.uni_websocket.join_push_messages,
        disconnect_push: !cfg.uni_websocket.disable_disconnect_push,
        ping,
        pong,
    };
    let write_timeout = cfg.websocket.write_timeout.0.max(Duration::from_millis(100));
    let mut t = WsTransport::new(io, cfg.uni_websocket.message_size_limit, mode, write_timeout, Encoding::JsonUni);
    let raw = match h::query_decoded(&query, "cf_connect") {
        Some(q) => Some(Bytes::from(q)),
        None => {
            let deadline = tokio::time::Instant::now() + cfg.client.stale_close_delay.0;
            match t.first_message(deadline).await {
                Some(m) => Some(m),
                None => {
                    // Nothing within the stale delay, or the peer left.
                    t.close_with(Disconnect::STALE.code as u16, &Disconnect::STALE.reason).await;
                    return;
                }
            }
        }
    };
    let Some(connect) = raw.as_deref().and_then(parse_connect) else {
        node.record_disconnect(Disconnect::BAD_REQUEST.code);
        t.close_with(Disconnect::BAD_REQUEST.code as u16, &Disconnect::BAD_REQUEST.reason).await;
        return;
    };
    let info = TransportInfo { name: "uni_websocket", unidirectional: true, emulation: false, disconnect_push: true };
    let session = uuid::Uuid::new_v4().to_string();
    let shared = ClientShared::with_session(Encoding::JsonUni, info, cfg.client.queue_max_size, session);
    let mut client = Client::new(node.clone(), shared);
    client.set_request(http_user);
    driver::drive(node, client, t, Start::Uni(Box::new(connect))).await;
}
