//! Issue 10: a bare `\r` in published JSON broke SSE framing. JSON may carry
//! CR as whitespace between tokens; an SSE parser ends a line at CR, LF or
//! CRLF, so a `data:` line with a raw CR in it split into a broken `data:`
//! line and a garbage field line. Every event a raw SSE reader assembles must
//! be valid JSON, and the publication must arrive intact.

use std::time::Duration;

use gyre_abuse::{Gyre, WAIT, now, token};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A minimal SSE reader after the WHATWG rules: lines end at CR, LF or CRLF;
/// `data` fields of one event are joined with LF; an empty line dispatches.
struct SseReader {
    s: TcpStream,
    buf: Vec<u8>,
    headers_done: bool,
    data: Vec<String>,
    /// Lines that were neither `data:` fields nor comments nor empty (a split line shows up here).
    stray: Vec<String>,
    /// Body bytes of a line not yet complete.
    pending_line: Vec<u8>,
    /// Bytes left of the current HTTP chunk (with its trailing CRLF).
    chunk_left: usize,
}

impl SseReader {
    async fn open(g: &Gyre, path: &str) -> SseReader {
        let mut s = TcpStream::connect(g.addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", g.addr);
        s.write_all(req.as_bytes()).await.expect("request");
        SseReader {
            s,
            buf: Vec::new(),
            headers_done: false,
            data: Vec::new(),
            stray: Vec::new(),
            pending_line: Vec::new(),
            chunk_left: 0,
        }
    }

    /// The next event's data, within `within`.
    async fn next_event(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(ev) = self.take_event() {
                return Some(ev);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if !self.headers_done {
                let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 200"), "stream refused: {head}");
                assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
                self.buf.drain(..end + 4);
                self.headers_done = true;
            }
        }
    }

    /// Parses complete lines out of the de-chunked body.
    fn take_event(&mut self) -> Option<String> {
        let body = self.dechunk_available();
        let mut text = body;
        loop {
            let Some(pos) = text.iter().position(|&b| b == b'\r' || b == b'\n') else {
                // Keep the partial line for later.
                self.pending_line.extend_from_slice(&text);
                return None;
            };
            // A CR at the very end may be the first half of a CRLF: wait for more.
            if text[pos] == b'\r' && pos + 1 == text.len() {
                self.pending_line.extend_from_slice(&text);
                return None;
            }
            let line = text[..pos].to_vec();
            let skip = if text[pos] == b'\r' && text.get(pos + 1) == Some(&b'\n') { 2 } else { 1 };
            text = text[pos + skip..].to_vec();
            let line = String::from_utf8(line).expect("SSE stream is UTF-8");
            if line.is_empty() {
                if self.data.is_empty() {
                    continue;
                }
                self.pending_line = text;
                let ev = self.data.join("\n");
                self.data.clear();
                return Some(ev);
            }
            if line.starts_with(':') {
                continue;
            }
            match line.split_once(':') {
                Some(("data", v)) => self.data.push(v.strip_prefix(' ').unwrap_or(v).to_string()),
                _ => self.stray.push(line),
            }
        }
    }
}

impl SseReader {
    fn dechunk_available(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            if self.chunk_left == 0 {
                let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else { break };
                let size =
                    std::str::from_utf8(&self.buf[..end]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
                let Some(size) = size else { break };
                self.buf.drain(..end + 2);
                if size == 0 {
                    break;
                }
                self.chunk_left = size + 2; // data + its CRLF
            }
            let take = self.chunk_left.min(self.buf.len());
            if take == 0 {
                break;
            }
            let part: Vec<u8> = self.buf.drain(..take).collect();
            let data_end = part.len().min(self.chunk_left.saturating_sub(2));
            out.extend_from_slice(&part[..data_end]);
            self.chunk_left -= take;
        }
        let mut all = std::mem::take(&mut self.pending_line);
        all.extend_from_slice(&out);
        all
    }
}

async fn publish_raw(g: &Gyre, body: &str) {
    let (status, text) = gyre_abuse::http_post(
        g.addr,
        "/api/publish",
        body,
        &[("X-API-Key", gyre_abuse::API_KEY), ("Content-Type", "application/json")],
    )
    .await
    .expect("API answered");
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("\"error\""), "{text}");
}

async fn expect_publication(r: &mut SseReader, want: &Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = r.next_event(left).await.unwrap_or_else(|| panic!("no publication {want}; stray lines {:?}", r.stray));
        let v: Value = serde_json::from_str(&ev).unwrap_or_else(|e| panic!("event is not JSON ({e}): {ev:?}"));
        let publication = v.pointer("/pub/data").or_else(|| v.pointer("/push/pub/data"));
        if publication == Some(want) {
            assert!(r.stray.is_empty(), "SSE lines outside any field: {:?}", r.stray);
            return;
        }
    }
}

/// JSON whose whitespace is CR, CRLF and LF, published through the API.
const BODY: &str = "{\"channel\":\"news\",\"data\":{\"a\":\r1,\r\n\"b\":\r[2,\r3]\n}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriage_returns_in_json_do_not_break_uni_sse_events() {
    let g = Gyre::start(json!({"uni_sse": {"enabled": true}})).await;
    let tok = token(json!({"sub": "sse-user", "exp": now() + 3600, "channels": ["news"]}));
    let connect = json!({"token": tok}).to_string();
    let mut r = SseReader::open(&g, &format!("/connection/uni_sse?cf_connect={}", urlencode(&connect))).await;
    // The connect push comes first.
    let first = r.next_event(WAIT).await.expect("connect push");
    assert!(serde_json::from_str::<Value>(&first).is_ok(), "{first:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_raw(&g, BODY).await;
    expect_publication(&mut r, &json!({"a": 1, "b": [2, 3]})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriage_returns_in_json_do_not_break_sse_emulation_events() {
    let g = Gyre::start(json!({"sse": {"enabled": true}})).await;
    let tok = token(json!({"sub": "sse-user", "exp": now() + 3600, "channels": ["news"]}));
    let connect = json!({"id": 1, "connect": {"token": tok, "name": "raw-sse"}}).to_string();
    let mut r = SseReader::open(&g, &format!("/connection/sse?cf_connect={}", urlencode(&connect))).await;
    let first = r.next_event(WAIT).await.expect("connect reply");
    let v: Value = serde_json::from_str(&first).expect("connect reply is JSON");
    assert!(v["connect"]["client"].is_string(), "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_raw(&g, BODY).await;
    expect_publication(&mut r, &json!({"a": 1, "b": [2, 3]})).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
