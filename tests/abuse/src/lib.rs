//! The abuse suite's harness: the real `gyre` binary as a child process on a
//! free loopback port, a raw WebSocket client, raw HTTP, token minting and
//! the child's resident memory. Each test in `tests/` is one attack (a row or
//! bullet of issue 10); every wait has a deadline, so a server that hangs
//! fails the test instead of hanging the suite.
//!
//! The binary is `$GYRE_BIN`, else `target/debug/gyre` of this workspace
//! (`cargo build` first; `tests/run-all.sh` does).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// HMAC key of the base config.
pub const SECRET: &str = "abuse-suite-hmac-secret-0123456789";
/// API key of the base config.
pub const API_KEY: &str = "abuse-suite-api-key";
/// Default deadline for one answer.
pub const WAIT: Duration = Duration::from_secs(5);

/// The binary under test.
pub fn gyre_bin() -> PathBuf {
    match std::env::var_os("GYRE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/gyre"),
    }
}

/// A free TCP port on 127.0.0.1 (released before returning: the server binds it next).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Config every test extends: tokens, API key, permissive default namespace.
pub fn base_config(port: u16) -> Value {
    json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "health": {"enabled": true},
        "log": {"level": "warn"},
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["http://allowed.example"]},
        "http_api": {"key": API_KEY},
        "channel": {"without_namespace": {"allow_subscribe_for_client": true, "allow_publish_for_subscriber": true}}
    })
}

/// Deep-merges `patch` into `base` (objects merge, everything else replaces).
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

