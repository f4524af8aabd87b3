//! Test harness: the real server in-process on 127.0.0.1:0, a raw WebSocket
//! client, token minting and an HTTP API helper. Every wait has a deadline so
//! a broken server fails a test instead of hanging it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gyre_node::Node;
use gyre_server::http::Running;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    running: Option<Running>,
}

/// Base config every test extends: tokens, API key, permissive default namespace.
pub fn base_config() -> Value {
    json!({
        "http_server": {"port": 0, "address": "127.0.0.1"},
        "health": {"enabled": true},
        "log": {"level": "error"},
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["http://allowed.example"]},
        "http_api": {"key": API_KEY},
        "rpc": {"ping": {"enabled": true}},
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": true, "allow_publish_for_subscriber": true,
                                  "presence": true, "allow_presence_for_subscriber": true},
            "namespaces": [
                {"name": "ro", "allow_subscribe_for_client": true},
                {"name": "hist", "allow_subscribe_for_client": true, "history_size": 100, "history_ttl": "60s",
                 "force_recovery": true, "allow_history_for_subscriber": true}
            ]
        }
    })
}

/// Deep-merges `patch` into `base`.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

impl TestServer {
    pub async fn start(patch: Value) -> TestServer {
        let mut cfg = base_config();
        merge(&mut cfg, patch);
        let loaded = gyre_server::config_load::load(Some(cfg), &HashMap::new(), &vec![]).expect("valid test config");
        let node = gyre_server::build_node(loaded.config).expect("node builds");
        let running = gyre_server::http::start(node.clone()).await.expect("server starts");
        TestServer { addr: running.addr, node, running: Some(running) }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub async fn shutdown(&mut self) -> bool {
        self.running.take().expect("running").shutdown(Duration::from_secs(5)).await
    }

    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        api_call(self.addr, method, &body.to_string(), Some(API_KEY)).await
    }
}

/// Raw HTTP/1.1 POST (no client library between the test and the server).
pub async fn http_post(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("response in time").expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

pub async fn api_call(addr: SocketAddr, method: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        headers.push(("X-API-Key", k));
    }
    let (status, body) = http_post(addr, &format!("/api/{method}"), body, &headers).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

pub fn token(claims: Value) -> String {
    let claims: HashMap<String, Value> = serde_json::from_value(claims).expect("claims object");
    gyre_node::auth::sign_hs256(SECRET, &claims)
}

pub fn user_token(user: &str) -> String {
    token(json!({"sub": user, "exp": gyre_node::node::unix_now() + 3600}))
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct WsClient {
    pub ws: Ws,
    pub protobuf: bool,
}

/// What the server sent: messages (JSON values) or a close code.
#[derive(Debug)]
pub enum Event {
    Json(Vec<Value>),
    Binary(Vec<u8>),
    Close(u16, String),
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_with(url, None, None).await
    }

    pub async fn connect_with(url: &str, protocol: Option<&str>, origin: Option<&str>) -> WsClient {
        let mut req = url.into_client_request().expect("request");
        if let Some(p) = protocol {
            req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket handshake");
        WsClient { ws, protobuf: protocol == Some("centrifuge-protobuf") }
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_string().into())).await.expect("send");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::Binary(b.into())).await.expect("send");
    }

    /// Next server event within the deadline.
    pub async fn next(&mut self) -> Event {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next()).await.expect("server answered in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Event::Json(
                        t.split('\n').map(|l| serde_json::from_str(l).expect("valid JSON line")).collect(),
                    );
                }
                Some(Ok(Message::Binary(b))) => return Event::Binary(b.to_vec()),
                Some(Ok(Message::Close(Some(f)))) => return Event::Close(f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) | None => return Event::Close(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Event::Close(1006, e.to_string()),
            }
        }
    }

    /// Collects JSON messages until `pred` holds for one; returns all seen.
    pub async fn json_until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Event::Json(msgs) => {
                    let done = msgs.iter().any(&pred);
                    seen.extend(msgs);
                    if done {
                        return seen;
                    }
                }
                other => panic!("expected JSON, got {other:?} after {seen:?}"),
            }
        }
    }

    /// Waits for the close code, skipping messages.
    pub async fn close_code(&mut self) -> (u16, String) {
        loop {
            if let Event::Close(c, r) = self.next().await {
                return (c, r);
            }
        }
    }

    /// Connects (JSON) and returns the connect result.
    pub async fn handshake(&mut self, token: &str) -> Value {
        self.send_text(&json!({"id": 1, "connect": {"token": token}}).to_string()).await;
        let msgs = self.json_until(|m| m["id"] == 1).await;
        msgs.into_iter().find(|m| m["id"] == 1).expect("connect reply")
    }
}
