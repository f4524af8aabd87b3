//! The client state machine: one per connection, owned by the task that owns
//! the socket.
//!
//! A transport feeds it three things — decoded frames ([`Client::handle_data`]),
//! wake-ups for control operations ([`Client::handle_controls`]) and timer
//! ticks ([`Client::tick`]) — and drains the shared write queue. Any of them
//! may return a [`Disconnect`], after which the transport flushes (unless the
//! code is 3008), closes with that code and calls [`Client::close`].
//!
//! Commands of one frame run strictly in order, so the `connect` an SDK
//! pipelines in front of its subscribes is fully processed first. Replies go
//! through the same queue as pushes, so a subscribe reply always precedes the
//! channel's live publications (the hub holds them back until the reply is
//! queued; see `session::SubDelivery`).

use std::collections::HashMap;

use crate::small_map::SmallMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gyre_proto::protocol::*;
use rand::Rng;
use tokio::time::Instant;

use crate::auth::{SubOverride, TokenError};
use crate::channel::{NamespaceRules, allowed};
use crate::config::{DeltaType, RecoveryMode};
use crate::engine::{HistoryQuery, StreamPosition};
use crate::errors::{ClientError, CommandError, Disconnect, unsubscribe};
use crate::node::{ApiPublish, Node, ServerSubscribe, VERSION, unix_now};
use crate::session::{ClientShared, Control, SubDeliveryOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for connect.
    Connecting,
    /// Connect failed with a reply error; every further command is 3501.
    Unusable,
    /// Connected.
    Connected,
    /// Closed and cleaned up.
    Closed,
}

#[derive(Debug, Clone)]
struct ChannelCtx {
    server_side: bool,
    presence: bool,
    join_leave: bool,
    chan_info: Bytes,
    expire_at: Option<i64>,
    positioned: bool,
    /// A stream top seen by the last position check that we had not reached.
    check_top: Option<u64>,
}

/// Subscription options decided before registering.
#[derive(Debug, Clone, Default)]
struct SubPlan {
    server_side: bool,
    presence: bool,
    join_leave: bool,
    push_join_leave: bool,
    positioned: bool,
    recoverable: bool,
    chan_info: Bytes,
    data: Bytes,
    expire_at: Option<i64>,
    recover: Option<StreamPosition>,
    reject_unrecovered: bool,
    delta: bool,
    tags_filter: Option<FilterNode>,
    cache_mode: bool,
    auto_cache: bool,
}

/// A subscription registered but not yet live: goes live with its reply.
#[derive(Debug)]
struct Pending {
    channel: String,
    delta: bool,
    position: Option<(u64, String)>,
    append_to_result: bool,
}

/// Per-connection state machine.
pub struct Client {
    node: Arc<Node>,
    shared: Arc<ClientShared>,
    state: State,
    user: String,
    conn_info: Bytes,
    expire_at: Option<i64>,
    expire_deadline: Option<Instant>,
    channels: SmallMap<String, ChannelCtx>,
    stale_deadline: Instant,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    next_periodic: Option<Instant>,
    next_position_check: Option<Instant>,
    http_user: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.shared.id).field("user", &self.user).finish()
    }
}

fn ttl_secs(at: i64, now: i64) -> u32 {
    (at - now).clamp(0, u32::MAX as i64) as u32
}

impl Client {
    /// A new client in the connecting state.
    pub fn new(node: Arc<Node>, shared: Arc<ClientShared>) -> Self {
        let stale = node.config.client.stale_close_delay.0;
        Client {
            node,
            shared,
            state: State::Connecting,
            user: String::new(),
            conn_info: Bytes::new(),
            expire_at: None,
            expire_deadline: None,
            channels: SmallMap::new(),
            stale_deadline: Instant::now() + stale,
            next_ping: None,
            pong_deadline: None,
            next_periodic: None,
            next_position_check: None,
            http_user: None,
        }
    }

    /// User id taken from a trusted request header (`client.user_id_http_header`).
    pub fn set_http_user(&mut self, user: Option<String>) {
        self.http_user = user;
    }

    /// The shared half.
    pub fn shared(&self) -> &Arc<ClientShared> {
        &self.shared
    }