/// A running `gyre` child process; killed on drop.
pub struct Gyre {
    /// The public listener.
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gyre {
    /// Starts the binary with `base_config` + `patch` and waits for `/health/ready`.
    pub async fn start(patch: Value) -> Gyre {
        Self::start_with_env(patch, &[]).await
    }

    /// As [`Gyre::start`], with extra environment variables.
    pub async fn start_with_env(patch: Value, env: &[(&str, &str)]) -> Gyre {
        let port = free_port();
        let mut cfg = base_config(port);
        merge(&mut cfg, patch);
        let dir = std::env::temp_dir().join(format!("gyre-abuse-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.json");
        std::fs::write(&path, cfg.to_string()).expect("config written");
        let mut cmd = Command::new(gyre_bin());
        cmd.arg("-c").arg(&path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", gyre_bin().display()));
        let g = Gyre { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, _dir: TempDir(dir) };
        g.wait_healthy().await;
        g
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Ok((200, _))) = tokio::time::timeout(WAIT, http_get(self.addr, "/health/ready")).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gyre did not answer /health/ready on {} within 20 s", self.addr);
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the child in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line");
        kb * 1024
    }

    /// Open file descriptors of the child.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// Sends a signal to the child (`"TERM"`, `"INT"`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("kill runs");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the child to exit; `None` if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// Calls `/api/<method>` with the API key.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        let (status, text) = http_post(
            self.addr,
            &format!("/api/{method}"),
            &body.to_string(),
            &[("X-API-Key", API_KEY), ("Content-Type", "application/json")],
        )
        .await
        .expect("API answered");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

impl Drop for Gyre {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw HTTP/1.1 GET; `(status, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await
}

/// Raw HTTP/1.1 POST; `(status, body)`.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    http_request(addr, &req).await
}

async fn http_request(addr: SocketAddr, req: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in time"))??;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n + 2 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// An HS256 token with these claims, signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    let claims: HashMap<String, Value> = serde_json::from_value(claims).expect("claims object");
    gyre_node::auth::sign_hs256(SECRET, &claims)
}

/// A connection token for `user`, valid for an hour.
pub fn user_token(user: &str) -> String {
    token(json!({"sub": user, "exp": now() + 3600}))
}

/// Unix seconds.
pub fn now() -> i64 {
    gyre_node::node::unix_now()
}

/// What the server sent on a WebSocket.
#[derive(Debug)]
pub enum Event {
    /// JSON messages of one frame.
    Json(Vec<Value>),
    /// A binary frame.
    Binary(Vec<u8>),
    /// Close code and reason (1006: dropped without a close frame).
    Close(u16, String),
}

/// A JSON-protocol WebSocket client with no SDK in between.
pub struct Ws {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Opens a WebSocket to `url`.
    pub async fn open(url: &str) -> Ws {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("handshake in time")
            .expect("websocket handshake");
        Ws { ws }
    }

    /// Opens a WebSocket to `url` over a socket whose receive buffer is
    /// asked to be `bytes` (a reader that falls behind sooner).
    pub async fn open_with_recv_buffer(url: &str, bytes: u32) -> Ws {
        let addr: SocketAddr =
            url.trim_start_matches("ws://").split('/').next().unwrap().parse().expect("ws://ip:port/...");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("handshake in time")
        .expect("websocket handshake");
        Ws { ws }
    }

    /// Sends one text frame.
    pub async fn send(&mut self, v: &Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    /// Next event within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        loop {
            let m = tokio::time::timeout(within, self.ws.next()).await.ok()?;
            return Some(match m {
                Some(Ok(Message::Text(t))) => Event::Json(
                    t.split('\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_str(l).expect("JSON line"))
                        .collect(),
                ),
                Some(Ok(Message::Binary(b))) => Event::Binary(b.to_vec()),
                Some(Ok(Message::Close(Some(f)))) => Event::Close(f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => Event::Close(1005, String::new()),
                None => Event::Close(1006, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Event::Close(1006, e.to_string()),
            });
        }
    }

    /// Sends one text frame as given (for payloads a JSON value cannot hold).
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_string().into())).await.expect("send");
    }

    /// Next text frame as it came (no JSON parsing: for payloads a JSON
    /// parser with a depth limit would refuse); `Err` carries a close or a
    /// binary frame as an [`Event`]. `None` if nothing came within `within`.
    pub async fn next_text_within(&mut self, within: Duration) -> Option<Result<String, Event>> {
        loop {
            let m = tokio::time::timeout(within, self.ws.next()).await.ok()?;
            return Some(match m {
                Some(Ok(Message::Text(t))) => Ok(t.to_string()),
                Some(Ok(Message::Binary(b))) => Err(Event::Binary(b.to_vec())),
                Some(Ok(Message::Close(Some(f)))) => Err(Event::Close(f.code.into(), f.reason.to_string())),
                Some(Ok(Message::Close(None))) => Err(Event::Close(1005, String::new())),
                None => Err(Event::Close(1006, String::new())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(Event::Close(1006, e.to_string())),
            });
        }
    }

    /// Next event within [`WAIT`]; panics if none.
    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT).await.expect("server answered in time")
    }

    /// Answers the server's pings (`{}`) among `msgs` with a pong (`{}`), as
    /// every SDK does: a test client that idles past the ping interval plus
    /// `client.pong_timeout` is closed with 3012 otherwise.
    pub async fn answer_pings(&mut self, msgs: &[Value]) {
        for m in msgs {
            if m.as_object().is_some_and(|o| o.is_empty()) {
                self.send(&json!({})).await;
            }
        }
    }

    /// Reads for `d`, answering pings and dropping pushes, as an idle SDK
    /// does; panics if the server closes meanwhile.
    pub async fn idle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.next_within(left).await {
                None => return,
                Some(Event::Json(msgs)) => self.answer_pings(&msgs).await,
                Some(Event::Binary(_)) => {}
                Some(other) => panic!("closed while idle: {other:?}"),
            }
        }
    }

    /// Sends a command and returns the reply with its id (pushes before it
    /// are skipped, pings answered).
    pub async fn call(&mut self, id: u32, cmd: Value) -> Value {
        let mut c = cmd;
        c["id"] = json!(id);
        self.send(&c).await;
        loop {
            match self.next().await {
                Event::Json(msgs) => {
                    self.answer_pings(&msgs).await;
                    if let Some(r) = msgs.into_iter().find(|m| m["id"] == id) {
                        return r;
                    }
                }
                other => panic!("expected the reply to {id}, got {other:?}"),
            }
        }
    }

    /// Waits for the close frame (skipping messages); `(code, reason)`.
    pub async fn close_code(&mut self) -> (u16, String) {
        loop {
            if let Event::Close(c, r) = self.next().await {
                return (c, r);
            }
        }
    }
}
