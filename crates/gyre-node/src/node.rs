//! The Node: owns the hub, the engines and the rules, and is what the server
//! API and every connection talk to.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gyre_proto::protocol::{ClientInfo, Publication};
use tokio::time::Instant;

use crate::auth::{KeyError, SubOverride, TokenVerifier};
use crate::channel::{ChannelRules, NamespaceRules};
use crate::config::{ChannelOptions, Config};
use crate::engine::*;
use crate::errors::{ClientError, Disconnect};
use crate::hub::Hub;
use crate::memory::{MemoryBroker, MemoryPresence};
use crate::session::Control;

/// Gyre's version as reported to clients and the `info` API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
#[derive(Debug, Clone, Default)]
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
#[derive(Debug, Clone)]
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
    hub: Arc<Hub>,
    counters: Arc<crate::metrics::Counters>,
}

impl BrokerEventHandler for Events {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        epoch: &str,
        prev: Option<Arc<Publication>>,
    ) {
        let n = self.hub.broadcast_publication(channel, &publication, epoch, prev.as_ref());
        crate::metrics::Counters::add(&self.counters.publications_received, 1);
        crate::metrics::Counters::add(&self.counters.publications_sent, n as u64);
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        let n = self.hub.broadcast_join(channel, info);
        crate::metrics::Counters::add(&self.counters.join_leave_sent, n as u64);
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        let n = self.hub.broadcast_leave(channel, info);
        crate::metrics::Counters::add(&self.counters.join_leave_sent, n as u64);
    }
}

/// The node.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Channel rules.
    pub rules: ChannelRules,
    /// Connections and subscriptions.
    pub hub: Arc<Hub>,
    /// Broker.
    pub broker: Arc<dyn Broker>,
    /// Presence.
    pub presence: Arc<dyn PresenceManager>,
    /// Connection token verifier.
    pub conn_verifier: TokenVerifier,
    /// Subscription token verifier.
    pub sub_verifier: TokenVerifier,
    /// Unique id of this node process.
    pub uid: String,
    /// Node name.
    pub name: String,
    started: Instant,
    shutting_down: AtomicBool,
    disconnects: parking_lot::Mutex<HashMap<u32, u64>>,
    /// Metrics counters.
    pub counters: Arc<crate::metrics::Counters>,
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
        let hub = Arc::new(Hub::default());
        let counters = Arc::new(crate::metrics::Counters::default());
        broker.register_handler(Arc::new(Events { hub: hub.clone(), counters: counters.clone() }));
        Ok(Arc::new(Node {
            rules: ChannelRules::new(&config),
            config: Arc::new(config),
            hub,
            broker,
            presence,
            conn_verifier,
            sub_verifier,
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            disconnects: parking_lot::Mutex::new(HashMap::new()),
            counters,
        }))
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

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Starts shutdown: every connection gets 3001 (reconnect advised).
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        for c in self.hub.all_clients() {
            c.close_with(Disconnect::SHUTDOWN);
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
        let fmt = if ns.options.publication_data_format.is_empty() {
            self.config.channel.publication_data_format.as_str()
        } else {
            ns.options.publication_data_format.as_str()
        };
        match fmt {
            "binary" => Ok(()),
            "json" if !gyre_proto::json::is_valid_json(data) => Err(ClientError::BAD_REQUEST),
            "json_object" => match serde_json::from_slice::<serde_json::Value>(data) {
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
        if channel.is_empty() {
            return Err(ClientError::BAD_REQUEST);
        }
        let ns = self.rules.namespace(channel)?.clone();
        self.check_data_format(&ns, &data)?;
        let mut po = self.publish_options(&ns);
        po.skip_history = opts.skip_history;
        po.delta = po.delta || opts.delta;
        if !opts.idempotency_key.is_empty() {
            po.idempotency_key = Some(opts.idempotency_key.clone());
        }
        let publication = Publication { data, info, tags: opts.tags.clone(), ..Default::default() };
        self.broker.publish(channel, publication, &po).await.map_err(|e| {
            tracing::warn!(channel, error = %e, "publish failed");
            ClientError::INTERNAL
        })
    }

    /// Reads history (API and client), with the namespace check (108).
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<(Vec<Publication>, StreamPosition), ClientError> {
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.history_enabled() {
            return Err(ClientError::NOT_AVAILABLE);
        }
        let q = HistoryQuery { meta_ttl: self.meta_ttl(&ns.options), ..query };
        self.broker.history(channel, &q).await.map_err(|_| ClientError::INTERNAL)
    }

    /// Drops stored publications.
    pub async fn history_remove(&self, channel: &str) -> Result<(), ClientError> {
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.history_enabled() {
            return Err(ClientError::NOT_AVAILABLE);
        }
        self.broker.remove_history(channel).await.map_err(|_| ClientError::INTERNAL)
    }

    /// Presence of a channel (108 when disabled).
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, ClientError> {
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        self.presence.presence(channel).await.map_err(|_| ClientError::INTERNAL)
    }

    /// Presence counts (108 when disabled).
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        self.presence.presence_stats(channel).await.map_err(|_| ClientError::INTERNAL)
    }

    fn targets(&self, t: &Target) -> Vec<Arc<crate::session::ClientShared>> {
        self.hub
            .user_clients(&t.user)
            .into_iter()
            .filter(|c| t.client.is_empty() || *c.id == *t.client)
            .filter(|c| t.session.is_empty() || c.session == t.session)
            .collect()
    }

    /// API `subscribe`.
    pub fn subscribe_user(&self, t: &Target, sub: ServerSubscribe) -> Result<(), ClientError> {
        if sub.channel.is_empty() {
            return Err(ClientError::BAD_REQUEST);
        }
        self.rules.namespace(&sub.channel)?;
        for c in self.targets(t) {
            c.push_control(Control::Subscribe(Box::new(sub.clone())));
        }
        Ok(())
    }

    /// API `unsubscribe`.
    pub fn unsubscribe_user(&self, t: &Target, channel: &str) -> Result<(), ClientError> {
        if channel.is_empty() {
            return Ok(());
        }
        self.rules.namespace(channel)?;
        let (code, reason) = crate::errors::unsubscribe::SERVER;
        for c in self.targets(t) {
            c.push_control(Control::Unsubscribe { channel: channel.to_string(), code, reason: reason.into() });
        }
        Ok(())
    }

    /// API `disconnect`.
    pub fn disconnect_user(&self, t: &Target, whitelist: &[String], d: Disconnect) {
        for c in self.targets(t) {
            if !whitelist.iter().any(|w| **w == *c.id) {
                c.close_with(d.clone());
            }
        }
    }

    /// API `refresh`.
    pub fn refresh_user(&self, t: &Target, expired: bool, expire_at: Option<i64>, info: Option<Bytes>) {
        for c in self.targets(t) {
            c.push_control(Control::Refresh { expired, expire_at, info: info.clone() });
        }
    }

    /// Active channels matching a glob pattern ("" = all).
    pub fn channels(&self, pattern: &str) -> Vec<(String, usize)> {
        self.hub
            .channels()
            .into_iter()
            .filter(|(ch, _)| pattern.is_empty() || glob_match::glob_match(pattern, ch))
            .collect()
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