    /// Whether connect succeeded.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    fn now_unix(&self) -> i64 {
        unix_now()
    }

    fn client_info(&self, chan_info: &Bytes) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.shared.id.to_string(),
            conn_info: self.conn_info.clone(),
            chan_info: chan_info.clone(),
        }
    }

    fn pong_enabled(&self) -> bool {
        !self.shared.transport.unidirectional
            && self.node.config.client.pong_timeout.0.is_some_and(|d| !d.is_zero())
            && self.node.config.client.ping_interval.0.is_some_and(|d| !d.is_zero())
    }

    fn reply_error(&self, id: u32, e: &ClientError) {
        self.shared.enqueue_reply(&Reply { id, error: Some(e.to_proto()), ..Default::default() });
    }

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// Handles one transport message (one or more commands).
    pub async fn handle_data(&mut self, data: &[u8]) -> Result<(), Disconnect> {
        let cmds = gyre_proto::decode_commands(self.shared.encoding.protocol(), data).map_err(|e| {
            tracing::debug!(client = %self.shared.id, error = %e, "undecodable frame");
            Disconnect::BAD_REQUEST
        })?;
        for cmd in cmds {
            self.handle_command(cmd).await?;
            if self.state == State::Unusable {
                // A failed connect stops processing of the rest of the frame.
                break;
            }
        }
        Ok(())
    }

    async fn handle_command(&mut self, cmd: Command) -> Result<(), Disconnect> {
        if cmd.id == 0 && cmd.send.is_none() {
            return self.handle_pong();
        }
        match self.state {
            State::Connecting => {
                let Some(req) = cmd.connect else {
                    return Err(Disconnect::BAD_REQUEST);
                };
                return self.handle_connect(cmd.id, req).await;
            }
            State::Unusable | State::Closed => return Err(Disconnect::BAD_REQUEST),
            State::Connected => {}
        }
        let id = cmd.id;
        if id == 0 && cmd.send.is_none() {
            return Err(Disconnect::BAD_REQUEST);
        }
        let result: Result<Option<Reply>, CommandError> = if cmd.connect.is_some() {
            Err(Disconnect::BAD_REQUEST.into())
        } else if let Some(r) = cmd.subscribe {
            self.cmd_subscribe(id, r).await.map(|_| None)
        } else if let Some(r) = cmd.unsubscribe {
            self.cmd_unsubscribe(r)
                .await
                .map(|_| Some(Reply { id, unsubscribe: Some(UnsubscribeResult {}), ..Default::default() }))
        } else if let Some(r) = cmd.publish {
            self.cmd_publish(r).await.map(|_| Some(Reply { id, publish: Some(PublishResult {}), ..Default::default() }))
        } else if let Some(r) = cmd.presence {
            self.cmd_presence(r).await.map(|x| Some(Reply { id, presence: Some(x), ..Default::default() }))
        } else if let Some(r) = cmd.presence_stats {
            self.cmd_presence_stats(r).await.map(|x| Some(Reply { id, presence_stats: Some(x), ..Default::default() }))
        } else if let Some(r) = cmd.history {
            self.cmd_history(r).await.map(|x| Some(Reply { id, history: Some(x), ..Default::default() }))
        } else if let Some(r) = cmd.rpc {
            self.cmd_rpc(r).map(|x| Some(Reply { id, rpc: Some(x), ..Default::default() }))
        } else if cmd.send.is_some() {
            // Centrifugo OSS registers no message handler for async sends.
            Err(Disconnect::NOT_AVAILABLE.into())
        } else if let Some(r) = cmd.refresh {
            self.cmd_refresh(r).await.map(|x| Some(Reply { id, refresh: Some(x), ..Default::default() }))
        } else if let Some(r) = cmd.sub_refresh {
            self.cmd_sub_refresh(r).await.map(|x| Some(Reply { id, sub_refresh: Some(x), ..Default::default() }))
        } else {
            Err(Disconnect::BAD_REQUEST.into())
        };
        match result {
            Ok(Some(reply)) => {
                self.shared.enqueue_reply(&reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(CommandError::Reply(e)) => {
                self.reply_error(id, &e);
                Ok(())
            }
            Err(CommandError::Disconnect(d)) => Err(d),
        }
    }

    fn handle_pong(&mut self) -> Result<(), Disconnect> {
        if self.state != State::Connected || self.pong_deadline.is_none() {
            return Err(Disconnect::BAD_REQUEST);
        }
        self.pong_deadline = None;
        Ok(())
    }

    // ------------------------------------------------------------------
    // Connect
    // ------------------------------------------------------------------

    async fn handle_connect(&mut self, id: u32, req: ConnectRequest) -> Result<(), Disconnect> {
        match self.connect(req).await {
            Ok(result) => {
                let (result, pendings) = result;
                let reply = Reply { id, connect: Some(result), ..Default::default() };
                self.go_live(&reply, pendings);
                self.after_connect().await;
                Ok(())
            }
            Err(CommandError::Reply(e)) => {
                self.reply_error(id, &e);
                self.state = State::Unusable;
                Ok(())
            }
            Err(CommandError::Disconnect(d)) => Err(d),
        }
    }

    /// Connects a unidirectional client: the result goes out as a `connect` push,
    /// and connect errors become disconnects (109/110 → 3005, 103 → 3507, else 3004).
    pub async fn connect_unidirectional(&mut self, req: ConnectRequest) -> Result<(), Disconnect> {
        match self.connect(req).await {
            Ok((r, pendings)) => {
                let push = Push {
                    connect: Some(Connect {
                        client: r.client,
                        version: r.version,
                        data: r.data,
                        subs: r.subs,
                        expires: r.expires,
                        ttl: r.ttl,
                        ping: r.ping,
                        pong: r.pong,
                        session: r.session,
                        node: r.node,
                        time: r.time,
                    }),
                    ..Default::default()
                };
                let reply = Reply { push: Some(push), ..Default::default() };
                self.go_live(&reply, pendings);
                self.after_connect().await;
                Ok(())
            }
            Err(CommandError::Disconnect(d)) => Err(d),
            Err(CommandError::Reply(e)) => Err(
                match self
                    .node
                    .config
                    .client
                    .connect_code_to_unidirectional_disconnect
                    .transforms
                    .iter()
                    .find(|t| t.code == e.code)
                    .filter(|_| self.node.config.client.connect_code_to_unidirectional_disconnect.enabled)
                {
                    Some(t) => Disconnect::custom(t.to.code, t.to.reason.clone()),
                    None => match e.code {
                        109 | 110 => Disconnect::EXPIRED,
                        111 => Disconnect::TOO_MANY_REQUESTS,
                        103 => Disconnect::PERMISSION_DENIED,
                        _ => Disconnect::SERVER_ERROR,
                    },
                },
            ),
        }
    }

    async fn connect(&mut self, req: ConnectRequest) -> Result<(ConnectResult, Vec<Pending>), CommandError> {
        let node = self.node.clone();
        let cfg = &node.config.client;
        let now = self.now_unix();
        let mut token_subs: Vec<(String, crate::auth::SubOptions)> = Vec::new();
        let mut credentials = false;
        if !req.token.is_empty() {
            let claims = node.conn_verifier.verify_connect_async(&req.token, now).await.map_err(|e| match e {
                TokenError::Expired => CommandError::Reply(ClientError::TOKEN_EXPIRED),
                TokenError::Invalid(m) => {
                    tracing::info!(error = %m, "invalid connection token");
                    CommandError::Disconnect(Disconnect::INVALID_TOKEN)
                }
            })?;
            if claims.user.is_empty() && cfg.disallow_anonymous_connection_tokens {
                return Err(Disconnect::PERMISSION_DENIED.into());
            }
            self.user = claims.user;
            self.conn_info = claims.info;
            self.expire_at = if cfg.insecure { None } else { claims.expire_at };
            token_subs = claims.subs;
            credentials = true;
        } else if cfg.allow_anonymous_connect_without_token || cfg.insecure {
            credentials = true;
        } else if let Some(u) = self.http_user.clone() {
            self.user = u;
            credentials = true;
        }
        if !credentials {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        if let Some(at) = self.expire_at
            && at <= now
        {
            return Err(ClientError::EXPIRED.into());
        }
        if cfg.user_connection_limit > 0
            && !self.user.is_empty()
            && node.hub.user_clients(&self.user).len() >= cfg.user_connection_limit
        {
            return Err(Disconnect::CONNECTION_LIMIT.into());
        }
        self.shared.set_user(&self.user);
        self.state = State::Connected;
        node.hub.add_client(&self.shared);

        // Server-side subscriptions: token, personal channel, permitted connect.subs keys.
        let mut wanted: Vec<(String, SubPlan)> = Vec::new();
        for (ch, opts) in token_subs {
            let ns = node.rules.namespace(&ch).map_err(CommandError::Reply)?.clone();
            let plan = self.server_plan(&ns, opts.info, opts.data, None, &opts.overrides, req.subs.get(&ch));
            wanted.push((ch, plan));
        }
        let pc = &cfg.subscribe_to_user_personal_channel;
        if pc.enabled && !self.user.is_empty() {
            let ch = node.rules.personal_channel(&pc.personal_channel_namespace, &self.user);
            if !wanted.iter().any(|(c, _)| *c == ch) {
                let ns = node.rules.namespace(&ch).map_err(CommandError::Reply)?.clone();
                let plan =
                    self.server_plan(&ns, Bytes::new(), Bytes::new(), None, &SubOverride::default(), req.subs.get(&ch));
                wanted.push((ch, plan));
            }
            if pc.single_connection {
                for other in node.hub.user_clients(&self.user) {
                    if other.id != self.shared.id {
                        other.close_with(Disconnect::CONNECTION_LIMIT);
                    }
                }
            }
        }
        let mut keys: Vec<&String> = req.subs.keys().collect();
        keys.sort();
        for ch in keys {
            if wanted.iter().any(|(c, _)| c == ch) {
                continue;
            }
            let ns = node.rules.namespace(ch).map_err(|_| CommandError::Disconnect(Disconnect::BAD_REQUEST))?.clone();
            if self.can_subscribe_without_token(ch, &ns) {
                let plan =
                    self.server_plan(&ns, Bytes::new(), Bytes::new(), None, &SubOverride::default(), req.subs.get(ch));
                wanted.push((ch.clone(), plan));
            }
        }
        if wanted.len() > cfg.channel_limit {
            return Err(Disconnect::CHANNEL_LIMIT.into());
        }
        let mut subs = HashMap::new();
        let mut pendings = Vec::new();
        for (ch, plan) in wanted {
            let (res, pending) = self.register(&ch, plan).await?;
            subs.insert(ch, res);
            pendings.push(pending);
        }
        let mut result = ConnectResult {
            client: self.shared.id.to_string(),
            version: VERSION.to_string(),
            subs,
            ..Default::default()
        };
        if let Some(at) = self.expire_at {
            result.expires = true;
            result.ttl = ttl_secs(at, now);
        }
        if let Some(ping) = cfg.ping_interval.0.filter(|d| !d.is_zero()) {
            result.ping = ping.as_secs() as u32;
            result.pong = self.pong_enabled();
        }
        if self.shared.transport.emulation || self.shared.transport.unidirectional {
            result.session = self.shared.session.clone();
        }
        if self.shared.transport.emulation {
            result.node = node.uid.clone();
        }
        if cfg.connect_include_server_time {
            result.time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
        }
        Ok((result, pendings))
    }

    async fn after_connect(&mut self) {
        let cfg = &self.node.config.client;
        let now = Instant::now();
        if let Some(ping) = cfg.ping_interval.0.filter(|d| !d.is_zero()) {
            // First ping at a random point in [interval/2, interval).
            let half = ping / 2;
            let jitter = rand::rng().random_range(0..half.as_millis().max(1) as u64);
            self.next_ping = Some(now + half + Duration::from_millis(jitter));
        }
        self.next_periodic = Some(now + cfg.presence_update_interval.0.max(Duration::from_secs(1)));
        self.next_position_check = Some(now + cfg.channel_position_check_delay.0.max(Duration::from_secs(1)));
        self.set_expiry(self.expire_at);
        let joins: Vec<(String, Bytes)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.join_leave)
            .map(|(ch, c)| (ch.clone(), c.chan_info.clone()))
            .collect();
        for (ch, info) in joins {
            let _ = self.node.broker.publish_join(&ch, self.client_info(&info)).await;
        }
    }

    fn set_expiry(&mut self, at: Option<i64>) {
        self.expire_at = at;
        self.expire_deadline = at.map(|at| {
            let left = (at - self.now_unix()).max(0) as u64;
            Instant::now() + Duration::from_secs(left) + self.node.config.client.expired_close_delay.0
        });
    }

    // ------------------------------------------------------------------
    // Subscriptions
    // ------------------------------------------------------------------

    fn history_access(&self, ns: &NamespaceRules) -> bool {
        let o = &ns.options;
        let anon = self.user.is_empty();
        allowed(o.allow_history_for_client, o.allow_history_for_anonymous, anon)
            || allowed(o.allow_history_for_subscriber, o.allow_history_for_anonymous, anon)
            || self.node.config.client.insecure
    }

    fn presence_access(&self, ns: &NamespaceRules, subscribed: bool) -> bool {
        let o = &ns.options;
        let anon = self.user.is_empty();
        allowed(o.allow_presence_for_client, o.allow_presence_for_anonymous, anon)
            || (subscribed && allowed(o.allow_presence_for_subscriber, o.allow_presence_for_anonymous, anon))
            || self.node.config.client.insecure
    }

    fn can_subscribe_without_token(&self, channel: &str, ns: &NamespaceRules) -> bool {
        let rules = &self.node.rules;
        if rules.is_private(channel) || rules.check_name(channel, ns).is_err() {
            return false;
        }
        match rules.user_allowed(channel, ns, &self.user) {
            Some(ok) => ok,
            None => {
                allowed(
                    ns.options.allow_subscribe_for_client,
                    ns.options.allow_subscribe_for_anonymous,
                    self.user.is_empty(),
                ) || self.node.config.client.insecure
            }
        }
    }

    fn server_plan(
        &self,
        ns: &NamespaceRules,
        chan_info: Bytes,
        data: Bytes,
        expire_at: Option<i64>,
        ov: &SubOverride,
        recover: Option<&SubscribeRequest>,
    ) -> SubPlan {
        let o = &ns.options;
        let history = o.history_enabled();
        let recoverable = history && ov.force_recovery.unwrap_or(o.force_recovery);
        let positioned = history && (recoverable || ov.force_positioning.unwrap_or(o.force_positioning));
        let presence = ov.presence.unwrap_or(o.presence);
        SubPlan {
            server_side: true,
            presence,
            join_leave: ov.join_leave.unwrap_or(o.join_leave),
            push_join_leave: ov.force_push_join_leave.unwrap_or(o.force_push_join_leave),
            positioned,
            recoverable,
            chan_info,
            data,
            expire_at,
            recover: recover
                .filter(|r| r.recover && recoverable)
                .map(|r| StreamPosition { offset: r.offset, epoch: r.epoch.clone() }),
            reject_unrecovered: false,
            delta: false,
            tags_filter: None,
            cache_mode: o.force_recovery_mode == RecoveryMode::Cache,
            auto_cache: o.auto_cache_recover && o.force_recovery_mode == RecoveryMode::Cache,
        }
    }

    async fn cmd_subscribe(&mut self, id: u32, req: SubscribeRequest) -> Result<(), CommandError> {
        if req.channel.is_empty() || !matches!(req.delta.as_str(), "" | "fossil") {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let ch = req.channel.clone();
        let ns = node.rules.namespace(&ch)?.clone();
        node.rules.check_name(&ch, &ns)?;
        if self.channels.len() >= node.config.client.channel_limit {
            return Err(ClientError::LIMIT_EXCEEDED.into());
        }
        if self.channels.contains_key(&ch) {
            return Err(ClientError::ALREADY_SUBSCRIBED.into());
        }
        if let Some(tf) = &req.tf
            && (!ns.options.allow_tags_filter || crate::filter::validate(tf).is_err())
        {
            return Err(ClientError::BAD_REQUEST.into());
        }
        let o = &ns.options;
        let anon = self.user.is_empty();
        let mut chan_info = Bytes::new();
        let mut data = Bytes::new();
        let mut expire_at = None;
        let mut ov = SubOverride::default();
        if node.rules.is_private(&ch) && req.token.is_empty() {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        if !req.token.is_empty() {
            let c =
                node.sub_verifier.verify_subscribe_async(&req.token, self.now_unix()).await.map_err(|e| match e {
                    TokenError::Expired => CommandError::Reply(ClientError::TOKEN_EXPIRED),
                    TokenError::Invalid(m) => {
                        tracing::info!(error = %m, "invalid subscription token");
                        CommandError::Reply(ClientError::PERMISSION_DENIED)
                    }
                })?;
            if c.channel != ch || c.user != self.user || (!c.client.is_empty() && *c.client != *self.shared.id) {
                return Err(Disconnect::INVALID_TOKEN.into());
            }
            chan_info = c.info;
            data = c.data;
            expire_at = c.expire_at;
            ov = c.overrides;
        } else {
            let ok = match node.rules.user_allowed(&ch, &ns, &self.user) {
                Some(ok) => ok,
                None => {
                    allowed(o.allow_subscribe_for_client, o.allow_subscribe_for_anonymous, anon)
                        || node.config.client.insecure
                }
            };
            if !ok {
                return Err(ClientError::PERMISSION_DENIED.into());
            }
        }
        if let Some(at) = expire_at
            && at <= self.now_unix()
        {
            return Err(ClientError::TOKEN_EXPIRED.into());
        }
        let history = o.history_enabled();
        let hist_access = self.history_access(&ns);
        let recoverable = history
            && (ov.force_recovery.unwrap_or(o.force_recovery)
                || (req.recoverable && (o.allow_recovery || hist_access)));
        let positioned = history
            && (recoverable
                || ov.force_positioning.unwrap_or(o.force_positioning)
                || (req.positioned && (o.allow_positioning || hist_access)));
        let join_leave = ov.join_leave.unwrap_or(o.join_leave);
        let push_join_leave = ov.force_push_join_leave.unwrap_or(o.force_push_join_leave)
            || (req.join_leave && join_leave && self.presence_access(&ns, true));
        let plan = SubPlan {
            server_side: false,
            presence: ov.presence.unwrap_or(o.presence),
            join_leave,
            push_join_leave,
            positioned,
            recoverable,
            chan_info,
            data,
            expire_at,
            recover: (req.recover && recoverable)
                .then(|| StreamPosition { offset: req.offset, epoch: req.epoch.clone() }),
            reject_unrecovered: req.flag & 2 != 0,
            delta: req.delta == "fossil" && o.allowed_delta_types.contains(&DeltaType::Fossil),
            tags_filter: req.tf.clone(),
            cache_mode: o.force_recovery_mode == RecoveryMode::Cache,
            auto_cache: o.auto_cache_recover && o.force_recovery_mode == RecoveryMode::Cache && recoverable,
        };
        let join = plan.join_leave;
        let info = plan.chan_info.clone();
        let (result, pending) = self.register(&ch, plan).await?;
        let reply = Reply { id, subscribe: Some(result), ..Default::default() };
        self.go_live(&reply, vec![pending]);
        if join {
            let _ = node.broker.publish_join(&ch, self.client_info(&info)).await;
        }
        Ok(())
    }

    /// Registers a subscription (hub, broker, presence) and computes its
    /// result, leaving it in buffering mode until [`Self::go_live`].
    async fn register(&mut self, ch: &str, plan: SubPlan) -> Result<(SubscribeResult, Pending), CommandError> {
        let node = self.node.clone();
        let stateful = plan.positioned || plan.recoverable;
        self.shared.begin_sub(
            ch,
            SubDeliveryOptions {
                buffer: stateful,
                join_leave: plan.push_join_leave,
                delta: plan.delta,
                tags_filter: plan.tags_filter.clone(),
            },
        );
        if node.hub.add_sub(ch, &self.shared)
            && let Err(e) = node.broker.subscribe(ch).await
        {
            tracing::warn!(channel = ch, error = %e, "broker subscribe failed");
            self.rollback(ch).await;
            return Err(ClientError::INTERNAL.into());
        }
        let mut result = SubscribeResult { data: plan.data.clone(), delta: plan.delta, ..Default::default() };
        let mut pending =
            Pending { channel: ch.to_string(), delta: plan.delta, position: None, append_to_result: false };
        if stateful {
            let limit = node.config.client.recovery_max_publication_limit;
            let cache = plan.cache_mode && (plan.recover.is_some() || plan.auto_cache);
            let q = if cache {
                // Cache mode needs only the latest publication.
                HistoryQuery { limit: Some(1), reverse: true, ..Default::default() }
            } else if let Some(since) = &plan.recover {
                HistoryQuery { since: Some(since.offset), limit: Some(limit + 1), ..Default::default() }
            } else {
                HistoryQuery { limit: Some(0), ..Default::default() }
            };
            let (pubs, top) = match node.history(ch, q).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(channel = ch, error = %e, "history read for subscribe failed");
                    self.rollback(ch).await;
                    return Err(e.into());
                }
            };
            result.positioned = true;
            result.recoverable = plan.recoverable;
            result.epoch = top.epoch.clone();
            result.offset = top.offset;
            if cache {
                let latest = pubs.into_iter().next();
                if let Some(since) = &plan.recover {
                    result.was_recovering = true;
                    let at_top = (since.epoch.is_empty() || since.epoch == top.epoch) && since.offset == top.offset;
                    result.recovered = match &latest {
                        Some(l) => l.offset == top.offset,
                        None => at_top,
                    };
                    if !at_top {
                        result.publications.extend(latest);
                    }
                } else {
                    result.publications.extend(latest);
                }
                pending.append_to_result = true;
            } else if let Some(since) = &plan.recover {
                result.was_recovering = true;
                let epoch_ok = since.epoch.is_empty() || since.epoch == top.epoch;
                // Loss is never silent: `recovered` only when every offset from
                // since+1 to the top is present.
                let complete = epoch_ok
                    && since.offset <= top.offset
                    && pubs.len() <= limit
                    && match (pubs.first(), pubs.last()) {
                        (Some(f), Some(l)) => {
                            f.offset == since.offset + 1
                                && l.offset == top.offset
                                && pubs.windows(2).all(|w| w[0].offset + 1 == w[1].offset)
                        }
                        _ => since.offset == top.offset,
                    };
                if complete {
                    result.recovered = true;
                    result.offset = since.offset;
                    result.publications = pubs;
                    pending.append_to_result = true;
                } else if plan.reject_unrecovered {
                    self.rollback(ch).await;
                    return Err(ClientError::UNRECOVERABLE_POSITION.into());
                }
            }
            if let Some(tf) = &plan.tags_filter {
                result.publications.retain(|p| crate::filter::matches(tf, &p.tags));
            }
            let last = top.offset.max(result.publications.last().map(|p| p.offset).unwrap_or(0));
            pending.position = Some((last, top.epoch));
        }
        if let Some(at) = plan.expire_at {
            result.expires = true;
            result.ttl = ttl_secs(at, self.now_unix());
        }
        if plan.presence {
            let info = self.client_info(&plan.chan_info);
            if let Err(e) = node.presence.add_presence(ch, &self.shared.id, info).await {
                tracing::warn!(channel = ch, error = %e, "presence add failed");
            }
        }
        self.channels.insert(
            ch.to_string(),
            ChannelCtx {
                server_side: plan.server_side,
                presence: plan.presence,
                join_leave: plan.join_leave,
                chan_info: plan.chan_info,
                expire_at: plan.expire_at,
                positioned: stateful,
                check_top: None,
            },
        );
        Ok((result, pending))
    }

    /// Queues `reply` and turns the pending subscriptions live, in one critical
    /// section with respect to deliveries: nothing of those channels can be
    /// queued before the reply, nothing published after the registration is
    /// lost, and publications that raced with the history read are merged in
    /// offset order without duplicates. A gap in that merge ends the
    /// subscription with insufficient state (never a silent hole).
    fn go_live(&mut self, reply: &Reply, pendings: Vec<Pending>) {
        let shared = self.shared.clone();
        let mut broken: Vec<String> = Vec::new();
        shared.with_subs(|subs| {
            let mut reply = reply.clone();
            let mut after: Vec<(String, bool, Arc<Publication>)> = Vec::new();
            for p in &pendings {
                let Some(s) = subs.get_mut(p.channel.as_str()) else { continue };
                let buffered = s.buffer.take().unwrap_or_default();
                let mut delivered = reply_publications(&mut reply, &p.channel).and_then(|v| v.last().map(|x| x.offset));
                if let Some((last0, epoch)) = p.position.clone() {
                    let mut last = last0.max(delivered.unwrap_or(0));
                    let mut extra = Vec::new();
                    for publication in buffered {
                        if publication.offset <= last {
                            continue; // already part of the history read
                        }
                        if publication.offset != last + 1 {
                            broken.push(p.channel.clone());
                            s.broken = true;
                            break;
                        }
                        last = publication.offset;
                        if s.tags_filter.as_ref().is_none_or(|tf| crate::filter::matches(tf, &publication.tags)) {
                            delivered = Some(publication.offset);
                            extra.push(publication);
                        }
                    }
                    match reply_publications(&mut reply, &p.channel).filter(|_| p.append_to_result) {
                        Some(list) => list.extend(extra.into_iter().map(|x| (*x).clone())),
                        None => after.extend(extra.into_iter().map(|x| (p.channel.clone(), p.delta, x))),
                    }
                    s.position = Some((last, epoch));
                }
                s.live = true;
                s.delta_base = if s.delta { delivered } else { None };
            }
            let delta_reply = pendings.iter().any(|p| p.delta);
            let bytes = match reply.subscribe.as_mut() {
                Some(sub) if delta_reply => {
                    delta_chain(&mut sub.publications);
                    shared.encode_reply_delta(&reply)
                }
                _ => shared.encode_reply(&reply),
            };
            shared.enqueue(bytes);
            for (ch, delta, publication) in after {
                let push = Push { channel: ch, r#pub: Some((*publication).clone()), ..Default::default() };
                if delta {
                    shared.enqueue_push_delta(&push);
                } else {
                    shared.enqueue_push(&push);
                }
            }
        });
        for ch in broken {
            self.shared.push_control(Control::InsufficientState { channel: ch });
        }
    }

    async fn rollback(&mut self, ch: &str) {
        self.shared.end_sub(ch);
        if self.node.hub.remove_sub(ch, &self.shared.id) {
            let _ = self.node.broker.unsubscribe(ch).await;
        }
        self.channels.remove(ch);
    }

    /// Removes a subscription: hub, broker interest, presence, leave.
    async fn remove_subscription(&mut self, ch: &str) {
        let Some(ctx) = self.channels.remove(ch) else {
            return;
        };
        let node = self.node.clone();
        self.shared.end_sub(ch);
        if node.hub.remove_sub(ch, &self.shared.id)
            && let Err(e) = node.broker.unsubscribe(ch).await
        {
            tracing::warn!(channel = ch, error = %e, "broker unsubscribe failed");
        }
        if ctx.presence {
            let _ = node.presence.remove_presence(ch, &self.shared.id, &self.user).await;
        }
        if ctx.join_leave {
            let _ = node.broker.publish_leave(ch, self.client_info(&ctx.chan_info)).await;
        }
    }

    async fn cmd_unsubscribe(&mut self, req: UnsubscribeRequest) -> Result<(), CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        self.remove_subscription(&req.channel).await;
        Ok(())
    }

    // ------------------------------------------------------------------
    // Other commands
    // ------------------------------------------------------------------

    async fn cmd_publish(&mut self, req: PublishRequest) -> Result<(), CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let ns = node.rules.namespace(&req.channel)?.clone();
        node.rules.check_name(&req.channel, &ns)?;
        node.check_data_format(&ns, &req.data)?;
        let o = &ns.options;
        let anon = self.user.is_empty();
        let subscribed = self.channels.get(&req.channel);
        let ok = allowed(o.allow_publish_for_client, o.allow_publish_for_anonymous, anon)
            || (o.allow_publish_for_subscriber && subscribed.is_some() && (!anon || o.allow_publish_for_anonymous))
            || node.config.client.insecure;
        if !ok {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let chan_info = subscribed.map(|c| c.chan_info.clone()).unwrap_or_default();
        let info = self.client_info(&chan_info);
        node.publish(&req.channel, req.data, Some(info), &ApiPublish::default()).await?;
        Ok(())
    }

    async fn cmd_presence(&mut self, req: PresenceRequest) -> Result<PresenceResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let ns = self.node.rules.namespace(&req.channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        if !self.presence_access(&ns, self.channels.contains_key(&req.channel)) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        Ok(PresenceResult { presence: self.node.presence(&req.channel).await? })
    }

    async fn cmd_presence_stats(&mut self, req: PresenceStatsRequest) -> Result<PresenceStatsResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let ns = self.node.rules.namespace(&req.channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        if !self.presence_access(&ns, self.channels.contains_key(&req.channel)) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let s = self.node.presence_stats(&req.channel).await?;
        Ok(PresenceStatsResult { num_clients: s.num_clients, num_users: s.num_users })
    }

    async fn cmd_history(&mut self, req: HistoryRequest) -> Result<HistoryResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let ns = node.rules.namespace(&req.channel)?.clone();
        if !ns.options.history_enabled() {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        let o = &ns.options;
        let anon = self.user.is_empty();
        let ok = allowed(o.allow_history_for_client, o.allow_history_for_anonymous, anon)
            || (o.allow_history_for_subscriber
                && self.channels.contains_key(&req.channel)
                && (!anon || o.allow_history_for_anonymous))
            || node.config.client.insecure;
        if !ok {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        if req.reverse && req.since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(ClientError::BAD_REQUEST.into());
        }
        let max = node.config.client.history_max_publication_limit;
        let limit = match req.limit {
            0 => 0,
            l if l < 0 => max,
            l => (l as usize).min(max),
        };
        let q = HistoryQuery {
            since: req.since.as_ref().map(|s| s.offset),
            limit: Some(limit),
            reverse: req.reverse,
            ..Default::default()
        };
        let (pubs, top) = node.history(&req.channel, q).await?;
        if let Some(since) = &req.since
            && !since.epoch.is_empty()
            && since.epoch != top.epoch
        {
            return Err(ClientError::UNRECOVERABLE_POSITION.into());
        }
        Ok(HistoryResult { publications: pubs, epoch: top.epoch, offset: top.offset })
    }

    fn cmd_rpc(&self, req: RpcRequest) -> Result<RpcResult, CommandError> {
        let rpc = &self.node.config.rpc;
        if rpc.ping.enabled && req.method == rpc.ping.method {
            return Ok(RpcResult::default());
        }
        // An unknown RPC namespace is 104; a known one has no proxy wired in
        // this version (proxies are refused at start-up), so it is 108.
        if let Some((ns, _)) = req.method.split_once(rpc.namespace_boundary.as_str())
            && !rpc.namespaces.iter().any(|n| n.name == ns)
        {
            return Err(ClientError::METHOD_NOT_FOUND.into());
        }
        Err(ClientError::NOT_AVAILABLE.into())
    }

    async fn cmd_refresh(&mut self, req: RefreshRequest) -> Result<RefreshResult, CommandError> {
        if req.token.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let now = self.now_unix();
        let c = self.node.conn_verifier.verify_connect_async(&req.token, now).await.map_err(|e| match e {
            TokenError::Expired => CommandError::Disconnect(Disconnect::EXPIRED),
            TokenError::Invalid(_) => CommandError::Disconnect(Disconnect::INVALID_TOKEN),
        })?;
        if c.user != self.user {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        if !c.info.is_empty() {
            self.conn_info = c.info;
        }
        let at = if self.node.config.client.insecure { None } else { c.expire_at };
        self.set_expiry(at);
        Ok(RefreshResult {
            client: self.shared.id.to_string(),
            version: VERSION.to_string(),
            expires: at.is_some(),
            ttl: at.map(|a| ttl_secs(a, now)).unwrap_or(0),
        })
    }

    async fn cmd_sub_refresh(&mut self, req: SubRefreshRequest) -> Result<SubRefreshResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        if !self.channels.contains_key(&req.channel) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        if req.token.is_empty() {
            return Err(ClientError::BAD_REQUEST.into());
        }
        let now = self.now_unix();
        let c = self.node.sub_verifier.verify_subscribe_async(&req.token, now).await.map_err(|e| match e {
            TokenError::Expired => CommandError::Reply(ClientError::TOKEN_EXPIRED),
            TokenError::Invalid(_) => CommandError::Disconnect(Disconnect::INVALID_TOKEN),
        })?;
        if c.channel != req.channel || c.user != self.user || (!c.client.is_empty() && *c.client != *self.shared.id) {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        let ctx = self.channels.get_mut(&req.channel).expect("checked above");
        ctx.expire_at = c.expire_at;
        if !c.info.is_empty() {
            ctx.chan_info = c.info;
        }
        Ok(SubRefreshResult { expires: c.expire_at.is_some(), ttl: c.expire_at.map(|a| ttl_secs(a, now)).unwrap_or(0) })
    }

    // ------------------------------------------------------------------
    // Control operations and timers
    // ------------------------------------------------------------------

    /// Runs control operations left by other tasks.
    pub async fn handle_controls(&mut self) -> Result<(), Disconnect> {
        for c in self.shared.take_controls() {
            if self.state != State::Connected {
                continue;
            }
            match c {
                Control::Subscribe(sub) => self.server_subscribe(*sub).await?,
                Control::Unsubscribe { channel, code, reason } => {
                    if self.channels.contains_key(&channel) {
                        self.remove_subscription(&channel).await;
                        self.push_unsubscribe(&channel, code, &reason);
                    }
                }
                Control::InsufficientState { channel } => {
                    let Some(ctx) = self.channels.get(&channel) else {
                        continue;
                    };
                    if ctx.server_side {
                        return Err(Disconnect::INSUFFICIENT_STATE);
                    }
                    self.remove_subscription(&channel).await;
                    let (code, reason) = unsubscribe::INSUFFICIENT_STATE;
                    self.push_unsubscribe(&channel, code, reason);
                }
                Control::Refresh { expired, expire_at, info } => {
                    if expired {
                        return Err(Disconnect::EXPIRED);
                    }
                    if let Some(info) = info {
                        self.conn_info = info;
                    }
                    self.set_expiry(expire_at);
                    let push = Push {
                        refresh: Some(Refresh {
                            expires: expire_at.is_some(),
                            ttl: expire_at.map(|a| ttl_secs(a, self.now_unix())).unwrap_or(0),
                        }),
                        ..Default::default()
                    };
                    self.shared.enqueue_push(&push);
                }
            }
        }
        Ok(())
    }

    fn push_unsubscribe(&self, channel: &str, code: u32, reason: &str) {
        let push = Push {
            channel: channel.to_string(),
            unsubscribe: Some(Unsubscribe { code, reason: reason.to_string() }),
            ..Default::default()
        };
        self.shared.enqueue_push(&push);
    }

    async fn server_subscribe(&mut self, sub: ServerSubscribe) -> Result<(), Disconnect> {
        if self.channels.contains_key(&sub.channel) {
            return Ok(());
        }
        if self.channels.len() >= self.node.config.client.channel_limit {
            return Err(Disconnect::CHANNEL_LIMIT);
        }
        let Ok(ns) = self.node.rules.namespace(&sub.channel).cloned() else {
            return Ok(());
        };
        let recover = sub.recover_since.as_ref().map(|p| SubscribeRequest {
            recover: true,
            offset: p.offset,
            epoch: p.epoch.clone(),
            ..Default::default()
        });
        let plan =
            self.server_plan(&ns, sub.info.clone(), sub.data.clone(), sub.expire_at, &sub.overrides, recover.as_ref());
        let join = plan.join_leave;
        let info = plan.chan_info.clone();
        let (res, pending) = match self.register(&sub.channel, plan).await {
            Ok(x) => x,
            Err(CommandError::Disconnect(d)) => return Err(d),
            Err(CommandError::Reply(e)) => {
                tracing::warn!(channel = %sub.channel, error = %e, "server-side subscribe failed");
                return Ok(());
            }
        };
        let push = Push {
            channel: sub.channel.clone(),
            subscribe: Some(gyre_proto::protocol::Subscribe {
                recoverable: res.recoverable,
                epoch: res.epoch,
                offset: res.offset,
                positioned: res.positioned,
                data: res.data,
            }),
            ..Default::default()
        };
        self.go_live(&Reply { push: Some(push), ..Default::default() }, vec![pending]);
        if join {
            let _ = self.node.broker.publish_join(&sub.channel, self.client_info(&info)).await;
        }
        Ok(())
    }

    /// When the transport should call [`Self::tick`] next.
    pub fn next_deadline(&self) -> Instant {
        if self.state != State::Connected {
            return self.stale_deadline;
        }
        [self.next_ping, self.pong_deadline, self.expire_deadline, self.next_periodic, self.next_position_check]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Runs due timers: stale close, pings, pong timeout, expiry, periodic checks.
    pub async fn tick(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.state != State::Connected {
            if now >= self.stale_deadline {
                return Err(Disconnect::STALE);
            }
            return Ok(());
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(Disconnect::NO_PONG);
        }
        if self.expire_deadline.is_some_and(|d| now >= d) {
            return Err(Disconnect::EXPIRED);
        }
        if let Some(at) = self.next_ping.filter(|d| now >= *d) {
            self.shared.enqueue_reply(&Reply::default());
            if self.pong_enabled() {
                let timeout = self.node.config.client.pong_timeout.0.unwrap_or_default();
                self.pong_deadline = Some(now + timeout);
            }
            let interval = self.node.config.client.ping_interval.0.unwrap_or(Duration::from_secs(25));
            self.next_ping = Some(at.max(now) + interval);
        }
        if self.next_position_check.is_some_and(|d| now >= d) {
            self.check_positions().await;
            self.next_position_check =
                Some(now + self.node.config.client.channel_position_check_delay.0.max(Duration::from_secs(1)));
        }
        if self.next_periodic.is_some_and(|d| now >= d) {
            self.periodic().await?;
            self.next_periodic =
                Some(now + self.node.config.client.presence_update_interval.0.max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Compares each positioned subscription with its stream top. A client
    /// still behind a top seen one check earlier, or on another epoch, missed
    /// publications (e.g. the broker dropped them): it is told so
    /// (unsubscribe 2500 / disconnect 3010) rather than left silently behind.
    async fn check_positions(&mut self) {
        let node = self.node.clone();
        let chans: Vec<String> = self.channels.iter().filter(|(_, c)| c.positioned).map(|(k, _)| k.clone()).collect();
        for ch in chans {
            let Some((offset, epoch)) = self.shared.position(&ch) else { continue };
            let Ok((_, top)) = node.history(&ch, HistoryQuery { limit: Some(0), ..Default::default() }).await else {
                continue; // engine unavailable: checked again next time
            };
            let Some(ctx) = self.channels.get_mut(&ch) else { continue };
            let lost = if top.epoch != epoch {
                true
            } else if offset >= top.offset {
                ctx.check_top = None;
                false
            } else if ctx.check_top.is_some_and(|t| offset < t) {
                true
            } else {
                ctx.check_top = Some(top.offset);
                false
            };
            if lost {
                self.shared.push_control(Control::InsufficientState { channel: ch });
            }
        }
    }

    async fn periodic(&mut self) -> Result<(), Disconnect> {
        let node = self.node.clone();
        let now = self.now_unix();
        let grace = node.config.client.expired_sub_close_delay.0.as_secs() as i64;
        let mut expired = Vec::new();
        for (ch, ctx) in &self.channels {
            if ctx.presence {
                let _ = node.presence.add_presence(ch, &self.shared.id, self.client_info(&ctx.chan_info)).await;
            }
            if let Some(at) = ctx.expire_at
                && at + grace <= now
            {
                expired.push((ch.clone(), ctx.server_side));
            }
        }
        for (ch, server_side) in expired {
            if server_side {
                return Err(Disconnect::SUB_EXPIRED);
            }
            self.remove_subscription(&ch).await;
            let (code, reason) = unsubscribe::EXPIRED;
            self.push_unsubscribe(&ch, code, reason);
        }
        Ok(())
    }

    /// Cleans up after the connection ends: subscriptions, presence, leaves, hub.
    pub async fn close(&mut self) {
        if self.state == State::Closed {
            return;
        }
        let was_connected = self.state == State::Connected;
        self.state = State::Closed;
        let chans: Vec<String> = self.channels.keys().cloned().collect();
        for ch in chans {
            self.remove_subscription(&ch).await;
        }
        if was_connected {
            self.node.hub.remove_client(&self.shared);
        }
    }
}

/// The publication list of `channel` inside a reply (subscribe result, or a
/// server-side subscription of a connect result), if the reply has one.
fn reply_publications<'a>(reply: &'a mut Reply, channel: &str) -> Option<&'a mut Vec<Publication>> {
    if let Some(sub) = reply.subscribe.as_mut() {
        return Some(&mut sub.publications);
    }
    reply.connect.as_mut().and_then(|c| c.subs.get_mut(channel)).map(|s| &mut s.publications)
}

/// Rewrites a recovered list for a delta subscription: the first publication
/// full, each later one a fossil patch against its predecessor when smaller.
fn delta_chain(pubs: &mut [Publication]) {
    let originals: Vec<Bytes> = pubs.iter().map(|p| p.data.clone()).collect();
    for i in 1..pubs.len() {
        if let Some(patch) = crate::delta::patch(&originals[i - 1], &originals[i], true) {
            pubs[i].data = patch;
            pubs[i].delta = true;
        }
    }
}
