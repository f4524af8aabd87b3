//! WebSocket framing for three transports that share one socket loop:
//! bidirectional `/connection/websocket`, `/connection/uni_websocket` and the
//! SockJS `websocket` transport.
//!
//! They differ only in framing, which is why they are one type with a
//! [`WsMode`] rather than three copies: bidirectional joins up to 16 messages
//! into one WebSocket message and closes with the disconnect code in the
//! Close frame; uni sends each push as its own message (or joined with
//! `join_push_messages`), a disconnect push before the Close frame, and native
//! ping frames with a pong deadline; SockJS wraps messages in `a[...]` frames,
//! heartbeats with `h` and closes with `c[code,"reason"]`.
//!
//! Failure modes handled here: a peer that stops reading (the driver's write
//! timeout → 3009, and a queue overflow → 3008 without waiting for the socket),
//! an oversize message (close 1009, which centrifuge-js treats as terminal), a
//! missing pong frame on uni (3012), a peer that vanishes (read error →
//! cleanup, no close frame), and a message for a JSON client that is not
//! UTF-8 (so cannot be text, let alone JSON: bytes stored through the
//! Protobuf side or the API's `b64data`): it is left out, the rest of its
//! frame is delivered, and the connection then ends with 3506, as a live
//! non-JSON publication does (client-protocol.md §4).
//!
//! # Write-through (bidirectional WebSocket over plain TCP)
//!
//! Such a connection splits its socket: the read half feeds the frame
//! decoder ([`crate::wsframe`]), the write half goes to the connection's queue ([`ClientShared::new_direct`]),
//! which then holds finished frames and lets a broadcaster write a
//! publication's frame straight to the idle socket (the order rule is in
//! `gyre_node::shared`). Every other write goes through the queue, and the
//! owner writes queued frames with one vectored write: replies, and the
//! transport's own control frames (pongs, the Close reply), which
//! [`DirectIo`] hands to the queue instead of the socket. The owner's own
//! close frame is written directly, after the rest of any frame already
//! begun, so the peer always reads whole frames up to the close.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use gyre_node::push::{Framing, ws_frame};
use gyre_node::shared::DirectWrite;
use gyre_node::{Client, ClientShared, Disconnect, Encoding, Node, TransportInfo};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::conn::ConnIo;
use crate::driver::{self, Inbound, PeerGone, Start, Transport};
use crate::sockjs::frames;
use crate::wsframe::{self, Decoder, Message, Read, op};

pub use crate::driver::MAX_MESSAGES_IN_FRAME;

/// What a WebSocket runs over. Part of every parked connection's state,
/// so it stays small: the rarer variants are boxed.
pub enum WsIo {
    /// The accepted connection taken back from hyper (TLS, or plain without write-through).
    Conn(Box<ConnIo>),
    /// A plain socket whose writes go through the connection's queue.
    Direct(DirectIo),
    /// An upgrade hyper did not let us take back (not expected: every
    /// upgrade comes from our HTTP/1 server over [`ConnIo`]).
    Other(Box<TokioIo<Upgraded>>),
}

impl WsIo {
    /// The upgraded connection as accepted, with what hyper read past the
    /// request replayed first.
    pub fn from_upgraded(upgraded: Upgraded) -> WsIo {
        match upgraded.downcast::<TokioIo<ConnIo>>() {
            Ok(parts) => WsIo::Conn(Box::new(parts.io.into_inner().replay(parts.read_buf))),
            Err(upgraded) => WsIo::Other(Box::new(TokioIo::new(upgraded))),
        }
    }
}

/// The write half of a plain socket, written by broadcasters (write-through)
/// and by the connection's owner.
pub struct DirectSocket(OwnedWriteHalf);

impl DirectWrite for DirectSocket {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
}

/// The read half of a plain socket; what the transport writes itself
/// (pongs, a Close reply) is queued on the connection as finished frames.
pub struct DirectIo {
    /// What hyper read past the upgrade request (almost always nothing).
    pre: Option<Box<Bytes>>,
    read: OwnedReadHalf,
    shared: Arc<ClientShared>,
}

