//! The one server-API dispatcher: typed requests in, typed replies out.
//!
//! Every front end decodes into a [`Request`] and renders the [`Reply`]: the
//! HTTP API (`api.rs`: JSON bodies, batch, the legacy newline format), the
//! gRPC API (`grpc.rs`: protobuf) and the admin UI's `/admin/api` (legacy
//! format through `api.rs`). So a method's checks and error codes live here
//! once, and the three APIs cannot drift apart.
//!
//! [`call`] is also the single place every API command passes through, which
//! makes it the hook for per-command accounting (see [`count`]).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use gyre_node::auth::SubOverride;
use gyre_node::engine::{HistoryQuery, PresenceStats, StreamPosition};
use gyre_node::node::{ApiPublish, NodeInfo, ServerSubscribe, Target};
use gyre_node::{ClientError, Disconnect, Node};
use gyre_proto::protocol::{ClientInfo, Publication};

/// A payload as sent: `b64data` (when non-empty) wins over `data`, as in Centrifugo.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// `data` (raw JSON over HTTP, raw bytes over gRPC).
    pub data: Bytes,
    /// `b64data`.
    pub b64: String,
}

impl Payload {
    /// The bytes to use; a broken base64 string is 107 bad request.
    fn resolve(&self) -> Result<Bytes, ClientError> {
        if self.b64.is_empty() {
            return Ok(self.data.clone());
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.b64)
            .map(Bytes::from)
            .map_err(|_| ClientError::BAD_REQUEST)
    }
}

/// `publish` / `broadcast` options shared by both.
#[derive(Debug, Clone, Default)]
pub struct PublishOpts {
    /// Payload.
    pub data: Payload,
    /// skip_history.
    pub skip_history: bool,
    /// tags.
    pub tags: HashMap<String, String>,
    /// idempotency_key.
    pub idempotency_key: String,
    /// delta.
    pub delta: bool,
}

impl PublishOpts {
    fn api(&self) -> ApiPublish {
        ApiPublish {
            skip_history: self.skip_history,
            tags: self.tags.clone(),
            idempotency_key: self.idempotency_key.clone(),
            delta: self.delta,
        }
    }
}

/// `subscribe` parameters.
#[derive(Debug, Clone, Default)]
pub struct Subscribe {
    /// Whose connections.
    pub target: Target,
    /// channel.
    pub channel: String,
    /// expire_at (0 = none).
    pub expire_at: i64,
    /// info / b64info.
    pub info: Payload,
    /// data / b64data.
    pub data: Payload,
    /// recover_since.
    pub recover_since: Option<StreamPosition>,
    /// override.
    pub overrides: SubOverride,
}

/// `history` parameters.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// channel.
    pub channel: String,
    /// limit: 0 = position only, negative = all.
    pub limit: i64,
    /// since.
    pub since: Option<StreamPosition>,
    /// reverse.
    pub reverse: bool,
}

/// One API command, decoded.
#[derive(Debug, Clone)]
pub enum Request {
    /// publish
    Publish {
        /// channel
        channel: String,
        /// options
        opts: PublishOpts,
    },
    /// broadcast
    Broadcast {
        /// channels
        channels: Vec<String>,
        /// options
        opts: PublishOpts,
    },
    /// subscribe
    Subscribe(Subscribe),
    /// unsubscribe
    Unsubscribe {
        /// whose connections
        target: Target,
        /// channel
        channel: String,
    },
    /// disconnect
    Disconnect {
        /// whose connections
        target: Target,
        /// client ids spared
        whitelist: Vec<String>,
        /// code and reason (`None` or code 0: 3503 force disconnect)
        disconnect: Option<(u32, String)>,
    },
    /// refresh
    Refresh {
        /// whose connections
        target: Target,
        /// expired
        expired: bool,
        /// expire_at (0 = unchanged)
        expire_at: i64,
        /// new conn info (empty = unchanged)
        info: Bytes,
    },
    /// presence
    Presence {
        /// channel
        channel: String,
    },
    /// presence_stats
    PresenceStats {
        /// channel
        channel: String,
    },
    /// history
    History(History),
    /// history_remove
    HistoryRemove {
        /// channel
        channel: String,
    },
    /// channels
    Channels {
        /// glob pattern ("" = all)
        pattern: String,
    },
    /// info
    Info,
    /// rpc (no server-side RPC handlers: 104, or 107 without a method)
    Rpc {
        /// method
        method: String,
    },
}

impl Request {
    /// The method name (v6 path segment and batch key).
    pub fn method(&self) -> &'static str {
        match self {
            Request::Publish { .. } => "publish",
            Request::Broadcast { .. } => "broadcast",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Disconnect { .. } => "disconnect",
            Request::Refresh { .. } => "refresh",
            Request::Presence { .. } => "presence",
            Request::PresenceStats { .. } => "presence_stats",
            Request::History(_) => "history",
            Request::HistoryRemove { .. } => "history_remove",
            Request::Channels { .. } => "channels",
            Request::Info => "info",
            Request::Rpc { .. } => "rpc",
        }
    }
}

/// The result of one successful command.
#[derive(Debug, Clone)]
pub enum Reply {
    /// publish: the stream position (zero without history).
    Publish(StreamPosition),
    /// broadcast: one outcome per channel, in request order.
    Broadcast(Vec<Result<StreamPosition, ClientError>>),
    /// subscribe, unsubscribe, disconnect, refresh, history_remove: `{}`.
    Empty,
    /// presence: client id → info.
    Presence(HashMap<String, ClientInfo>),
    /// presence_stats.
    PresenceStats(PresenceStats),
    /// history: publications and the stream top.
    History(Vec<Publication>, StreamPosition),
    /// channels: name → subscriber count, cluster-wide.
    Channels(Vec<(String, usize)>),
    /// info: every known node.
    Info(Vec<NodeInfo>),
}

