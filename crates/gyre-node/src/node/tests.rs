//! Node invariants driven through real clients on the memory engine, with a
//! broker wrapper that can hold or fail operations and records every channel
//! an engine was asked about.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gyre_proto::protocol::{ClientInfo, Publication};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::config::{Dur, Namespace, OptDur};
use crate::memory::{MemoryBroker, MemoryPresence};
use crate::shared::TransportInfo;
use crate::{Client, ClientShared, Encoding};

const SECRET: &str = "node-tests-secret";

/// MemoryBroker plus: a gate that holds `unsubscribe`, channels whose
/// `subscribe` fails, failing joins, the broker's interest per channel and
/// every channel any operation named.
struct Gated {
    inner: MemoryBroker,
    hold_unsubscribe: AtomicBool,
    gate: Semaphore,
    entered: Notify,
    fail_subscribe: Mutex<HashSet<String>>,
    fail_join: AtomicBool,
    interest: Mutex<HashMap<String, bool>>,
    seen: Mutex<HashSet<String>>,
    sweeps: std::sync::atomic::AtomicUsize,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            inner: MemoryBroker::new(),
            hold_unsubscribe: AtomicBool::new(false),
            gate: Semaphore::new(0),
            entered: Notify::new(),
            fail_subscribe: Mutex::default(),
            fail_join: AtomicBool::new(false),
            interest: Mutex::default(),
            seen: Mutex::default(),
            sweeps: Default::default(),
        }
    }
}

impl Gated {
    fn saw(&self, ch: &str) {
        self.seen.lock().insert(ch.to_string());
    }
    fn interested(&self, ch: &str) -> bool {
        self.interest.lock().get(ch).copied().unwrap_or(false)
    }
}

#[async_trait]
impl Broker for Gated {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        self.inner.register_handler(handler)
    }
    async fn subscribe(&self, ch: &str) -> Result<(), EngineError> {
        self.saw(ch);
        if self.fail_subscribe.lock().contains(ch) {
            return Err(EngineError::Unavailable("test: subscribe refused".into()));
        }
        self.interest.lock().insert(ch.to_string(), true);
        Ok(())
    }
    async fn unsubscribe(&self, ch: &str) -> Result<(), EngineError> {
        self.saw(ch);
        if self.hold_unsubscribe.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.gate.acquire().await.expect("gate open").forget();
        }
        self.interest.lock().insert(ch.to_string(), false);
        Ok(())
    }
    async fn publish(&self, ch: &str, p: Publication, o: &PublishOptions) -> Result<PublishResult, EngineError> {
        self.saw(ch);
        self.inner.publish(ch, p, o).await
    }
    async fn publish_join(&self, ch: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.saw(ch);
        if self.fail_join.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable("test: join refused".into()));
        }
        self.inner.publish_join(ch, info).await
    }
    async fn publish_leave(&self, ch: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.saw(ch);
        self.inner.publish_leave(ch, info).await
    }
    async fn history(&self, ch: &str, q: &HistoryQuery) -> Result<(Vec<Publication>, StreamPosition), EngineError> {
        self.saw(ch);
        self.inner.history(ch, q).await
    }
    async fn remove_history(&self, ch: &str) -> Result<(), EngineError> {
        self.saw(ch);
        self.inner.remove_history(ch).await
    }
    fn sweep(&self) {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        self.inner.sweep()
    }
}

/// MemoryPresence that records every channel it was asked about.
#[derive(Default)]
struct SeenPresence {
    inner: MemoryPresence,
    seen: Mutex<HashSet<String>>,
}

