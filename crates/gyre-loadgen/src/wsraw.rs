//! A minimal WebSocket client for the hot path.
//!
//! tokio-tungstenite costs the load generator several microseconds per frame
//! (a read syscall, a fresh allocation and a waker dance for each message), and
//! the generator has one core to take up to ~300k frames/s from 10k
//! connections. So after the same handshake (the accept key is checked with
//! tungstenite's helper), frames are parsed in place from one shared scratch
//! buffer per thread: a connection keeps a buffer of its own only for a frame
//! split across reads, which keeps idle connections at a few hundred bytes.

use std::cell::RefCell;

use anyhow::{Context, Result, bail};
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    /// Continuation frame.
    pub const CONT: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// Largest frame or reassembled message accepted.
pub const MAX_MESSAGE: usize = 1 << 20;
const MAX_HANDSHAKE: usize = 16 * 1024;
const SCRATCH: usize = 64 * 1024;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

/// Parses a frame header at the start of `b`; `Ok(None)` if more bytes are needed.
pub fn parse_header(b: &[u8]) -> Result<Option<Header>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
        bail!("reserved bits set (no extension was negotiated)");
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (usize::try_from(u64::from_be_bytes(a)).unwrap_or(usize::MAX), 10)
        }
        n => (usize::from(n), 2),
    };
    if len > MAX_MESSAGE {
        bail!("frame of {len} bytes exceeds the {MAX_MESSAGE} limit");
    }
    let mask = if masked {
        if b.len() < at + 4 {
            return Ok(None);
        }
        let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header { fin, opcode, mask, header_len: at, payload_len: len }))
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Encodes a client frame (always masked, FIN set).
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out
}

/// What a pass over received bytes asks the caller to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// Payloads of pings to answer with pongs.
    pub pings: Vec<Vec<u8>>,
    /// The peer sent a Close frame (its status code, if any).
    pub close: Option<Option<u16>>,
}

/// Reassembly state of one connection.
#[derive(Debug, Default)]
pub struct Reader {
    /// Bytes of a frame split across reads.
    partial: Vec<u8>,
    /// A fragmented message being reassembled.
    fragments: Vec<u8>,
    fragmenting: bool,
}

impl Reader {
    /// Parses every complete frame of `data` (appended to any partial frame
    /// kept from before), calling `on_message` with each data message, and
    /// keeps an incomplete trailing frame for the next call.
    pub fn feed<F: FnMut(&[u8])>(&mut self, data: &mut [u8], on_message: &mut F) -> Result<Controls> {
        let mut ctl = Controls::default();
        if self.partial.is_empty() {
            let used = self.parse(data, on_message, &mut ctl)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.parse(&mut buf, on_message, &mut ctl)?;
            buf.drain(..used);
            if !buf.is_empty() {
                buf.shrink_to(buf.len().max(256));
                self.partial = buf;
            }
        }
        Ok(ctl)
    }

    fn parse<F: FnMut(&[u8])>(&mut self, data: &mut [u8], on_message: &mut F, ctl: &mut Controls) -> Result<usize> {
        let mut pos = 0;
        while ctl.close.is_none() {
            let Some(h) = parse_header(&data[pos..])? else {
                break;
            };
            let total = h.header_len + h.payload_len;
            if data.len() - pos < total {
                break;
            }
            let payload = &mut data[pos + h.header_len..pos + total];
            if let Some(m) = h.mask {
                apply_mask(payload, m);
            }
            match h.opcode {
                op::TEXT | op::BINARY if h.fin && !self.fragmenting => on_message(payload),
                op::TEXT | op::BINARY if !self.fragmenting => {
                    self.fragmenting = true;
                    self.fragments.clear();
                    self.fragments.extend_from_slice(payload);
                }
                op::CONT if self.fragmenting => {
                    if self.fragments.len() + payload.len() > MAX_MESSAGE {
                        bail!("fragmented message exceeds {MAX_MESSAGE} bytes");
                    }
                    self.fragments.extend_from_slice(payload);
                    if h.fin {
                        self.fragmenting = false;
                        on_message(&self.fragments);
                        self.fragments = Vec::new();
                    }
                }
                op::PING => ctl.pings.push(payload.to_vec()),
                op::PONG => {}
                op::CLOSE => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    ctl.close = Some(code);
                }
                o => bail!("unexpected opcode {o:#x} (fragmenting: {})", self.fragmenting),
            }
            pos += total;
        }
        Ok(pos)
    }
}

/// A WebSocket client connection after the handshake.
pub struct RawWs {
    /// The socket.
    pub stream: TcpStream,
    /// Frame state.
    pub reader: Reader,
    mask_seed: u32,
}

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

