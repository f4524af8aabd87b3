//! Commands other than connect and subscribe.

use super::*;
use crate::policy::{self, RpcRoute};
use crate::proxy::{self, Kind};

impl Client {
    // ------------------------------------------------------------------
    // Other commands
    // ------------------------------------------------------------------

    pub(super) async fn cmd_publish(&mut self, req: PublishRequest) -> Result<(), CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let ns = node.rules.namespace(&req.channel)?.clone();
        node.rules.check_name(&req.channel, &ns)?;
        node.check_data_format(&ns, &req.data)?;
        let mut data = req.data;
        let mut opts = ApiPublish::default();
        if ns.options.publish_proxy_enabled {
            // The backend decides instead of the allow_publish_* options, and
            // may rewrite the payload.
            let p =
                node.proxies.get(Kind::Publish, &ns.options.publish_proxy_name).ok_or(ClientError::NOT_AVAILABLE)?;
            let ask = proxy::Req { channel: &req.channel, data: &data, ..Default::default() };
            if let Some(r) = p.call::<proxy::PublishResult>(Kind::Publish, &self.proxy_ctx(), ask).await? {
                if let Some(d) = r.replacement().map_err(|e| proxy::contract_error(p, Kind::Publish, &e))? {
                    data = d;
                }
                opts = ApiPublish {
                    skip_history: r.skip_history,
                    tags: r.tags,
                    idempotency_key: r.idempotency_key,
                    delta: r.delta,
                };
            }
        } else if !policy::may_publish(&ns.options, self.actor(), self.channels.contains_key(&req.channel)) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let chan_info = self.channels.get(&req.channel).map(|c| c.chan_info.clone()).unwrap_or_default();
        let info = self.client_info(&chan_info);
        node.publish(&req.channel, data, Some(info), &opts).await?;
        Ok(())
    }

    pub(super) async fn cmd_presence(&mut self, req: PresenceRequest) -> Result<PresenceResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let ns = self.node.rules.namespace(&req.channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        if !policy::may_read_presence(&ns.options, self.actor(), self.channels.contains_key(&req.channel)) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        Ok(PresenceResult { presence: self.node.presence(&req.channel).await? })
    }

    pub(super) async fn cmd_presence_stats(
        &mut self,
        req: PresenceStatsRequest,
    ) -> Result<PresenceStatsResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let ns = self.node.rules.namespace(&req.channel)?.clone();
        if !ns.options.presence {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        if !policy::may_read_presence(&ns.options, self.actor(), self.channels.contains_key(&req.channel)) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let s = self.node.presence_stats(&req.channel).await?;
        Ok(PresenceStatsResult { num_clients: s.num_clients, num_users: s.num_users })
    }

    pub(super) async fn cmd_history(&mut self, req: HistoryRequest) -> Result<HistoryResult, CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let ns = node.rules.namespace(&req.channel)?.clone();
        if !ns.options.history_enabled() {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        if !policy::may_read_history(&ns.options, self.actor(), self.channels.contains_key(&req.channel)) {
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
            // A stable epoch for the position returned (see the server API's history).
            ensure_stream: true,
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

    pub(super) async fn cmd_rpc(&self, req: RpcRequest) -> Result<RpcResult, CommandError> {
        let node = self.node.clone();
        let name = match policy::rpc_route(&node.config.rpc, &req.method) {
            RpcRoute::Ping => return Ok(RpcResult::default()),
            RpcRoute::Refuse(e) => return Err(e.into()),
            RpcRoute::Proxy(name) => name,
        };
        let p = node.proxies.get(Kind::Rpc, name).ok_or(ClientError::NOT_AVAILABLE)?;
        let ask = proxy::Req { method: &req.method, data: &req.data, ..Default::default() };
        let data = match p.call::<proxy::RpcResult>(Kind::Rpc, &self.proxy_ctx(), ask).await? {
            Some(r) => r.data_bytes().map_err(|e| proxy::contract_error(p, Kind::Rpc, &e))?,
            None => Bytes::new(),
        };
        Ok(RpcResult { data })
    }

    pub(super) async fn cmd_refresh(&mut self, req: RefreshRequest) -> Result<RefreshResult, CommandError> {
        // With a refresh proxy the server extends the connection; a client
        // refresh is a protocol violation there (Centrifugo: 3501).
        if self.proxy_refresh || req.token.is_empty() {
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
        if at.is_some_and(|at| at <= now) {
            // A refresh cannot move the expiry into the past: expired now.
            return Err(Disconnect::EXPIRED.into());
        }
        self.set_expiry(at);
        Ok(RefreshResult {
            client: self.shared.id.to_string(),
            version: VERSION.to_string(),
            expires: at.is_some(),
            ttl: at.map(|a| ttl_secs(a, now)).unwrap_or(0),
        })
    }

    pub(super) async fn cmd_sub_refresh(&mut self, req: SubRefreshRequest) -> Result<SubRefreshResult, CommandError> {
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
        if c.expire_at.is_some_and(|at| at <= now) {
            return Err(ClientError::TOKEN_EXPIRED.into());
        }
        let ctx = self.channels.get_mut(&req.channel).expect("checked above");
        ctx.expire_at = c.expire_at;
        if !c.info.is_empty() {
            ctx.chan_info = c.info;
        }
        Ok(SubRefreshResult { expires: c.expire_at.is_some(), ttl: c.expire_at.map(|a| ttl_secs(a, now)).unwrap_or(0) })
    }
}
