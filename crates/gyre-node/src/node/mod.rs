//! The Node: owns the hub, the engines and the rules, and is what the server
//! API and every connection talk to.
//!
//! # Control plane
//!
//! With a distributed broker (NATS) several nodes share channels. The node
//! then also:
//! - sends a heartbeat with its counts every [`HEARTBEAT_INTERVAL`]
//!   ([`Node::start_cluster`]) and keeps the heartbeats of the others, so
//!   [`Node::nodes`] (API `info`) lists every live node; a node that stops
//!   sending is forgotten after [`NODE_TTL`], one that shuts down at once;
//! - applies API `subscribe`, `unsubscribe`, `disconnect` and `refresh` to
//!   its own connections and broadcasts them, so they reach connections on
//!   any node. A broadcast the broker refuses (NATS down) fails the API call:
//!   never a success that reached only part of the cluster silently;
//! - answers surveys: [`Node::channels`] asks every live node for its
//!   channels and fails if one does not answer within [`SURVEY_TIMEOUT`];
//! - routes opaque messages to one node ([`Node::send_to_node`]) for
//!   transports whose sessions live on a specific node (emulation).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use gyre_proto::protocol::{ClientInfo, Publication};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::{KeyError, SubOverride, TokenVerifier};
use crate::channel::{ChannelRules, NamespaceRules};
use crate::config::{ChannelOptions, Config};
use crate::control::{ControlMsg, Envelope, b64, unb64};
use crate::engine::*;
use crate::errors::{ClientError, Disconnect};
use crate::fanout::Job;
use crate::hub::Hub;
use crate::memory::{MemoryBroker, MemoryPresence};
use crate::shared::{ClientShared, Control};

mod cluster;
#[cfg(test)]
mod tests;

/// Gyre's version as reported to clients and the `info` API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often a clustered node announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// A node not heard from for this long is dropped from `info`.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How long a survey (`channels`) waits for every node.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(3);

/// How often expired engine data is swept.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Stripes of the per-channel subscription lock: channels hash onto them, so
/// two channels rarely share one and the memory is fixed (~200 KB).
const SUB_LOCK_STRIPES: usize = 4096;

/// Receives [`Node::send_to_node`] payloads: `(sender uid, bytes)`.
pub type NodeMessageHandler = Arc<dyn Fn(&str, Bytes) + Send + Sync>;

/// A server-side subscription requested through the API.
#[derive(Debug, Clone, Default)]
pub struct ServerSubscribe {
    /// Channel.
    pub channel: String,
    /// Subscription expiry (unix seconds).
    pub expire_at: Option<i64>,
    /// chan_info.
    pub info: Bytes,
    /// Data for the subscribe push.
    pub data: Bytes,
    /// Recover from this position.
    pub recover_since: Option<StreamPosition>,
    /// Option overrides.
    pub overrides: SubOverride,
}

/// Which connections an API call targets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    /// User ("" = anonymous connections).
    pub user: String,
    /// Only this client id.
    pub client: String,
    /// Only this session.
    pub session: String,
}

/// API publish options.
#[derive(Debug, Clone, Default)]
pub struct ApiPublish {
    /// Skip history.
    pub skip_history: bool,
    /// Tags.
    pub tags: HashMap<String, String>,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Delta.
    pub delta: bool,
}

/// One node's description for the `info` API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique id.
    pub uid: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Connections.
    pub num_clients: usize,
    /// Users.
    pub num_users: usize,
    /// Channels.
    pub num_channels: usize,
    /// Subscriptions.
    pub num_subs: usize,
    /// Uptime seconds.
    pub uptime: u64,
}

struct Events {
    node: Weak<Node>,
    uid: String,
    fanout: Arc<crate::fanout::Fanout>,
}