#[async_trait]
impl PresenceManager for SeenPresence {
    async fn presence(&self, ch: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        self.seen.lock().insert(ch.into());
        self.inner.presence(ch).await
    }
    async fn presence_stats(&self, ch: &str) -> Result<PresenceStats, EngineError> {
        self.seen.lock().insert(ch.into());
        self.inner.presence_stats(ch).await
    }
    async fn add_presence(&self, ch: &str, id: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.seen.lock().insert(ch.into());
        self.inner.add_presence(ch, id, info).await
    }
    async fn remove_presence(&self, ch: &str, id: &str, user: &str) -> Result<(), EngineError> {
        self.seen.lock().insert(ch.into());
        self.inner.remove_presence(ch, id, user).await
    }
}

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.client.token.hmac_secret_key = SECRET.into();
    c.client.ping_interval = OptDur(None);
    c.channel.without_namespace.allow_subscribe_for_client = true;
    c.channel.without_namespace.allow_subscribe_for_anonymous = true;
    let mut ns = Namespace { name: "all".into(), ..Default::default() };
    let o = &mut ns.options;
    o.history_size = 10;
    o.history_ttl = Dur::secs(60);
    o.presence = true;
    o.join_leave = true;
    (o.allow_subscribe_for_client, o.allow_publish_for_client, o.allow_history_for_client) = (true, true, true);
    o.allow_presence_for_client = true;
    c.channel.namespaces.push(ns);
    f(&mut c);
    c.validate().unwrap();
    c
}

fn node_with(c: Config) -> (Arc<Node>, Arc<Gated>, Arc<SeenPresence>) {
    let broker = Arc::new(Gated::default());
    let presence = Arc::new(SeenPresence::default());
    let node = Node::with_engines(c, "test".into(), broker.clone(), presence.clone()).unwrap();
    (node, broker, presence)
}

fn client(node: &Arc<Node>) -> (Client, Arc<ClientShared>) {
    let info = TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false };
    let shared = ClientShared::new(Encoding::Json, info, 1 << 20);
    (Client::new(node.clone(), shared.clone()), shared)
}

fn token(claims: Value) -> String {
    let claims: HashMap<String, Value> = serde_json::from_value(claims).unwrap();
    crate::auth::sign_hs256(SECRET, &claims)
}

