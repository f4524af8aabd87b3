//! HTTP-streaming and SSE emulation, the unidirectional transports, SockJS
//! and the demo page, against the real server with raw HTTP and WebSocket
//! clients (no SDK between the test and the wire). Every wait has a deadline.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn all_transports() -> Value {
    json!({
        "http_stream": {"enabled": true}, "sse": {"enabled": true},
        "uni_websocket": {"enabled": true}, "uni_sse": {"enabled": true}, "uni_http_stream": {"enabled": true},
        "sockjs": {"enabled": true, "test_services": true, "disconnect_delay": "1s"},
        "demo": {"enabled": true},
        "client": {"allowed_origins": ["*"]}
    })
}

async fn server() -> TestServer {
    TestServer::start(all_transports()).await
}

/// A raw HTTP/1.1 request whose (chunked) response body is read incrementally.
struct HttpStream {
    r: BufReader<TcpStream>,
    status: u16,
    head: String,
    buf: Vec<u8>,
    ended: bool,
}

impl HttpStream {
    async fn open(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write head");
        s.write_all(body).await.expect("write body");
        let mut r = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, r.read_line(&mut line)).await.expect("head in time").expect("read");
            assert!(n > 0, "connection closed before the response head: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        let mut me = HttpStream { r, status, head, buf: Vec::new(), ended: false };
        if !me.chunked() {
            // A fixed-length body: read it all.
            let len: usize = me.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut b = vec![0; len];
            tokio::time::timeout(WAIT, me.r.read_exact(&mut b)).await.expect("body in time").expect("body");
            me.buf = b;
            me.ended = true;
        }
        me
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }

    /// Reads one more chunk; false at the end of the body.
    async fn more(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.r.read_line(&mut line)).await.expect("chunk in time").unwrap_or(0);
        let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
        if n == 0 || size == 0 {
            self.ended = true;
            return false;
        }
        let mut b = vec![0; size + 2];
        tokio::time::timeout(WAIT, self.r.read_exact(&mut b)).await.expect("chunk body in time").expect("chunk");
        self.buf.extend_from_slice(&b[..size]);
        true
    }

    /// The next piece of the body ending with `delim` (delimiter removed); None at the end.
    async fn until(&mut self, delim: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                let piece = self.buf[..i].to_vec();
                self.buf.drain(..i + delim.len());
                return Some(piece);
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn json_line(&mut self) -> Option<Value> {
        let l = self.until(b"\n").await?;
        Some(
            serde_json::from_slice(&l)
                .unwrap_or_else(|e| panic!("bad JSON line {:?}: {e}", String::from_utf8_lossy(&l))),
        )
    }

    /// JSON lines until one satisfies `pred`.
    async fn json_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.json_line().await.expect("stream ended before the expected message");
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next SSE event's data.
    async fn sse(&mut self) -> Option<Value> {
        loop {
            let ev = self.until(b"\n\n").await?;
            let text = String::from_utf8(ev).expect("utf8");
            let data: Vec<&str> =
                text.lines().filter_map(|l| l.trim_start_matches('\r').strip_prefix("data: ")).collect();
            if !data.is_empty() {
                return Some(serde_json::from_str(&data.join("\n")).expect("event JSON"));
            }
        }
    }

    async fn sse_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.sse().await.expect("stream ended before the expected event");
            if pred(&v) {
                return v;
            }
        }
    }

    async fn body_text(mut self) -> String {
        while self.more().await {}
        String::from_utf8_lossy(&self.buf).to_string()
    }
}

async fn emulate(addr: SocketAddr, session: &str, node: &str, cmds: &[Value]) -> u16 {
    let data = cmds.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let body = json!({"session": session, "node": node, "data": data}).to_string();
    http_post(addr, "/emulation", &body, &[("Content-Type", "application/json")]).await.0
}

async fn publish(s: &TestServer, channel: &str, data: Value) {
    let (st, b) = s.api("publish", json!({"channel": channel, "data": data})).await;
    assert_eq!(st, 200, "{b}");
    assert!(b.get("error").is_none(), "{b}");
}

// ---------------------------------------------------------------- emulation

