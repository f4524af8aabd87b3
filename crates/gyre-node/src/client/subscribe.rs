//! Subscriptions: registering, going live, removing.

use super::*;
use crate::policy::{self, Actor, Grant, SubPlan, SubscribeAsk};
use crate::proxy::{self, Kind};
use crate::recovery;

impl Client {
    // ------------------------------------------------------------------
    // Subscriptions
    // ------------------------------------------------------------------

    pub(super) async fn cmd_subscribe(&mut self, id: u32, req: SubscribeRequest) -> Result<(), CommandError> {
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
        let actor = Actor::new(&self.user, node.config.client.insecure);
        let mut grant = Grant::default();
        let mut proxied = false;
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
            grant = Grant { chan_info: c.info, data: c.data, expire_at: c.expire_at, overrides: c.overrides };
        } else if ns.options.subscribe_proxy_enabled
            && !node.rules.is_private(&ch)
            && node.rules.user_allowed(&ch, &ns, &self.user).is_none()
        {
            // The backend decides instead of the allow_subscribe_* options
            // (user-limited channels keep their own rule, as in Centrifugo).
            grant = self.subscribe_proxy(&ns.options.subscribe_proxy_name, &req).await?;
            proxied = true;
        } else if !policy::may_subscribe_without_token(&node.rules, &ch, &ns, &self.user, actor) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        if let Some(at) = grant.expire_at
            && at <= self.now_unix()
        {
            return Err(ClientError::TOKEN_EXPIRED.into());
        }
        // A subscribe proxy's result is final: what the client asked for
        // (positioning, recovery, join/leave) is not added to it.
        let ask = SubscribeAsk {
            server_side: false,
            recoverable: req.recoverable && !proxied,
            positioned: req.positioned && !proxied,
            join_leave: req.join_leave && !proxied,
            recover: req.recover.then(|| StreamPosition { offset: req.offset, epoch: req.epoch.clone() }),
            reject_unrecovered: req.flag & 2 != 0,
            delta_fossil: req.delta == "fossil",
            tags_filter: req.tf.clone(),
        };
        let plan = policy::plan(&ns.options, actor, grant, ask);
        let join = plan.join_leave;
        let info = plan.chan_info.clone();
        let (result, pending) = self.register(&ch, plan).await?;
        let reply = Reply { id, subscribe: Some(result), ..Default::default() };
        self.go_live(&reply, vec![pending]);
        if join {
            node.join(&ch, self.client_info(&info)).await;
        }
        Ok(())
    }

    /// Asks the subscribe proxy `name` about a subscription without a token.
    async fn subscribe_proxy(&self, name: &str, req: &SubscribeRequest) -> Result<Grant, CommandError> {
        let node = self.node.clone();
        let p = node.proxies.get(Kind::Subscribe, name).ok_or(ClientError::NOT_AVAILABLE)?;
        let ask = proxy::Req { channel: &req.channel, data: &req.data, ..Default::default() };
        let Some(r) = p.call::<proxy::SubscribeResult>(Kind::Subscribe, &self.proxy_ctx(), ask).await? else {
            return Ok(Grant::default());
        };
        let bad = |e: String| proxy::contract_error(p, Kind::Subscribe, &e);
        Ok(Grant {
            chan_info: r.info_bytes().map_err(bad)?,
            data: r.data_bytes().map_err(bad)?,
            expire_at: (r.expire_at > 0).then_some(r.expire_at),
            overrides: crate::auth::SubOverride::from_json(r.overrides.as_ref()),
        })
    }

    /// A subscription with a sub_refresh proxy reached its expiry: the
    /// backend extends it, or it ends (returns `Some(server_side)`). A
    /// backend that cannot be asked leaves it as it is until the next
    /// periodic check asks again.
    pub(super) async fn sub_refresh_by_proxy(&mut self, ch: &str) -> Result<Option<bool>, Disconnect> {
        let node = self.node.clone();
        let Some(server_side) = self.channels.get(ch).map(|c| c.server_side) else { return Ok(None) };
        let Ok(ns) = node.rules.namespace(ch) else { return Ok(Some(server_side)) };
        let Some(p) = node.proxies.get(Kind::SubRefresh, &ns.options.sub_refresh_proxy_name) else {
            return Ok(Some(server_side));
        };
        let ask = proxy::Req { channel: ch, ..Default::default() };
        let r = match p.call::<proxy::RefreshResult>(Kind::SubRefresh, &self.proxy_ctx(), ask).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Some(server_side)),
            Err(CommandError::Disconnect(d)) => return Err(d),
            Err(CommandError::Reply(_)) => return Ok(None),
        };
        if r.expired || r.expire_at <= self.now_unix() {
            return Ok(Some(server_side));
        }
        let info = match r.info_bytes() {
            Ok(i) => i,
            Err(e) => {
                proxy::contract_error(p, Kind::SubRefresh, &e);
                return Ok(None);
            }
        };
        if let Some(ctx) = self.channels.get_mut(ch) {
            ctx.expire_at = Some(r.expire_at);
            if !info.is_empty() {
                ctx.chan_info = info;
            }
        }
        Ok(None)
    }

    /// Registers a subscription (hub, broker, presence) and computes its
    /// result, leaving it in buffering mode until [`Self::go_live`].
    pub(super) async fn register(
        &mut self,
        ch: &str,
        plan: SubPlan,
    ) -> Result<(SubscribeResult, Pending), CommandError> {
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
        if let Err(e) = node.add_subscription(ch, &self.shared).await {
            self.shared.end_sub(ch);
            return Err(e.into());
        }
        let mut result = SubscribeResult { data: plan.data.clone(), delta: plan.delta, ..Default::default() };
        let mut pending =
            Pending { channel: ch.to_string(), delta: plan.delta, position: None, append_to_result: false };
        if stateful {
            let limit = node.config.client.recovery_max_publication_limit;
            let (q, cache) = recovery::subscribe_query(&plan, limit);
            let (pubs, top) = match node.history(ch, q).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(channel = ch, error = %e, "history read for subscribe failed");
                    self.rollback(ch).await;
                    return Err(e.into());
                }
            };
            let out = recovery::outcome(plan.recover.as_ref(), cache, limit, pubs, &top);
            if out.was_recovering && !out.recovered && !cache && plan.reject_unrecovered {
                self.rollback(ch).await;
                return Err(ClientError::UNRECOVERABLE_POSITION.into());
            }
            result.positioned = true;
            result.recoverable = plan.recoverable;
            result.epoch = top.epoch.clone();
            result.offset = out.offset;
            result.was_recovering = out.was_recovering;
            result.recovered = out.recovered;
            result.publications = out.publications;
            pending.append_to_result = out.append_to_result;
            if let Some(tf) = &plan.tags_filter {
                result.publications.retain(|p| crate::filter::matches(tf, &p.tags));
            }
            let last = top.offset.max(result.publications.last().map(|p| p.offset).unwrap_or(0));
            pending.position = Some((last, top.epoch));
        }
        if let Some(at) = plan.expire_at.filter(|_| !plan.proxy_refresh) {
            result.expires = true;
            result.ttl = ttl_secs(at, self.now_unix());
        }
        if plan.presence {
            node.add_presence(ch, &self.shared.id, self.client_info(&plan.chan_info)).await;
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
                proxy_refresh: plan.proxy_refresh,
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
    pub(super) fn go_live(&mut self, reply: &Reply, pendings: Vec<Pending>) {
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
                    let tf = s.tags_filter.as_deref();
                    let m = recovery::merge_buffered(last0.max(delivered.unwrap_or(0)), buffered, |x| {
                        tf.is_none_or(|tf| crate::filter::matches(tf, &x.tags))
                    });
                    if m.gap {
                        broken.push(p.channel.clone());
                        s.broken = true;
                    }
                    let (extra, last) = (m.extra, m.last);
                    delivered = m.delivered.or(delivered);
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

    /// Undoes [`Self::register`] after its hub/broker step succeeded.
    pub(super) async fn rollback(&mut self, ch: &str) {
        self.shared.end_sub(ch);
        self.node.remove_subscription(ch, &self.shared.id).await;
        self.channels.remove(ch);
    }

    /// Removes a subscription: hub, broker interest, presence, leave.
    pub(super) async fn remove_subscription(&mut self, ch: &str) {
        let Some(ctx) = self.channels.remove(ch) else {
            return;
        };
        let node = self.node.clone();
        self.shared.end_sub(ch);
        node.remove_subscription(ch, &self.shared.id).await;
        if ctx.presence {
            node.remove_presence(ch, &self.shared.id, &self.user).await;
        }
        if ctx.join_leave {
            node.leave(ch, self.client_info(&ctx.chan_info)).await;
        }
    }

    pub(super) async fn cmd_unsubscribe(&mut self, req: UnsubscribeRequest) -> Result<(), CommandError> {
        if req.channel.is_empty() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        self.remove_subscription(&req.channel).await;
        Ok(())
    }

    pub(super) async fn server_subscribe(&mut self, sub: ServerSubscribe) -> Result<(), Disconnect> {
        if self.channels.contains_key(&sub.channel) {
            return Ok(());
        }
        if self.channels.len() >= self.node.config.client.channel_limit {
            return Err(Disconnect::CHANNEL_LIMIT);
        }
        let Ok(ns) = self.node.rules.namespace(&sub.channel).cloned() else {
            return Ok(());
        };
        let actor = Actor::new(&self.user, self.node.config.client.insecure);
        let grant = Grant { chan_info: sub.info, data: sub.data, expire_at: sub.expire_at, overrides: sub.overrides };
        let ask = SubscribeAsk { server_side: true, recover: sub.recover_since, ..Default::default() };
        let plan = policy::plan(&ns.options, actor, grant, ask);
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
            self.node.join(&sub.channel, self.client_info(&info)).await;
        }
        Ok(())
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
