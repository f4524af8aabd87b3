//! Recovery merge under concurrent publishing: whatever the interleaving of a
//! publisher and a recovering subscriber, the subscriber sees every offset
//! after its position exactly once, in order, or is told it cannot (never a
//! silent gap). Drives the real Client state machine and memory engine, with
//! no transport in between.

use std::sync::Arc;

use bytes::Bytes;
use gyre_node::config::{Config, Namespace};
use gyre_node::node::{ApiPublish, Node};
use gyre_node::{Client, ClientShared, Encoding, TransportInfo};
use gyre_proto::ProtocolType;
use gyre_proto::codec::decode_replies;

fn node(history_size: usize) -> Arc<Node> {
    let mut c = Config::default();
    c.client.insecure = true;
    // Pings are covered by the transport tests; here they would only need answering.
    c.client.ping_interval = gyre_node::config::OptDur(None);
    let mut ns = Namespace { name: "hist".into(), ..Default::default() };
    ns.options.history_size = history_size;
    ns.options.history_ttl = gyre_node::config::Dur::secs(300);
    ns.options.force_recovery = true;
    ns.options.allowed_delta_types = vec![gyre_node::config::DeltaType::Fossil];
    c.channel.namespaces.push(ns);
    c.validate().unwrap();
    Node::new(c, "test".into()).unwrap()
}

fn client(node: &Arc<Node>) -> (Client, Arc<ClientShared>) {
    let info = TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false };
    let shared = ClientShared::new(Encoding::Json, info, 64 << 20);
    (Client::new(node.clone(), shared.clone()), shared)
}

/// Every publication offset the client was given, from replies and pushes, in order.
fn drain_offsets(shared: &ClientShared, out: &mut Vec<u64>, flags: &mut Vec<(bool, bool)>) {
    loop {
        let b = shared.take_batch(1024);
        if b.messages.is_empty() {
            break;
        }
        for m in b.messages {
            for r in decode_replies(ProtocolType::Json, &m).unwrap() {
                if let Some(s) = &r.subscribe {
                    flags.push((s.was_recovering, s.recovered));
                    out.extend(s.publications.iter().map(|p| p.offset));
                }
                if let Some(p) = r.push.as_ref().and_then(|p| p.r#pub.as_ref()) {
                    out.push(p.offset);
                }
            }
        }
    }
}

