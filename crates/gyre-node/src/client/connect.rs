//! The connect command: credentials, limits, server-side subscriptions.

use std::collections::HashMap;

use super::*;

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
            let _ = self.node.broker.publish_join(&ch, self.client_info(&info)).await;
        }
    }

    pub(super) fn set_expiry(&mut self, at: Option<i64>) {
        self.expire_at = at;
        self.expire_deadline = at.map(|at| {
            let left = (at - self.now_unix()).max(0) as u64;
            Instant::now() + Duration::from_secs(left) + self.node.config.client.expired_close_delay.0
        });
    }
}
