//! The connect command: credentials, limits, server-side subscriptions.

use std::collections::HashMap;

use super::*;
use crate::auth::{SubOptions, SubOverride};
use crate::policy::{self, Actor, Grant, SubPlan, SubscribeAsk};
use crate::proxy::{self, Kind};

impl Client {
    // ------------------------------------------------------------------
    // Connect
    // ------------------------------------------------------------------

    pub(super) async fn handle_connect(&mut self, id: u32, req: ConnectRequest) -> Result<(), Disconnect> {
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

    pub(super) async fn connect(&mut self, req: ConnectRequest) -> Result<(ConnectResult, Vec<Pending>), CommandError> {
        let node = self.node.clone();
        let cfg = &node.config.client;
        let now = self.now_unix();
        let mut token_subs: Vec<(String, SubOptions)> = Vec::new();
        let mut credentials = false;
        let mut connect_data = Bytes::new();
        self.set_emulated(&req.headers);
        self.proxy_refresh = node.proxies.refresh().is_some();
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
            self.set_meta(claims.meta);
            token_subs = claims.subs;
            credentials = true;
        } else {
            if let Some(p) = node.proxies.connect() {
                // The backend decides (cookie-style auth); no result = no credentials.
                if let Some(r) = self.connect_proxy(p, &req).await? {
                    let bad = |e: String| proxy::contract_error(p, Kind::Connect, &e);
                    self.user = r.user.clone();
                    self.conn_info = r.info_bytes().map_err(bad)?;
                    connect_data = r.data_bytes().map_err(bad)?;
                    self.expire_at = (r.expire_at > 0 && !cfg.insecure).then_some(r.expire_at);
                    for ch in &r.channels {
                        token_subs.push((ch.clone(), SubOptions::default()));
                    }
                    let mut subs: Vec<_> = r.subs.iter().collect();
                    subs.sort_by(|a, b| a.0.cmp(b.0));
                    for (ch, o) in subs {
                        let opts = SubOptions {
                            info: o.info_bytes().map_err(bad)?,
                            data: o.data_bytes().map_err(bad)?,
                            overrides: SubOverride::from_json(o.overrides.as_ref()),
                        };
                        token_subs.retain(|(c, _)| c != ch);
                        token_subs.push((ch.clone(), opts));
                    }
                    self.set_meta(r.meta);
                    credentials = true;
                }
            }
            if !credentials {
                if cfg.allow_anonymous_connect_without_token || cfg.insecure {
                    credentials = true;
                } else if let Some(u) = self.request_user().cloned() {
                    self.user = u;
                    credentials = true;
                }
            }
        }
        if !credentials {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        if let Some(at) = self.expire_at
            && at <= now
        {
            return Err(ClientError::EXPIRED.into());
        }
        // Plan every server-side subscription before anything is registered:
        // a connect refused here leaves nothing behind (no hub entry that
        // would count against `client.user_connection_limit`).
        let actor = Actor::new(&self.user, cfg.insecure);
        let mut wanted: Vec<(String, SubPlan)> = Vec::new();
        let ask = |ch: &str| SubscribeAsk {
            server_side: true,
            recover: req
                .subs
                .get(ch)
                .filter(|r| r.recover)
                .map(|r| StreamPosition { offset: r.offset, epoch: r.epoch.clone() }),
            ..Default::default()
        };
        for (ch, opts) in token_subs {
            node.check_channel(&ch)?;
            let ns = node.rules.namespace(&ch)?.clone();
            let grant = Grant { chan_info: opts.info, data: opts.data, expire_at: None, overrides: opts.overrides };
            let plan = policy::plan(&ns.options, actor, grant, ask(&ch));
            wanted.push((ch, plan));
        }
        let pc = &cfg.subscribe_to_user_personal_channel;
        if pc.enabled && !self.user.is_empty() {
            let ch = node.rules.personal_channel(&pc.personal_channel_namespace, &self.user);
            if !wanted.iter().any(|(c, _)| *c == ch) {
                node.check_channel(&ch)?;
                let ns = node.rules.namespace(&ch)?.clone();
                let plan = policy::plan(&ns.options, actor, Grant::default(), ask(&ch));
                wanted.push((ch, plan));
            }
        }
        let mut keys: Vec<&String> = req.subs.keys().collect();
        keys.sort();
        for ch in keys {
            if wanted.iter().any(|(c, _)| c == ch) {
                continue;
            }
            let ns = node.rules.namespace(ch).map_err(|_| CommandError::Disconnect(Disconnect::BAD_REQUEST))?.clone();
            if node.rules.check_name(ch, &ns).is_ok()
                && !ns.options.subscribe_proxy_enabled
                && policy::may_subscribe_without_token(&node.rules, ch, &ns, &self.user, actor)
            {
                let plan = policy::plan(&ns.options, actor, Grant::default(), ask(ch));
                wanted.push((ch.clone(), plan));
            }
        }
        if wanted.len() > cfg.channel_limit {
            return Err(Disconnect::CHANNEL_LIMIT.into());
        }

        self.shared.set_user(&self.user);
        node.register_client(&self.shared)?;
        self.state = State::Connected;
        if pc.enabled && pc.single_connection && !self.user.is_empty() {
            for other in node.hub().user_clients(&self.user) {
                if other.id != self.shared.id {
                    other.close_with(Disconnect::CONNECTION_LIMIT);
                }
            }
        }
        let mut subs = HashMap::new();
        let mut pendings = Vec::new();
        for (ch, plan) in wanted {
            match self.register(&ch, plan).await {
                Ok((res, pending)) => {
                    subs.insert(ch, res);
                    pendings.push(pending);
                }
                Err(e) => {
                    self.abandon_connect().await;
                    return Err(e);
                }
            }
        }
        let mut result = ConnectResult {
            client: self.shared.id.to_string(),
            version: VERSION.to_string(),
            subs,
            data: connect_data,
            ..Default::default()
        };
        // With a refresh proxy the server extends the connection itself: the
        // client is not told about an expiry it cannot act on.
        if let Some(at) = self.expire_at.filter(|_| !self.proxy_refresh) {
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

    pub(super) async fn after_connect(&mut self) {
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
            self.node.join(&ch, self.client_info(&info)).await;
        }
    }

    /// Undoes a connect that failed after registering (a server-side
    /// subscription failed): every subscription made so far, and the hub
    /// entry. The client is then unusable, as after any failed connect.
    pub(super) async fn abandon_connect(&mut self) {
        // No leave events: the joins go out only after a successful connect.
        let chans: Vec<(String, bool)> = self.channels.iter().map(|(k, c)| (k.clone(), c.presence)).collect();
        self.channels = SmallMap::new();
        for (ch, presence) in chans {
            self.shared.end_sub(&ch);
            self.node.remove_subscription(&ch, &self.shared.id).await;
            if presence {
                self.node.remove_presence(&ch, &self.shared.id, &self.user).await;
            }
        }
        self.node.unregister_client(&self.shared);
        self.state = State::Unusable;
    }

    /// Asks the connect proxy (client without a token).
    async fn connect_proxy(
        &self,
        p: &proxy::Proxy,
        req: &ConnectRequest,
    ) -> Result<Option<proxy::ConnectResult>, CommandError> {
        let mut channels: Vec<String> = req.subs.keys().cloned().collect();
        channels.sort();
        let ask =
            proxy::Req { data: &req.data, name: &req.name, version: &req.version, channels, ..Default::default() };
        p.call(Kind::Connect, &self.proxy_ctx(), ask).await
    }

    /// The connection reached its expiry with a refresh proxy configured:
    /// the backend extends it or ends it (3005). A backend that cannot be
    /// asked (timeout, down, bad answer) ends it with 3004, which SDKs
    /// reconnect from, so the connect proxy decides afresh.
    pub(super) async fn refresh_by_proxy(&mut self) -> Result<(), Disconnect> {
        let Some(p) = self.node.proxies.refresh().cloned() else {
            return Err(Disconnect::EXPIRED);
        };
        let r = match p.call::<proxy::RefreshResult>(Kind::Refresh, &self.proxy_ctx(), proxy::Req::default()).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Disconnect::EXPIRED),
            Err(CommandError::Disconnect(d)) => return Err(d),
            Err(CommandError::Reply(_)) => return Err(Disconnect::SERVER_ERROR),
        };
        if r.expired || r.expire_at <= self.now_unix() {
            return Err(Disconnect::EXPIRED);
        }
        match r.info_bytes() {
            Ok(info) if !info.is_empty() => self.conn_info = info,
            Ok(_) => {}
            Err(e) => {
                proxy::contract_error(&p, Kind::Refresh, &e);
                return Err(Disconnect::SERVER_ERROR);
            }
        }
        if r.meta.is_some() {
            self.set_meta(r.meta);
        }
        self.set_expiry(Some(r.expire_at));
        Ok(())
    }

    pub(super) fn set_expiry(&mut self, at: Option<i64>) {
        self.expire_at = at;
        // The refresh proxy is asked at the expiry itself; a client-driven
        // refresh gets `expired_close_delay` of grace.
        let grace = if self.proxy_refresh { Duration::ZERO } else { self.node.config.client.expired_close_delay.0 };
        // Tokens keep |expire_at| <= 1e12 (auth::MAX_TIMESTAMP); the API and
        // control plane are clamped the same way, so no deadline overflows
        // and none is pushed out of reach.
        let max = crate::auth::MAX_TIMESTAMP as i64;
        self.expire_deadline = at.map(|at| {
            let left = at.saturating_sub(self.now_unix()).clamp(0, max) as u64;
            let now = Instant::now();
            now.checked_add(Duration::from_secs(left) + grace).unwrap_or(now + Duration::from_secs(u32::MAX as u64))
        });
    }
}
