//! Channel permissions and subscription plans: pure functions of the
//! namespace options, who is asking and what was asked.
//!
//! Every rule of the form "may this connection read history / presence,
//! publish, subscribe without a token" and "which options does this
//! subscription get" lives here once. The client's `subscribe` command and
//! the server-side subscriptions made at connect (token `subs`, personal
//! channel, `connect.subs`) and through the API all go through [`plan`];
//! they used to be two copies that had already drifted apart
//! (`auto_cache_recover` applied to non-recoverable server-side
//! subscriptions only).
//!
//! No I/O, no clock, no engine: the table tests below are the specification.

use bytes::Bytes;
use gyre_proto::protocol::FilterNode;

use crate::auth::SubOverride;
use crate::channel::{ChannelRules, NamespaceRules, allowed};
use crate::config::{ChannelOptions, DeltaType, RecoveryMode, Rpc};
use crate::engine::StreamPosition;
use crate::errors::ClientError;

/// Who performs an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// Connected without a user id.
    pub anonymous: bool,
    /// `client.insecure`: every permission check passes.
    pub insecure: bool,
}

impl Actor {
    /// An actor for `user` ("" = anonymous).
    pub fn new(user: &str, insecure: bool) -> Self {
        Actor { anonymous: user.is_empty(), insecure }
    }
}

/// `history` command (and history access for recovery/positioning when
/// `subscribed` is assumed): `allow_history_for_client`, or
/// `allow_history_for_subscriber` while subscribed; anonymous only with
/// `allow_history_for_anonymous`.
pub fn may_read_history(o: &ChannelOptions, a: Actor, subscribed: bool) -> bool {
    a.insecure
        || allowed(o.allow_history_for_client, o.allow_history_for_anonymous, a.anonymous)
        || (subscribed && allowed(o.allow_history_for_subscriber, o.allow_history_for_anonymous, a.anonymous))
}

/// `presence` / `presence_stats` commands and `join_leave` pushes.
pub fn may_read_presence(o: &ChannelOptions, a: Actor, subscribed: bool) -> bool {
    a.insecure
        || allowed(o.allow_presence_for_client, o.allow_presence_for_anonymous, a.anonymous)
        || (subscribed && allowed(o.allow_presence_for_subscriber, o.allow_presence_for_anonymous, a.anonymous))
}

/// `publish` command.
pub fn may_publish(o: &ChannelOptions, a: Actor, subscribed: bool) -> bool {
    a.insecure
        || allowed(o.allow_publish_for_client, o.allow_publish_for_anonymous, a.anonymous)
        || (subscribed && allowed(o.allow_publish_for_subscriber, o.allow_publish_for_anonymous, a.anonymous))
}

/// A subscription without a token: user-limited channels admit the listed
/// users only; otherwise `allow_subscribe_for_client` (anonymous with
/// `allow_subscribe_for_anonymous`). Private channels always need a token.
pub fn may_subscribe_without_token(
    rules: &ChannelRules,
    channel: &str,
    ns: &NamespaceRules,
    user: &str,
    a: Actor,
) -> bool {
    if rules.is_private(channel) {
        return false;
    }
    match rules.user_allowed(channel, ns, user) {
        Some(ok) => ok,
        None => {
            a.insecure
                || allowed(ns.options.allow_subscribe_for_client, ns.options.allow_subscribe_for_anonymous, a.anonymous)
        }
    }
}

/// Where an RPC goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcRoute<'a> {
    /// The built-in `rpc.ping` method: an empty result.
    Ping,
    /// The RPC proxy of this name ("" / "default": `rpc.proxy`).
    Proxy(&'a str),
    /// Refused with this error.
    Refuse(ClientError),
}

/// Centrifugo's RPC routing. Without any handler (no ping, no namespace
/// with `proxy_enabled`) every method is 108 not available. With one, the
/// method's namespace (text before `rpc.namespace_boundary`, else
/// `rpc.without_namespace`) decides: unknown namespace → 104, proxy off →
/// 104 method not found (so with only `rpc.ping` on, any other method is
/// 104, as in Centrifugo).
pub fn rpc_route<'a>(rpc: &'a Rpc, method: &str) -> RpcRoute<'a> {
    let any_proxy = rpc.without_namespace.proxy_enabled || rpc.namespaces.iter().any(|n| n.options.proxy_enabled);
    if !rpc.ping.enabled && !any_proxy {
        return RpcRoute::Refuse(ClientError::NOT_AVAILABLE);
    }
    if rpc.ping.enabled && method == rpc.ping.method {
        return RpcRoute::Ping;
    }
    let opts = match method.split_once(rpc.namespace_boundary.as_str()) {
        Some((ns, _)) => match rpc.namespaces.iter().find(|n| n.name == ns) {
            Some(n) => &n.options,
            None => return RpcRoute::Refuse(ClientError::METHOD_NOT_FOUND),
        },
        None => &rpc.without_namespace,
    };
    if opts.proxy_enabled { RpcRoute::Proxy(&opts.proxy_name) } else { RpcRoute::Refuse(ClientError::METHOD_NOT_FOUND) }
}

