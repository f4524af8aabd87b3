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
//! queued; see `shared::SubDelivery`).
//!
//! The code is split by concern: `connect` (the connect command and its
//! server-side subscriptions), `subscribe` (registering, going live,
//! removing), `commands` (every other command). Permission rules and the
//! subscription plan live in [`crate::policy`], recovery arithmetic in
//! [`crate::recovery`]; this module only sequences them.

mod commands;
mod connect;
mod subscribe;
#[cfg(test)]
mod tests;

use crate::small_map::SmallMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gyre_proto::protocol::*;
use rand::Rng;
use tokio::time::Instant;

use crate::auth::TokenError;
use crate::engine::{HistoryQuery, StreamPosition};
use crate::errors::{ClientError, CommandError, Disconnect, unsubscribe};
use crate::node::{ApiPublish, Node, ServerSubscribe, VERSION, unix_now};
use crate::shared::{ClientShared, Control, SubDeliveryOptions};

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
    /// Expiry extended by the sub_refresh proxy.
    proxy_refresh: bool,
}

/// A subscription registered but not yet live: goes live with its reply.
#[derive(Debug)]
struct Pending {
    channel: String,
    delta: bool,
    position: Option<(u64, String)>,
    append_to_result: bool,
}

/// What the transport knows from the client's HTTP request.
#[derive(Debug, Clone, Default)]
pub struct ConnRequest {
    /// User id from the trusted `client.user_id_http_header`.
    pub user: Option<String>,
    /// Request headers some proxy forwards (`http_headers`; names lowercase).
    pub headers: Vec<(String, String)>,
}

impl ConnRequest {
    /// Keeps the headers named in `wanted` (lowercase names).
    pub fn from_headers<'a>(
        user: Option<String>,
        wanted: &[String],
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let mut out = Vec::new();
        if !wanted.is_empty() {
            for (k, v) in headers {
                if wanted.iter().any(|w| w.eq_ignore_ascii_case(k))
                    && let Ok(v) = std::str::from_utf8(v)
                {
                    out.push((k.to_ascii_lowercase(), v.to_string()));
                }
            }
        }
        ConnRequest { user, headers: out }
    }
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
    /// What few connections have (see [`Extras`]); `None` while all empty.
    extras: Option<Box<Extras>>,
    /// Expiry is extended by the refresh proxy, not by the client.
    proxy_refresh: bool,
}

/// No client-sent headers (for connections without [`Extras`]).
static EMPTY_HEADERS: std::sync::LazyLock<std::collections::HashMap<String, String>> =
    std::sync::LazyLock::new(Default::default);

/// Parts of a client that most connections leave empty, boxed so that the
/// common one does not carry their room (128 bytes) in its task for life.
#[derive(Debug, Default)]
struct Extras {
    request: ConnRequest,
    /// Client-sent `connect.headers` (forwarded to proxies as `emulated_headers`).
    emulated: std::collections::HashMap<String, String>,
    /// Connection meta (token `meta` or connect proxy `meta`).
    meta: Option<serde_json::Value>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.shared.id).field("user", &self.user).finish()
    }
}