impl AsyncRead for DirectIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(pre) = &mut self.pre {
            crate::conn::replay_into(pre, buf);
            if pre.is_empty() {
                self.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for DirectIo {
    /// The transport hands over whole frames only, so a frame is never split
    /// around a broadcast. Dropped silently once the connection is closing:
    /// only a pong or a Close reply is lost.
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.shared.enqueue_framed(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for DirectIo {
    fn drop(&mut self) {
        // The socket closes with its connection, not with the last handle
        // to the connection's shared half.
        self.shared.detach_direct();
    }
}

macro_rules! ws_io_delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            WsIo::Conn($io) => {
                let $io = Pin::new($io);
                $e
            }
            WsIo::Direct($io) => {
                let $io = Pin::new($io);
                $e
            }
            WsIo::Other($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl AsyncRead for WsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ws_io_delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ws_io_delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ws_io_delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ws_io_delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// Framing of one WebSocket transport.
#[derive(Debug, Clone)]
pub enum WsMode {
    /// Centrifugo bidirectional: `\n`-joined JSON (text) or varint-delimited Protobuf (binary).
    Bidi {
        /// Protobuf (binary messages).
        binary: bool,
    },
    /// Unidirectional: bare JSON pushes.
    Uni {
        /// Join the pushes of one write with `\n` into one message.
        join: bool,
        /// Write a disconnect push before the Close frame.
        disconnect_push: bool,
        /// Native ping frame interval.
        ping: Duration,
        /// Deadline for the pong frame.
        pong: Duration,
    },
    /// SockJS `websocket` transport: `o`, `a[...]`, `h`, `c[...]`.
    SockJs {
        /// `h` frame interval.
        heartbeat: Duration,
    },
    /// SockJS raw websocket (`<prefix>/websocket`): messages pass unframed.
    Raw,
}

/// One WebSocket connection as a [`Transport`].
pub struct WsTransport {
    io: WsIo,
    dec: Decoder,
    /// Frames this transport wrote that the socket has not taken yet (empty,
    /// and without capacity, between writes). Every write appends whole
    /// frames here first, so a write cut short by a timeout or a cancelled
    /// read never leaves half a frame behind: the rest goes out first next time.
    out: Vec<u8>,
    mode: WsMode,
    write_timeout: Duration,
    /// Uni and SockJS only (`None` for the bidirectional WebSocket, the
    /// common connection, which carries no room for it).
    timed: Option<Box<Timed>>,
    encoding: Encoding,
    /// A message that could not be text was left out: end with 3506 next.
    not_text: bool,
    /// Write-through mode: the queue holds frames, written to this socket.
    direct: Option<Box<DirectOut>>,
}

/// What only uni and SockJS connections keep.
#[derive(Default)]
struct Timed {
    /// When to send the next ping frame (uni) or `h` frame (SockJS).
    next_ping: Option<Instant>,
    /// Uni: by when a pong must arrive.
    pong_deadline: Option<Instant>,
    /// SockJS: messages of one client frame not yet handed to the driver.
    pending: VecDeque<Bytes>,
}

/// The owner's side of a write-through socket.
struct DirectOut {
    socket: Arc<DirectSocket>,
    shared: Arc<ClientShared>,
    /// Frames taken from the queue and not yet written (the first may be
    /// partly written). Kept here, not in the write's future, so a write
    /// abandoned for 3008 can still end on a frame boundary.
    out: VecDeque<Bytes>,
}

/// Frames written with one vectored write at most.
const MAX_IOVECS: usize = 64;

impl DirectOut {
    /// Writes everything in `out`. Cancel-safe: what is not written stays.
    /// Once written, `out` gives its buffer back: it is part of every idle
    /// connection (measured with massif: 127 bytes each otherwise).
    async fn flush(&mut self) -> Result<(), PeerGone> {
        let r = self.write_out().await;
        if self.out.is_empty() {
            self.out = VecDeque::new();
        }
        r
    }

    async fn write_out(&mut self) -> Result<(), PeerGone> {
        while !self.out.is_empty() {
            self.socket.0.writable().await.map_err(|_| PeerGone)?;
            let r = {
                let slices: Vec<io::IoSlice<'_>> =
                    self.out.iter().take(MAX_IOVECS).map(|b| io::IoSlice::new(b)).collect();
                self.socket.0.try_write_vectored(&slices)
            };
            match r {
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "websocket write failed");
                    return Err(PeerGone);
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front_mut() else { return };
            if n >= front.len() {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Moves everything queued into `out`.
    fn take_queued(&mut self) {
        loop {
            let batch = self.shared.take_batch(usize::MAX);
            if batch.messages.is_empty() {
                return;
            }
            self.out.extend(batch.messages);
        }
    }

    /// Closes with `d`: stops broadcasters and queueing, writes what is
    /// left (frames the owner took before a 3008 overflow, and the rest of a
    /// frame a broadcaster began, which is all an overflow leaves in the
    /// queue; other disconnects come here with the queue flushed), then the
    /// close frame, and waits briefly for the peer's Close. Nothing is cut
    /// short: a frame cut in the middle would make the close frame part of
    /// its payload for the peer.
    async fn close(&mut self, io: &mut WsIo, dec: &mut Decoder, d: &Disconnect, write_timeout: Duration) {
        self.shared.close_with(d.clone());
        self.take_queued();
        self.out.push_back(wsframe::close_frame(d.code as u16, &d.reason));
        if tokio::time::timeout(write_timeout, self.flush()).await.map(|r| r.is_err()).unwrap_or(true) {
            return;
        }
        await_peer_close(io, dec).await;
    }
}

/// Waits up to a second for the peer's Close after ours (the closing
/// handshake), discarding whatever else it still sends.
async fn await_peer_close(io: &mut WsIo, dec: &mut Decoder) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match wsframe::read_message(dec, io).await {
                Read::Message(Message::Close(_)) | Read::Gone | Read::Bad(_) => break,
                Read::Message(_) => {}
            }
        }
    })
    .await;
}

impl WsTransport {
    /// A transport over an upgraded connection; client messages over
    /// `limit` bytes close it with 1009.
    pub fn new(io: WsIo, limit: usize, mode: WsMode, write_timeout: Duration, encoding: Encoding) -> Self {
        let next_ping = match &mode {
            WsMode::Uni { ping, .. } => Some(Instant::now() + *ping),
            WsMode::SockJs { heartbeat } => Some(Instant::now() + *heartbeat),
            _ => None,
        };
        let timed = next_ping.map(|at| Box::new(Timed { next_ping: Some(at), ..Default::default() }));
        WsTransport {
            io,
            dec: Decoder::new(limit),
            out: Vec::new(),
            mode,
            write_timeout,
            timed,
            encoding,
            not_text: false,
            direct: None,
        }
    }

    /// Writes whatever is in `out`, then flushes the socket (TLS records).
    /// Cancel-safe: bytes the socket took are gone from `out`, the rest stays.
    async fn flush_out(&mut self) -> Result<(), PeerGone> {
        while !self.out.is_empty() {
            let (io, out) = (&mut self.io, &self.out);
            match std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, out)).await {
                Ok(0) | Err(_) => return Err(PeerGone),
                Ok(n) => drop(self.out.drain(..n)),
            }
        }
        self.out = Vec::new();
        let io = &mut self.io;
        std::future::poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await.map_err(|_| PeerGone)
    }

    /// Writes one frame and flushes.
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), PeerGone> {
        self.out.extend_from_slice(&ws_frame(opcode, payload));
        self.flush_out().await
    }

    /// Writes one text message (SockJS's `o` frame).
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), PeerGone> {
        self.send_frame(op::TEXT, text).await
    }