/// Every JSON reply queued so far.
fn replies(shared: &ClientShared) -> Vec<Value> {
    let b = shared.take_batch(1 << 16);
    b.messages
        .iter()
        .flat_map(|m| {
            String::from_utf8_lossy(m)
                .split('\n')
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn connect(c: &mut Client, shared: &ClientShared, tok: &str) -> Value {
    let cmd = json!({"id": 1, "connect": {"token": tok}}).to_string();
    c.handle_data(cmd.as_bytes()).await.unwrap();
    replies(shared).into_iter().find(|r| r["id"] == 1).expect("connect reply")
}

async fn cmd(c: &mut Client, shared: &ClientShared, id: u32, body: Value) -> Value {
    let mut v = body;
    v["id"] = json!(id);
    c.handle_data(v.to_string().as_bytes()).await.unwrap();
    replies(shared).into_iter().find(|r| r["id"] == id).expect("reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_racing_the_last_unsubscribe_keeps_broker_interest() {
    let (node, broker, _) = node_with(config(|_| {}));
    let (mut a, sa) = client(&node);
    let (mut b, sb) = client(&node);
    connect(&mut a, &sa, &token(json!({"sub": "a"}))).await;
    connect(&mut b, &sb, &token(json!({"sub": "b"}))).await;
    assert!(cmd(&mut a, &sa, 2, json!({"subscribe": {"channel": "race"}})).await["error"].is_null());
    assert!(broker.interested("race"));
    // A's unsubscribe (the node's last subscriber) stops inside broker.unsubscribe...
    broker.hold_unsubscribe.store(true, Ordering::SeqCst);
    let entered = broker.entered.notified();
    let unsub = tokio::spawn(async move {
        a.handle_data(br#"{"id":3,"unsubscribe":{"channel":"race"}}"#).await.unwrap();
        a
    });
    entered.await;
    // ...while B subscribes, which must not finish before that unsubscribe did.
    let sb2 = sb.clone();
    let sub = tokio::spawn(async move {
        let r = cmd(&mut b, &sb2, 2, json!({"subscribe": {"channel": "race"}})).await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.hold_unsubscribe.store(false, Ordering::SeqCst);
    broker.gate.add_permits(1);
    let _a = unsub.await.unwrap();
    let (_b, r) = sub.await.unwrap();
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(node.hub().num_channel_subscribers("race"), 1);
    assert!(broker.interested("race"), "B is live in the hub but the broker lost interest in its channel");
}

#[tokio::test]
async fn failed_broker_subscribe_rolls_back_the_hub_entry() {
    let (node, broker, _) = node_with(config(|_| {}));
    broker.fail_subscribe.lock().insert("x".into());
    let (mut c, s) = client(&node);
    connect(&mut c, &s, &token(json!({"sub": "u"}))).await;
    let r = cmd(&mut c, &s, 2, json!({"subscribe": {"channel": "x"}})).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!((node.hub().num_channel_subscribers("x"), node.hub().num_subs()), (0, 0));
    assert!(node.counters.engine_errors.load(Ordering::Relaxed) >= 1);
    // Once the broker works again the same subscribe succeeds: nothing stale left.
    broker.fail_subscribe.lock().clear();
    let r = cmd(&mut c, &s, 3, json!({"subscribe": {"channel": "x"}})).await;
    assert!(r["error"].is_null(), "{r}");
    assert!(broker.interested("x"));
}

#[tokio::test]
async fn failed_connect_leaves_nothing_behind() {
    let (node, _, _) = node_with(config(|c| c.client.user_connection_limit = 1));
    let (mut c, s) = client(&node);
    let r = connect(&mut c, &s, &token(json!({"sub": "u", "channels": ["nope:x"]}))).await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    c.close().await;
    assert_eq!(node.hub().num_clients(), 0, "the failed connect is not in the hub");
    let (mut c2, s2) = client(&node);
    let r = connect(&mut c2, &s2, &token(json!({"sub": "u"}))).await;
    assert!(r["connect"].is_object(), "a valid connect of the same user is not over the limit: {r}");
}

#[tokio::test]
async fn connect_failing_on_a_later_subscription_undoes_the_earlier_ones() {
    let (node, broker, _) = node_with(config(|_| {}));
    broker.fail_subscribe.lock().insert("b".into());
    let (mut c, s) = client(&node);
    let r = connect(&mut c, &s, &token(json!({"sub": "u", "channels": ["a", "b"]}))).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!((node.hub().num_clients(), node.hub().num_subs()), (0, 0));
    assert!(!broker.interested("a"), "the subscription to a was undone");
    // The connection is unusable now, as after any failed connect.
    assert!(c.handle_data(br#"{"id":2,"subscribe":{"channel":"a"}}"#).await.is_err());
}

#[tokio::test]
async fn connects_after_shutdown_began_get_3001() {
    let (node, _, _) = node_with(config(|_| {}));
    let (mut old, so) = client(&node);
    connect(&mut old, &so, &token(json!({"sub": "u"}))).await;
    node.shutdown();
    assert_eq!(so.pending_disconnect(), Some(Disconnect::SHUTDOWN));
    let (mut c, _) = client(&node);
    let tok = token(json!({"sub": "u"}));
    let r = c.handle_data(json!({"id": 1, "connect": {"token": tok}}).to_string().as_bytes()).await;
    assert_eq!(r, Err(Disconnect::SHUTDOWN));
    assert_eq!(node.hub().user_clients("u").len(), 1, "only the connection from before shutdown");
}

#[tokio::test]
async fn numeric_sub_token_is_not_an_anonymous_one() {
    let (node, _, _) = node_with(config(|c| c.client.allow_anonymous_connect_without_token = true));
    let (mut c, s) = client(&node);
    c.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    assert!(replies(&s)[0]["connect"].is_object());
    let sub = token(json!({"sub": 42, "channel": "$p"}));
    let r = c.handle_data(json!({"id": 2, "subscribe": {"channel": "$p", "token": sub}}).to_string().as_bytes()).await;
    assert_eq!(r, Err(Disconnect::INVALID_TOKEN));
    assert_eq!(node.hub().num_subs(), 0);
}

#[tokio::test]
async fn token_expiry_out_of_range_and_refresh_into_the_past() {
    let (node, _, _) = node_with(config(|_| {}));
    for at in [-1e30, 1e30, f64::MAX] {
        let (mut c, _) = client(&node);
        let tok = token(json!({"sub": "u", "expire_at": at}));
        let r = c.handle_data(json!({"id": 1, "connect": {"token": tok}}).to_string().as_bytes()).await;
        assert_eq!(r, Err(Disconnect::INVALID_TOKEN), "expire_at {at}");
    }
    let now = unix_now();
    let (mut c, s) = client(&node);
    let r = connect(&mut c, &s, &token(json!({"sub": "u", "expire_at": now + 60}))).await;
    assert_eq!(r["connect"]["expires"], true);
    let past = token(json!({"sub": "u", "expire_at": now - 5}));
    let r = c.handle_data(json!({"id": 2, "refresh": {"token": past}}).to_string().as_bytes()).await;
    assert_eq!(r, Err(Disconnect::EXPIRED));
}

#[tokio::test]
async fn oversized_channel_names_never_reach_an_engine() {
    let (node, broker, presence) = node_with(config(|_| {}));
    let long = format!("all:{}", "x".repeat(4096));
    let (mut c, s) = client(&node);
    connect(&mut c, &s, &token(json!({"sub": "u"}))).await;
    let ops = [
        json!({"subscribe": {"channel": long}}),
        json!({"publish": {"channel": long, "data": {}}}),
        json!({"history": {"channel": long, "limit": 1}}),
        json!({"presence": {"channel": long}}),
        json!({"presence_stats": {"channel": long}}),
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let r = cmd(&mut c, &s, 10 + i as u32, op.clone()).await;
        assert_eq!(r["error"]["code"], 107, "{}: {r}", op.as_object().unwrap().keys().next().unwrap());
    }
    let t = Target { user: "u".into(), ..Default::default() };
    let bad = Err(ClientError::BAD_REQUEST);
    assert_eq!(node.publish(&long, Bytes::from_static(b"{}"), None, &ApiPublish::default()).await.map(|_| ()), bad);
    assert_eq!(node.history(&long, HistoryQuery::default()).await.map(|_| ()), bad);
    assert_eq!(node.history_remove(&long).await, bad);
    assert_eq!(node.presence(&long).await.map(|_| ()), bad);
    assert_eq!(node.presence_stats(&long).await.map(|_| ()), bad);
    let sub = ServerSubscribe { channel: long.clone(), ..Default::default() };
    assert_eq!(node.subscribe_user(&t, sub).await, bad);
    assert_eq!(node.unsubscribe_user(&t, &long).await, bad);
    assert!(!broker.seen.lock().contains(&long), "the broker was asked about the 4 KB channel");
    assert!(!presence.seen.lock().contains(&long), "presence was asked about the 4 KB channel");
}

#[tokio::test]
async fn engine_errors_of_join_are_counted_not_dropped() {
    let (node, broker, _) = node_with(config(|_| {}));
    broker.fail_join.store(true, Ordering::SeqCst);
    let (mut c, s) = client(&node);
    connect(&mut c, &s, &token(json!({"sub": "u"}))).await;
    let r = cmd(&mut c, &s, 2, json!({"subscribe": {"channel": "all:j"}})).await;
    assert!(r["error"].is_null(), "a failed join does not fail the subscription: {r}");
    assert_eq!(node.counters.engine_errors.load(Ordering::Relaxed), 1);
    assert!(crate::metrics::render(&node).contains("gyre_engine_errors_total 1"));
}

#[test]
fn a_full_fan_out_refuses_publishes_without_blocking_the_runtime_thread() {
    // One runtime thread, as the server API's runtime has. The whole test runs
    // on its own thread with a deadline: a fan-out that blocked the runtime
    // thread would hang it, which this turns into a failure.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (node, _, _) = node_with(config(|_| {}));
            let (mut c, s) = client(&node);
            connect(&mut c, &s, &token(json!({"sub": "u"}))).await;
            cmd(&mut c, &s, 2, json!({"subscribe": {"channel": "all:f"}})).await;
            node.fanout.set_budgets(3, 3);
            let stall = node.fanout.stall();
            // Something queued: from now on every event goes through the stalled thread.
            let (tx, _rx) = tokio::sync::oneshot::channel();
            node.fanout.send(crate::fanout::Job::Barrier(tx));
            let api = ApiPublish::default();
            for i in 0..3 {
                let r = node.publish("all:f", Bytes::from_static(b"{}"), None, &api).await;
                assert!(r.is_ok(), "publication {i} fits the budget: {r:?}");
            }
            // The 4th waits for room; meanwhile the runtime thread serves a timer.
            let started = tokio::time::Instant::now();
            let ticked = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                started.elapsed()
            });
            let r = node.publish("all:f", Bytes::from_static(b"{}"), None, &api).await;
            let waited = started.elapsed();
            assert_eq!(r.map(|_| ()), Err(ClientError::INTERNAL), "no room within the deadline: error 100");
            assert!(waited >= crate::fanout::ROOM_WAIT, "it waited for room first: {waited:?}");
            let tick = ticked.await.unwrap();
            assert!(tick < Duration::from_secs(1), "the timer fired on time while publish waited: {tick:?}");
            assert_eq!(node.counters.publish_refused_backpressure.load(Ordering::Relaxed), 1);
            // Nothing was stored for the refused publish.
            let (_, top) = node.history("all:f", HistoryQuery::default()).await.unwrap();
            assert_eq!(top.offset, 3, "the refused publication was not stored");
            drop(stall);
            node.fanout_settled().await;
            let mut got = 0;
            for r in replies(&s) {
                if r["push"]["pub"].is_object() {
                    got += 1;
                }
            }
            assert_eq!(got, 3, "the three accepted publications were delivered once room came back");
            // And publishing works again.
            assert!(node.publish("all:f", Bytes::from_static(b"{}"), None, &api).await.is_ok());
        });
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(Duration::from_secs(60)).expect("the runtime thread was blocked: test did not finish");
}

#[tokio::test(start_paused = true)]
async fn joins_without_room_are_dropped_and_counted() {
    let (node, _, _) = node_with(config(|_| {}));
    let (mut c, s) = client(&node);
    connect(&mut c, &s, &token(json!({"sub": "u"}))).await;
    node.fanout.set_budgets(10, 0);
    let stall = node.fanout.stall();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    node.fanout.send(crate::fanout::Job::Barrier(tx));
    let r = cmd(&mut c, &s, 2, json!({"subscribe": {"channel": "all:j"}})).await;
    assert!(r["error"].is_null(), "the subscription stands: {r}");
    assert_eq!(node.counters.join_leave_dropped.load(Ordering::Relaxed), 1);
    drop(stall);
}

#[tokio::test(start_paused = true)]
async fn the_maintenance_loop_sweeps_the_broker() {
    let (node, broker, _) = node_with(config(|_| {}));
    tokio::time::sleep(MAINTENANCE_INTERVAL * 3 + Duration::from_millis(10)).await;
    assert!(broker.sweeps.load(Ordering::SeqCst) >= 3);
    let weak = Arc::downgrade(&node);
    drop(node);
    tokio::time::sleep(MAINTENANCE_INTERVAL * 2).await;
    assert!(weak.upgrade().is_none(), "the loop holds no strong reference");
}