fn ttl_secs(at: i64, now: i64) -> u32 {
    at.saturating_sub(now).clamp(0, u32::MAX as i64) as u32
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
            extras: None,
            proxy_refresh: false,
        }
    }

    /// What the transport took from the client's HTTP request.
    pub fn set_request(&mut self, request: ConnRequest) {
        if request.user.is_some() || !request.headers.is_empty() {
            self.extras().request = request;
        } else if let Some(x) = &mut self.extras {
            x.request = request;
        }
    }

    /// The extras, allocated on first use.
    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Default::default)
    }

    /// Sets the connection meta (allocating the extras only for a value).
    pub(super) fn set_meta(&mut self, meta: Option<serde_json::Value>) {
        if meta.is_some() {
            self.extras().meta = meta;
        } else if let Some(x) = &mut self.extras {
            x.meta = None;
        }
    }

    /// Sets the client-sent `connect.headers`.
    pub(super) fn set_emulated(&mut self, headers: &std::collections::HashMap<String, String>) {
        if !headers.is_empty() {
            self.extras().emulated = headers.clone();
        } else if let Some(x) = &mut self.extras {
            x.emulated.clear();
        }
    }

    /// The user id the trusted HTTP header gave, if any.
    pub(super) fn request_user(&self) -> Option<&String> {
        self.extras.as_ref().and_then(|x| x.request.user.as_ref())
    }

    /// The common fields of a proxy request.
    pub(super) fn proxy_ctx(&self) -> crate::proxy::CallCtx<'_> {
        crate::proxy::CallCtx {
            client: &self.shared.id,
            transport: self.shared.transport.name,
            protocol: match self.shared.encoding {
                crate::push::Encoding::Protobuf => "protobuf",
                _ => "json",
            },
            user: (self.state == State::Connected).then_some(self.user.as_str()),
            meta: self.extras.as_ref().and_then(|x| x.meta.as_ref()),
            headers: self.extras.as_ref().map_or(&[][..], |x| &x.request.headers[..]),
            emulated: self.extras.as_ref().map_or(&*EMPTY_HEADERS, |x| &x.emulated),
        }
    }

    /// The shared half.
    pub fn shared(&self) -> &Arc<ClientShared> {
        &self.shared
    }

    /// Whether connect succeeded.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    pub(super) fn now_unix(&self) -> i64 {
        unix_now()
    }

    pub(super) fn actor(&self) -> crate::policy::Actor {
        crate::policy::Actor::new(&self.user, self.node.config.client.insecure)
    }

    pub(super) fn client_info(&self, chan_info: &Bytes) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.shared.id.to_string(),
            conn_info: self.conn_info.clone(),
            chan_info: chan_info.clone(),
        }
    }

    pub(super) fn pong_enabled(&self) -> bool {
        !self.shared.transport.unidirectional
            && self.node.config.client.pong_timeout.0.is_some_and(|d| !d.is_zero())
            && self.node.config.client.ping_interval.0.is_some_and(|d| !d.is_zero())
    }

    pub(super) fn reply_error(&self, id: u32, e: &ClientError) {
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
            self.cmd_rpc(r).await.map(|x| Some(Reply { id, rpc: Some(x), ..Default::default() }))
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
                    if self.proxy_refresh {
                        // Server-driven expiry: the client is never told about it.
                        continue;
                    }
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

    pub(super) fn push_unsubscribe(&self, channel: &str, code: u32, reason: &str) {
        let push = Push {
            channel: channel.to_string(),
            unsubscribe: Some(Unsubscribe { code, reason: reason.to_string() }),
            ..Default::default()
        };
        self.shared.enqueue_push(&push);
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
            if !self.proxy_refresh {
                return Err(Disconnect::EXPIRED);
            }
            self.refresh_by_proxy().await?;
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
    pub(super) async fn check_positions(&mut self) {
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

    pub(super) async fn periodic(&mut self) -> Result<(), Disconnect> {
        let node = self.node.clone();
        let now = self.now_unix();
        let grace = node.config.client.expired_sub_close_delay.0.as_secs() as i64;
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (ch, ctx) in &self.channels {
            if ctx.presence {
                node.refresh_presence(ch, &self.shared.id, self.client_info(&ctx.chan_info)).await;
            }
            match ctx.expire_at {
                Some(at) if ctx.proxy_refresh && at <= now => due.push(ch.clone()),
                Some(at) if !ctx.proxy_refresh && at + grace <= now => expired.push((ch.clone(), ctx.server_side)),
                _ => {}
            }
        }
        for ch in due {
            if let Some(server_side) = self.sub_refresh_by_proxy(&ch).await? {
                expired.push((ch, server_side));
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
            self.node.unregister_client(&self.shared);
        }
    }
}
