//! The gRPC server API: service `centrifugal.centrifugo.api.CentrifugoApi`
//! on its own listener (`grpc_api.address`:`grpc_api.port`).
//!
//! Only the protobuf edge lives here: requests convert into
//! [`dispatch::Request`]s and [`dispatch::Reply`]s convert back, so every
//! method has the semantics and error codes of the HTTP API. The listener is
//! our own accept loop serving HTTP/2 with hyper (tonic contributes the codec
//! and the generated routing), owned by the server's task tracker and stopped
//! by its cancellation token like every other listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gyre_node::{ClientError, Node};
use gyre_proto::api;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request as GrpcRequest, Response, Status};

use crate::dispatch::{self, History, Outcome, Payload, PublishOpts, Reply, Request, Subscribe};

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/centrifugal.centrifugo.api.rs"));
}

use generated::centrifugo_api_server::{CentrifugoApi, CentrifugoApiServer};

/// How long a new connection may stay silent before its first byte.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval on idle connections, and how long to wait for the answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent calls per connection.
const MAX_STREAMS: u32 = 1024;

/// The service implementation: a node and the error mode.
struct Service {
    node: Arc<Node>,
    /// `grpc_api.error_mode: transport`: a failed command is a gRPC status,
    /// not an OK response with `error` set (batch replies keep their errors).
    transport_errors: bool,
}

/// gRPC status for a command error in transport error mode (the HTTP API's
/// table, in gRPC terms).
pub fn status_code(e: &ClientError) -> Code {
    match e.code {
        102 | 104 => Code::NotFound,
        107 | 108 => Code::InvalidArgument,
        112 => Code::OutOfRange,
        113 => Code::AlreadyExists,
        _ => Code::Internal,
    }
}

fn error(e: &ClientError) -> api::Error {
    api::Error { code: e.code, message: e.message.to_string() }
}

fn target(user: String, client: String, session: String) -> gyre_node::node::Target {
    gyre_node::node::Target { user, client, session }
}

fn position(p: Option<api::StreamPosition>) -> Option<gyre_node::engine::StreamPosition> {
    p.map(|p| gyre_node::engine::StreamPosition { offset: p.offset, epoch: p.epoch })
}

impl From<api::PublishRequest> for Request {
    fn from(r: api::PublishRequest) -> Self {
        Request::Publish {
            channel: r.channel,
            opts: PublishOpts {
                data: Payload { data: r.data, b64: r.b64data },
                skip_history: r.skip_history,
                tags: r.tags,
                idempotency_key: r.idempotency_key,
                delta: r.delta,
            },
        }
    }
}

impl From<api::BroadcastRequest> for Request {
    fn from(r: api::BroadcastRequest) -> Self {
        Request::Broadcast {
            channels: r.channels,
            opts: PublishOpts {
                data: Payload { data: r.data, b64: r.b64data },
                skip_history: r.skip_history,
                tags: r.tags,
                idempotency_key: r.idempotency_key,
                delta: r.delta,
            },
        }
    }
}

impl From<api::SubscribeRequest> for Request {
    fn from(r: api::SubscribeRequest) -> Self {
        let o = r.r#override.unwrap_or_default();
        let b = |v: Option<api::BoolValue>| v.map(|v| v.value);
        Request::Subscribe(Subscribe {
            target: target(r.user, r.client, r.session),
            channel: r.channel,
            expire_at: r.expire_at,
            info: Payload { data: r.info, b64: r.b64info },
            data: Payload { data: r.data, b64: r.b64data },
            recover_since: position(r.recover_since),
            overrides: gyre_node::auth::SubOverride {
                presence: b(o.presence),
                join_leave: b(o.join_leave),
                force_push_join_leave: b(o.force_push_join_leave),
                force_recovery: b(o.force_recovery),
                force_positioning: b(o.force_positioning),
            },
        })
    }
}