impl RawWs {
    /// Performs the opening handshake on `stream` (`host` for the Host header),
    /// asking for `subprotocol` if given and checking the server accepted it.
    pub async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        subprotocol: Option<&str>,
        seed: u32,
    ) -> Result<(RawWs, Vec<u8>)> {
        let key = generate_key();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(p) = subprotocol {
            req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HANDSHAKE {
                bail!("handshake response too long");
            }
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed during handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("non-UTF-8 handshake response")?;
        check_handshake_response(head, &derive_accept_key(key.as_bytes()), subprotocol)?;
        let leftover = buf[head_end..].to_vec();
        Ok((RawWs { stream, reader: Reader::default(), mask_seed: seed | 1 }, leftover))
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need not be secret for a load generator.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_le_bytes()
    }

    /// Sends one frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        let m = self.next_mask();
        self.stream.write_all(&encode_client_frame(opcode, payload, m)).await?;
        Ok(())
    }

    /// Waits for data and processes what one read returns, calling
    /// `on_message` per data message. `Ok(None)` means the peer closed TCP.
    ///
    /// Reads go through `poll_read`, which (unlike `try_read`) clears the
    /// socket's readiness after a short read, saving a second `read` syscall
    /// that would only return `EAGAIN`.
    pub async fn read_and_process<F: FnMut(&[u8]) + Send>(&mut self, on_message: &mut F) -> Result<Option<Controls>> {
        let stream = &mut self.stream;
        let reader = &mut self.reader;
        std::future::poll_fn(|cx| {
            SCRATCH_BUF.with(|s| {
                let mut s = s.borrow_mut();
                let mut rb = ReadBuf::new(&mut s[..]);
                match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            Poll::Ready(Ok(None))
                        } else {
                            Poll::Ready(reader.feed(&mut s[..n], on_message).map(Some))
                        }
                    }
                }
            })
        })
        .await
    }

    /// Answers pings with pongs.
    pub async fn answer_pings(&mut self, ctl: &Controls) -> Result<()> {
        for p in &ctl.pings {
            self.send(op::PONG, p).await?;
        }
        Ok(())
    }
}

/// Checks the status line, `Sec-WebSocket-Accept` and the subprotocol.
pub fn check_handshake_response(head: &str, accept: &str, subprotocol: Option<&str>) -> Result<()> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("handshake refused: {status}");
    }
    let mut got_accept = None;
    let mut got_proto = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("sec-websocket-accept") {
                got_accept = Some(v.trim());
            } else if k.eq_ignore_ascii_case("sec-websocket-protocol") {
                got_proto = Some(v.trim());
            }
        }
    }
    if got_accept != Some(accept) {
        bail!("bad Sec-WebSocket-Accept {got_accept:?}");
    }
    if let Some(p) = subprotocol
        && got_proto != Some(p)
    {
        bail!("server did not accept subprotocol {p} (got {got_proto:?})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = encode_client_frame(opcode, payload, [0; 4]);
        // Turn the masked client frame into an unmasked server frame.
        let (len_bytes, mask_at) = match payload.len() {
            n if n < 126 => (0, 2),
            n if n <= 65535 => (2, 4),
            _ => (8, 10),
        };
        let _ = len_bytes;
        f[1] &= 0x7f;
        f.drain(mask_at..mask_at + 4);
        if !fin {
            f[0] &= 0x7f;
        }
        f
    }

    #[test]
    fn client_frames_round_trip_through_the_parser() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = encode_client_frame(op::BINARY, &payload, [1, 2, 3, 4]);
            let h = parse_header(&f).unwrap().unwrap();
            assert!(h.fin);
            assert_eq!(h.opcode, op::BINARY);
            assert_eq!(h.mask, Some([1, 2, 3, 4]));
            assert_eq!(h.payload_len, len);
            assert_eq!(h.header_len + len, f.len());
            let mut got = vec![];
            let mut f2 = f.clone();
            let ctl = Reader::default().feed(&mut f2, &mut |m| got.push(m.to_vec())).unwrap();
            assert_eq!(ctl, Controls::default());
            assert_eq!(got, vec![payload]);
        }
    }

    #[test]
    fn header_needs_more_bytes() {
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 0]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 127, 0, 0, 0]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 0x85, 1, 2]).unwrap(), None);
        assert!(parse_header(&[0xC1, 1]).is_err(), "RSV1 without extension");
        assert!(parse_header(&[0x81, 127, 0, 0, 0, 0, 1, 0, 0, 0]).is_err(), "too large");
    }

    #[test]
    fn frames_split_across_reads_and_batched_in_one_read() {
        let mut stream = Vec::new();
        stream.extend(server_frame(op::TEXT, true, b"one"));
        stream.extend(server_frame(op::PING, true, b"p"));
        stream.extend(server_frame(op::TEXT, true, &[b'x'; 300]));
        stream.extend(server_frame(op::BINARY, false, b"fr"));
        stream.extend(server_frame(op::CONT, false, b"ag"));
        stream.extend(server_frame(op::CONT, true, b"ment"));
        stream.extend(server_frame(op::CLOSE, true, &1000u16.to_be_bytes()));
        for split in [1, 2, 3, 7, 50, 301, stream.len()] {
            let mut r = Reader::default();
            let mut got: Vec<Vec<u8>> = vec![];
            let mut pings = vec![];
            let mut close = None;
            for chunk in stream.chunks(split) {
                let mut c = chunk.to_vec();
                let ctl = r.feed(&mut c, &mut |m| got.push(m.to_vec())).unwrap();
                pings.extend(ctl.pings);
                if ctl.close.is_some() {
                    close = ctl.close;
                }
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(got[0], b"one");
            assert_eq!(got[1].len(), 300);
            assert_eq!(got[2], b"fragment");
            assert_eq!(pings, vec![b"p".to_vec()]);
            assert_eq!(close, Some(Some(1000)));
        }
    }

    #[test]
    fn stray_continuation_is_an_error() {
        let mut f = server_frame(op::CONT, true, b"x");
        assert!(Reader::default().feed(&mut f, &mut |_| {}).is_err());
    }

    #[test]
    fn handshake_response_checks() {
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\nSec-WebSocket-Protocol: centrifuge-protobuf\r\n\r\n";
        assert!(check_handshake_response(ok, "abc", None).is_ok());
        assert!(check_handshake_response(ok, "abc", Some("centrifuge-protobuf")).is_ok());
        assert!(check_handshake_response(ok, "abd", None).is_err());
        assert!(check_handshake_response(ok, "abc", Some("other")).is_err());
        let refused = "HTTP/1.1 403 Forbidden\r\n\r\n";
        assert!(check_handshake_response(refused, "abc", None).is_err());
        // RFC 6455 example key/accept pair.
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