    /// Reads the first text/binary message (uni: the connect request), bounded by `deadline`.
    pub async fn first_message(&mut self, deadline: Instant) -> Option<Bytes> {
        loop {
            let read = tokio::time::timeout_at(deadline, wsframe::read_message(&mut self.dec, &mut self.io)).await;
            match read.ok()? {
                Read::Message(Message::Text(b) | Message::Binary(b)) => return Some(b),
                Read::Message(Message::Ping(p)) => {
                    let _ = tokio::time::timeout(self.write_timeout, self.send_frame(op::PONG, &p)).await;
                }
                Read::Message(Message::Pong) => {}
                Read::Message(Message::Close(_)) | Read::Gone | Read::Bad(_) => return None,
            }
        }
    }

    /// Closes with a code and reason and waits briefly for the peer's Close.
    pub async fn close_with(&mut self, code: u16, reason: &str) {
        self.out.extend_from_slice(&wsframe::close_frame(code, reason));
        if tokio::time::timeout(self.write_timeout, self.flush_out()).await.map(|r| r.is_err()).unwrap_or(true) {
            return;
        }
        await_peer_close(&mut self.io, &mut self.dec).await;
    }

    /// The messages a text frame can carry. Normally all of them, checked by
    /// the caller's one UTF-8 check of the whole frame; only when that fails
    /// are they checked one by one, the bad ones left out (logged) and the
    /// connection marked to end with 3506.
    fn text_only<'a>(&mut self, messages: &'a [Bytes]) -> Cow<'a, [Bytes]> {
        let good: Vec<Bytes> = messages.iter().filter(|m| std::str::from_utf8(m).is_ok()).cloned().collect();
        if good.len() == messages.len() {
            return Cow::Borrowed(messages);
        }
        tracing::warn!(
            left_out = messages.len() - good.len(),
            "message for a JSON client is not UTF-8: left out, connection ends with 3506"
        );
        self.not_text = true;
        Cow::Owned(good)
    }

    /// The payload of one text message of `messages` laid out by `layout`
    /// (which must keep valid UTF-8 valid), or `None` when no message can be
    /// text.
    fn text_payload(&mut self, messages: &[Bytes], layout: impl Fn(&[Bytes]) -> Vec<u8>) -> Option<Vec<u8>> {
        let data = layout(messages);
        if std::str::from_utf8(&data).is_ok() {
            return Some(data);
        }
        let good = self.text_only(messages);
        (!good.is_empty()).then(|| layout(&good))
    }

    /// Due timer work (uni ping frames, SockJS heartbeats); a missed pong ends the connection.
    async fn timers(&mut self) -> Option<Inbound> {
        let now = Instant::now();
        let timed = self.timed.as_mut()?;
        if timed.pong_deadline.is_some_and(|d| now >= d) {
            return Some(Inbound::Close(Disconnect::NO_PONG));
        }
        if timed.next_ping.is_some_and(|d| now >= d) {
            let (frame, interval, pong) = match &self.mode {
                WsMode::Uni { ping, pong, .. } => ((op::PING, &b""[..]), *ping, Some(*pong)),
                WsMode::SockJs { heartbeat } => ((op::TEXT, &b"h"[..]), *heartbeat, None),
                _ => return None,
            };
            timed.next_ping = Some(now + interval);
            if let Some(p) = pong
                && timed.pong_deadline.is_none()
            {
                timed.pong_deadline = Some(now + p);
            }
            let write_timeout = self.write_timeout;
            let send = self.send_frame(frame.0, frame.1);
            if tokio::time::timeout(write_timeout, send).await.map(|r| r.is_err()).unwrap_or(true) {
                return Some(Inbound::Gone);
            }
        }
        None
    }

    /// Answers the peer's Close (echoing its code, RFC 6455 §5.5.1) and
    /// ends: the closing handshake is complete.
    async fn answer_close(&mut self, payload: &[u8]) -> Inbound {
        let reply = match payload {
            [a, b, ..] => u16::from_be_bytes([*a, *b]).to_be_bytes().to_vec(),
            _ => Vec::new(),
        };
        if let Some(d) = &mut self.direct {
            // After what is queued, so the peer reads whole frames up to it.
            d.take_queued();
            d.out.push_back(ws_frame(op::CLOSE, &reply));
            let flush = Box::pin(tokio::time::timeout(self.write_timeout, d.flush()));
            let _ = flush.await;
            return Inbound::Gone;
        }
        self.out.extend_from_slice(&ws_frame(op::CLOSE, &reply));
        let flush = Box::pin(tokio::time::timeout(self.write_timeout, self.flush_out()));
        let _ = flush.await;
        Inbound::Gone
    }
    /// What one read from the client leads to: `Some` for the driver,
    /// `None` to read on (a pong written, a message this mode ignores).
    async fn handle(&mut self, read: Read) -> Option<Inbound> {
        let msg = match read {
            Read::Message(m) => m,
            Read::Gone => return Some(Inbound::Gone),
            Read::Bad(e) => {
                tracing::debug!(error = %e, "websocket client sent a bad frame");
                return Some(Inbound::Close(Disconnect::custom(u32::from(e.close_code()), e.to_string())));
            }
        };
        match msg {
            Message::Text(t) => match &self.mode {
                WsMode::Uni { .. } => None,
                WsMode::SockJs { .. } => {
                    // Checked UTF-8 by the decoder.
                    let t = std::str::from_utf8(&t).ok()?;
                    if t.is_empty() {
                        return None;
                    }
                    // A JSON array of strings, or (sockjs-go accepts it) one string.
                    match frames::parse_messages(t) {
                        Ok(msgs) => {
                            let pending = &mut self.timed.get_or_insert_with(Default::default).pending;
                            pending.extend(msgs.into_iter().map(Bytes::from));
                            pending.pop_front().map(Inbound::Data)
                        }
                        // sockjs-go drops the connection on a broken frame.
                        Err(_) => Some(Inbound::Close(Disconnect::BAD_REQUEST)),
                    }
                }
                _ => Some(Inbound::Data(t)),
            },
            Message::Binary(b) => matches!(self.mode, WsMode::Bidi { .. }).then_some(Inbound::Data(b)),
            Message::Ping(p) => {
                self.out.extend_from_slice(&ws_frame(op::PONG, &p));
                let _ = tokio::time::timeout(self.write_timeout, self.flush_out()).await;
                None
            }
            Message::Pong => {
                if let Some(t) = &mut self.timed {
                    t.pong_deadline = None;
                }
                None
            }
            Message::Close(payload) => Some(self.answer_close(&payload).await),
        }
    }
}