async fn publish(node: &Node, i: u64) {
    node.publish("hist:x", Bytes::from(format!("{{\"i\":{i}}}")), None, &ApiPublish::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_merges_concurrent_publications_without_gap_or_duplicate() {
    for round in 0..40u64 {
        let node = node(1000);
        // Position the client at offset k after some history exists.
        let k = 5 + round % 7;
        for i in 1..=k {
            publish(&node, i).await;
        }
        let (_, top) = node
            .history("hist:x", gyre_node::engine::HistoryQuery { limit: Some(0), ..Default::default() })
            .await
            .unwrap();
        // A publisher races the subscribe.
        let pubn = node.clone();
        let total = 60u64;
        let publisher = tokio::spawn(async move {
            for i in k + 1..=total {
                publish(&pubn, i).await;
                if i % (1 + round % 5) == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let (mut c, shared) = client(&node);
        c.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
        let sub = format!(
            r#"{{"id":2,"subscribe":{{"channel":"hist:x","recover":true,"offset":{k},"epoch":"{}"}}}}"#,
            top.epoch
        );
        c.handle_data(sub.as_bytes()).await.unwrap();
        publisher.await.unwrap();
        node.fanout_settled().await;
        c.handle_controls().await.unwrap();
        let mut offsets = Vec::new();
        let mut flags = Vec::new();
        drain_offsets(&shared, &mut offsets, &mut flags);
        assert_eq!(flags, vec![(true, true)], "round {round}");
        let want: Vec<u64> = (k + 1..=total).collect();
        assert_eq!(offsets, want, "round {round}: no gap, no duplicate, in order");
        c.close().await;
    }
}

#[tokio::test]
async fn recovery_fails_loudly_when_history_lost_the_offsets() {
    // History keeps only 3 publications: recovering from offset 2 of 10 cannot be complete.
    let node = node(3);
    for i in 1..=10 {
        publish(&node, i).await;
    }
    let (_, top) =
        node.history("hist:x", gyre_node::engine::HistoryQuery { limit: Some(0), ..Default::default() }).await.unwrap();
    let (mut c, shared) = client(&node);
    c.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    let sub =
        format!(r#"{{"id":2,"subscribe":{{"channel":"hist:x","recover":true,"offset":2,"epoch":"{}"}}}}"#, top.epoch);
    c.handle_data(sub.as_bytes()).await.unwrap();
    let (mut offsets, mut flags) = (Vec::new(), Vec::new());
    drain_offsets(&shared, &mut offsets, &mut flags);
    assert_eq!(flags, vec![(true, false)]);
    assert!(offsets.is_empty());
    // Wrong epoch: also not recovered; with flag 2 it is error 112 instead.
    let (mut c2, shared2) = client(&node);
    c2.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    c2.handle_data(br#"{"id":2,"subscribe":{"channel":"hist:x","recover":true,"offset":9,"epoch":"other","flag":2}}"#)
        .await
        .unwrap();
    let b = shared2.take_batch(16);
    let text: Vec<String> = b.messages.iter().map(|m| String::from_utf8_lossy(m).to_string()).collect();
    assert!(text.iter().any(|t| t.contains(r#""id":2,"error":{"code":112"#)), "{text:?}");
    // An offset from the future is not recoverable either.
    let (mut c3, shared3) = client(&node);
    c3.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    let sub =
        format!(r#"{{"id":2,"subscribe":{{"channel":"hist:x","recover":true,"offset":99,"epoch":"{}"}}}}"#, top.epoch);
    c3.handle_data(sub.as_bytes()).await.unwrap();
    let (mut offsets, mut flags) = (Vec::new(), Vec::new());
    drain_offsets(&shared3, &mut offsets, &mut flags);
    assert_eq!(flags, vec![(true, false)]);
}

#[tokio::test]
async fn delta_subscribers_get_full_then_patches_that_apply() {
    let node = node(100);
    let (mut c, shared) = client(&node);
    c.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    c.handle_data(br#"{"id":2,"subscribe":{"channel":"hist:x","delta":"fossil"}}"#).await.unwrap();
    let _ = shared.take_batch(16);
    let doc = |n: u32| format!(r#"{{"counter":{n},"padding":"{}"}}"#, "x".repeat(300));
    let mut prev: Option<Vec<u8>> = None;
    for n in 0..5 {
        let opts = ApiPublish { delta: true, ..Default::default() };
        node.publish("hist:x", Bytes::from(doc(n)), None, &opts).await.unwrap();
        node.fanout_settled().await;
        let b = shared.take_batch(16);
        let line = String::from_utf8(b.messages[0].to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let p = &v["push"]["pub"];
        // Data of a delta subscription is always a JSON string.
        let data = p["data"].as_str().expect("string data").as_bytes().to_vec();
        let full = if p["delta"] == true {
            assert!(n > 0, "the first publication after subscribe is full");
            assert!(data.len() < doc(n).len());
            gyre_node::delta::apply(prev.as_ref().unwrap(), &data).unwrap()
        } else {
            assert_eq!(n, 0, "later publications are patches");
            data
        };
        assert_eq!(full, doc(n).into_bytes());
        prev = Some(full);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_channels_fan_out_on_the_fanout_thread_in_order() {
    // 600 subscribers: over the inline threshold, so publications reach the hub through
    // the fan-out thread while small-channel publications on the same node go inline.
    // Two publishers race; every subscriber must see every offset once, in order.
    let node = node(1000);
    let mut clients = Vec::new();
    for _ in 0..600 {
        let (mut c, shared) = client(&node);
        c.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
        c.handle_data(br#"{"id":2,"subscribe":{"channel":"hist:x"}}"#).await.unwrap();
        let _ = shared.take_batch(16);
        clients.push((c, shared));
    }
    let (mut small, small_shared) = client(&node);
    small.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    small.handle_data(br#"{"id":2,"subscribe":{"channel":"hist:small"}}"#).await.unwrap();
    let _ = small_shared.take_batch(16);
    let tasks: Vec<_> = ["hist:x", "hist:small"]
        .into_iter()
        .map(|ch| {
            let n = node.clone();
            tokio::spawn(async move {
                for i in 1..=100 {
                    n.publish(ch, Bytes::from(format!("{{\"i\":{i}}}")), None, &ApiPublish::default()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    node.fanout_settled().await;
    let want: Vec<u64> = (1..=100).collect();
    for (i, (_, shared)) in clients.iter().enumerate() {
        let (mut offsets, mut flags) = (Vec::new(), Vec::new());
        drain_offsets(shared, &mut offsets, &mut flags);
        assert_eq!(offsets, want, "subscriber {i} of the large channel");
    }
    let (mut offsets, mut flags) = (Vec::new(), Vec::new());
    drain_offsets(&small_shared, &mut offsets, &mut flags);
    assert_eq!(offsets, want, "the small channel's subscriber");
    for (mut c, _) in clients {
        c.close().await;
    }
}
