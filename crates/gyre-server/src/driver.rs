//! The one connection loop every transport runs.
//!
//! Transports differ only in how bytes reach the peer (WebSocket messages, a
//! chunked HTTP body, SSE events, SockJS frames handed to whichever HTTP
//! request is attached) and in how the end of a connection is told (close
//! frame, disconnect push, `c[code,"reason"]`). Everything else — the client
//! state machine, the bounded write queue, batching of up to 16 messages per
//! write, timers, the "give up at once on overflow" rule, flushing before close
//! — lives here once, so a fix to the write path is a fix for every transport.
//!
//! A transport implements [`Transport`]; [`drive`] owns the [`Client`] and the
//! transport for the connection's whole life.
//!
//! One transport bends this: the bidirectional WebSocket over plain TCP
//! queues finished frames (broadcasters may write them straight to its idle
//! socket, see `ws.rs` and `gyre_node::shared`), so the batches it is handed
//! are frames it writes as they are, up to 16 with one vectored write.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gyre_node::{Client, ClientShared, Disconnect, Encoding, Node};
use gyre_proto::protocol::{ConnectRequest, Push};

/// Messages joined into one write at most (Centrifugo's writer does the same).
pub const MAX_MESSAGES_IN_FRAME: usize = 16;

/// What the peer did.
#[derive(Debug)]
pub enum Inbound {
    /// One transport message: one or more encoded commands.
    Data(Bytes),
    /// The peer went away (or asked to close); nothing more can be written.
    Gone,
    /// The transport itself decided to end the connection (size limit,
    /// missing pong frame, ...): close with this code.
    Close(Disconnect),
}

/// A write that did not complete.
#[derive(Debug)]
pub struct PeerGone;

/// The framing and I/O half of one connection.
///
/// `read` must be cancel-safe: the driver drops it whenever something is
/// queued for writing and calls it again afterwards.
pub trait Transport: Send {
    /// Upper bound for one `write` before the connection is dropped with 3009.
    fn write_timeout(&self) -> Duration;

    /// Frames up to [`MAX_MESSAGES_IN_FRAME`] encoded messages as one
    /// transport write and hands them to the peer.
    fn write(&mut self, messages: &[Bytes]) -> impl Future<Output = Result<(), PeerGone>> + Send;

    /// The next thing the peer did. Transports without a read path wait here
    /// until the peer is gone.
    fn read(&mut self) -> impl Future<Output = Inbound> + Send;

    /// Tells the peer why the connection ends, in the transport's own way, and
    /// closes. Called after the queue was flushed (never flushed for 3008).
    fn close(&mut self, d: &Disconnect) -> impl Future<Output = ()> + Send;
}

/// How the connection starts.
#[derive(Debug)]
pub enum Start {
    /// Wait for the peer's first commands (WebSocket, SockJS).
    Idle,
    /// Commands that arrived with the request (emulation: the connect
    /// command). Boxed: it is consumed at once, and inline it would widen
    /// every connection's task.
    Data(Box<Bytes>),
    /// A unidirectional connect request (boxed: it is consumed at once, and
    /// inline it would widen every connection's task).
    Uni(Box<ConnectRequest>),
}

/// The encoded disconnect push for transports that send one (emulation, uni).
pub fn disconnect_push(encoding: Encoding, d: &Disconnect) -> Bytes {
    let push = Push { disconnect: Some(d.to_proto()), ..Default::default() };
    gyre_node::push::encode_push(encoding, &push, false)
}

