//! Long-lived HTTP responses: the body type and the [`Transport`] for
//! HTTP-streaming, SSE and their unidirectional variants.
//!
//! The response body is fed through a channel of capacity one, so hyper only
//! takes the next chunk once it has written the previous one: a client that
//! stops reading backs up into the connection's bounded write queue (and ends
//! in 3008 or 3009) instead of into an unbounded body buffer. When the client
//! goes away hyper drops the body, which closes the channel; that is how the
//! connection learns the peer is gone.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use gyre_node::{Disconnect, Encoding};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::driver::{Inbound, PeerGone, Transport, disconnect_push};

/// A response body whose chunks arrive through a channel, after an optional prelude.
#[derive(Debug)]
pub struct ChannelBody {
    prelude: Option<Bytes>,
    rx: Option<mpsc::Receiver<Bytes>>,
}

impl ChannelBody {
    /// A body of `prelude` followed by whatever is sent to the returned sender.
    pub fn new(prelude: Option<Bytes>) -> (ChannelBody, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(1);
        (ChannelBody { prelude: prelude.filter(|p| !p.is_empty()), rx: Some(rx) }, tx)
    }

    /// A body that ends after `data`.
    pub fn fixed(data: Bytes) -> ChannelBody {
        ChannelBody { prelude: Some(data).filter(|p| !p.is_empty()), rx: None }
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(p) = self.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prelude.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.prelude, &self.rx) {
            (p, None) => SizeHint::with_exact(p.as_ref().map_or(0, |p| p.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

/// How messages are laid out in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// HTTP-streaming JSON: each message followed by `\n`.
    Lines,
    /// HTTP-streaming Protobuf: varint-delimited messages back to back.
    Protobuf,
    /// SSE: each message as `data: <json>\n\n`; a message with line breaks
    /// in it as several `data:` lines (see [`put_sse_event`]).
    Sse,
}

impl StreamFormat {
    /// Lays out messages as one chunk.
    pub fn chunk(self, messages: &[Bytes]) -> Bytes {
        let extra = match self {
            StreamFormat::Lines => 1,
            StreamFormat::Protobuf => 0,
            StreamFormat::Sse => 8,
        };
        let mut b = BytesMut::with_capacity(messages.iter().map(|m| m.len() + extra).sum());
        for m in messages {
            match self {
                StreamFormat::Lines => {
                    b.put_slice(m);
                    b.put_u8(b'\n');
                }
                StreamFormat::Protobuf => b.put_slice(m),
                StreamFormat::Sse => put_sse_event(&mut b, m),
            }
        }
        b.freeze()
    }
}

/// The first bytes of an SSE stream: an empty line, sent with the headers so
/// proxies and EventSource see the stream open before the first event.
///
/// LF, not CRLF: every event is LF-framed ([`put_sse_event`]), and mixing the
/// two breaks the `eventsource` npm polyfill 2.x that centrifuge-js uses in
/// Node. It rescans each read from the start of its buffer, so a CR anywhere
/// before the current line makes it swallow the LF of the blank line ending
/// the next event, which is then never dispatched. Behind a proxy that
/// delivers this line and the connect reply in one read (nginx, with or
/// without buffering, whenever the reply is ready before it reads the
/// upstream) the client never saw its connect reply and timed out.
pub const SSE_PRELUDE: &[u8] = b"\n";

/// Writes one SSE event carrying `m`.
///
/// An SSE parser ends a line at CR, LF or CRLF. JSON payloads reach here with
/// LF removed but may still hold a bare CR as whitespace between tokens (and
/// any payload may hold either), which would end the `data:` line early and
/// turn the rest into a garbage field. So every line break starts a new
/// `data:` line: the client joins them with LF, which JSON reads as the
/// whitespace it was. Empty pieces (from CRLF) are dropped.
fn put_sse_event(b: &mut BytesMut, m: &[u8]) {
    let mut wrote = false;
    for line in m.split(|&c| c == b'\r' || c == b'\n').filter(|l| !l.is_empty()) {
        b.put_slice(b"data: ");
        b.put_slice(line);
        b.put_u8(b'\n');
        wrote = true;
    }
    if !wrote {
        b.put_slice(b"data: \n");
    }
    b.put_u8(b'\n');
}

/// An HTTP-streaming or SSE connection (bidirectional emulation or uni).
pub struct StreamTransport {
    out: Option<mpsc::Sender<Bytes>>,
    /// Emulation: commands posted to `/emulation` for this session.
    inbound: Option<mpsc::Receiver<Bytes>>,
    format: StreamFormat,
    encoding: Encoding,
    write_timeout: Duration,
    /// Runs on drop (unregisters an emulation session).
    _guard: Option<Box<dyn Send + Sync>>,
}

impl StreamTransport {
    /// A transport writing into `out`.
    pub fn new(
        out: mpsc::Sender<Bytes>,
        inbound: Option<mpsc::Receiver<Bytes>>,
        format: StreamFormat,
        encoding: Encoding,
        write_timeout: Duration,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        StreamTransport { out: Some(out), inbound, format, encoding, write_timeout, _guard: guard }
    }
}

impl Transport for StreamTransport {
    fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    async fn write(&mut self, messages: &[Bytes]) -> Result<(), PeerGone> {
        let out = self.out.as_ref().ok_or(PeerGone)?;
        out.send(self.format.chunk(messages)).await.map_err(|_| PeerGone)
    }

    async fn read(&mut self) -> Inbound {
        let Some(out) = self.out.as_ref() else {
            return Inbound::Gone;
        };
        match self.inbound.as_mut() {
            Some(rx) => tokio::select! {
                _ = out.closed() => Inbound::Gone,
                d = rx.recv() => match d {
                    Some(d) => Inbound::Data(d),
                    None => Inbound::Gone,
                },
            },
            None => {
                out.closed().await;
                Inbound::Gone
            }
        }
    }

    async fn close(&mut self, d: &Disconnect) {
        let push = disconnect_push(self.encoding, d);
        let _ = self.write(&[push]).await;
        // Dropping the sender ends the response body.
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_never_carry_a_bare_line_break() {
        for (input, want) in [
            (&b"{\"a\":1}"[..], "data: {\"a\":1}\n\n"),
            (b"{\"a\":\r1}", "data: {\"a\":\ndata: 1}\n\n"),
            (b"{\"a\":\r\n1}", "data: {\"a\":\ndata: 1}\n\n"),
            (b"[1,\n2,\r\r3]", "data: [1,\ndata: 2,\ndata: 3]\n\n"),
            (b"", "data: \n\n"),
            (b"\r", "data: \n\n"),
        ] {
            let got = StreamFormat::Sse.chunk(&[Bytes::copy_from_slice(input)]);
            assert_eq!(std::str::from_utf8(&got).unwrap(), want, "input {:?}", String::from_utf8_lossy(input));
        }
    }
}