#[tokio::test]
async fn http_stream_json_connect_subscribe_publish_ping_and_disconnect_push() {
    let s = server().await;
    let tok = user_token("u1");
    let connect = json!({"id": 1, "connect": {"token": tok, "name": "raw"}}).to_string();
    let mut st = HttpStream::open(
        s.addr,
        "POST",
        "/connection/http_stream",
        &[("Content-Type", "application/json")],
        connect.as_bytes(),
    )
    .await;
    assert_eq!(st.status, 200);
    assert_eq!(st.header("x-accel-buffering").as_deref(), Some("no"));
    assert!(st.header("cache-control").unwrap().contains("no-store"));
    let reply = st.json_line().await.expect("connect reply");
    let session = reply["connect"]["session"].as_str().expect("session").to_string();
    let node = reply["connect"]["node"].as_str().expect("node").to_string();
    assert_eq!(node, s.node.uid);
    assert_eq!(reply["connect"]["pong"], true);

    assert_eq!(emulate(s.addr, &session, &node, &[json!({"id": 2, "subscribe": {"channel": "news"}})]).await, 204);
    let sub = st.json_until(|m| m["id"] == 2).await;
    assert!(sub.get("subscribe").is_some(), "{sub}");

    publish(&s, "news", json!({"text": "hi"})).await;
    let p = st.json_until(|m| m.get("push").is_some()).await;
    assert_eq!(p["push"]["channel"], "news");
    assert_eq!(p["push"]["pub"]["data"]["text"], "hi");

    // Two commands in one emulation request, replies in order on the stream.
    let cmds = [
        json!({"id": 3, "presence": {"channel": "news"}}),
        json!({"id": 4, "publish": {"channel": "news", "data": {"x": 1}}}),
    ];
    assert_eq!(emulate(s.addr, &session, &node, &cmds).await, 204);
    let pr = st.json_until(|m| m["id"] == 3).await;
    assert!(pr["presence"]["presence"].as_object().unwrap().len() == 1, "{pr}");
    st.json_until(|m| m["id"] == 4).await;

    let (code, b) = s.api("disconnect", json!({"user": "u1"})).await;
    assert_eq!(code, 200, "{b}");
    let d = st.json_until(|m| m.get("push").and_then(|p| p.get("disconnect")).is_some()).await;
    assert_eq!(d["push"]["disconnect"]["code"], 3503);
    assert!(st.json_line().await.is_none(), "stream must end after the disconnect push");
    // The session is gone: 204 all the same, as Centrifugo answers.
    assert_eq!(emulate(s.addr, &session, &node, &[json!({"id": 5, "presence": {"channel": "news"}})]).await, 204);
}