impl From<api::UnsubscribeRequest> for Request {
    fn from(r: api::UnsubscribeRequest) -> Self {
        Request::Unsubscribe { target: target(r.user, r.client, r.session), channel: r.channel }
    }
}

impl From<api::DisconnectRequest> for Request {
    fn from(r: api::DisconnectRequest) -> Self {
        Request::Disconnect {
            target: target(r.user, r.client, r.session),
            whitelist: r.whitelist,
            disconnect: r.disconnect.map(|d| (d.code, d.reason)),
        }
    }
}

impl From<api::RefreshRequest> for Request {
    fn from(r: api::RefreshRequest) -> Self {
        Request::Refresh {
            target: target(r.user, r.client, r.session),
            expired: r.expired,
            expire_at: r.expire_at,
            info: r.info,
        }
    }
}

impl From<api::PresenceRequest> for Request {
    fn from(r: api::PresenceRequest) -> Self {
        Request::Presence { channel: r.channel }
    }
}

impl From<api::PresenceStatsRequest> for Request {
    fn from(r: api::PresenceStatsRequest) -> Self {
        Request::PresenceStats { channel: r.channel }
    }
}

impl From<api::HistoryRequest> for Request {
    fn from(r: api::HistoryRequest) -> Self {
        Request::History(History {
            channel: r.channel,
            limit: i64::from(r.limit),
            since: position(r.since),
            reverse: r.reverse,
        })
    }
}

impl From<api::HistoryRemoveRequest> for Request {
    fn from(r: api::HistoryRemoveRequest) -> Self {
        Request::HistoryRemove { channel: r.channel }
    }
}

impl From<api::ChannelsRequest> for Request {
    fn from(r: api::ChannelsRequest) -> Self {
        Request::Channels { pattern: r.pattern }
    }
}

impl From<api::InfoRequest> for Request {
    fn from(_: api::InfoRequest) -> Self {
        Request::Info
    }
}

impl From<api::RpcRequest> for Request {
    fn from(r: api::RpcRequest) -> Self {
        Request::Rpc { method: r.method }
    }
}

/// The command of a batch entry: the first method field set, in field order
/// (as Centrifugo reads it); `None` when no method is set.
fn command(c: api::Command) -> Option<Request> {
    let api::Command {
        publish,
        broadcast,
        subscribe,
        unsubscribe,
        disconnect,
        presence,
        presence_stats,
        history,
        history_remove,
        info,
        rpc,
        refresh,
        channels,
    } = c;
    None.or(publish.map(Into::into))
        .or(broadcast.map(Into::into))
        .or(subscribe.map(Into::into))
        .or(unsubscribe.map(Into::into))
        .or(disconnect.map(Into::into))
        .or(presence.map(Into::into))
        .or(presence_stats.map(Into::into))
        .or(history.map(Into::into))
        .or(history_remove.map(Into::into))
        .or(info.map(Into::into))
        .or(rpc.map(Into::into))
        .or(refresh.map(Into::into))
        .or(channels.map(Into::into))
}

fn client_info(i: gyre_proto::protocol::ClientInfo) -> api::ClientInfo {
    api::ClientInfo { user: i.user, client: i.client, conn_info: i.conn_info, chan_info: i.chan_info }
}

fn publish_result(p: gyre_node::engine::StreamPosition) -> api::PublishResult {
    api::PublishResult { offset: p.offset, epoch: p.epoch }
}