impl Transport for WsTransport {
    fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    async fn write(&mut self, messages: &[Bytes]) -> Result<(), PeerGone> {
        if let Some(d) = &mut self.direct {
            // The queue holds finished frames: one vectored write.
            d.out.extend(messages.iter().cloned());
            return d.flush().await;
        }
        let json = |ms: &[Bytes]| gyre_proto::frame_messages(gyre_proto::ProtocolType::Json, ms);
        match &self.mode {
            WsMode::Bidi { binary: true } => {
                let data = gyre_proto::frame_messages(self.encoding.protocol(), messages);
                self.out.extend_from_slice(&ws_frame(op::BINARY, &data));
            }
            WsMode::Bidi { binary: false } | WsMode::Uni { join: true, .. } | WsMode::Raw => {
                if let Some(t) = self.text_payload(messages, json) {
                    self.out.extend_from_slice(&ws_frame(op::TEXT, &t));
                }
            }
            WsMode::Uni { join: false, .. } => {
                for m in messages {
                    if std::str::from_utf8(m).is_ok() {
                        self.out.extend_from_slice(&ws_frame(op::TEXT, m));
                    } else {
                        drop(self.text_only(std::slice::from_ref(m)));
                    }
                }
            }
            WsMode::SockJs { .. } => {
                // SockJS quotes the frame as a JSON string, which would turn
                // bad bytes into U+FFFD silently; check before quoting.
                if let Some(t) = self.text_payload(messages, json) {
                    self.out.extend_from_slice(&ws_frame(op::TEXT, &frames::messages(&[&t])));
                }
            }
        }
        // One write, flushed: a stuck socket blocks here while the bounded
        // queue, not a buffer, absorbs what arrives.
        self.flush_out().await
    }

