//! The part of a connection other tasks may touch: its write queue, the
//! per-channel delivery state the hub consults, and a mailbox of control
//! operations (server API unsubscribe, disconnect, ...).
//!
//! Everything else about a connection lives in [`crate::client::Client`],
//! owned by the one task that owns the socket. Other tasks never mutate
//! client state directly; they leave a [`Control`] and wake the owner, so
//! every state transition of a connection happens on one task, in order.
//!
//! Failure mode this module exists for: a subscriber that stops reading. Its
//! queue is bounded in bytes; the push that would exceed the bound drops the
//! whole queue and marks the connection for disconnect 3008 "slow". The
//! publisher never waits and the other subscribers never notice.
//!
//! # Write-through
//!
//! A connection may hand its socket's non-blocking write to the queue
//! ([`ClientShared::new_direct`]; the bidirectional WebSocket over plain TCP
//! does). Its queue then holds finished frames ([`Framing`]), and a
//! broadcaster delivering a publication or join/leave writes the frame
//! straight to the socket when nothing is queued and the owner is not in
//! the middle of a write: no queue push, no task wake-up, no second copy.
//! Everything else (a write that would block, the rest of a partial write,
//! replies, pushes the owner makes) goes through the queue and the owner's
//! writer as before. Order holds because every write-through happens under
//! the queue lock, only while the queue is empty and `writing` is false, and
//! the owner sets `writing` under the same lock when it takes a batch and
//! clears it when it finds the queue empty. The rest of a partially written
//! frame stays at the head of the queue, even through an overflow, so the
//! byte stream stays parseable up to the close frame.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use gyre_proto::protocol::{Publication, Push, Reply};
use parking_lot::Mutex;

use crate::errors::Disconnect;
use crate::push::{Encoding, Framing, LazyPush, PubForm, encode_push, frame_message};
use crate::small_map::SmallMap;

/// What the transport is, for connect results and proxies.
#[derive(Debug, Clone)]
pub struct TransportInfo {
    /// `websocket`, `http_stream`, `sse`, `uni_websocket`, ...
    pub name: &'static str,
    /// Unidirectional: only server-side subscriptions, bare pushes, no pongs.
    pub unidirectional: bool,
    /// Bidirectional emulation: connect result carries session and node.
    pub emulation: bool,
    /// Disconnects are written as a push before closing (emulation, uni).
    pub disconnect_push: bool,
}

/// A request from another task for the owning task to act on.
#[derive(Debug, Clone)]
pub enum Control {
    /// Server-side subscribe (API `subscribe`).
    Subscribe(Box<crate::node::ServerSubscribe>),
    /// Unsubscribe from a channel with a code (API `unsubscribe`: 2000).
    Unsubscribe { channel: String, code: u32, reason: String },
    /// Position lost in a channel (detected during delivery).
    InsufficientState { channel: String },
    /// API `refresh`.
    Refresh { expired: bool, expire_at: Option<i64>, info: Option<Bytes> },
}

/// The non-blocking write half of a socket a broadcaster may write to.
pub trait DirectWrite: Send + Sync {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Bytes>,
    bytes: usize,
    disconnect: Option<Disconnect>,
    /// Write-through target (see the module doc); dropped when the owner ends.
    direct: Option<Arc<dyn DirectWrite>>,
    /// The owner took a batch and has not yet found the queue empty again.
    writing: bool,
    /// `items[0]` is the rest of a frame whose start was written through.
    partial_head: bool,
}

/// Delivery state of one subscription, consulted by the hub on every publication.
#[derive(Debug, Default)]
pub struct SubDelivery {
    /// Subscribe reply queued: publications go straight to the queue.
    pub live: bool,
    /// While subscribing with recovery/positioning: publications seen meanwhile.
    pub buffer: Option<Vec<Arc<Publication>>>,
    /// Positioned: last delivered offset and the stream epoch.
    pub position: Option<(u64, String)>,
    /// Receives join/leave pushes.
    pub join_leave: bool,
    /// A gap was detected; further publications are dropped until resubscribe.
    pub broken: bool,
    /// Delta compression negotiated (JSON data travels as strings).
    pub delta: bool,
    /// The client holds the previous publication's data (next may be a patch).
    pub delta_base: Option<u64>,
    /// Only publications whose tags match are delivered. Boxed: rare, and
    /// inline it would triple the size of every subscription's entry.
    pub tags_filter: Option<Box<gyre_proto::protocol::FilterNode>>,
}

