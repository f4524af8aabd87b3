//! The engine contract: how a node publishes, keeps history and presence.
//!
//! A `Broker` moves publications, joins and leaves between nodes and owns the
//! per-channel history stream; a `PresenceManager` keeps who is subscribed
//! where. History lives on the broker, as in centrifuge: an engine that
//! assigns the offset and publishes in one step can guarantee that offsets
//! reach subscribers in order, which the recovery logic depends on.
//!
//! Engines call back into the node through [`BrokerEventHandler`] and never
//! touch clients directly. The memory engine calls the handler inside
//! `publish` (under the channel's shard lock, so offsets arrive in order);
//! the handler hands the event to the node's fan-out, which delivers small
//! channels at once and large ones on the fan-out thread, after `publish`
//! has returned (see `fanout.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gyre_proto::protocol::{ClientInfo, Publication};

/// A position in a channel's history stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// Offset of the last publication (0 = empty stream).
    pub offset: u64,
    /// Stream incarnation.
    pub epoch: String,
}

/// Engine failures. Always surfaced (error 100 / failed publish), never swallowed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The backend is unreachable or failed.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time (it may still apply the operation).
    #[error("engine timed out: {0}")]
    Timeout(String),
    /// The request was refused as malformed (e.g. a channel name the backend
    /// cannot carry); retrying it will not help.
    #[error("engine refused the request: {0}")]
    BadRequest(String),
    /// Anything else.
    #[error("engine error: {0}")]
    Other(String),
}

/// How to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// History stream size (0 = no history).
    pub history_size: usize,
    /// History retention.
    pub history_ttl: Duration,
    /// Stream meta retention.
    pub history_meta_ttl: Duration,
    /// Do not store this publication.
    pub skip_history: bool,
    /// Idempotency key (duplicates within the window return the first result).
    pub idempotency_key: Option<String>,
    /// Build deltas for delta subscribers.
    pub delta: bool,
}

impl PublishOptions {
    /// Whether the publication goes into a stream.
    pub fn with_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero() && !self.skip_history
    }
}

/// What a publish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishResult {
    /// Position of the publication (offset 0 when the channel has no history).
    pub position: StreamPosition,
    /// A duplicate idempotent publish: nothing was delivered.
    pub suppressed: bool,
}

/// A history read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Return publications after (or before, with `reverse`) this offset.
    pub since: Option<u64>,
    /// Max publications; `None` = all, `Some(0)` = position only.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// Stream meta retention (a read keeps the stream alive).
    pub meta_ttl: Duration,
    /// Start the stream (fix its epoch) if there is none. Subscriptions that
    /// track a position and the history command/API need that: a position
    /// handed to a client must carry the epoch it will recover from. Without
    /// it, a read of a channel without a stream answers offset 0 and an empty
    /// epoch and leaves nothing behind. Streams made by reads expire after
    /// their meta TTL, so reading many channels grows the engine only for that
    /// long.
    pub ensure_stream: bool,
}

/// Whether an engine can serve requests (`/health/ready`, start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineHealth {
    /// Usable.
    Ready,
    /// Not usable now (connecting, reconnecting): the reason. May recover.
    NotReady(String),
    /// Can never become usable with this configuration (e.g. NATS without
    /// JetStream): the process should stop with this message.
    Fatal(String),
}

/// Receives what the broker delivers to this node.
pub trait BrokerEventHandler: Send + Sync {
    /// A publication for `channel`. `prev` is the previous publication in the
    /// stream when the publication was marked for delta.
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        epoch: &str,
        prev: Option<Arc<Publication>>,
    );
    /// A join.
    fn handle_join(&self, channel: &str, info: ClientInfo);
    /// A leave.
    fn handle_leave(&self, channel: &str, info: ClientInfo);
    /// A control message from another node (see [`Broker::publish_control`]).
    fn handle_control(&self, _data: Bytes) {}
    /// Resolves when the node can take another delivery: engines that
    /// deliver events from other nodes await it before each live delivery,
    /// so a node whose fan-out is full slows its intake instead of growing
    /// without bound (see `fanout.rs` for the policy). Engines that call the
    /// handler inside their own `publish` (memory) need not: the node waited
    /// for room before publishing.
    fn delivery_room(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
    /// The id of the node this handler belongs to: brokers that route
    /// directed control messages subscribe to it.
    fn node_uid(&self) -> String {
        String::new()
    }
}

/// Moves publications between nodes and keeps history.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Where deliveries go. Called once, before any other method.
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>);
    /// This node has its first subscriber in `channel`.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// This node lost its last subscriber in `channel`.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Publishes (and stores, with history options).
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<PublishResult, EngineError>;
    /// Publishes a join event.
    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Publishes a leave event.
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Reads the stream.
    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<(Vec<Publication>, StreamPosition), EngineError>;
    /// Drops stored publications, keeping the position.
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;
    /// Drops whatever expired (streams past their meta TTL, publications past
    /// their TTL, idempotency keys). Called every second by the node's
    /// maintenance loop; must be cheap when nothing is due. Engines whose
    /// backend expires data itself (NATS) keep the default no-op.
    fn sweep(&self) {}
    /// Sends a control message to every other node (`to_node = None`) or to
    /// one node. Single-node brokers have nobody to tell.
    async fn publish_control(&self, _data: Bytes, _to_node: Option<&str>) -> Result<(), EngineError> {
        Ok(())
    }
    /// Whether the broker can serve.
    fn health(&self) -> EngineHealth {
        EngineHealth::Ready
    }
}

/// Presence counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections.
    pub num_clients: u32,
    /// Distinct users.
    pub num_users: u32,
}

/// Keeps who is in a channel.
#[async_trait]
pub trait PresenceManager: Send + Sync {
    /// All entries, keyed by client id.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError>;
    /// Counts.
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError>;
    /// Adds or refreshes an entry.
    async fn add_presence(&self, channel: &str, client_id: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Removes an entry.
    async fn remove_presence(&self, channel: &str, client_id: &str, user: &str) -> Result<(), EngineError>;
    /// Whether the presence manager can serve.
    fn health(&self) -> EngineHealth {
        EngineHealth::Ready
    }
}