/// Outcome of one command.
pub type Outcome = Result<Reply, ClientError>;

/// Runs one command. Every API front end (HTTP, batch, legacy, gRPC, admin)
/// ends up here exactly once per command.
pub async fn call(node: &Arc<Node>, req: Request) -> Outcome {
    let method = req.method();
    let out = run(node, req).await;
    count(node, method, &out);
    out
}

/// Per-command accounting hook: called once for every command of every API
/// front end (HTTP, gRPC, admin), with the method name and whether it failed.
fn count(node: &Arc<Node>, method: &'static str, out: &Outcome) {
    node.counters.record_api(method, out.is_err());
    if let Err(e) = out {
        tracing::debug!(method, code = e.code, "api command failed");
    }
}

async fn run(node: &Arc<Node>, req: Request) -> Outcome {
    match req {
        Request::Publish { channel, opts } => {
            if channel.is_empty() {
                return Err(ClientError::BAD_REQUEST);
            }
            let data = opts.data.resolve()?;
            let res = node.publish(&channel, data, None, &opts.api()).await?;
            Ok(Reply::Publish(res.position))
        }
        Request::Broadcast { channels, opts } => {
            if channels.is_empty() {
                return Err(ClientError::BAD_REQUEST);
            }
            let data = opts.data.resolve()?;
            let api = opts.api();
            let mut out = Vec::with_capacity(channels.len());
            for ch in &channels {
                out.push(if ch.is_empty() {
                    Err(ClientError::BAD_REQUEST)
                } else {
                    node.publish(ch, data.clone(), None, &api).await.map(|r| r.position)
                });
            }
            Ok(Reply::Broadcast(out))
        }
        Request::Subscribe(s) => {
            let sub = ServerSubscribe {
                channel: s.channel,
                expire_at: (s.expire_at > 0).then_some(s.expire_at),
                info: s.info.resolve()?,
                data: s.data.resolve()?,
                recover_since: s.recover_since,
                overrides: s.overrides,
            };
            node.subscribe_user(&s.target, sub).await.map(|_| Reply::Empty)
        }
        Request::Unsubscribe { target, channel } => {
            node.unsubscribe_user(&target, &channel).await.map(|_| Reply::Empty)
        }
        Request::Disconnect { target, whitelist, disconnect } => {
            let d = match disconnect {
                Some((code, reason)) if code != 0 => Disconnect::custom(code, reason),
                _ => Disconnect::FORCE_NO_RECONNECT,
            };
            node.disconnect_user(&target, &whitelist, d).await.map(|_| Reply::Empty)
        }
        Request::Refresh { target, expired, expire_at, info } => {
            let at = (expire_at > 0).then_some(expire_at);
            let info = (!info.is_empty()).then_some(info);
            node.refresh_user(&target, expired, at, info).await.map(|_| Reply::Empty)
        }
        Request::Presence { channel } => {
            if channel.is_empty() {
                return Err(ClientError::BAD_REQUEST);
            }
            node.presence(&channel).await.map(Reply::Presence)
        }
        Request::PresenceStats { channel } => {
            if channel.is_empty() {
                return Err(ClientError::BAD_REQUEST);
            }
            node.presence_stats(&channel).await.map(Reply::PresenceStats)
        }
        Request::History(h) => history(node, h).await,
        Request::HistoryRemove { channel } => {
            if channel.is_empty() {
                return Err(ClientError::BAD_REQUEST);
            }
            node.history_remove(&channel).await.map(|_| Reply::Empty)
        }
        Request::Channels { pattern } => node.channels(&pattern).await.map(Reply::Channels),
        Request::Info => Ok(Reply::Info(node.nodes())),
        Request::Rpc { method } => {
            if method.is_empty() {
                Err(ClientError::BAD_REQUEST)
            } else {
                Err(ClientError::NOT_FOUND)
            }
        }
    }
}

async fn history(node: &Arc<Node>, h: History) -> Outcome {
    if h.channel.is_empty() {
        return Err(ClientError::BAD_REQUEST);
    }
    // Centrifugo: a reverse read "since offset 0" has no defined start.
    if h.reverse && h.since.as_ref().is_some_and(|s| s.offset == 0) {
        return Err(ClientError::INTERNAL);
    }
    let limit = match h.limit {
        0 => Some(0),
        l if l < 0 => None,
        l => Some(l as usize),
    };
    // The read gives the stream its epoch (as Centrifugo's engines do): a backend or a
    // centrifuge-js `getState` hands this position to a client, which then recovers from it.
    // With an empty epoch that recovery is refused (112) and the client reloads state again.
    // A stream made by a read expires after `history_meta_ttl` like any other.
    let q = HistoryQuery {
        since: h.since.as_ref().map(|s| s.offset),
        limit,
        reverse: h.reverse,
        ensure_stream: true,
        ..Default::default()
    };
    let (pubs, top) = node.history(&h.channel, q).await?;
    if let Some(s) = &h.since
        && !s.epoch.is_empty()
        && s.epoch != top.epoch
    {
        return Err(ClientError::UNRECOVERABLE_POSITION);
    }
    Ok(Reply::History(pubs, top))
}