/// Options of a subscription's delivery state.
#[derive(Debug, Clone, Default)]
pub struct SubDeliveryOptions {
    /// Buffer publications while subscribing (recovery/positioning).
    pub buffer: bool,
    /// Receive join/leave pushes.
    pub join_leave: bool,
    /// Delta negotiated.
    pub delta: bool,
    /// Tags filter.
    pub tags_filter: Option<gyre_proto::protocol::FilterNode>,
}

/// The shared half of a connection.
pub struct ClientShared {
    /// Client id (UUID v4).
    pub id: Arc<str>,
    user: OnceLock<Arc<str>>,
    /// Wire encoding.
    pub encoding: Encoding,
    /// How queued messages are framed (frames are queued when not `Transport`).
    pub framing: Framing,
    /// Transport description.
    pub transport: TransportInfo,
    /// Emulation/uni session id ("" when none).
    pub session: String,
    max_queue: usize,
    queue: Mutex<Queue>,
    /// The owner task's waker, for both of its waits: [`Self::notified`]
    /// and [`Self::overflowed`]. One task waits, so a slot and two flags do
    /// what two `tokio::sync::Notify`s did, in 32 bytes instead of 64 here
    /// and without a 64-byte `Notified` in every parked connection's task.
    waker: AtomicWaker,
    /// Something to write or do (set by [`Self::wake`], taken by the wait).
    woken: AtomicBool,
    /// The queue overflowed (3008); stays set.
    overflow: AtomicBool,
    subs: Mutex<SmallMap<Arc<str>, SubDelivery>>,
    control: Mutex<VecDeque<Control>>,
}

impl std::fmt::Debug for ClientShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientShared").field("id", &self.id).finish()
    }
}

/// Messages taken from the queue for one write, plus a pending disconnect.
#[derive(Debug, Default)]
pub struct Batch {
    /// Encoded messages (to be framed by the transport).
    pub messages: Vec<Bytes>,
    /// Close after writing these.
    pub disconnect: Option<Disconnect>,
}

impl ClientShared {
    /// A new connection handle.
    pub fn new(encoding: Encoding, transport: TransportInfo, max_queue: usize) -> Arc<Self> {
        Arc::new(ClientShared {
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            user: OnceLock::new(),
            encoding,
            framing: Framing::Transport,
            transport,
            session: String::new(),
            max_queue,
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            subs: Mutex::new(SmallMap::new()),
            control: Mutex::new(VecDeque::new()),
        })
    }

    /// A new handle with an emulation/uni session id.
    pub fn with_session(encoding: Encoding, transport: TransportInfo, max_queue: usize, session: String) -> Arc<Self> {
        let mut s = Self::new(encoding, transport, max_queue);
        Arc::get_mut(&mut s).expect("fresh Arc").session = session;
        s
    }

    /// A new handle whose queue holds `framing` frames and whose broadcasts
    /// may be written through to `socket` (see the module doc).
    pub fn new_direct(
        encoding: Encoding,
        transport: TransportInfo,
        max_queue: usize,
        framing: Framing,
        socket: Arc<dyn DirectWrite>,
    ) -> Arc<Self> {
        let mut s = Self::new(encoding, transport, max_queue);
        let m = Arc::get_mut(&mut s).expect("fresh Arc");
        m.framing = framing;
        m.queue.get_mut().direct = Some(socket);
        s
    }

    /// Forgets the write-through socket (the owner calls this when it ends,
    /// so the socket closes with its connection, not with the last handle).
    pub fn detach_direct(&self) {
        self.queue.lock().direct = None;
    }

    /// The user id, set once at connect ("" before and for anonymous).
    pub fn user(&self) -> Arc<str> {
        self.user.get().cloned().unwrap_or_else(|| Arc::from(""))
    }

    pub(crate) fn set_user(&self, user: &str) {
        let _ = self.user.set(Arc::from(user));
    }

