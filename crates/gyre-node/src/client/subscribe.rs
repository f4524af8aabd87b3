//! Subscriptions: registering, going live, removing.

use super::*;

impl Client {
    // ------------------------------------------------------------------
    // Subscriptions
    // ------------------------------------------------------------------

    pub(super) fn history_access(&self, ns: &NamespaceRules) -> bool {
        let o = &ns.options;
        let anon = self.user.is_empty();
        allowed(o.allow_history_for_client, o.allow_history_for_anonymous, anon)
            || allowed(o.allow_history_for_subscriber, o.allow_history_for_anonymous, anon)
            || self.node.config.client.insecure
    }

    pub(super) fn presence_access(&self, ns: &NamespaceRules, subscribed: bool) -> bool {
        let o = &ns.options;
        let anon = self.user.is_empty();
        allowed(o.allow_presence_for_client, o.allow_presence_for_anonymous, anon)
            || (subscribed && allowed(o.allow_presence_for_subscriber, o.allow_presence_for_anonymous, anon))
            || self.node.config.client.insecure
    }

    pub(super) fn can_subscribe_without_token(&self, channel: &str, ns: &NamespaceRules) -> bool {
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

    pub(super) fn server_plan(
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
            cache_mode: o.force_recovery_mode == "cache",
            auto_cache: o.auto_cache_recover && o.force_recovery_mode == "cache",
        }
    }

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
            delta: req.delta == "fossil" && o.allowed_delta_types.iter().any(|t| t == "fossil"),
            tags_filter: req.tf.clone(),
            cache_mode: o.force_recovery_mode == "cache",
            auto_cache: o.auto_cache_recover && o.force_recovery_mode == "cache" && recoverable,
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

    pub(super) async fn rollback(&mut self, ch: &str) {
        self.shared.end_sub(ch);
        if self.node.hub.remove_sub(ch, &self.shared.id) {
            let _ = self.node.broker.unsubscribe(ch).await;
        }
        self.channels.remove(ch);
    }

    /// Removes a subscription: hub, broker interest, presence, leave.
    pub(super) async fn remove_subscription(&mut self, ch: &str) {
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