    async fn read(&mut self) -> Inbound {
        loop {
            if std::mem::take(&mut self.not_text) {
                return Inbound::Close(Disconnect::INAPPROPRIATE_PROTOCOL);
            }
            if let Some(m) = self.timed.as_mut().and_then(|t| t.pending.pop_front()) {
                return Inbound::Data(m);
            }
            // This future is part of every parked connection's state, so it
            // holds only the read itself: uni and SockJS timers wait on a
            // boxed future that holds the sleep, and what a message leads to
            // (a pong to write, the closing handshake) runs boxed too.
            let due = self.timed.as_ref().and_then(|t| t.pong_deadline.into_iter().chain(t.next_ping).min());
            let read = match due {
                None => wsframe::read_message(&mut self.dec, &mut self.io).await,
                Some(at) => {
                    let wait = Box::pin(next_or_timer(&mut self.dec, &mut self.io, at));
                    match wait.await {
                        Some(r) => r,
                        None => {
                            let timers = Box::pin(self.timers());
                            if let Some(i) = timers.await {
                                return i;
                            }
                            continue;
                        }
                    }
                }
            };
            let handle = Box::pin(self.handle(read));
            if let Some(i) = handle.await {
                return i;
            }
        }
    }

    async fn close(&mut self, d: &Disconnect) {
        if let Some(direct) = &mut self.direct {
            return direct.close(&mut self.io, &mut self.dec, d, self.write_timeout).await;
        }
        match self.mode.clone() {
            WsMode::Bidi { .. } | WsMode::Raw => self.close_with(d.code as u16, &d.reason).await,
            WsMode::Uni { disconnect_push, .. } => {
                if disconnect_push {
                    let push = driver::disconnect_push(Encoding::JsonUni, d);
                    let _ = tokio::time::timeout(self.write_timeout, self.send_text(&push)).await;
                }
                self.close_with(d.code as u16, &d.reason).await
            }
            WsMode::SockJs { .. } => {
                let frame = frames::close(d.code, &d.reason);
                let _ = tokio::time::timeout(self.write_timeout, self.send_text(&frame)).await;
                self.close_with(1000, "").await
            }
        }
    }
}