/// Renders an outcome into the batch `Reply` message, setting the field of
/// `method`. Unary methods take their `result` from the same message, so a
/// reply has one rendering whichever way it travels.
fn to_reply(method: &str, out: Outcome) -> api::Reply {
    let mut r = api::Reply::default();
    match out {
        Err(e) => r.error = Some(error(&e)),
        Ok(Reply::Publish(p)) => r.publish = Some(publish_result(p)),
        Ok(Reply::Broadcast(list)) => {
            let responses = list
                .into_iter()
                .map(|x| match x {
                    Ok(p) => api::PublishResponse { error: None, result: Some(publish_result(p)) },
                    Err(e) => api::PublishResponse { error: Some(error(&e)), result: None },
                })
                .collect();
            r.broadcast = Some(api::BroadcastResult { responses });
        }
        Ok(Reply::Empty) => match method {
            "subscribe" => r.subscribe = Some(api::SubscribeResult {}),
            "unsubscribe" => r.unsubscribe = Some(api::UnsubscribeResult {}),
            "disconnect" => r.disconnect = Some(api::DisconnectResult {}),
            "refresh" => r.refresh = Some(api::RefreshResult {}),
            "history_remove" => r.history_remove = Some(api::HistoryRemoveResult {}),
            _ => {}
        },
        Ok(Reply::Presence(p)) => {
            let presence = p.into_iter().map(|(k, v)| (k, client_info(v))).collect();
            r.presence = Some(api::PresenceResult { presence });
        }
        Ok(Reply::PresenceStats(s)) => {
            r.presence_stats = Some(api::PresenceStatsResult { num_clients: s.num_clients, num_users: s.num_users })
        }
        Ok(Reply::History(pubs, top)) => {
            let publications = pubs
                .into_iter()
                .map(|p| api::Publication {
                    data: p.data,
                    info: p.info.map(client_info),
                    offset: p.offset,
                    tags: p.tags,
                })
                .collect();
            r.history = Some(api::HistoryResult { publications, epoch: top.epoch, offset: top.offset });
        }
        Ok(Reply::Channels(list)) => {
            let channels = list
                .into_iter()
                .map(|(ch, n)| (ch, api::ChannelInfo { num_clients: u32::try_from(n).unwrap_or(u32::MAX) }))
                .collect();
            r.channels = Some(api::ChannelsResult { channels });
        }
        Ok(Reply::Info(nodes)) => {
            let n32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let nodes = nodes
                .into_iter()
                .map(|i| api::NodeResult {
                    uid: i.uid,
                    name: i.name,
                    version: i.version,
                    num_clients: n32(i.num_clients),
                    num_users: n32(i.num_users),
                    num_channels: n32(i.num_channels),
                    num_subs: n32(i.num_subs),
                    uptime: u32::try_from(i.uptime).unwrap_or(u32::MAX),
                    metrics: None,
                    process: None,
                })
                .collect();
            r.info = Some(api::InfoResult { nodes });
        }
    }
    r
}

impl Service {
    /// Runs one unary command; in transport error mode a failure is a status.
    async fn run(&self, req: Request) -> Result<api::Reply, Status> {
        let method = req.method();
        let out = dispatch::call(&self.node, req).await;
        if self.transport_errors
            && let Err(e) = &out
        {
            return Err(Status::new(status_code(e), e.message.to_string()));
        }
        Ok(to_reply(method, out))
    }
}

/// The service impl: `batch` plus one unary method per `(name, request,
/// response, Reply field)`: request → dispatcher → `{error, result}`. (The
/// whole impl is generated so `async_trait` sees the expanded methods.)
macro_rules! service_impl {
    ($(($name:ident, $req:ident, $resp:ident, $field:ident)),* $(,)?) => {
        #[tonic::codegen::async_trait]
        impl CentrifugoApi for Service {
            async fn batch(
                &self,
                req: GrpcRequest<api::BatchRequest>,
            ) -> Result<Response<api::BatchResponse>, Status> {
                // Executed in order either way (`parallel` only allows reordering
                // work; replies come back in command order regardless).
                let mut replies = Vec::new();
                for c in req.into_inner().commands {
                    replies.push(match command(c) {
                        Some(req) => {
                            let method = req.method();
                            to_reply(method, dispatch::call(&self.node, req).await)
                        }
                        None => api::Reply { error: Some(error(&ClientError::NOT_FOUND)), ..Default::default() },
                    });
                }
                Ok(Response::new(api::BatchResponse { replies }))
            }

            $(
                async fn $name(&self, req: GrpcRequest<api::$req>) -> Result<Response<api::$resp>, Status> {
                    let r = self.run(req.into_inner().into()).await?;
                    Ok(Response::new(api::$resp { error: r.error, result: r.$field }))
                }
            )*
        }
    };
}