#[tokio::test]
async fn http_stream_protobuf_uses_varint_frames_and_protobuf_emulation_requests() {
    use gyre_proto::protocol::{Command, ConnectRequest, EmulationRequest, Reply, SubscribeRequest};
    let s = server().await;
    let connect = gyre_proto::codec::encode_protobuf_commands(&[Command {
        id: 1,
        connect: Some(ConnectRequest { token: user_token("p1"), ..Default::default() }),
        ..Default::default()
    }]);
    let mut st = HttpStream::open(
        s.addr,
        "POST",
        "/connection/http_stream",
        &[("Content-Type", "application/octet-stream")],
        &connect,
    )
    .await;
    assert_eq!(st.status, 200);
    assert_eq!(st.header("content-type").as_deref(), Some("application/octet-stream"));
    async fn next_reply(st: &mut HttpStream) -> Reply {
        loop {
            let mut b = st.buf.as_slice();
            if let Ok(r) = Reply::decode_length_delimited(&mut b) {
                let used = st.buf.len() - b.len();
                st.buf.drain(..used);
                return r;
            }
            assert!(st.more().await, "stream ended");
        }
    }
    let r = next_reply(&mut st).await;
    let c = r.connect.expect("connect result");
    assert!(!c.session.is_empty() && c.node == s.node.uid);
    let req = EmulationRequest {
        node: c.node.clone(),
        session: c.session.clone(),
        data: gyre_proto::codec::encode_protobuf_commands(&[Command {
            id: 2,
            subscribe: Some(SubscribeRequest { channel: "pb".into(), ..Default::default() }),
            ..Default::default()
        }])
        .into(),
    };
    let body = req.encode_to_vec();
    let mut raw =
        HttpStream::open(s.addr, "POST", "/emulation", &[("Content-Type", "application/octet-stream")], &body).await;
    assert_eq!(raw.status, 204);
    let _ = raw.more().await;
    let r = next_reply(&mut st).await;
    assert_eq!(r.id, 2);
    assert!(r.subscribe.is_some());
    publish(&s, "pb", json!({"n": 1})).await;
    let r = next_reply(&mut st).await;
    let p = r.push.expect("push");
    assert_eq!(p.channel, "pb");
    assert_eq!(serde_json::from_slice::<Value>(&p.r#pub.unwrap().data).unwrap(), json!({"n": 1}));
}

#[tokio::test]
async fn sse_get_with_cf_connect_and_post() {
    let s = server().await;
    let connect = json!({"id": 1, "connect": {"token": user_token("s1")}}).to_string();
    let q = urlencode(&connect);
    let mut st = HttpStream::open(s.addr, "GET", &format!("/connection/sse?cf_connect={q}"), &[], b"").await;
    assert_eq!(st.status, 200);
    assert_eq!(st.header("content-type").as_deref(), Some("text/event-stream; charset=utf-8"));
    let c = st.sse().await.expect("connect event");
    let (session, node) =
        (c["connect"]["session"].as_str().unwrap().to_string(), c["connect"]["node"].as_str().unwrap().to_string());
    assert_eq!(emulate(s.addr, &session, &node, &[json!({"id": 2, "subscribe": {"channel": "ev"}})]).await, 204);
    st.sse_until(|m| m["id"] == 2).await;
    publish(&s, "ev", json!({"line": "a\nb"})).await;
    let p = st.sse_until(|m| m.get("push").is_some()).await;
    assert_eq!(p["push"]["pub"]["data"]["line"], "a\nb");

    // POST with a JSON body works too.
    let mut st2 = HttpStream::open(
        s.addr,
        "POST",
        "/connection/sse",
        &[("Content-Type", "application/json")],
        connect.as_bytes(),
    )
    .await;
    assert_eq!(st2.status, 200);
    assert!(st2.sse().await.unwrap()["connect"]["session"].is_string());
}

/// SSE streams end every line with LF alone, from the first byte on. A proxy
/// (nginx with buffering off) often hands the client the stream's opening line
/// and the connect reply in one read; the `eventsource` npm polyfill 2.x (what
/// centrifuge-js uses in Node) rescans such a read from its start, so a CR
/// seen earlier makes it drop the LF of the blank line that ends the next
/// event: the connect reply was never dispatched and the client timed out.
/// Checked on the coalesced bytes up to the connect reply, as such a proxy
/// delivers them, for both SSE endpoints.
#[tokio::test]
async fn sse_streams_use_lf_line_endings_only() {
    let s = server().await;
    let connect = json!({"id": 1, "connect": {"token": user_token("lf")}}).to_string();
    let uni = json!({"token": user_token("lf")}).to_string();
    for (path, cf_connect) in [("/connection/sse", &connect), ("/connection/uni_sse", &uni)] {
        let q = urlencode(cf_connect);
        let mut st = HttpStream::open(s.addr, "GET", &format!("{path}?cf_connect={q}"), &[], b"").await;
        assert_eq!(st.status, 200, "{path}");
        // Everything up to the end of the connect reply's event, undrained.
        while !(st.buf.windows(9).any(|w| w == b"\"connect\"") && st.buf.ends_with(b"\n\n")) {
            assert!(st.more().await, "{path}: stream ended before the connect reply");
        }
        assert!(!st.buf.contains(&b'\r'), "{path}: CR in the SSE stream: {:?}", String::from_utf8_lossy(&st.buf));
    }
}

#[tokio::test]
async fn emulation_bad_input_gets_the_protocols_answers() {
    let s = server().await;
    let a = s.addr;
    // SSE without cf_connect, or with something that is not a command.
    assert_eq!(HttpStream::open(a, "GET", "/connection/sse", &[], b"").await.status, 400);
    assert_eq!(HttpStream::open(a, "GET", "/connection/sse?cf_connect=%7Bnope", &[], b"").await.status, 400);
    assert_eq!(HttpStream::open(a, "GET", "/connection/sse?cf_connect=%zz", &[], b"").await.status, 400);
    assert_eq!(HttpStream::open(a, "POST", "/connection/http_stream", &[], b"not json").await.status, 400);
    assert_eq!(
        HttpStream::open(
            a,
            "POST",
            "/connection/http_stream",
            &[("Content-Type", "application/octet-stream")],
            &[0xff, 0xff, 0xff]
        )
        .await
        .status,
        400
    );
    // Oversize bodies: 413 on the stream endpoints and on /emulation.
    let big = vec![b'x'; 70_000];
    assert_eq!(HttpStream::open(a, "POST", "/connection/http_stream", &[], &big).await.status, 413);
    assert_eq!(HttpStream::open(a, "POST", "/emulation", &[], &big).await.status, 413);
    assert_eq!(HttpStream::open(a, "POST", "/connection/uni_http_stream", &[], &big).await.status, 413);
    // /emulation: unparsable → 400, unknown session → 204, unknown node → 404.
    assert_eq!(http_post(a, "/emulation", "{", &[]).await.0, 400);
    assert_eq!(http_post(a, "/emulation", "[1]", &[]).await.0, 400);
    assert_eq!(http_post(a, "/emulation", "x", &[("Content-Type", "application/octet-stream")]).await.0, 400);
    assert_eq!(
        emulate(a, "no-such-session", &s.node.uid, &[json!({"id": 1, "presence": {"channel": "x"}})]).await,
        204
    );
    assert_eq!(emulate(a, "no-such-session", "other-node", &[json!({"id": 1})]).await, 404);
    // Preflight.
    let pre = HttpStream::open(
        a,
        "OPTIONS",
        "/emulation",
        &[("Origin", "http://x.example"), ("Access-Control-Request-Headers", "content-type")],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin").as_deref(), Some("http://x.example"));
    assert_eq!(pre.header("access-control-allow-headers").as_deref(), Some("content-type"));
    // A garbage command on a live session ends it with 3501 as a disconnect push.
    let connect = json!({"id": 1, "connect": {"token": user_token("g1")}}).to_string();
    let mut st = HttpStream::open(a, "POST", "/connection/http_stream", &[], connect.as_bytes()).await;
    let c = st.json_line().await.unwrap();
    let body = json!({"session": c["connect"]["session"], "node": c["connect"]["node"], "data": "{broken"}).to_string();
    assert_eq!(http_post(a, "/emulation", &body, &[]).await.0, 204);
    let d = st.json_until(|m| m.get("push").is_some()).await;
    assert_eq!(d["push"]["disconnect"]["code"], 3501);
    // The server is still fine.
    assert_eq!(s.api("info", json!({})).await.0, 200);
}

#[tokio::test]
async fn emulation_session_ends_when_the_client_goes_away() {
    let s = server().await;
    let connect = json!({"id": 1, "connect": {"token": user_token("gone")}}).to_string();
    let mut st = HttpStream::open(s.addr, "POST", "/connection/http_stream", &[], connect.as_bytes()).await;
    st.json_line().await.unwrap();
    assert_eq!(s.node.hub().user_clients("gone").len(), 1);
    drop(st);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !s.node.hub().user_clients("gone").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "connection not cleaned up after the client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------- uni

#[tokio::test]
async fn uni_http_stream_pushes_bare_messages_and_refuses_bad_input() {
    let s = server().await;
    let body = json!({"token": user_token("uh"), "subs": {"uni": {}}}).to_string();
    let mut st = HttpStream::open(s.addr, "POST", "/connection/uni_http_stream", &[], body.as_bytes()).await;
    assert_eq!(st.status, 200);
    let c = st.json_line().await.unwrap();
    assert!(c["connect"]["subs"]["uni"].is_object(), "{c}");
    assert!(c["connect"]["session"].is_string());
    assert!(c["connect"].get("pong").is_none());
    assert!(c.get("id").is_none());
    publish(&s, "uni", json!({"a": 1})).await;
    let p = st.json_until(|m| m.get("pub").is_some()).await;
    assert_eq!(p, json!({"channel": "uni", "pub": {"data": {"a": 1}}}));
    s.api("disconnect", json!({"user": "uh"})).await;
    let d = st.json_until(|m| m.get("disconnect").is_some()).await;
    assert_eq!(d["disconnect"]["code"], 3503);
    assert!(st.json_line().await.is_none());

    // A bad token: a disconnect push with 3500, then the end.
    let mut st =
        HttpStream::open(s.addr, "POST", "/connection/uni_http_stream", &[], br#"{"token":"bad.token.here"}"#).await;
    assert_eq!(st.status, 200);
    assert_eq!(st.json_line().await.unwrap(), json!({"disconnect": {"code": 3500, "reason": "invalid token"}}));
    assert!(st.json_line().await.is_none());
    // Not a ConnectRequest object.
    assert_eq!(HttpStream::open(s.addr, "POST", "/connection/uni_http_stream", &[], b"[1,2]").await.status, 400);
    assert_eq!(HttpStream::open(s.addr, "POST", "/connection/uni_http_stream", &[], b"{\"token\":").await.status, 400);
    assert_eq!(HttpStream::open(s.addr, "GET", "/connection/uni_http_stream", &[], b"").await.status, 405);
}

#[tokio::test]
async fn uni_sse_get_and_post_and_bad_token() {
    let s = server().await;
    let q = urlencode(&json!({"token": user_token("us"), "subs": {"usse": {}}}).to_string());
    let mut st = HttpStream::open(s.addr, "GET", &format!("/connection/uni_sse?cf_connect={q}"), &[], b"").await;
    assert_eq!(st.status, 200);
    assert!(st.sse().await.unwrap()["connect"]["subs"]["usse"].is_object());
    publish(&s, "usse", json!({"b": 2})).await;
    let p = st.sse_until(|m| m.get("pub").is_some()).await;
    assert_eq!(p["pub"]["data"]["b"], 2);

    let mut st = HttpStream::open(s.addr, "POST", "/connection/uni_sse", &[], br#"{"token":"x.y.z"}"#).await;
    assert_eq!(st.sse().await.unwrap()["disconnect"]["code"], 3500);
    assert!(st.sse().await.is_none());
    let bad = HttpStream::open(s.addr, "GET", "/connection/uni_sse?cf_connect=%7B%7D%7D", &[], b"").await;
    assert_eq!(bad.status, 400);
}

async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await.expect("handshake");
    ws
}

async fn ws_next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next()).await.expect("message in time");
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            Some(Err(e)) => panic!("websocket error {e}"),
            None => return Message::Close(None),
        }
    }
}

async fn ws_json(ws: &mut Ws) -> Value {
    match ws_next(ws).await {
        Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn ws_close_code(ws: &mut Ws) -> u16 {
    loop {
        match ws_next(ws).await {
            Message::Close(Some(f)) => return f.code.into(),
            Message::Close(None) => return 1005,
            _ => {}
        }
    }
}

#[tokio::test]
async fn uni_websocket_query_first_message_and_bad_input() {
    let s = server().await;
    // Connect request in the query.
    let q = urlencode(&json!({"token": user_token("uw"), "subs": {"uws": {}}}).to_string());
    let mut ws = ws_connect(s.addr, &format!("/connection/uni_websocket?cf_connect={q}")).await;
    let c = ws_json(&mut ws).await;
    assert!(c["connect"]["subs"]["uws"].is_object(), "{c}");
    publish(&s, "uws", json!({"c": 3})).await;
    let p = ws_json(&mut ws).await;
    assert_eq!(p, json!({"channel": "uws", "pub": {"data": {"c": 3}}}));
    s.api("disconnect", json!({"user": "uw"})).await;
    assert_eq!(ws_json(&mut ws).await["disconnect"]["code"], 3503);
    assert_eq!(ws_close_code(&mut ws).await, 3503);

    // Connect request as the first message.
    let mut ws = ws_connect(s.addr, "/connection/uni_websocket").await;
    ws.send(Message::Text(json!({"token": user_token("uw2"), "subs": {"uws2": {}}}).to_string().into())).await.unwrap();
    assert!(ws_json(&mut ws).await["connect"]["client"].is_string());

    // Garbage first message → Close 3501.
    let mut ws = ws_connect(s.addr, "/connection/uni_websocket").await;
    ws.send(Message::Text("{nope".into())).await.unwrap();
    assert_eq!(ws_close_code(&mut ws).await, 3501);

    // A bad token → disconnect push 3500, then Close 3500.
    let mut ws = ws_connect(s.addr, "/connection/uni_websocket").await;
    ws.send(Message::Text(r#"{"token":"a.b.c"}"#.into())).await.unwrap();
    assert_eq!(ws_json(&mut ws).await, json!({"disconnect": {"code": 3500, "reason": "invalid token"}}));
    assert_eq!(ws_close_code(&mut ws).await, 3500);
}

#[tokio::test]
async fn uni_websocket_sends_ping_frames_and_app_pings() {
    let mut cfg = all_transports();
    merge(&mut cfg, json!({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}}));
    let s = TestServer::start(cfg).await;
    let q = urlencode(&json!({"token": user_token("pp")}).to_string());
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/connection/uni_websocket?cf_connect={q}", s.addr))
            .await
            .unwrap();
    let mut saw_ping_frame = false;
    let mut saw_app_ping = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(saw_ping_frame && saw_app_ping) {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.expect("pings in time").expect("open").expect("ok");
        match m {
            // tungstenite answers the ping frame with a pong on the next read/flush.
            Message::Ping(_) => saw_ping_frame = true,
            Message::Text(t) if t.as_str() == "{}" => saw_app_ping = true,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- SockJS

async fn sockjs_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http_post(addr, path, body, &[]).await
}

#[tokio::test]
async fn sockjs_info_welcome_iframe_and_bad_paths() {
    let s = server().await;
    let st = HttpStream::open(s.addr, "GET", "/connection/sockjs", &[], b"").await;
    assert_eq!(st.status, 200);
    assert_eq!(st.body_text().await, "Welcome to SockJS!\n");
    let st = HttpStream::open(s.addr, "GET", "/connection/sockjs/info", &[], b"").await;
    assert_eq!(st.status, 200);
    assert!(st.header("cache-control").unwrap().contains("no-store"));
    let info: Value = serde_json::from_str(&st.body_text().await).unwrap();
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    assert_eq!(info["origins"], json!(["*:*"]));
    assert!(info["entropy"].is_u64());
    let st =
        HttpStream::open(s.addr, "OPTIONS", "/connection/sockjs/info", &[("Origin", "http://a.example")], b"").await;
    assert_eq!(st.status, 204);
    assert_eq!(st.header("access-control-allow-origin").as_deref(), Some("http://a.example"));
    let st = HttpStream::open(s.addr, "GET", "/connection/sockjs/iframe.html", &[], b"").await;
    assert_eq!(st.status, 200);
    let etag = st.header("etag").expect("etag");
    assert!(st.body_text().await.contains("SockJS.bootstrap_iframe()"));
    let st =
        HttpStream::open(s.addr, "GET", "/connection/sockjs/iframe-1.2.3.html", &[("If-None-Match", &etag)], b"").await;
    assert_eq!(st.status, 304);
    // Ids with dots, missing parts, unknown transports.
    for p in [
        "/connection/sockjs/a.b/c/xhr",
        "/connection/sockjs/a/c.d/xhr",
        "/connection/sockjs//c/xhr",
        "/connection/sockjs/a/b/nope",
        "/connection/sockjs/a/b",
    ] {
        assert_eq!(sockjs_post(s.addr, p, "").await.0, 404, "{p}");
    }
    assert_eq!(HttpStream::open(s.addr, "GET", "/connection/sockjs/a/b/xhr", &[], b"").await.status, 405);
}

#[tokio::test]
async fn sockjs_xhr_polling_carries_centrifugo_commands() {
    let s = server().await;
    let base = "/connection/sockjs/000/sess1";
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr"), "").await, (200, "o\n".to_string()));
    let connect = json!({"id": 1, "connect": {"token": user_token("sj")}}).to_string();
    let subscribe = json!({"id": 2, "subscribe": {"channel": "sj"}}).to_string();
    let body = serde_json::to_string(&vec![format!("{connect}\n{subscribe}")]).unwrap();
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr_send"), &body).await.0, 204);
    // Replies arrive in a[...] frames; each message is a \n-joined Centrifugo frame.
    let mut replies: Vec<Value> = Vec::new();
    while !replies.iter().any(|r| r["id"] == 2) {
        let (st, frame) = sockjs_post(s.addr, &format!("{base}/xhr"), "").await;
        assert_eq!(st, 200);
        if let Some(arr) = frame.trim_end().strip_prefix('a') {
            for m in serde_json::from_str::<Vec<String>>(arr).unwrap() {
                replies.extend(m.split('\n').map(|l| serde_json::from_str::<Value>(l).unwrap()));
            }
        }
    }
    assert!(replies.iter().any(|r| r["id"] == 1 && r["connect"]["client"].is_string()), "{replies:?}");
    publish(&s, "sj", json!({"via": "sockjs"})).await;
    let (_, frame) = sockjs_post(s.addr, &format!("{base}/xhr"), "").await;
    let msgs: Vec<String> = serde_json::from_str(frame.trim_end().strip_prefix('a').unwrap()).unwrap();
    let p: Value = serde_json::from_str(&msgs[0]).unwrap();
    assert_eq!(p["push"]["pub"]["data"]["via"], "sockjs");
    // A server-side disconnect is a close frame, kept for the next poll.
    s.api("disconnect", json!({"user": "sj"})).await;
    let (_, frame) = sockjs_post(s.addr, &format!("{base}/xhr"), "").await;
    assert_eq!(frame, "c[3503,\"force disconnect\"]\n");
    let (_, frame) = sockjs_post(s.addr, &format!("{base}/xhr"), "").await;
    assert_eq!(frame, "c[3503,\"force disconnect\"]\n");
}

#[tokio::test]
async fn sockjs_bad_input() {
    let s = server().await;
    // Unknown session.
    assert_eq!(sockjs_post(s.addr, "/connection/sockjs/000/nosuch/xhr_send", "[\"x\"]").await.0, 404);
    let base = "/connection/sockjs/000/bad1";
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr"), "").await.1, "o\n");
    // Malformed frames.
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr_send"), "").await, (500, "Payload expected.".into()));
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr_send"), "[\"x\"").await, (500, "Broken JSON encoding.".into()));
    assert_eq!(
        sockjs_post(s.addr, &format!("{base}/xhr_send"), "{\"a\":1}").await,
        (500, "Broken JSON encoding.".into())
    );
    // Oversize.
    let big = format!("[\"{}\"]", "x".repeat(70_000));
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr_send"), &big).await.0, 413);
    // jsonp without a callback.
    let st = HttpStream::open(s.addr, "GET", &format!("{base}/jsonp"), &[], b"").await;
    assert_eq!(st.status, 500);
    assert_eq!(st.body_text().await, "\"callback\" parameter required");
    let st = HttpStream::open(s.addr, "GET", &format!("{base}/htmlfile?c=a%28b"), &[], b"").await;
    assert_eq!(st.status, 500);
    // A well-formed SockJS message that is not a Centrifugo command: 3501 close frame.
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr_send"), "[\"{nope\"]").await.0, 204);
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr"), "").await.1, "c[3501,\"bad request\"]\n");
}

#[tokio::test]
async fn sockjs_second_receiver_and_session_expiry() {
    let s = server().await;
    let base = "/connection/sockjs/000/two";
    let mut first = HttpStream::open(s.addr, "POST", &format!("{base}/xhr_streaming"), &[], b"").await;
    assert_eq!(first.status, 200);
    let prelude = first.until(b"\n").await.unwrap();
    assert_eq!(prelude, vec![b'h'; 2048]);
    assert_eq!(first.until(b"\n").await.unwrap(), b"o");
    let (_, second) = sockjs_post(s.addr, &format!("{base}/xhr"), "").await;
    assert_eq!(second, "c[2010,\"Another connection still open\"]\n");
    drop(first);
    // disconnect_delay is 1s in these tests: after it the session is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (st, _) = sockjs_post(s.addr, &format!("{base}/xhr_send"), "[\"{}\"]").await;
        if st == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "session did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sockjs_streaming_transports_eventsource_htmlfile_jsonp() {
    let s = server().await;
    let mut es = HttpStream::open(s.addr, "GET", "/connection/sockjs/1/es/eventsource", &[], b"").await;
    assert_eq!(es.header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(es.until(b"\r\n\r\n").await.unwrap(), b"\r\ndata: o");
    let connect = json!({"id": 1, "connect": {"token": user_token("es")}}).to_string();
    let body = serde_json::to_string(&vec![connect]).unwrap();
    assert_eq!(sockjs_post(s.addr, "/connection/sockjs/1/es/xhr_send", &body).await.0, 204);
    let ev = String::from_utf8(es.until(b"\r\n\r\n").await.unwrap()).unwrap();
    assert!(ev.starts_with("data: a[") && ev.contains("connect"), "{ev}");

    let mut hf = HttpStream::open(s.addr, "GET", "/connection/sockjs/1/hf/htmlfile?c=cb", &[], b"").await;
    let head = String::from_utf8(hf.until(b"\r\n").await.unwrap()).unwrap();
    assert!(head.contains("var c = parent.cb;") && head.len() >= 1024);
    assert_eq!(hf.until(b"\r\n").await.unwrap(), b"<script>\np(\"o\");\n</script>");

    let st = HttpStream::open(s.addr, "GET", "/connection/sockjs/1/jp/jsonp?c=my.cb", &[], b"").await;
    assert_eq!(st.body_text().await, "my.cb(\"o\");\r\n");
    let connect = json!({"id": 1, "connect": {"token": user_token("jp")}}).to_string();
    let d = urlencode(&serde_json::to_string(&vec![connect]).unwrap());
    let (code, body) = http_post(
        s.addr,
        "/connection/sockjs/1/jp/jsonp_send",
        &format!("d={d}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let st = HttpStream::open(s.addr, "GET", "/connection/sockjs/1/jp/jsonp?c=my.cb", &[], b"").await;
    let t = st.body_text().await;
    assert!(t.starts_with("my.cb(\"a[") && t.contains("connect"), "{t}");
}

#[tokio::test]
async fn sockjs_websocket_transport_and_malformed_frames() {
    let s = server().await;
    let mut ws = ws_connect(s.addr, "/connection/sockjs/000/w1/websocket").await;
    assert_eq!(ws_next(&mut ws).await, Message::Text("o".into()));
    let connect = json!({"id": 1, "connect": {"token": user_token("sw")}}).to_string();
    let subscribe = json!({"id": 2, "subscribe": {"channel": "sw"}}).to_string();
    ws.send(Message::Text(serde_json::to_string(&vec![connect, subscribe]).unwrap().into())).await.unwrap();
    let mut got: Vec<Value> = Vec::new();
    while !got.iter().any(|r| r["id"] == 2) {
        let Message::Text(t) = ws_next(&mut ws).await else { panic!("text") };
        let msgs: Vec<String> = serde_json::from_str(t.strip_prefix('a').expect("a frame")).unwrap();
        for m in msgs {
            got.extend(m.split('\n').map(|l| serde_json::from_str::<Value>(l).unwrap()));
        }
    }
    publish(&s, "sw", json!({"w": 1})).await;
    let Message::Text(t) = ws_next(&mut ws).await else { panic!("text") };
    assert!(t.contains("\\\"w\\\":1"), "{t}");
    // Not a JSON array of strings: the session closes with 3501.
    ws.send(Message::Text("[1, 2".into())).await.unwrap();
    assert_eq!(ws_next(&mut ws).await, Message::Text("c[3501,\"bad request\"]".into()));
}

#[tokio::test]
async fn sockjs_test_services_echo_close_and_cookie() {
    let s = server().await;
    let base = "/sockjs_test/echo/000/e1";
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr"), "").await.1, "o\n");
    assert_eq!(sockjs_post(s.addr, &format!("{base}/xhr_send"), "[\"a\",\"b\\u2028\"]").await.0, 204);
    let mut got = String::new();
    while !got.contains("\"b") {
        got.push_str(&sockjs_post(s.addr, &format!("{base}/xhr"), "").await.1);
    }
    assert!(got.contains("a[\"a\"]") && got.contains("a[\"b\\u2028\"]"), "{got}");
    // close service: open then c[3000,"Go away!"].
    let mut st = HttpStream::open(s.addr, "POST", "/sockjs_test/close/0/c1/xhr_streaming", &[], b"").await;
    st.until(b"\n").await.unwrap();
    assert_eq!(st.until(b"\n").await.unwrap(), b"o");
    assert_eq!(st.until(b"\n").await.unwrap(), b"c[3000,\"Go away!\"]");
    // disabled_websocket_echo and cookie_needed_echo.
    let info: Value = serde_json::from_str(
        &HttpStream::open(s.addr, "GET", "/sockjs_test/disabled_websocket_echo/info", &[], b"").await.body_text().await,
    )
    .unwrap();
    assert_eq!(info["websocket"], false);
    assert_eq!(
        HttpStream::open(s.addr, "GET", "/sockjs_test/disabled_websocket_echo/0/x/websocket", &[], b"").await.status,
        404
    );
    let st = HttpStream::open(s.addr, "GET", "/sockjs_test/cookie_needed_echo/info", &[], b"").await;
    assert_eq!(st.header("set-cookie").as_deref(), Some("JSESSIONID=dummy; Path=/; HttpOnly; SameSite=Lax"));
    assert_eq!(serde_json::from_str::<Value>(&st.body_text().await).unwrap()["cookie_needed"], true);
    let st = HttpStream::open(
        s.addr,
        "POST",
        "/sockjs_test/cookie_needed_echo/0/k/xhr",
        &[("Cookie", "JSESSIONID=abc")],
        b"",
    )
    .await;
    assert_eq!(st.header("set-cookie").as_deref(), Some("JSESSIONID=abc; Path=/; HttpOnly; SameSite=Lax"));
    // Off unless enabled.
    let plain = TestServer::start(json!({"sockjs": {"enabled": true}})).await;
    assert_eq!(HttpStream::open(plain.addr, "GET", "/sockjs_test/echo/info", &[], b"").await.status, 404);
}

// ---------------------------------------------------------------- demo

#[tokio::test]
async fn demo_page_assets_and_token_only_when_enabled() {
    let s = server().await;
    let page = HttpStream::open(s.addr, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    let html = page.body_text().await;
    assert!(html.contains("/demo/centrifuge.js") && html.contains("[\"http_stream\",\"/connection/http_stream\"]"));
    let js = HttpStream::open(s.addr, "GET", "/demo/centrifuge.js", &[], b"").await;
    assert!(js.body_text().await.contains("globalThis.Centrifuge"));
    let tok: Value =
        serde_json::from_str(&HttpStream::open(s.addr, "GET", "/demo/token", &[], b"").await.body_text().await)
            .unwrap();
    let c = s
        .node
        .conn_verifier
        .verify_connect(tok["token"].as_str().unwrap(), gyre_node::node::unix_now())
        .expect("valid token");
    assert!(c.user.starts_with("demo-"));
    let off = TestServer::start(json!({})).await;
    assert_eq!(HttpStream::open(off.addr, "GET", "/", &[], b"").await.status, 404);
    assert_eq!(HttpStream::open(off.addr, "GET", "/demo/token", &[], b"").await.status, 404);
}

#[tokio::test]
async fn transports_are_off_by_default_and_shutdown_reaches_every_transport() {
    let off = TestServer::start(json!({})).await;
    for p in [
        "/connection/http_stream",
        "/connection/sse",
        "/emulation",
        "/connection/uni_http_stream",
        "/connection/uni_sse",
        "/connection/sockjs/info",
    ] {
        assert_eq!(HttpStream::open(off.addr, "POST", p, &[], b"{}").await.status, 404, "{p}");
    }
    let mut s = server().await;
    let connect = json!({"id": 1, "connect": {"token": user_token("sd")}}).to_string();
    let mut hs = HttpStream::open(s.addr, "POST", "/connection/http_stream", &[], connect.as_bytes()).await;
    hs.json_line().await.unwrap();
    let mut uni = HttpStream::open(
        s.addr,
        "POST",
        "/connection/uni_http_stream",
        &[],
        format!("{{\"token\":\"{}\"}}", user_token("sd2")).as_bytes(),
    )
    .await;
    uni.json_line().await.unwrap();
    let mut sj = HttpStream::open(s.addr, "POST", "/connection/sockjs/0/sd/xhr_streaming", &[], b"").await;
    sj.until(b"\n").await;
    sj.until(b"\n").await;
    let body = serde_json::to_string(&vec![connect]).unwrap();
    assert_eq!(sockjs_post(s.addr, "/connection/sockjs/0/sd/xhr_send", &body).await.0, 204);
    sj.until(b"\n").await.unwrap();
    let (shut, hs_d, uni_d, sj_d) = tokio::join!(
        s.shutdown(),
        hs.json_until(|m| m.get("push").is_some()),
        uni.json_until(|m| m.get("disconnect").is_some()),
        sj.until(b"\n"),
    );
    assert!(shut, "drained in time");
    assert_eq!(hs_d["push"]["disconnect"]["code"], 3001);
    assert_eq!(uni_d["disconnect"]["code"], 3001);
    assert_eq!(sj_d.unwrap(), b"c[3001,\"shutdown\"]");
}

#[tokio::test]
async fn sockjs_raw_websocket_carries_unframed_centrifugo_frames_and_echo() {
    let s = server().await;
    let mut ws = ws_connect(s.addr, "/connection/sockjs/websocket").await;
    let connect = json!({"id": 1, "connect": {"token": user_token("raw")}});
    let subscribe = json!({"id": 2, "subscribe": {"channel": "raw"}});
    ws.send(Message::Text(format!("{connect}\n{subscribe}").into())).await.unwrap();
    let mut got: Vec<Value> = Vec::new();
    while !got.iter().any(|r| r["id"] == 2) {
        let Message::Text(t) = ws_next(&mut ws).await else { panic!("text") };
        got.extend(t.split('\n').map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    assert!(got[0]["connect"]["client"].is_string());
    s.api("disconnect", json!({"user": "raw"})).await;
    assert_eq!(ws_close_code(&mut ws).await, 3503);

    let mut echo = ws_connect(s.addr, "/sockjs_test/echo/websocket").await;
    echo.send(Message::Text("plain text".into())).await.unwrap();
    assert_eq!(ws_next(&mut echo).await, Message::Text("plain text".into()));
    let mut echo = ws_connect(s.addr, "/sockjs_test/echo/0/e/websocket").await;
    assert_eq!(ws_next(&mut echo).await, Message::Text("o".into()));
    echo.send(Message::Text("[\"x\"]".into())).await.unwrap();
    assert_eq!(ws_next(&mut echo).await, Message::Text("a[\"x\"]".into()));
}

#[tokio::test]
async fn uni_websocket_join_push_messages_and_disabled_disconnect_push() {
    let mut cfg = all_transports();
    merge(&mut cfg, json!({"uni_websocket": {"join_push_messages": true, "disable_disconnect_push": true}}));
    let s = TestServer::start(cfg).await;
    let q = urlencode(&json!({"token": user_token("jp"), "subs": {"j1": {}, "j2": {}}}).to_string());
    let mut ws = ws_connect(s.addr, &format!("/connection/uni_websocket?cf_connect={q}")).await;
    assert!(ws_json(&mut ws).await["connect"].is_object());
    let (st, b) = s
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "j1", "data": {"n": 1}}},
                {"publish": {"channel": "j2", "data": {"n": 2}}}
            ]}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let mut pubs: Vec<Value> = Vec::new();
    while pubs.len() < 2 {
        let Message::Text(t) = ws_next(&mut ws).await else { panic!("text") };
        pubs.extend(t.split('\n').map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    assert_eq!(pubs.len(), 2);
    s.api("disconnect", json!({"user": "jp"})).await;
    // No disconnect push: straight to the Close frame.
    assert_eq!(
        ws_next(&mut ws).await,
        Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 3503.into(),
            reason: "force disconnect".into(),
        }))
    );
}

#[tokio::test]
async fn uni_connect_errors_map_to_disconnects_with_configurable_transforms() {
    let mut cfg = all_transports();
    merge(
        &mut cfg,
        json!({"client": {"connect_code_to_unidirectional_disconnect": {
            "enabled": true, "transforms": [{"code": 109, "to": {"code": 4109, "reason": "renew token"}}]}}}),
    );
    let s = TestServer::start(cfg).await;
    let expired = token(json!({"sub": "x", "exp": gyre_node::node::unix_now() - 10}));
    let q = urlencode(&json!({ "token": expired }).to_string());
    let mut ws = ws_connect(s.addr, &format!("/connection/uni_websocket?cf_connect={q}")).await;
    assert_eq!(ws_json(&mut ws).await, json!({"disconnect": {"code": 4109, "reason": "renew token"}}));
    assert_eq!(ws_close_code(&mut ws).await, 4109);
    // Without a transform, an expired token is 3005 (the default mapping).
    let s2 = server().await;
    let mut ws = ws_connect(s2.addr, &format!("/connection/uni_websocket?cf_connect={q}")).await;
    assert_eq!(ws_json(&mut ws).await["disconnect"]["code"], 3005);
}
