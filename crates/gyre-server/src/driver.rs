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
    /// Commands that arrived with the request (emulation: the connect command).
    Data(Bytes),
    /// A unidirectional connect request.
    Uni(ConnectRequest),
}

/// The encoded disconnect push for transports that send one (emulation, uni).
pub fn disconnect_push(encoding: Encoding, d: &Disconnect) -> Bytes {
    let push = Push { disconnect: Some(d.to_proto()), ..Default::default() };
    gyre_node::hub::encode_push(encoding, &push, false)
}

/// Writes one frame. While the peer is stuck the queue keeps absorbing
/// pushes; if it overflows meanwhile the write is abandoned at once with 3008
/// instead of waiting out the write timeout. `Err(None)` means the peer is gone.
async fn write_frame<T: Transport>(
    transport: &mut T,
    messages: &[Bytes],
    shared: &ClientShared,
) -> Result<(), Option<Disconnect>> {
    let deadline = tokio::time::Instant::now() + transport.write_timeout();
    let write = transport.write(messages);
    tokio::pin!(write);
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
pub async fn drive<T: Transport>(node: Arc<Node>, mut client: Client, transport: &mut T, start: Start) {
    let shared = client.shared().clone();
    let first = match start {
        Start::Idle => Ok(()),
        Start::Data(data) => client.handle_data(&data).await,
        Start::Uni(req) => client.connect_unidirectional(req).await,
    };
    // Why the loop ended: Some(d) = close with d; None = peer gone, nothing to send.
    let end: Option<Disconnect> = match first {
        Err(d) => Some(d),
        Ok(()) => loop {
            let deadline = client.next_deadline();
            tokio::select! {
                biased;
                _ = shared.notified() => {
                    if let Err(d) = client.handle_controls().await {
                        break Some(d);
                    }
                    if let Err(d) = write_queued(transport, &shared).await {
                        break d;
                    }
                }
                inbound = transport.read() => match inbound {
                    Inbound::Data(data) => {
                        if let Err(d) = client.handle_data(&data).await {
                            break Some(d);
                        }
                    }
                    Inbound::Gone => break None,
                    Inbound::Close(d) => break Some(d),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(d) = client.tick().await {
                        break Some(d);
                    }
                }
            }
        },
    };
    if let Some(d) = end {
        node.record_disconnect(d.code);
        if d != Disconnect::WRITE_ERROR {
            // Flush what is queued (never for 3008: its queue is gone by design).
            if d != Disconnect::SLOW {
                loop {
                    let batch = shared.take_batch(MAX_MESSAGES_IN_FRAME);
                    if batch.messages.is_empty() {
                        break;
                    }
                    if write_frame(transport, &batch.messages, &shared).await.is_err() {
                        break;
                    }
                }
            }
            let timeout = transport.write_timeout();
            let _ = tokio::time::timeout(timeout + Duration::from_secs(1), transport.close(&d)).await;
        }
        tracing::debug!(client = %shared.id, transport = shared.transport.name, code = d.code, reason = %d.reason, "disconnected");
    }
    // Stop further queueing from the hub, then clean up state.
    shared.close_with(Disconnect::CONNECTION_CLOSED);
    client.close().await;
}
