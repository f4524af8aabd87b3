//! A WebSocket client that breaks RFC 6455 framing, against the real binary
//! (Gyre reads frames with its own decoder, `gyre-server/src/wsframe.rs`).
//! Each bad input gets a Close frame with the RFC's code at once (1002
//! protocol error, 1007 bad UTF-8, 1009 too big — the last decided from the
//! header, without waiting for a payload that never comes), and a
//! subscriber on another connection keeps receiving meanwhile. Valid but
//! unusual framing works: a command split into fragments with a ping
//! between them, pings answered with their payload, a client's Close
//! echoed with its code.

use std::net::SocketAddr;
use std::time::Duration;

use gyre_abuse::{Event, Gyre, Ws, user_token};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A client frame, masked.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut b = vec![first];
    match payload.len() {
        n if n < 126 => b.push(0x80 | n as u8),
        n => {
            b.push(0x80 | 126);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    b.extend_from_slice(&mask);
    b.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i & 3]));
    b
}

/// A raw WebSocket connection: handshake done, frames read by hand.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk)).await.expect("response in time").expect("read");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
        Raw { s, buf: buf[end..].to_vec() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next server frame: (opcode, payload), or None at end of stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await.expect("frame in time").ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a Close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((0x8, p)) => return u16::from_be_bytes([p[0], p[1]]),
                Some(_) => {}
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads until a text frame; its JSON lines.
    async fn text(&mut self) -> Vec<Value> {
        loop {
            match self.frame().await {
                Some((0x1, p)) => {
                    let t = String::from_utf8(p).expect("text is UTF-8");
                    return t.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
                }
                Some((0x8, p)) => panic!("closed: {p:?}"),
                Some(_) => {}
                None => panic!("connection ended"),
            }
        }
    }
}

fn connect_cmd(id: u32) -> Vec<u8> {
    json!({"id": id, "connect": {"token": user_token("raw")}}).to_string().into_bytes()
}

#[tokio::test]
async fn bad_framing_gets_the_rfc_close_code_and_harms_no_one() {
    let g = Gyre::start(json!({})).await;
    let mut sub = Ws::open(&g.ws_url()).await;
    sub.call(1, json!({"connect": {"token": user_token("sub")}})).await;
    sub.call(2, json!({"subscribe": {"channel": "news"}})).await;

    let unmasked = {
        let mut f = frame(0x81, b"{}");
        f[1] &= 0x7f;
        f.truncate(2);
        f.extend_from_slice(b"{}");
        f
    };
    let huge_header = {
        let mut b = vec![0x82, 0x80 | 127];
        b.extend_from_slice(&(1u64 << 40).to_be_bytes());
        b.extend_from_slice(&[1, 2, 3, 4]);
        b
    };
    // (what, bytes, close code)
    let rows: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("reserved bit", frame(0xC1, b"{}"), 1002),
        ("unknown opcode", frame(0x83, b"x"), 1002),
        ("fragmented ping", frame(0x09, b""), 1002),
        ("continuation without a start", frame(0x80, b"x"), 1002),
        ("new message inside a fragmented one", [frame(0x01, b"{"), frame(0x81, b"}")].concat(), 1002),
        ("text that is not UTF-8", frame(0x81, &[0xff, 0xfe, 0xfd]), 1007),
        ("header of a 1 TiB frame, no payload", huge_header, 1009),
    ];
    for (i, (what, bytes, code)) in rows.into_iter().enumerate() {
        let mut raw = Raw::open(g.addr).await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, code, "{what}");
        // The subscriber on another connection is untouched.
        let (status, _) = g.api("publish", json!({"channel": "news", "data": {"n": i}})).await;
        assert_eq!(status, 200);
        match sub.next_within(WAIT).await {
            Some(Event::Json(v)) => assert_eq!(v[0]["push"]["pub"]["data"]["n"], i, "{what}"),
            other => panic!("{what}: subscriber got {other:?}"),
        }
    }
}

#[tokio::test]
async fn fragments_pings_and_close_handshake() {
    let g = Gyre::start(json!({})).await;
    let mut raw = Raw::open(g.addr).await;
    // The connect command in three fragments, a ping between two of them.
    let cmd = connect_cmd(1);
    let (a, rest) = cmd.split_at(5);
    let (b, c) = rest.split_at(7);
    raw.send(&[frame(0x01, a), frame(0x00, b), frame(0x89, b"hey"), frame(0x80, c)].concat()).await;
    assert_eq!(raw.frame().await, Some((0xA, b"hey".to_vec())), "pong with the ping's payload first");
    let reply = raw.text().await;
    assert_eq!(reply[0]["id"], 1);
    assert!(reply[0]["connect"]["client"].is_string(), "{reply:?}");
    // A command one byte at a time still arrives whole.
    for byte in frame(0x81, json!({"id": 2, "subscribe": {"channel": "c"}}).to_string().as_bytes()) {
        raw.send(&[byte]).await;
    }
    let reply = raw.text().await;
    assert_eq!(reply[0]["id"], 2, "{reply:?}");
    // The client closes: the server echoes the code and ends the stream.
    raw.send(&frame(0x88, &4000u16.to_be_bytes())).await;
    assert_eq!(raw.close_code().await, 4000);
    assert_eq!(raw.frame().await, None, "stream ends after the closing handshake");
}
