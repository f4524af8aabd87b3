//! The server side of RFC 6455 framing: reading a client's frames into
//! messages, and the frames the server writes.
//!
//! Gyre used tungstenite for this. Its per-connection state (a read buffer
//! that keeps whatever size it grew to, a write buffer, two waker proxies, the
//! protocol context: about 1 KiB) was the largest part of an idle
//! connection's memory. Here a connection holds an empty `Vec` while idle:
//! bytes are read into a stack buffer and only an incomplete frame's bytes
//! are kept between reads.
//!
//! A leaf module: it knows frames and messages, nothing about connections.
//! What a client can get wrong, and the close code it gets (RFC 6455 §7.4.1):
//! an unmasked frame, reserved bits, an unknown opcode, a fragmented or
//! oversize control frame, a continuation without a start or a new message
//! inside a fragmented one → 1002; text that is not UTF-8 → 1007; a frame or
//! a message (its fragments together) over the size limit → 1009, decided from
//! the header, before the payload is read.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    /// continuation frame
    pub const CONTINUATION: u8 = 0x0;
    /// text frame
    pub const TEXT: u8 = 0x1;
    /// binary frame
    pub const BINARY: u8 = 0x2;
    /// close frame
    pub const CLOSE: u8 = 0x8;
    /// ping frame
    pub const PING: u8 = 0x9;
    /// pong frame
    pub const PONG: u8 = 0xA;
}

/// One message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A whole text message, checked to be UTF-8.
    Text(Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping; its payload goes back in the pong.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame's payload (code and reason, possibly empty).
    Close(Bytes),
}

/// Why the client's bytes are not a WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Broken framing (1002).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// Text that is not UTF-8 (1007).
    #[error("text message is not UTF-8")]
    NotUtf8,
    /// Over the message size limit (1009).
    #[error("message size limit exceeded")]
    TooBig,
}

impl FrameError {
    /// The close code the client gets.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::NotUtf8 => 1007,
            FrameError::TooBig => 1009,
        }
    }
}