/// Writes one frame. While the peer is stuck the queue keeps absorbing
/// pushes; if it overflows meanwhile the write is abandoned at once with 3008
/// instead of waiting out the write timeout. `Err(None)` means the peer is gone.
async fn write_frame<T: Transport>(
    transport: &mut T,
    messages: &[Bytes],
    shared: &ClientShared,
) -> Result<(), Option<Disconnect>> {
    let timeout = transport.write_timeout();
    let write = transport.write(messages);
    tokio::pin!(write);
    // The common case: the socket takes the frame at once. Only a write that
    // has to wait pays for a timer.
    if let Some(r) = futures_util::FutureExt::now_or_never(&mut write) {
        return r.map_err(|_| None);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::select! {
        r = &mut write => r.map_err(|_| None),
        _ = tokio::time::sleep_until(deadline) => {
            Err(Some(shared.pending_disconnect().unwrap_or(Disconnect::WRITE_ERROR)))
        }
        _ = shared.overflowed() => Err(Some(Disconnect::SLOW)),
    }
}

/// Writes everything queued, a frame at a time. `Err` ends the connection.
async fn write_queued<T: Transport>(transport: &mut T, shared: &ClientShared) -> Result<(), Option<Disconnect>> {
    loop {
        let batch = shared.take_batch(MAX_MESSAGES_IN_FRAME);
        if !batch.messages.is_empty() {
            write_frame(transport, &batch.messages, shared).await?;
        }
        if let Some(d) = batch.disconnect {
            return Err(Some(d));
        }
        if batch.messages.is_empty() {
            return Ok(());
        }
    }
}

/// Runs one connection until it ends, then cleans the client up.
///
/// A parked connection costs what this future's idle state holds (the client,
/// the transport, one sleep, the wait on the waker slot, the read future), so every call
/// into the client (command handling, controls, timers), the write path and
/// the whole closing phase are boxed: each holds room for the largest
/// command's state machine or for several write timers, and would otherwise
/// be part of every connection's task for its whole life. The transport is
/// taken by value for the same reason: a caller that keeps it and awaits
/// `drive(&mut t)` stores both side by side.
///
/// Not an `async fn`: an async fn's future stores its arguments twice (as
/// captured arguments and as the body's locals), which for the client and
/// the transport is several hundred bytes per connection.
pub fn drive<T: Transport>(
    node: Arc<Node>,
    client: Client,
    transport: T,
    start: Start,
) -> impl Future<Output = ()> + Send {
    let (mut client, mut transport) = (client, transport);
    async move {
        // Every `let call = Box::pin(..); call.await` below keeps that call's
        // state machine on the heap, out of this future (see above).
        let transport = &mut transport;
        let shared = client.shared().clone();
        let first = match start {
            Start::Idle => Ok(()),
            Start::Data(data) => {
                let call = Box::pin(client.handle_data(&data));
                call.await
            }
            Start::Uni(req) => {
                let call = Box::pin(client.connect_unidirectional(*req));
                call.await
            }
        };
        // `connections_accepted` counts connects that succeeded, once per
        // connection: here, or where a command first makes it connected.
        // (Checked around each command rather than kept in a flag, so the
        // idle state of every parked connection does not grow.)
        count_accepted(&node, &client, false);
        // Why the loop ended: Some(d) = close with d; None = peer gone, nothing to send.
        let end: Option<Disconnect> = match first {
            Err(d) => Some(d),
            Ok(()) => loop {
                let wait = next_event(&shared, transport, client.next_deadline());
                let step = match wait.await {
                    Event::Wake => {
                        let call = Box::pin(client.handle_controls());
                        match call.await {
                            Err(d) => Err(Some(d)),
                            Ok(()) => {
                                let call = Box::pin(write_queued(transport, &shared));
                                call.await
                            }
                        }
                    }
                    Event::Peer(Inbound::Data(data)) => {
                        let was_connected = client.is_connected();
                        let call = Box::pin(client.handle_data(&data));
                        let r = call.await.map_err(Some);
                        count_accepted(&node, &client, was_connected);
                        r
                    }
                    Event::Peer(Inbound::Gone) => Err(None),
                    Event::Peer(Inbound::Close(d)) => Err(Some(d)),
                    Event::Tick => {
                        let call = Box::pin(client.tick());
                        call.await.map_err(Some)
                    }
                };
                if let Err(end) = step {
                    break end;
                }
            },
        };
        if let Some(d) = end {
            let call = Box::pin(finish(&node, transport, &shared, d));
            call.await;
        }
        // Stop further queueing from the hub, then clean up state.
        shared.close_with(Disconnect::CONNECTION_CLOSED);
        let call = Box::pin(client.close());
        call.await;
    }
}

/// Counts the connection in `connections_accepted` when it became connected
/// (it is now, and `was_connected` says it was not before).
fn count_accepted(node: &Node, client: &Client, was_connected: bool) {
    if !was_connected && client.is_connected() {
        gyre_node::metrics::Counters::add(&node.counters.connections_accepted, 1);
    }
}

/// What woke an idle connection.
enum Event {
    /// Something was queued for writing, or a control operation arrived.
    Wake,
    /// The peer did something.
    Peer(Inbound),
    /// A client timer is due.
    Tick,
}

/// The idle wait, as its own small future: this is the state a parked
/// connection sits in.
async fn next_event<T: Transport>(shared: &ClientShared, transport: &mut T, deadline: tokio::time::Instant) -> Event {
    tokio::select! {
        biased;
        _ = shared.notified() => Event::Wake,
        inbound = transport.read() => Event::Peer(inbound),
        _ = tokio::time::sleep_until(deadline) => Event::Tick,
    }
}

/// Flushes what is queued and closes the transport with `d`.
async fn finish<T: Transport>(node: &Node, transport: &mut T, shared: &ClientShared, d: Disconnect) {
    {
        node.record_disconnect(d.code);
        if d != Disconnect::WRITE_ERROR {
            // Flush what is queued (never for 3008: its queue is gone by design).
            if d != Disconnect::SLOW {
                loop {
                    let batch = shared.take_batch(MAX_MESSAGES_IN_FRAME);
                    if batch.messages.is_empty() {
                        break;
                    }
                    if write_frame(transport, &batch.messages, shared).await.is_err() {
                        break;
                    }
                }
            }
            let timeout = transport.write_timeout();
            let _ = tokio::time::timeout(timeout + Duration::from_secs(1), transport.close(&d)).await;
        }
        tracing::debug!(client = %shared.id, transport = shared.transport.name, code = d.code, reason = %d.reason, "disconnected");
    }
}