/// What was asked for a subscription. Server-side subscriptions ask for
/// nothing beyond an optional recovery position: their options come from
/// the namespace and the overrides only.
#[derive(Debug, Clone, Default)]
pub struct SubscribeAsk {
    /// Made by the server (connect `subs`, personal channel, API).
    pub server_side: bool,
    /// Client asked for recovery.
    pub recoverable: bool,
    /// Client asked for positioning.
    pub positioned: bool,
    /// Client asked for join/leave pushes.
    pub join_leave: bool,
    /// Recover from this position (only used when the plan is recoverable).
    pub recover: Option<StreamPosition>,
    /// Fail the subscribe (112) instead of subscribing unrecovered.
    pub reject_unrecovered: bool,
    /// Client asked for fossil deltas.
    pub delta_fossil: bool,
    /// Tags filter.
    pub tags_filter: Option<FilterNode>,
}

/// Options of one subscription, decided before anything is registered.
#[derive(Debug, Clone, Default)]
pub struct SubPlan {
    /// Server-side subscription (its failures disconnect, not reply).
    pub server_side: bool,
    /// Keeps a presence entry.
    pub presence: bool,
    /// Publishes join/leave events.
    pub join_leave: bool,
    /// Receives join/leave pushes.
    pub push_join_leave: bool,
    /// Tracks its stream position.
    pub positioned: bool,
    /// May recover.
    pub recoverable: bool,
    /// chan_info.
    pub chan_info: Bytes,
    /// Data for the subscribe result.
    pub data: Bytes,
    /// Expiry (unix seconds).
    pub expire_at: Option<i64>,
    /// Recovering from this position.
    pub recover: Option<StreamPosition>,
    /// Refuse (112) rather than subscribe unrecovered.
    pub reject_unrecovered: bool,
    /// Fossil delta negotiated.
    pub delta: bool,
    /// Tags filter.
    pub tags_filter: Option<FilterNode>,
    /// Recovery in cache mode (only the latest publication matters).
    pub cache_mode: bool,
    /// Cache mode: the latest publication comes with the result even without recovery.
    pub auto_cache: bool,
    /// The expiry is extended by the sub_refresh proxy, not by the client.
    pub proxy_refresh: bool,
}

/// Token- or API-given parts of a subscription.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// chan_info.
    pub chan_info: Bytes,
    /// Data for the subscribe result.
    pub data: Bytes,
    /// Expiry (unix seconds).
    pub expire_at: Option<i64>,
    /// Option overrides.
    pub overrides: SubOverride,
}