service_impl!(
    (publish, PublishRequest, PublishResponse, publish),
    (broadcast, BroadcastRequest, BroadcastResponse, broadcast),
    (subscribe, SubscribeRequest, SubscribeResponse, subscribe),
    (unsubscribe, UnsubscribeRequest, UnsubscribeResponse, unsubscribe),
    (disconnect, DisconnectRequest, DisconnectResponse, disconnect),
    (presence, PresenceRequest, PresenceResponse, presence),
    (presence_stats, PresenceStatsRequest, PresenceStatsResponse, presence_stats),
    (history, HistoryRequest, HistoryResponse, history),
    (history_remove, HistoryRemoveRequest, HistoryRemoveResponse, history_remove),
    (info, InfoRequest, InfoResponse, info),
    (rpc, RpcRequest, RpcResponse, rpc),
    (refresh, RefreshRequest, RefreshResponse, refresh),
    (channels, ChannelsRequest, ChannelsResponse, channels),
);

/// Whether the call's metadata carries `authorization: apikey <key>` for the
/// configured key (no key configured: every call passes, as in Centrifugo).
fn authorized(key: &str, headers: &http::HeaderMap) -> bool {
    if key.is_empty() {
        return true;
    }
    let Some(given) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = given.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(k), None) if scheme.eq_ignore_ascii_case("apikey") => {
            crate::http::secret_eq(k.as_bytes(), key.as_bytes())
        }
        _ => false,
    }
}

/// The request body of a unary call, read whole before tonic decodes it (as
/// tonic does for unary calls anyway), so a message over `limit`
/// (`grpc_api.max_receive_message_size`) is answered `RESOURCE_EXHAUSTED`
/// like grpc-go, hence Centrifugo, does; tonic's own limit answers
/// `OUT_OF_RANGE`. The declared length of the message is checked as soon as
/// its 5-byte prefix arrives, and the bytes read never exceed `limit + 5`,
/// so an oversize request is refused without being buffered. A body that
/// fails mid-way (the client reset the stream) is `CANCELLED`.
async fn bounded_body<B>(body: B, limit: usize) -> Result<Bytes, Status>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_big = |n: usize| Status::resource_exhausted(format!("received message larger than max ({n} vs. {limit})"));
    let mut buf = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::cancelled(format!("request body not received: {e}")))?;
        let Ok(data) = frame.into_data() else { continue }; // request trailers carry nothing here
        buf.extend_from_slice(&data);
        if buf.len() >= 5 {
            let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if declared > limit {
                return Err(too_big(declared));
            }
        }
        if buf.len() > limit.saturating_add(5) {
            // More than one message, or a length prefix that lies: a unary call
            // has one message, so this is over the limit either way.
            return Err(too_big(buf.len() - 5));
        }
    }
    Ok(buf.freeze())
}