/// A close frame's payload: the code, then the reason cut to fit the 125-byte
/// control frame payload on a character boundary (RFC 6455 §5.5.1).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// A whole close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    gyre_node::push::ws_frame(op::CLOSE, &close_payload(code, reason))
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`
/// (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A frame as a client sends it: the first byte (FIN, RSV, opcode) as
/// given, the payload masked with `mask`. Gyre never sends one; the decoder's
/// tests and the `ws_frames` fuzz target build their input with it.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut b = vec![first];
    match payload.len() {
        n if n < 126 => b.push(0x80 | n as u8),
        n if n <= 0xffff => {
            b.push(0x80 | 126);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            b.push(0x80 | 127);
            b.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    b.extend_from_slice(&mask);
    b.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i & 3]));
    b
}

/// Bytes read per syscall at most, into a buffer on the stack.
const READ_CHUNK: usize = 4096;

/// Turns a client's bytes into messages. Holds nothing while idle but the
/// size limit: `buf` (bytes of frames not complete yet) and `partial` (a
/// fragmented message's start) are released when they empty.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    partial: Option<Box<Partial>>,
    limit: usize,
    /// Set after an error: the stream cannot be resynchronized.
    failed: bool,
}

#[derive(Debug)]
struct Partial {
    opcode: u8,
    data: Vec<u8>,
}

impl Decoder {
    /// A decoder refusing frames and messages over `limit` payload bytes.
    pub fn new(limit: usize) -> Self {
        Decoder { limit, ..Default::default() }
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message in what was fed, `Ok(None)` when more bytes
    /// are needed. After an error every call returns that kind of error again.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.failed {
            return Err(FrameError::Protocol("stream already failed"));
        }
        let r = self.decode();
        if r.is_err() {
            self.failed = true;
            self.buf = Vec::new();
            self.partial = None;
        }
        r
    }

    fn decode(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(frame) = self.frame()? else { return Ok(None) };
            let Frame { fin, opcode, payload } = frame;
            match opcode {
                op::CLOSE | op::PING | op::PONG => {
                    return Ok(Some(match opcode {
                        op::PING => Message::Ping(payload.into()),
                        op::PONG => Message::Pong,
                        _ => Message::Close(payload.into()),
                    }));
                }
                op::TEXT | op::BINARY => {
                    if self.partial.is_some() {
                        return Err(FrameError::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        return message(opcode, payload).map(Some);
                    }
                    self.partial = Some(Box::new(Partial { opcode, data: payload }));
                }
                op::CONTINUATION => {
                    let Some(p) = &mut self.partial else {
                        return Err(FrameError::Protocol("continuation without a message"));
                    };
                    if p.data.len() + payload.len() > self.limit {
                        return Err(FrameError::TooBig);
                    }
                    p.data.extend_from_slice(&payload);
                    if fin {
                        let p = self.partial.take().expect("checked above");
                        return message(p.opcode, p.data).map(Some);
                    }
                }
                _ => return Err(FrameError::Protocol("unknown opcode")),
            }
        }
    }

    /// One whole frame off the front of `buf`, unmasked.
    fn frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        let (masked, len7) = (b[1] & 0x80 != 0, u64::from(b[1] & 0x7f));
        if rsv != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if !masked {
            return Err(FrameError::Protocol("unmasked client frame"));
        }
        let control = opcode & 0x8 != 0;
        if control && (!fin || len7 > 125) {
            return Err(FrameError::Protocol("fragmented or oversize control frame"));
        }
        let (len, at) = match len7 {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")), 10),
            126 | 127 => return Ok(None),
            n => (n, 2),
        };
        // Decided from the header: an oversize frame's payload is never read.
        // The partial message's size counts too (checked again on append).
        // Control frames are not messages: at most 125 bytes (checked above),
        // whatever the limit.
        let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
        if !control && so_far.saturating_add(len) > self.limit as u64 {
            return Err(FrameError::TooBig);
        }
        let len = len as usize;
        let total = at + 4 + len;
        if b.len() < total {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let mut payload = b[at + 4..total].to_vec();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        if total == self.buf.len() {
            // Idle again: give the memory back.
            self.buf = Vec::new();
        } else {
            self.buf.drain(..total);
        }
        Ok(Some(Frame { fin, opcode, payload }))
    }
}

struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

fn message(opcode: u8, data: Vec<u8>) -> Result<Message, FrameError> {
    if opcode == op::TEXT {
        return match String::from_utf8(data) {
            Ok(s) => Ok(Message::Text(Bytes::from(s))),
            Err(_) => Err(FrameError::NotUtf8),
        };
    }
    Ok(Message::Binary(Bytes::from(data)))
}

/// What reading from the client gave.
#[derive(Debug)]
pub enum Read {
    /// A message.
    Message(Message),
    /// The client's bytes are not WebSocket.
    Bad(FrameError),
    /// End of stream or a read error: the client is gone.
    Gone,
}

/// The next message from `io`. Cancel-safe: bytes read are in the decoder
/// before this returns or is dropped.
pub async fn read_message<R: AsyncRead + Unpin>(dec: &mut Decoder, io: &mut R) -> Read {
    poll_fn(|cx| poll_message(dec, io, cx)).await
}

fn poll_message<R: AsyncRead + Unpin>(dec: &mut Decoder, io: &mut R, cx: &mut Context<'_>) -> Poll<Read> {
    loop {
        match dec.next_message() {
            Ok(Some(m)) => return Poll::Ready(Read::Message(m)),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Read::Bad(e)),
        }
        // Uninitialized: zeroing 4 KiB on every poll would cost more than the copy.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Read::Gone),
            Poll::Ready(Ok(())) => dec.feed(rb.filled()),
            Poll::Ready(Err(e)) => {
                if e.kind() != io::ErrorKind::ConnectionReset {
                    tracing::debug!(error = %e, "websocket read failed");
                }
                return Poll::Ready(Read::Gone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked with a fixed key.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        super::client_frame(first, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    type Decoded = Vec<Result<Message, FrameError>>;

    fn decode_all(bytes: &[u8], limit: usize) -> Decoded {
        let mut d = Decoder::new(limit);
        d.feed(bytes);
        let mut out = vec![];
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn frames_to_messages() {
        let text = |s: &str| Ok(Message::Text(Bytes::copy_from_slice(s.as_bytes())));
        let long = "x".repeat(300);
        let huge = vec![7u8; 70_000];
        let unmasked = {
            let mut f = client_frame(0x81, b"hi");
            f[1] &= 0x7f;
            f
        };
        // (bytes, limit, messages in order, ending with an error if any)
        let rows: Vec<(Vec<u8>, usize, Decoded)> = vec![
            (client_frame(0x81, b"{}"), 100, vec![text("{}")]),
            (client_frame(0x82, &[0, 1, 2]), 100, vec![Ok(Message::Binary(Bytes::from_static(&[0, 1, 2])))]),
            (client_frame(0x81, long.as_bytes()), 1000, vec![text(&long)]),
            (client_frame(0x82, &huge), 100_000, vec![Ok(Message::Binary(Bytes::from(huge.clone())))]),
            (client_frame(0x81, b""), 100, vec![text("")]),
            // fragmented, with a ping between the fragments
            (
                cat(&[client_frame(0x01, b"ab"), client_frame(0x89, b"p"), client_frame(0x80, b"cd")]),
                100,
                vec![Ok(Message::Ping(Bytes::from_static(b"p"))), text("abcd")],
            ),
            (client_frame(0x8A, b""), 100, vec![Ok(Message::Pong)]),
            // control frames are not held to the message size limit
            (client_frame(0x89, b"12345"), 1, vec![Ok(Message::Ping(Bytes::from_static(b"12345")))]),
            (client_frame(0x88, &[3, 232]), 100, vec![Ok(Message::Close(Bytes::from_static(&[3, 232])))]),
            (cat(&[client_frame(0x81, b"a"), client_frame(0x81, b"b")]), 100, vec![text("a"), text("b")]),
            // refusals
            (unmasked, 100, vec![Err(FrameError::Protocol("unmasked client frame"))]),
            (client_frame(0xC1, b"x"), 100, vec![Err(FrameError::Protocol("reserved bits set"))]),
            (client_frame(0x83, b"x"), 100, vec![Err(FrameError::Protocol("unknown opcode"))]),
            (client_frame(0x0B, b""), 100, vec![Err(FrameError::Protocol("fragmented or oversize control frame"))]),
            (
                client_frame(0x89, &[0; 126]),
                1000,
                vec![Err(FrameError::Protocol("fragmented or oversize control frame"))],
            ),
            (client_frame(0x80, b"x"), 100, vec![Err(FrameError::Protocol("continuation without a message"))]),
            (
                cat(&[client_frame(0x01, b"a"), client_frame(0x81, b"b")]),
                100,
                vec![Err(FrameError::Protocol("new message inside a fragmented one"))],
            ),
            (client_frame(0x81, &[0xff, 0xfe]), 100, vec![Err(FrameError::NotUtf8)]),
            // UTF-8 split across fragments is fine; checked on the whole message
            (cat(&[client_frame(0x01, &[0xc3]), client_frame(0x80, &[0xa9])]), 100, vec![text("é")]),
            (client_frame(0x81, &[b'x'; 101]), 100, vec![Err(FrameError::TooBig)]),
            (client_frame(0x81, &[b'x'; 100]), 100, vec![text(&"x".repeat(100))]),
            (
                cat(&[client_frame(0x01, &[b'x'; 60]), client_frame(0x80, &[b'x'; 41])]),
                100,
                vec![Err(FrameError::TooBig)],
            ),
        ];
        for (i, (bytes, limit, want)) in rows.into_iter().enumerate() {
            assert_eq!(decode_all(&bytes, limit), want, "row {i}");
            // The same bytes a byte at a time decode to the same messages.
            let mut d = Decoder::new(limit);
            let mut got = vec![];
            for b in &bytes {
                d.feed(std::slice::from_ref(b));
                loop {
                    match d.next_message() {
                        Ok(Some(m)) => got.push(Ok(m)),
                        Ok(None) => break,
                        Err(e) => {
                            got.push(Err(e));
                            break;
                        }
                    }
                }
                if got.last().is_some_and(Result::is_err) {
                    break;
                }
            }
            assert_eq!(got, decode_all(&bytes, limit), "row {i} byte by byte");
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        // Only the header of a 2^40-byte frame, and of a u64::MAX one inside
        // a fragmented message (the sizes added must not wrap): refused
        // without their payloads.
        for (start, first, len) in [(vec![], 0x82, 1u64 << 40), (client_frame(0x02, b"ab"), 0x80, u64::MAX)] {
            let mut b = start;
            b.extend_from_slice(&[first, 0x80 | 127]);
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&[1, 2, 3, 4]);
            assert_eq!(decode_all(&b, 65536).last(), Some(&Err(FrameError::TooBig)), "{len}");
        }
    }

    #[test]
    fn idle_decoder_holds_no_buffer_and_errors_stick() {
        let mut d = Decoder::new(100);
        d.feed(&client_frame(0x81, b"hello"));
        assert!(matches!(d.next_message(), Ok(Some(Message::Text(_)))));
        assert_eq!(d.buf.capacity(), 0);
        d.feed(&[0x81]);
        assert_eq!(d.next_message(), Ok(None));
        d.feed(&[0x05]);
        assert_eq!(d.next_message(), Err(FrameError::Protocol("unmasked client frame")));
        d.feed(&client_frame(0x81, b"x"));
        assert!(d.next_message().is_err());
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn close_payload_cuts_on_a_character_boundary() {
        let rows: [(&str, usize); 3] = [("", 2), ("bye", 5), (&"é".repeat(100), 2 + 122)];
        for (reason, len) in rows {
            let p = close_payload(3008, reason);
            assert_eq!(p.len(), len);
            assert_eq!(&p[..2], &3008u16.to_be_bytes());
            assert!(std::str::from_utf8(&p[2..]).is_ok());
        }
    }
}