/// The one subscription plan, for client and server-side subscriptions.
pub fn plan(o: &ChannelOptions, a: Actor, grant: Grant, ask: SubscribeAsk) -> SubPlan {
    let ov = &grant.overrides;
    let history = o.history_enabled();
    // Recovery and positioning read the stream: a client asking for them
    // needs the namespace to allow it or history access as a subscriber.
    let hist_access = may_read_history(o, a, true);
    let recoverable = history
        && (ov.force_recovery.unwrap_or(o.force_recovery) || (ask.recoverable && (o.allow_recovery || hist_access)));
    let positioned = history
        && (recoverable
            || ov.force_positioning.unwrap_or(o.force_positioning)
            || (ask.positioned && (o.allow_positioning || hist_access)));
    let join_leave = ov.join_leave.unwrap_or(o.join_leave);
    let push_join_leave = ov.force_push_join_leave.unwrap_or(o.force_push_join_leave)
        || (ask.join_leave && join_leave && may_read_presence(o, a, true));
    let cache_mode = o.force_recovery_mode == RecoveryMode::Cache;
    SubPlan {
        server_side: ask.server_side,
        presence: ov.presence.unwrap_or(o.presence),
        join_leave,
        push_join_leave,
        positioned,
        recoverable,
        chan_info: grant.chan_info,
        data: grant.data,
        expire_at: grant.expire_at,
        recover: ask.recover.filter(|_| recoverable),
        reject_unrecovered: ask.reject_unrecovered,
        delta: ask.delta_fossil && o.allowed_delta_types.contains(&DeltaType::Fossil),
        tags_filter: ask.tags_filter,
        cache_mode,
        auto_cache: o.auto_cache_recover && cache_mode && recoverable,
        proxy_refresh: o.sub_refresh_proxy_enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Dur, Namespace};

    const USER: Actor = Actor { anonymous: false, insecure: false };
    const ANON: Actor = Actor { anonymous: true, insecure: false };
    const INSECURE_ANON: Actor = Actor { anonymous: true, insecure: true };

    fn opts(f: impl FnOnce(&mut ChannelOptions)) -> ChannelOptions {
        let mut o = ChannelOptions::default();
        f(&mut o);
        o
    }

    #[test]
    fn history_presence_publish_permission_table() {
        type Rule = fn(&ChannelOptions, Actor, bool) -> bool;
        type Setter = fn(&mut ChannelOptions, bool, bool, bool);
        let rules: [(&str, Rule, Setter); 3] = [
            ("history", may_read_history, |o, c, s, a| {
                (o.allow_history_for_client, o.allow_history_for_subscriber, o.allow_history_for_anonymous) = (c, s, a)
            }),
            ("presence", may_read_presence, |o, c, s, a| {
                (o.allow_presence_for_client, o.allow_presence_for_subscriber, o.allow_presence_for_anonymous) =
                    (c, s, a)
            }),
            ("publish", may_publish, |o, c, s, a| {
                (o.allow_publish_for_client, o.allow_publish_for_subscriber, o.allow_publish_for_anonymous) = (c, s, a)
            }),
        ];
        // (for_client, for_subscriber, for_anonymous, actor, subscribed) -> allowed
        let table: &[(bool, bool, bool, Actor, bool, bool)] = &[
            (false, false, false, USER, true, false),
            (true, false, false, USER, false, true),
            (true, false, false, ANON, false, false),
            (true, false, true, ANON, false, true),
            (false, true, false, USER, false, false),
            (false, true, false, USER, true, true),
            (false, true, false, ANON, true, false),
            (false, true, true, ANON, true, true),
            (false, false, false, INSECURE_ANON, false, true),
        ];
        for (name, rule, set) in rules {
            for (i, &(c, s, a, actor, subscribed, want)) in table.iter().enumerate() {
                let o = opts(|o| set(o, c, s, a));
                assert_eq!(rule(&o, actor, subscribed), want, "{name} row {i}");
            }
        }
    }

    fn rules() -> ChannelRules {
        let mut c = Config::default();
        c.channel.without_namespace.allow_subscribe_for_client = true;
        let mut dm = Namespace { name: "dm".into(), ..Default::default() };
        dm.options.allow_user_limited_channels = true;
        c.channel.namespaces.push(dm);
        c.channel.namespaces.push(Namespace { name: "closed".into(), ..Default::default() });
        ChannelRules::new(&c)
    }

    #[test]
    fn subscribe_without_token_table() {
        let r = rules();
        let rows: &[(&str, &str, Actor, bool)] = &[
            ("news", "u", USER, true),
            ("news", "", ANON, false),
            ("$news", "u", USER, false),
            ("$news", "", INSECURE_ANON, false),
            ("dm:x#1,2", "2", USER, true),
            ("dm:x#1,2", "3", USER, false),
            ("dm:x#1,2", "", INSECURE_ANON, false),
            ("closed:x", "u", USER, false),
            ("closed:x", "", INSECURE_ANON, true),
        ];
        for (i, &(ch, user, a, want)) in rows.iter().enumerate() {
            let ns = r.namespace(ch).unwrap().clone();
            assert_eq!(may_subscribe_without_token(&r, ch, &ns, user, a), want, "row {i}: {ch} as {user:?}");
        }
    }

    fn history_opts(f: impl FnOnce(&mut ChannelOptions)) -> ChannelOptions {
        opts(|o| {
            o.history_size = 10;
            o.history_ttl = Dur::secs(60);
            f(o)
        })
    }

    #[test]
    fn plan_table() {
        let pos = || Some(StreamPosition { offset: 3, epoch: "e".into() });
        let client = |f: fn(&mut SubscribeAsk)| {
            let mut a = SubscribeAsk::default();
            f(&mut a);
            a
        };
        let server = SubscribeAsk { server_side: true, recover: pos(), ..Default::default() };
        // (options, ask) -> (recoverable, positioned, recover kept, auto_cache)
        type Row = (ChannelOptions, SubscribeAsk, (bool, bool, bool, bool));
        let rows: Vec<Row> = vec![
            // No history: nothing stateful whatever is asked.
            (opts(|o| o.force_recovery = true), client(|a| a.recoverable = true), (false, false, false, false)),
            // Asked, but neither allow_recovery nor history access.
            (history_opts(|_| {}), client(|a| a.recoverable = true), (false, false, false, false)),
            (
                history_opts(|o| o.allow_recovery = true),
                SubscribeAsk { recoverable: true, recover: pos(), ..Default::default() },
                (true, true, true, false),
            ),
            (
                history_opts(|o| o.allow_history_for_client = true),
                client(|a| a.positioned = true),
                (false, true, false, false),
            ),
            (history_opts(|o| o.force_positioning = true), server.clone(), (false, true, false, false)),
            (history_opts(|o| o.force_recovery = true), server.clone(), (true, true, true, false)),
            // auto_cache only for recoverable subscriptions, client- or server-side alike.
            (
                history_opts(|o| {
                    o.force_recovery_mode = RecoveryMode::Cache;
                    o.auto_cache_recover = true;
                    o.force_positioning = true;
                }),
                server.clone(),
                (false, true, false, false),
            ),
            (
                history_opts(|o| {
                    o.force_recovery_mode = RecoveryMode::Cache;
                    o.auto_cache_recover = true;
                    o.force_positioning = true;
                }),
                client(|a| a.positioned = true),
                (false, true, false, false),
            ),
            (
                history_opts(|o| {
                    o.force_recovery_mode = RecoveryMode::Cache;
                    o.auto_cache_recover = true;
                    o.force_recovery = true;
                }),
                server.clone(),
                (true, true, true, true),
            ),
        ];
        for (i, (o, ask, want)) in rows.into_iter().enumerate() {
            let p = plan(&o, USER, Grant::default(), ask);
            assert_eq!((p.recoverable, p.positioned, p.recover.is_some(), p.auto_cache), want, "row {i}");
        }
    }

    #[test]
    fn overrides_win_over_namespace_options() {
        let o = history_opts(|o| {
            o.presence = true;
            o.join_leave = true;
        });
        let grant = Grant {
            overrides: SubOverride {
                presence: Some(false),
                join_leave: Some(false),
                force_recovery: Some(true),
                force_push_join_leave: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan(&o, ANON, grant, SubscribeAsk::default());
        assert!(!p.presence && !p.join_leave && p.push_join_leave && p.recoverable && p.positioned);
    }

    #[test]
    fn rpc_route_table() {
        use crate::config::{RpcNamespace, RpcOptions};
        let cfg = |ping: bool, root_proxy: bool, ns_proxy: bool| {
            let mut r = Rpc::default();
            r.ping.enabled = ping;
            r.without_namespace.proxy_enabled = root_proxy;
            r.namespaces.push(RpcNamespace {
                name: "calc".into(),
                options: RpcOptions { proxy_enabled: ns_proxy, proxy_name: "math".into() },
            });
            r.namespaces.push(RpcNamespace { name: "off".into(), options: RpcOptions::default() });
            r
        };
        let nf = RpcRoute::Refuse(ClientError::METHOD_NOT_FOUND);
        let na = RpcRoute::Refuse(ClientError::NOT_AVAILABLE);
        // (ping, without_namespace proxy, calc proxy, method) -> route
        let rows: Vec<(bool, bool, bool, &str, RpcRoute)> = vec![
            (false, false, false, "ping", na.clone()),
            (false, false, false, "x", na.clone()),
            (false, false, false, "nope:x", na.clone()),
            (true, false, false, "ping", RpcRoute::Ping),
            (true, false, false, "x", nf.clone()),
            (true, false, false, "nope:x", nf.clone()),
            (true, false, false, "off:x", nf.clone()),
            (false, true, false, "x", RpcRoute::Proxy("")),
            (false, true, false, "ping", RpcRoute::Proxy("")),
            (false, true, false, "nope:x", nf.clone()),
            (false, false, true, "calc:add", RpcRoute::Proxy("math")),
            (false, false, true, "x", nf.clone()),
            (true, false, true, "off:x", nf.clone()),
        ];
        for (i, (ping, root, ns, method, want)) in rows.into_iter().enumerate() {
            let r = cfg(ping, root, ns);
            assert_eq!(rpc_route(&r, method), want, "row {i}: {method}");
        }
    }

    #[test]
    fn join_leave_pushes_need_presence_access_and_delta_an_allowed_type() {
        let o = opts(|o| {
            o.join_leave = true;
            o.allowed_delta_types = vec![DeltaType::Fossil];
        });
        let ask = || SubscribeAsk { join_leave: true, delta_fossil: true, ..Default::default() };
        let p = plan(&o, USER, Grant::default(), ask());
        assert!(!p.push_join_leave && p.delta);
        let o2 = opts(|o| {
            o.join_leave = true;
            o.allow_presence_for_subscriber = true;
        });
        let p = plan(&o2, USER, Grant::default(), ask());
        assert!(p.push_join_leave && !p.delta);
    }
}