/// The next read, or `None` when `at` comes first.
async fn next_or_timer(dec: &mut Decoder, io: &mut WsIo, at: Instant) -> Option<Read> {
    tokio::select! {
        r = wsframe::read_message(dec, io) => Some(r),
        _ = tokio::time::sleep_until(at) => None,
    }
}

/// Serves one bidirectional `/connection/websocket` connection until it ends.
///
/// Everything is set up before the returned future exists, so the task holds
/// only the driver's state (see [`driver::drive`] on why that matters).
pub fn serve(
    node: Arc<Node>,
    upgraded: Upgraded,
    encoding: Encoding,
    http_user: gyre_node::client::ConnRequest,
) -> impl Future<Output = ()> + Send + 'static {
    let limit = node.config.websocket.message_size_limit;
    let max_queue = node.config.client.queue_max_size;
    let info = TransportInfo { name: "websocket", unidirectional: false, emulation: false, disconnect_push: false };
    let write_timeout = node.config.websocket.write_timeout.0.max(Duration::from_millis(100));
    let mode = WsMode::Bidi { binary: encoding == Encoding::Protobuf };
    let (t, shared) = match WsIo::from_upgraded(upgraded) {
        WsIo::Conn(conn) => match (*conn).into_plain() {
            Ok((tcp, pre)) => {
                let framing = if encoding == Encoding::Protobuf { Framing::WsBinary } else { Framing::WsText };
                let (read, write) = tcp.into_split();
                let socket = Arc::new(DirectSocket(write));
                let shared = ClientShared::new_direct(encoding, info, max_queue, framing, socket.clone());
                let pre = (!pre.is_empty()).then(|| Box::new(pre));
                let io = DirectIo { pre, read, shared: shared.clone() };
                let mut t = WsTransport::new(WsIo::Direct(io), limit, mode, write_timeout, encoding);
                t.direct = Some(Box::new(DirectOut { socket, shared: shared.clone(), out: VecDeque::new() }));
                (t, shared)
            }
            Err(tls) => {
                let t = WsTransport::new(WsIo::Conn(tls), limit, mode, write_timeout, encoding);
                (t, ClientShared::new(encoding, info, max_queue))
            }
        },
        other => {
            let t = WsTransport::new(other, limit, mode, write_timeout, encoding);
            (t, ClientShared::new(encoding, info, max_queue))
        }
    };
    let mut client = Client::new(node.clone(), shared);
    client.set_request(http_user);
    driver::drive(node, client, t, Start::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs its task (this future), its `ClientShared`
    /// and tokio's per-socket state; the future is the largest part, and it
    /// grew unnoticed before (5.1 KiB per connection in one release). The
    /// bound has a little room over today's size (888 bytes in a debug
    /// build, rustc 1.95); what takes it over needs boxing, or a reason
    /// written down here and in BENCHMARKS.md.
    #[tokio::test]
    async fn a_parked_websocket_task_stays_small() {
        let node = Node::new(gyre_node::config::Config::default(), "size".into()).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let (read, write) = tokio::net::TcpStream::from_std(s).unwrap().into_split();
        let info = TransportInfo { name: "websocket", unidirectional: false, emulation: false, disconnect_push: false };
        let socket = Arc::new(DirectSocket(write));
        let shared = ClientShared::new_direct(Encoding::Json, info, 1000, Framing::WsText, socket.clone());
        let io = DirectIo { pre: None, read, shared: shared.clone() };
        let mode = WsMode::Bidi { binary: false };
        let mut t = WsTransport::new(WsIo::Direct(io), 65536, mode, Duration::from_secs(1), Encoding::Json);
        t.direct = Some(Box::new(DirectOut { socket, shared: shared.clone(), out: VecDeque::new() }));
        let client = Client::new(node.clone(), shared);
        let task = driver::drive(node, client, t, Start::Idle);
        let size = std::mem::size_of_val(&task);
        eprintln!("parked WebSocket future {size} B, ClientShared {} B", std::mem::size_of::<ClientShared>());
        assert!(size <= 1024, "a parked WebSocket's future is {size} bytes (bound 1024)");
    }
}