/// Binds `grpc_api.address:grpc_api.port` and serves the API until `cancel`.
/// Connection tasks are spawned on `tracker`, so shutdown waits for them.
pub async fn start(node: Arc<Node>, tracker: &TaskTracker, cancel: CancellationToken) -> anyhow::Result<SocketAddr> {
    let cfg = node.config.grpc_api.clone();
    // Before binding: a bad certificate stops start-up naming its key.
    let tls = if cfg.tls.enabled { Some(crate::tls::ServerTls::load("grpc_api.tls", &cfg.tls)?) } else { None };
    let listener = TcpListener::bind(crate::http::bind_addr(&cfg.address, cfg.port))
        .await
        .map_err(|e| anyhow::anyhow!("grpc_api.port {}: {e}", cfg.port))?;
    let addr = listener.local_addr()?;
    if cfg.key.is_empty() {
        // Centrifugo's behaviour, but worth a line in the log: the port must then be private.
        tracing::warn!(%addr, "grpc_api.key is empty: the gRPC API accepts calls without a key");
    }
    let svc = CentrifugoApiServer::new(Service {
        node,
        transport_errors: cfg.error_mode == gyre_node::config::ErrorMode::Transport,
    })
    .max_decoding_message_size(cfg.max_receive());
    let limit = cfg.max_receive();
    let key: Arc<str> = cfg.key.into();
    let conns = tracker.clone();
    if let Some(t) = &tls {
        tracker.spawn(t.clone().watch(cancel.clone()));
    }
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends clear up over time; don't spin.
                        tracing::warn!(error = %e, "grpc accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (svc, key, cancel, acceptor) = (svc.clone(), key.clone(), cancel.clone(), acceptor.clone());
            conns.spawn(async move {
                // A socket that never sends its HTTP/2 preface (or never finishes
                // its TLS handshake) is dropped instead of holding a descriptor
                // forever (h2 itself waits without limit).
                let stream = match acceptor {
                    None => {
                        let mut probe = [0u8; 1];
                        match tokio::time::timeout(PREFACE_TIMEOUT, stream.peek(&mut probe)).await {
                            Ok(Ok(n)) if n > 0 => Either::Left(stream),
                            _ => return,
                        }
                    }
                    Some(acceptor) => match tokio::time::timeout(PREFACE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Either::Right(s),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "gRPC TLS handshake failed; socket closed");
                            return;
                        }
                        Err(_) => return,
                    },
                };
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut svc = svc.clone();
                    let ok = authorized(&key, req.headers());
                    async move {
                        if !ok {
                            return Ok::<_, Infallible>(Status::unauthenticated("invalid API key").into_http());
                        }
                        let (parts, body) = req.into_parts();
                        let body = match bounded_body(body, limit).await {
                            Ok(b) => b,
                            Err(status) => return Ok(status.into_http()),
                        };
                        tonic::codegen::Service::call(&mut svc, http::Request::from_parts(parts, Full::new(body))).await
                    }
                });
                // Pings find peers that vanished without closing; the stream cap
                // bounds what one connection can have in flight.
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .max_concurrent_streams(MAX_STREAMS)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body delivered in the given chunks.
    fn chunked(
        chunks: Vec<Vec<u8>>,
    ) -> http_body_util::StreamBody<impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>>>
    {
        http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(hyper::body::Frame::data(Bytes::from(c)))),
        ))
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', len));
        m
    }

    #[tokio::test]
    async fn oversize_messages_are_resource_exhausted() {
        let limit = 16;
        // (chunks, Ok(body length) | Err(code))
        type Case = (Vec<Vec<u8>>, Result<usize, Code>);
        let cases: Vec<Case> = vec![
            (vec![message(16)], Ok(21)),
            (vec![message(0)], Ok(5)),
            (vec![], Ok(0)),
            // Split across frames, the prefix itself too.
            (message(16).chunks(3).map(<[u8]>::to_vec).collect(), Ok(21)),
            (vec![message(17)], Err(Code::ResourceExhausted)),
            // Refused on the prefix alone: the 1 MiB that would follow is never read.
            (vec![message(1 << 20)[..5].to_vec()], Err(Code::ResourceExhausted)),
            // A prefix that understates the length.
            (
                vec![{
                    let mut m = message(4);
                    m.extend(std::iter::repeat_n(b'y', 20));
                    m
                }],
                Err(Code::ResourceExhausted),
            ),
        ];
        for (i, (chunks, want)) in cases.into_iter().enumerate() {
            let got = bounded_body(chunked(chunks), limit).await.map(|b| b.len()).map_err(|s| s.code());
            assert_eq!(got, want, "case {i}");
        }
        let e = bounded_body(chunked(vec![message(17)]), limit).await.unwrap_err();
        assert_eq!(e.message(), "received message larger than max (17 vs. 16)");
    }
}