impl BrokerEventHandler for Events {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        epoch: &str,
        prev: Option<Arc<Publication>>,
    ) {
        self.fanout.send(Job::Publication { channel: channel.into(), publication, epoch: epoch.into(), prev });
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.fanout.send(Job::Join { channel: channel.into(), info });
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.fanout.send(Job::Leave { channel: channel.into(), info });
    }
    fn delivery_room(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.fanout.delivery_room())
    }
    fn handle_control(&self, data: Bytes) {
        let env: Envelope = match serde_json::from_slice(&data) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable control message");
                return;
            }
        };
        if env.from == self.uid {
            return; // applied locally before it was broadcast
        }
        if let Some(node) = self.node.upgrade() {
            node.apply_control(env);
        }
    }
    fn node_uid(&self) -> String {
        self.uid.clone()
    }
}

type SurveyReplies = mpsc::UnboundedSender<(String, Vec<(String, usize)>)>;

/// The node.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Channel rules.
    pub rules: ChannelRules,
    /// Connections and subscriptions. Mutated only through the node's
    /// operations below, which keep hub and broker interest in step.
    pub(crate) hub: Arc<Hub>,
    /// Broker.
    pub(crate) broker: Arc<dyn Broker>,
    /// Presence.
    pub(crate) presence: Arc<dyn PresenceManager>,
    /// Per-channel locks serializing hub add/remove with broker
    /// subscribe/unsubscribe (centrifuge's `subLock`).
    sub_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Connection token verifier.
    pub conn_verifier: TokenVerifier,
    /// Subscription token verifier.
    pub sub_verifier: TokenVerifier,
    /// Connect, refresh, channel and RPC proxies.
    pub proxies: crate::proxy::Proxies,
    /// Unique id of this node process.
    pub uid: String,
    /// Node name.
    pub name: String,
    started: Instant,
    /// Set (SeqCst) when shutdown begins; [`Node::register_client`] checks it
    /// before and after inserting, so no connect slips past a shutdown.
    shutting_down: AtomicBool,
    disconnects: parking_lot::Mutex<HashMap<u32, u64>>,
    /// Other live nodes: info and when it expires.
    peers: parking_lot::Mutex<HashMap<String, (NodeInfo, Instant)>>,
    surveys: parking_lot::Mutex<HashMap<u64, SurveyReplies>>,
    survey_seq: AtomicU64,
    node_handler: parking_lot::RwLock<Option<NodeMessageHandler>>,
    /// Metrics counters.
    pub counters: Arc<crate::metrics::Counters>,
    fanout: Arc<crate::fanout::Fanout>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("uid", &self.uid).field("name", &self.name).finish()
    }
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Node {
    /// A node on the memory engine.
    pub fn new(config: Config, name: String) -> Result<Arc<Node>, KeyError> {
        Self::with_engines(config, name, Arc::new(MemoryBroker::new()), Arc::new(MemoryPresence::default()))
    }

    /// A node on the given engines.
    pub fn with_engines(
        config: Config,
        name: String,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
    ) -> Result<Arc<Node>, KeyError> {
        let skip = config.client.insecure_skip_token_signature_verify;
        let conn_verifier = TokenVerifier::new(&config.client.token, "client.token", skip)?;
        let sub_verifier = if config.client.subscription_token.enabled {
            TokenVerifier::new(&config.client.subscription_token.token, "client.subscription_token", skip)?
        } else {
            TokenVerifier::new(&config.client.token, "client.token", skip)?
        };
        let proxies = crate::proxy::Proxies::new(&config)?;
        let hub = Arc::new(Hub::default());
        let uid = uuid::Uuid::new_v4().to_string();
        let counters = Arc::new(crate::metrics::Counters::default());
        let fanout = Arc::new(crate::fanout::Fanout::start(hub.clone(), counters.clone()));
        let node = Arc::new_cyclic(|weak| {
            broker.register_handler(Arc::new(Events { node: weak.clone(), uid: uid.clone(), fanout: fanout.clone() }));
            Node {
                rules: ChannelRules::new(&config),
                config: Arc::new(config),
                hub,
                broker,
                presence,
                conn_verifier,
                sub_verifier,
                proxies,
                uid,
                name,
                sub_locks: (0..SUB_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                started: Instant::now(),
                shutting_down: AtomicBool::new(false),
                disconnects: parking_lot::Mutex::new(HashMap::new()),
                peers: parking_lot::Mutex::new(HashMap::new()),
                surveys: parking_lot::Mutex::new(HashMap::new()),
                survey_seq: AtomicU64::new(1),
                node_handler: parking_lot::RwLock::new(None),
                counters,
                fanout,
            }
        });
        node.start_maintenance();
        Ok(node)
    }

    /// Every [`MAINTENANCE_INTERVAL`], lets the engines drop what expired
    /// ([`Broker::sweep`]). The task holds a weak reference and ends with the
    /// node. Without a Tokio runtime (a node built in plain code) nothing is
    /// started and expiry stays lazy.
    fn start_maintenance(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.broker.sweep();
            }
        });
    }

    /// Whether the engines can serve (`/health/ready`): the worse of broker and presence.
    pub fn health(&self) -> EngineHealth {
        match (self.broker.health(), self.presence.health()) {
            (EngineHealth::Fatal(m), _) | (_, EngineHealth::Fatal(m)) => EngineHealth::Fatal(m),
            (EngineHealth::NotReady(m), _) | (_, EngineHealth::NotReady(m)) => EngineHealth::NotReady(m),
            _ => EngineHealth::Ready,
        }
    }

    /// Resolves with the message once an engine reports a fatal error (the
    /// server then exits: e.g. a NATS server without JetStream).
    pub async fn fatal_error(&self) -> String {
        loop {
            if let EngineHealth::Fatal(m) = self.health() {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Counts a server-initiated disconnect by code (metrics, tests).
    pub fn record_disconnect(&self, code: u32) {
        *self.disconnects.lock().entry(code).or_default() += 1;
    }

    /// All disconnect counts by code.
    pub fn disconnect_counts(&self) -> Vec<(u32, u64)> {
        self.disconnects.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// How many connections were closed with `code`.
    pub fn disconnect_count(&self, code: u32) -> u64 {
        self.disconnects.lock().get(&code).copied().unwrap_or(0)
    }

    /// Resolves once every publication, join and leave this node accepted so
    /// far has been put into its local subscribers' queues: the fan-out runs
    /// on its own thread, after the publisher has its answer.
    pub async fn fanout_settled(&self) {
        self.fanout.settled().await
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Starts shutdown: every connection gets 3001 (reconnect advised), and
    /// so does every connect from now on ([`Node::register_client`]).
    pub fn shutdown(self: &Arc<Self>) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for c in self.hub.all_clients() {
            c.close_with(Disconnect::SHUTDOWN);
        }
        if !self.peers.lock().is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            let node = self.clone();
            tokio::spawn(async move {
                let _ = node.send_control(ControlMsg::Shutdown, None).await;
            });
        }
    }

    /// Stream meta ttl for a namespace.
    pub fn meta_ttl(&self, o: &ChannelOptions) -> Duration {
        if o.history_meta_ttl.0.is_zero() { self.config.channel.history_meta_ttl.0 } else { o.history_meta_ttl.0 }
    }

    /// Publish options for a channel's namespace.
    pub fn publish_options(&self, ns: &NamespaceRules) -> PublishOptions {
        let o = &ns.options;
        PublishOptions {
            history_size: o.history_size,
            history_ttl: o.history_ttl.0,
            history_meta_ttl: self.meta_ttl(o),
            skip_history: false,
            idempotency_key: None,
            delta: o.delta_publish,
        }
    }

    /// Checks data against the namespace's `publication_data_format`.
    pub fn check_data_format(&self, ns: &NamespaceRules, data: &[u8]) -> Result<(), ClientError> {
        use crate::config::PublicationDataFormat as F;
        let fmt = match ns.options.publication_data_format {
            F::Any => self.config.channel.publication_data_format,
            f => f,
        };
        match fmt {
            F::Binary => Ok(()),
            F::Json if !gyre_proto::json::is_valid_json(data) => Err(ClientError::BAD_REQUEST),
            F::JsonObject => match serde_json::from_slice::<serde_json::Value>(data) {
                Ok(serde_json::Value::Object(_)) => Ok(()),
                _ => Err(ClientError::BAD_REQUEST),
            },
            _ if data.is_empty() => Err(ClientError::BAD_REQUEST),
            _ => Ok(()),
        }
    }

    /// Publishes into a channel (API and client publish).
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
        opts: &ApiPublish,
    ) -> Result<PublishResult, ClientError> {
        self.check_channel(channel)?;
        let ns = self.rules.namespace(channel)?.clone();
        self.check_data_format(&ns, &data)?;
        let mut po = self.publish_options(&ns);
        po.skip_history = opts.skip_history;
        po.delta = po.delta || opts.delta;
        if !opts.idempotency_key.is_empty() {
            po.idempotency_key = Some(opts.idempotency_key.clone());
        }
        let publication = Publication { data, info, tags: opts.tags.clone(), ..Default::default() };
        // Room in the fan-out before anything is stored (see fanout.rs):
        // a full fan-out refuses the publish rather than lose it.
        if !self.fanout.publication_room().await {
            crate::metrics::Counters::add(&self.counters.publish_refused_backpressure, 1);
            tracing::warn!(channel, "publish refused: fan-out full for {:?}", crate::fanout::ROOM_WAIT);
            return Err(ClientError::INTERNAL);
        }
        self.broker.publish(channel, publication, &po).await.map_err(|e| self.engine_error("publish", channel, &e))
    }

    /// Reads history (API and client), with the namespace check (108).
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<(Vec<Publication>, StreamPosition), ClientError> {
        self.check_channel(channel)?;
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.history_enabled() {
            return Err(ClientError::NOT_AVAILABLE);
        }
        let q = HistoryQuery { meta_ttl: self.meta_ttl(&ns.options), ..query };
        self.broker.history(channel, &q).await.map_err(|e| self.engine_error("history", channel, &e))
    }

    /// Drops stored publications.
    pub async fn history_remove(&self, channel: &str) -> Result<(), ClientError> {
        self.check_channel(channel)?;
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.history_enabled() {
            return Err(ClientError::NOT_AVAILABLE);
        }
        self.broker.remove_history(channel).await.map_err(|e| self.engine_error("history remove", channel, &e))
    }

    /// Presence of a channel (108 when disabled).
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, ClientError> {
        self.check_channel(channel)?;
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        self.presence.presence(channel).await.map_err(|e| self.engine_error("presence", channel, &e))
    }

    /// Presence counts (108 when disabled).
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        self.check_channel(channel)?;
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        self.presence.presence_stats(channel).await.map_err(|e| self.engine_error("presence stats", channel, &e))
    }

    fn targets(&self, t: &Target) -> Vec<Arc<ClientShared>> {
        self.hub
            .user_clients(&t.user)
            .into_iter()
            .filter(|c| t.client.is_empty() || *c.id == *t.client)
            .filter(|c| t.session.is_empty() || c.session == t.session)
            .collect()
    }

    /// API `subscribe`: on every node.
    pub async fn subscribe_user(&self, t: &Target, sub: ServerSubscribe) -> Result<(), ClientError> {
        self.check_channel(&sub.channel)?;
        self.rules.namespace(&sub.channel)?;
        let wire = (&sub).into();
        self.subscribe_local(t, sub);
        self.broadcast(ControlMsg::Subscribe { target: t.clone(), sub: wire }).await
    }

    fn subscribe_local(&self, t: &Target, sub: ServerSubscribe) {
        for c in self.targets(t) {
            c.push_control(Control::Subscribe(Box::new(sub.clone())));
        }
    }

    /// API `unsubscribe`: on every node.
    pub async fn unsubscribe_user(&self, t: &Target, channel: &str) -> Result<(), ClientError> {
        if channel.is_empty() {
            return Ok(());
        }
        self.check_channel(channel)?;
        self.rules.namespace(channel)?;
        self.unsubscribe_local(t, channel);
        self.broadcast(ControlMsg::Unsubscribe { target: t.clone(), channel: channel.to_string() }).await
    }

    fn unsubscribe_local(&self, t: &Target, channel: &str) {
        let (code, reason) = crate::errors::unsubscribe::SERVER;
        for c in self.targets(t) {
            c.push_control(Control::Unsubscribe { channel: channel.to_string(), code, reason: reason.into() });
        }
    }

    /// API `disconnect`: on every node.
    pub async fn disconnect_user(&self, t: &Target, whitelist: &[String], d: Disconnect) -> Result<(), ClientError> {
        self.disconnect_local(t, whitelist, d.clone());
        self.broadcast(ControlMsg::Disconnect {
            target: t.clone(),
            whitelist: whitelist.to_vec(),
            code: d.code,
            reason: d.reason.to_string(),
        })
        .await
    }

    fn disconnect_local(&self, t: &Target, whitelist: &[String], d: Disconnect) {
        for c in self.targets(t) {
            if !whitelist.iter().any(|w| **w == *c.id) {
                c.close_with(d.clone());
            }
        }
    }

    /// API `refresh`: on every node.
    pub async fn refresh_user(
        &self,
        t: &Target,
        expired: bool,
        expire_at: Option<i64>,
        info: Option<Bytes>,
    ) -> Result<(), ClientError> {
        let wire_info = info.as_ref().map(|i| b64(i));
        self.refresh_local(t, expired, expire_at, info);
        self.broadcast(ControlMsg::Refresh { target: t.clone(), expired, expire_at, info: wire_info }).await
    }

    fn refresh_local(&self, t: &Target, expired: bool, expire_at: Option<i64>, info: Option<Bytes>) {
        for c in self.targets(t) {
            c.push_control(Control::Refresh { expired, expire_at, info: info.clone() });
        }
    }

    /// Channels with subscribers on this node matching a glob pattern ("" = all).
    pub fn local_channels(&self, pattern: &str) -> Vec<(String, usize)> {
        self.hub
            .channels()
            .into_iter()
            .filter(|(ch, _)| pattern.is_empty() || glob_match::glob_match(pattern, ch))
            .collect()
    }

    /// Read access to the hub (counts and lookups for the server and tests;
    /// changes go through the node's operations).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Every engine operation's channel check: non-empty and at most
    /// `channel.max_length` bytes (107). A name of kilobytes must never
    /// reach an engine: on NATS it overflows the server's control line and
    /// costs the node its whole connection.
    pub fn check_channel(&self, channel: &str) -> Result<(), ClientError> {
        if channel.is_empty() || channel.len() > self.config.channel.max_length {
            return Err(ClientError::BAD_REQUEST);
        }
        Ok(())
    }

    /// Logs and counts a failed engine operation; the caller's error (100).
    pub(crate) fn engine_error(&self, op: &'static str, channel: &str, e: &EngineError) -> ClientError {
        crate::metrics::Counters::add(&self.counters.engine_errors, 1);
        tracing::warn!(op, channel, error = %e, "engine operation failed");
        ClientError::INTERNAL
    }

    fn sub_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &self.sub_locks[(h.finish() as usize) % self.sub_locks.len()]
    }

    /// Registers a connected client: refused with 3001 once shutdown began,
    /// 3504 when its user already has `client.user_connection_limit`
    /// connections (checked and inserted in one step).
    pub(crate) fn register_client(&self, c: &Arc<ClientShared>) -> Result<(), Disconnect> {
        if self.is_shutting_down() {
            return Err(Disconnect::SHUTDOWN);
        }
        let limit = if c.user().is_empty() { 0 } else { self.config.client.user_connection_limit };
        if !self.hub.add_client(c, limit) {
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        // Shutdown may have begun while inserting, after it closed every
        // client it saw: this one must not stay.
        if self.is_shutting_down() {
            self.hub.remove_client(c);
            return Err(Disconnect::SHUTDOWN);
        }
        Ok(())
    }

    /// Unregisters a client.
    pub(crate) fn unregister_client(&self, c: &ClientShared) {
        self.hub.remove_client(c);
    }

    /// Adds a subscriber to `channel`: the hub entry, and broker interest
    /// when it is this node's first. Under the channel's lock, so a
    /// concurrent last-unsubscribe cannot withdraw the broker interest this
    /// subscriber relies on; a failed broker subscribe removes the hub entry
    /// again (and is logged and counted).
    pub(crate) async fn add_subscription(&self, channel: &str, c: &Arc<ClientShared>) -> Result<(), ClientError> {
        self.check_channel(channel)?;
        let _guard = self.sub_lock(channel).lock().await;
        if self.hub.add_sub(channel, c)
            && let Err(e) = self.broker.subscribe(channel).await
        {
            self.hub.remove_sub(channel, &c.id);
            return Err(self.engine_error("subscribe", channel, &e));
        }
        Ok(())
    }

    /// Removes a subscriber; withdraws broker interest with the node's last
    /// one, under the channel's lock (see [`Node::add_subscription`]).
    pub(crate) async fn remove_subscription(&self, channel: &str, client_id: &str) {
        let _guard = self.sub_lock(channel).lock().await;
        if self.hub.remove_sub(channel, client_id)
            && let Err(e) = self.broker.unsubscribe(channel).await
        {
            self.engine_error("unsubscribe", channel, &e);
        }
    }

    /// Waits for room for a join/leave; false (logged, counted) when the
    /// event must be dropped.
    async fn join_leave_room(&self, channel: &str) -> bool {
        if self.fanout.join_leave_room().await {
            return true;
        }
        crate::metrics::Counters::add(&self.counters.join_leave_dropped, 1);
        tracing::warn!(channel, "join/leave dropped: fan-out full");
        false
    }

    /// Publishes a join (failures logged and counted: the subscription stands).
    pub(crate) async fn join(&self, channel: &str, info: ClientInfo) {
        if !self.join_leave_room(channel).await {
            return;
        }
        if let Err(e) = self.broker.publish_join(channel, info).await {
            self.engine_error("join", channel, &e);
        }
    }

    /// Publishes a leave (failures logged and counted).
    pub(crate) async fn leave(&self, channel: &str, info: ClientInfo) {
        if !self.join_leave_room(channel).await {
            return;
        }
        if let Err(e) = self.broker.publish_leave(channel, info).await {
            self.engine_error("leave", channel, &e);
        }
    }

    /// Adds a presence entry (failures logged and counted; the periodic
    /// refresh retries).
    pub(crate) async fn add_presence(&self, channel: &str, client_id: &str, info: ClientInfo) {
        if let Err(e) = self.presence.add_presence(channel, client_id, info).await {
            self.engine_error("presence add", channel, &e);
        }
    }

    /// Refreshes a presence entry (the periodic update).
    pub(crate) async fn refresh_presence(&self, channel: &str, client_id: &str, info: ClientInfo) {
        if let Err(e) = self.presence.add_presence(channel, client_id, info).await {
            self.engine_error("presence refresh", channel, &e);
        }
    }

    /// Removes a presence entry (failures logged and counted; the entry
    /// then expires with the engine's presence TTL).
    pub(crate) async fn remove_presence(&self, channel: &str, client_id: &str, user: &str) {
        if let Err(e) = self.presence.remove_presence(channel, client_id, user).await {
            self.engine_error("presence remove", channel, &e);
        }
    }

    /// This node's info.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            uid: self.uid.clone(),
            name: self.name.clone(),
            version: VERSION.to_string(),
            num_clients: self.hub.num_clients(),
            num_users: self.hub.num_users(),
            num_channels: self.hub.num_channels(),
            num_subs: self.hub.num_subs(),
            uptime: self.started.elapsed().as_secs(),
        }
    }
}
