//! Bidirectional WebSocket transport at `/connection/websocket`.
//!
//! One task owns the socket and the [`Client`]: it selects over incoming
//! frames, wake-ups of the write queue (replies, publications, control
//! operations) and the client's next timer. The transport only frames and
//! writes: up to 16 queued messages are joined into one WebSocket message, as
//! Centrifugo's writer does, which is what keeps fan-out cheap per delivery.
//!
//! Failure modes handled here: a peer that stops reading (writes time out
//! after `websocket.write_timeout` → 3009, and its queue overflowing is 3008
//! without waiting for the socket), an oversize message (close 1009, which
//! centrifuge-js treats as terminal), and a peer that vanishes (read error →
//! cleanup, no close frame).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gyre_node::{Client, ClientShared, Disconnect, Encoding, Node, TransportInfo};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Messages joined into one frame at most.
pub const MAX_MESSAGES_IN_FRAME: usize = 16;

/// WebSocket settings derived from the config: small buffers (a connection
/// mostly idles) and the incoming size limit.
pub fn ws_config(node: &Node) -> WebSocketConfig {
    let limit = node.config.websocket.message_size_limit;
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = 4096;
    c.write_buffer_size = 0;
    c.max_message_size = Some(limit);
    c.max_frame_size = Some(limit);
    c
}

fn close_message(d: &Disconnect) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(d.code as u16), reason: d.reason.to_string().into() }))
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>;

/// Writes and flushes one frame. While the socket is stuck, the queue keeps
/// absorbing pushes; if it overflows meanwhile the write is abandoned at once
/// with 3008 instead of waiting out the write timeout. `Err(None)` means the
/// peer is gone.
async fn write_frame(
    sink: &mut Sink,
    msg: Message,
    shared: &ClientShared,
    timeout: Duration,
) -> Result<(), Option<Disconnect>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let write = sink.send(msg);
    tokio::pin!(write);
    tokio::select! {
        r = &mut write => r.map_err(|_| None),
        _ = tokio::time::sleep_until(deadline) => {
            Err(Some(shared.pending_disconnect().unwrap_or(Disconnect::WRITE_ERROR)))
        }
        _ = shared.overflowed() => Err(Some(Disconnect::SLOW)),
    }
}

/// Serves one upgraded connection until it ends.
pub async fn serve(node: Arc<Node>, upgraded: Upgraded, encoding: Encoding, http_user: Option<String>) {
    let io = TokioIo::new(upgraded);
    let ws = WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(ws_config(&node)),
    )
    .await;
    let info = TransportInfo { name: "websocket", unidirectional: false, emulation: false, disconnect_push: false };
    let shared = ClientShared::new(encoding, info, node.config.client.queue_max_size);
    let mut client = Client::new(node.clone(), shared.clone());
    client.set_http_user(http_user);
    run(node, ws, client, shared).await;
}

async fn run(node: Arc<Node>, ws: WebSocketStream<TokioIo<Upgraded>>, mut client: Client, shared: Arc<ClientShared>) {
    let (mut sink, mut stream) = ws.split();
    let write_timeout = node.config.websocket.write_timeout.0.max(Duration::from_millis(100));
    let binary = shared.encoding == Encoding::Protobuf;
    let frame = |msgs: &[Bytes]| -> Message {
        let data = gyre_proto::frame_messages(shared.encoding.protocol(), msgs);
        if binary {
            Message::Binary(data.into())
        } else {
            Message::Text(String::from_utf8(data).unwrap_or_default().into())
        }
    };
    // Why the loop ended: Some(d) = close with d; None = peer gone, nothing to send.
    let end: Option<Disconnect> = loop {
        let deadline = client.next_deadline();
        tokio::select! {
            biased;
            _ = shared.notified() => {
                if let Err(d) = client.handle_controls().await {
                    break Some(d);
                }
                let mut disconnect = None;
                loop {
                    let batch = shared.take_batch(MAX_MESSAGES_IN_FRAME);
                    if !batch.messages.is_empty() {
                        // One frame, written and flushed: a stuck socket blocks here
                        // (bounded by the write timeout) while the queue, not an
                        // unbounded buffer, absorbs what arrives meanwhile.
                        match write_frame(&mut sink, frame(&batch.messages), &shared, write_timeout).await {
                            Ok(()) => {}
                            Err(d) => { disconnect = Some(d); break; }
                        }
                    }
                    if let Some(d) = batch.disconnect {
                        disconnect = Some(Some(d));
                        break;
                    }
                    if batch.messages.is_empty() {
                        break;
                    }
                }
                if let Some(d) = disconnect {
                    break d;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Err(d) = client.handle_data(t.as_bytes()).await { break Some(d); }
                }
                Some(Ok(Message::Binary(b))) => {
                    if let Err(d) = client.handle_data(&b).await { break Some(d); }
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; push it out.
                    let _ = tokio::time::timeout(write_timeout, sink.flush()).await;
                }
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the close reply; complete the handshake.
                    let _ = tokio::time::timeout(write_timeout, sink.flush()).await;
                    break None;
                }
                None => break None,
                Some(Err(WsError::Capacity(_))) => {
                    break Some(Disconnect::custom(1009, "message size limit exceeded"));
                }
                Some(Err(e)) => {
                    tracing::debug!(client = %shared.id, error = %e, "websocket read error");
                    break None;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                if let Err(d) = client.tick().await { break Some(d); }
            }
        }
    };
    if let Some(d) = end {
        node.record_disconnect(d.code);
        // Flush what is queued (never for 3008: its queue is gone by design).
        if d != Disconnect::SLOW {
            loop {
                let batch = shared.take_batch(MAX_MESSAGES_IN_FRAME);
                if batch.messages.is_empty() {
                    break;
                }
                if tokio::time::timeout(write_timeout, sink.feed(frame(&batch.messages)))
                    .await
                    .map(|r| r.is_err())
                    .unwrap_or(true)
                {
                    break;
                }
            }
        }
        if d != Disconnect::WRITE_ERROR {
            let _ = tokio::time::timeout(write_timeout, sink.send(close_message(&d))).await;
            // Give the peer a moment to answer the close handshake.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        tracing::debug!(client = %shared.id, code = d.code, reason = %d.reason, "disconnected");
    }
    // Stop further queueing from the hub, then clean up state.
    shared.close_with(Disconnect::CONNECTION_CLOSED);
    client.close().await;
}