    /// Waits until there is something to write or do. Only the connection's
    /// owner task waits (the one waker slot); a wake-up that came while it
    /// was not waiting is kept and ends the next wait at once.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_flag(&self.woken, true, cx)).await
    }

    /// Waits until the queue overflowed (3008): lets a writer stuck on a full
    /// socket give up at once instead of at its write timeout.
    pub async fn overflowed(&self) {
        std::future::poll_fn(|cx| self.poll_flag(&self.overflow, false, cx)).await
    }

    /// Ready once `flag` is set (clearing it when `take`). The flag is
    /// checked again after registering, so a set between the first check and
    /// the registration is not missed.
    fn poll_flag(&self, flag: &AtomicBool, take: bool, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let check = || if take { flag.swap(false, Ordering::AcqRel) } else { flag.load(Ordering::Acquire) };
        if check() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if check() { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Wakes the owner: there is something to write or do.
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Queues one encoded message (framed first when this connection queues
    /// frames); false when the connection is closing.
    pub fn enqueue(&self, msg: Bytes) -> bool {
        match frame_message(self.framing, &msg) {
            Some(framed) => self.push(framed, false),
            None => {
                self.not_text();
                false
            }
        }
    }

    /// Queues bytes that are already framed for this connection's socket
    /// (a transport's own control frames, e.g. a pong).
    pub fn enqueue_framed(&self, framed: Bytes) -> bool {
        self.push(framed, false)
    }

    /// A message that a JSON client cannot take (not UTF-8): it is left out
    /// and the connection ends with 3506 after what was queued before it.
    fn not_text(&self) {
        tracing::warn!(client = %self.id, "message for a JSON client is not UTF-8: left out, connection ends with 3506");
        self.close_with(Disconnect::INAPPROPRIATE_PROTOCOL);
    }

    /// Queues (or, from a broadcaster with `write_through`, writes) one
    /// message or frame. See the module doc for the order argument.
    fn push(&self, msg: Bytes, write_through: bool) -> bool {
        let mut q = self.queue.lock();
        if q.disconnect.is_some() {
            return false;
        }
        let mut msg = msg;
        if write_through
            && !q.writing
            && q.items.is_empty()
            && let Some(socket) = &q.direct
        {
            match socket.try_write(&msg) {
                Ok(n) if n == msg.len() => return true,
                Ok(n) => {
                    msg = msg.slice(n..);
                    q.partial_head = n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // The peer is gone; the owner's read sees it too. Nothing
                    // is written after a failed write.
                    tracing::debug!(client = %self.id, error = %e, "write-through failed");
                    q.disconnect = Some(Disconnect::WRITE_ERROR);
                    drop(q);
                    self.wake();
                    return false;
                }
            }
        }
        if q.bytes + msg.len() > self.max_queue {
            // Keep only the rest of a frame already begun on the socket, so
            // the close frame that follows lands on a frame boundary.
            let head =
                if q.partial_head { if q.items.is_empty() { Some(msg) } else { q.items.pop_front() } } else { None };
            q.items.clear();
            q.bytes = 0;
            if let Some(h) = head {
                q.bytes = h.len();
                q.items.push_back(h);
            }
            q.disconnect = Some(Disconnect::SLOW);
            drop(q);
            self.overflow.store(true, Ordering::Release);
            self.wake();
            return false;
        }
        q.bytes += msg.len();
        q.items.push_back(msg);
        drop(q);
        self.wake();
        true
    }

    /// Queues a reply.
    pub fn enqueue_reply(&self, reply: &Reply) -> bool {
        self.enqueue(self.encode_reply(reply))
    }

    /// Encodes a reply for this connection.
    pub fn encode_reply(&self, reply: &Reply) -> Bytes {
        match self.encoding {
            Encoding::JsonUni => {
                // Unidirectional clients only ever get pushes (a ping is an empty push).
                let push = reply.push.clone().unwrap_or_default();
                encode_push(Encoding::JsonUni, &push, false)
            }
            enc => gyre_proto::encode_reply(enc.protocol(), reply),
        }
    }

    /// Queues a push.
    pub fn enqueue_push(&self, push: &Push) -> bool {
        self.enqueue(encode_push(self.encoding, push, false))
    }

    /// Queues a publication push of a delta subscription (data as a JSON string).
    pub fn enqueue_push_delta(&self, push: &Push) -> bool {
        self.enqueue(encode_push(self.encoding, push, true))
    }

    /// Encodes a reply whose publications belong to a delta subscription.
    pub fn encode_reply_delta(&self, reply: &Reply) -> Bytes {
        match self.encoding {
            Encoding::Json => {
                let mut b = Vec::with_capacity(128);
                gyre_proto::json::write_reply_with(&mut b, reply, true);
                Bytes::from(b)
            }
            _ => self.encode_reply(reply),
        }
    }

    /// Asks the owner to close with `d` after flushing what is queued
    /// (a 3008 "slow" disconnect drops the queue instead).
    pub fn close_with(&self, d: Disconnect) {
        let mut q = self.queue.lock();
        if q.disconnect.is_none() {
            q.disconnect = Some(d);
        }
        drop(q);
        self.wake();
    }

    /// The disconnect pending, if any.
    pub fn pending_disconnect(&self) -> Option<Disconnect> {
        self.queue.lock().disconnect.clone()
    }

    /// Takes up to `max` messages for one write, and the pending disconnect
    /// once the queue is empty. The owner calls this until it comes back
    /// empty: until then broadcasters do not write through (the batch taken
    /// is still being written).
    pub fn take_batch(&self, max: usize) -> Batch {
        let mut q = self.queue.lock();
        let n = q.items.len().min(max);
        // Taking the whole queue hands its buffer to the batch (no copy, no
        // allocation), so an idle connection keeps no queue buffer at all.
        let messages: Vec<Bytes> =
            if n == q.items.len() { Vec::from(std::mem::take(&mut q.items)) } else { q.items.drain(..n).collect() };
        q.bytes -= messages.iter().map(Bytes::len).sum::<usize>();
        q.writing = !messages.is_empty();
        if !messages.is_empty() {
            q.partial_head = false;
        }
        let disconnect = if q.items.is_empty() { q.disconnect.clone() } else { None };
        Batch { messages, disconnect }
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Leaves a control operation for the owning task.
    pub fn push_control(&self, c: Control) {
        self.control.lock().push_back(c);
        self.wake();
    }

    /// Takes pending control operations.
    pub fn take_controls(&self) -> Vec<Control> {
        Vec::from(std::mem::take(&mut *self.control.lock()))
    }

    // -- delivery state ---------------------------------------------------

    /// Starts a subscription in buffering (or dropping) mode.
    pub(crate) fn begin_sub(&self, channel: &str, o: SubDeliveryOptions) {
        self.subs.lock().insert(
            Arc::from(channel),
            SubDelivery {
                live: false,
                buffer: o.buffer.then(Vec::new),
                position: None,
                join_leave: o.join_leave,
                broken: false,
                delta: o.delta,
                delta_base: None,
                tags_filter: o.tags_filter.map(Box::new),
            },
        );
    }

    /// Runs `f` on all delivery states at once (going live atomically).
    pub(crate) fn with_subs<R>(&self, f: impl FnOnce(&mut SmallMap<Arc<str>, SubDelivery>) -> R) -> R {
        f(&mut self.subs.lock())
    }

    pub(crate) fn end_sub(&self, channel: &str) {
        self.subs.lock().remove(channel);
    }

    pub(crate) fn deliver_publication(
        &self,
        channel: &str,
        publication: &Arc<Publication>,
        epoch: &str,
        prev: Option<&Arc<Publication>>,
        lazy: &mut LazyPush<'_>,
        write_through: bool,
    ) {
        let mut subs = self.subs.lock();
        let Some(s) = subs.get_mut(channel) else { return };
        if s.broken {
            return;
        }
        if !s.live {
            if let Some(b) = &mut s.buffer {
                b.push(publication.clone());
            }
            return;
        }
        if let Some((offset, ep)) = &mut s.position
            && publication.offset != 0
        {
            if ep != epoch || publication.offset > *offset + 1 {
                s.broken = true;
                drop(subs);
                self.push_control(Control::InsufficientState { channel: channel.to_string() });
                return;
            }
            if publication.offset <= *offset {
                return;
            }
            *offset = publication.offset;
        }
        if let Some(tf) = &s.tags_filter
            && !crate::filter::matches(tf, &publication.tags)
        {
            return;
        }
        let form = if !s.delta {
            PubForm::Plain
        } else {
            let patchable = prev.is_some_and(|p| s.delta_base == Some(p.offset) && p.offset + 1 == publication.offset);
            s.delta_base = Some(publication.offset);
            if patchable { PubForm::DeltaPatch } else { PubForm::DeltaFull }
        };
        drop(subs);
        self.deliver(lazy, form, write_through);
    }

    /// Hands a broadcast push to this connection: framed once per broadcast,
    /// and written through when the connection queues frames and the
    /// broadcaster allows it (it does not while it has more events waiting).
    fn deliver(&self, lazy: &mut LazyPush<'_>, form: PubForm, write_through: bool) {
        match lazy.get_framed(self.encoding, form, self.framing) {
            Some(m) => {
                self.push(m, write_through && self.framing != Framing::Transport);
            }
            None => self.not_text(),
        }
    }

    /// The tracked stream position of a positioned subscription.
    pub fn position(&self, channel: &str) -> Option<(u64, String)> {
        self.subs.lock().get(channel).and_then(|s| s.position.clone())
    }

    pub(crate) fn deliver_join_leave(&self, channel: &str, lazy: &mut LazyPush<'_>, write_through: bool) -> bool {
        let ok = self.subs.lock().get(channel).is_some_and(|s| s.live && s.join_leave);
        if ok {
            self.deliver(lazy, PubForm::Plain, write_through);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TransportInfo {
        TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false }
    }

    #[test]
    fn queue_overflow_disconnects_slow_and_drops_queue() {
        let c = ClientShared::new(Encoding::Json, info(), 10);
        assert!(c.enqueue(Bytes::from_static(b"12345")));
        assert!(c.enqueue(Bytes::from_static(b"12345")));
        assert!(!c.enqueue(Bytes::from_static(b"1")));
        let b = c.take_batch(16);
        assert!(b.messages.is_empty());
        assert_eq!(b.disconnect, Some(Disconnect::SLOW));
        assert!(!c.enqueue(Bytes::from_static(b"1")));
    }

    #[test]
    fn batches_hold_at_most_max_and_disconnect_comes_last() {
        let c = ClientShared::new(Encoding::Json, info(), 1 << 20);
        for _ in 0..20 {
            c.enqueue(Bytes::from_static(b"{}"));
        }
        c.close_with(Disconnect::SHUTDOWN);
        let b1 = c.take_batch(16);
        assert_eq!(b1.messages.len(), 16);
        assert_eq!(b1.disconnect, None);
        let b2 = c.take_batch(16);
        assert_eq!(b2.messages.len(), 4);
        assert_eq!(b2.disconnect, Some(Disconnect::SHUTDOWN));
        assert_eq!(c.queued_bytes(), 0);
    }

    /// A socket that takes at most `room` bytes (then `WouldBlock`) and
    /// records what it took.
    #[derive(Default)]
    struct FakeSocket {
        room: Mutex<usize>,
        written: Mutex<Vec<u8>>,
    }

    impl DirectWrite for FakeSocket {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let mut room = self.room.lock();
            let n = buf.len().min(*room);
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            *room -= n;
            self.written.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn direct(room: usize, max_queue: usize) -> (Arc<ClientShared>, Arc<FakeSocket>) {
        let socket = Arc::new(FakeSocket { room: Mutex::new(room), ..Default::default() });
        let c = ClientShared::new_direct(Encoding::Json, info(), max_queue, Framing::WsText, socket.clone());
        (c, socket)
    }

    /// The owner writing a batch: its bytes go to the same socket (ignoring
    /// its room, as the owner would wait for it).
    fn owner_writes(c: &ClientShared, s: &FakeSocket) -> bool {
        let b = c.take_batch(16);
        b.messages.iter().for_each(|m| s.written.lock().extend_from_slice(m));
        !b.messages.is_empty()
    }

    #[test]
    fn broadcasts_to_an_idle_socket_are_written_through_without_queueing() {
        let (c, s) = direct(1 << 20, 1 << 20);
        assert!(c.push(Bytes::from_static(b"\x81\x01a"), true));
        assert_eq!(c.queued_bytes(), 0);
        assert_eq!(&*s.written.lock(), b"\x81\x01a");
        // Replies and the owner's own pushes are queued even when idle: the
        // owner writes them together after handling its frame of commands.
        assert!(c.enqueue(Bytes::from_static(b"r")));
        assert_eq!(c.queued_bytes(), 3);
    }

    /// The order rule, case by case: the socket receives messages in the
    /// order of the calls, whichever path each took.
    #[test]
    fn write_through_keeps_order_across_queue_owner_and_partial_writes() {
        // (socket room, steps): 'b' = a broadcast, 'q' = the owner queues a
        // reply, 'w' = the owner writes one batch, 't' = the owner takes a
        // batch and 'f' finishes writing it (a write that had to wait),
        // 'r' = the socket has room again.
        let table: &[(usize, &str)] = &[
            (100, "qtbf"),
            (100, "qtbbfbtbfb"),
            (3, "btbrbfb"),
            (100, "bbb"),
            (100, "bqbwbwb"),
            (100, "qbwbbwwb"),
            (2, "bbbb"),
            (5, "bbwbbrbwwb"),
            (0, "bbrbwb"),
            (4, "bqbrwbwwb"),
        ];
        for &(room, steps) in table {
            let (c, s) = direct(room, 1 << 20);
            let mut sent = Vec::new();
            let mut held = Vec::new();
            for (i, step) in steps.chars().enumerate() {
                let m = Bytes::from(vec![b'a' + i as u8; 3]);
                match step {
                    'b' => {
                        sent.extend_from_slice(&m);
                        assert!(c.push(m, true));
                    }
                    'q' => {
                        sent.extend_from_slice(&m);
                        assert!(c.push(m, false));
                    }
                    'w' => {
                        owner_writes(&c, &s);
                    }
                    't' => held = c.take_batch(16).messages,
                    'f' => std::mem::take(&mut held).iter().for_each(|m| s.written.lock().extend_from_slice(m)),
                    'r' => *s.room.lock() = 100,
                    _ => unreachable!(),
                }
            }
            while owner_writes(&c, &s) {}
            assert_eq!(*s.written.lock(), sent, "room {room}, steps {steps}");
        }
    }

    #[test]
    fn overflow_keeps_the_rest_of_a_partly_written_frame_only() {
        let (c, s) = direct(2, 8);
        assert!(c.push(Bytes::from_static(b"abcde"), true)); // "ab" written, "cde" queued
        assert!(c.push(Bytes::from_static(b"fgh"), true)); // queued: 6 bytes
        assert!(!c.push(Bytes::from_static(b"ijk"), true)); // 9 > 8: 3008
        assert_eq!(&*s.written.lock(), b"ab");
        let b = c.take_batch(16);
        assert_eq!(b.messages, vec![Bytes::from_static(b"cde")]);
        assert_eq!(b.disconnect, Some(Disconnect::SLOW));
        assert!(!c.push(Bytes::from_static(b"x"), true));
    }

    #[test]
    fn a_failed_write_through_ends_the_connection_with_a_write_error() {
        struct Broken;
        impl DirectWrite for Broken {
            fn try_write(&self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let c = ClientShared::new_direct(Encoding::Json, info(), 1 << 20, Framing::WsText, Arc::new(Broken));
        assert!(!c.push(Bytes::from_static(b"a"), true));
        assert_eq!(c.pending_disconnect(), Some(Disconnect::WRITE_ERROR));
    }

    #[test]
    fn a_message_that_is_not_utf8_is_left_out_for_a_text_framed_client() {
        let (c, _) = direct(0, 1 << 20);
        assert!(c.enqueue(Bytes::from_static(b"{}")));
        assert!(!c.enqueue(Bytes::from_static(b"\xff")));
        let b = c.take_batch(16);
        assert_eq!(b.messages, vec![Bytes::from_static(b"\x81\x02{}")]);
        assert_eq!(b.disconnect, Some(Disconnect::INAPPROPRIATE_PROTOCOL));
    }
}
