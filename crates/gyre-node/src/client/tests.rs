//! Client state machine tests that need the crate's internals (the hub).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Config, Dur, Namespace, OptDur};
use crate::node::{ApiPublish, Node};
use crate::{Client, ClientShared, Encoding, TransportInfo};

fn node(history_size: usize) -> Arc<Node> {
    let mut c = Config::default();
    c.client.insecure = true;
    c.client.ping_interval = OptDur(None);
    let mut ns = Namespace { name: "hist".into(), ..Default::default() };
    ns.options.history_size = history_size;
    ns.options.history_ttl = Dur::secs(300);
    ns.options.force_recovery = true;
    c.channel.namespaces.push(ns);
    c.validate().unwrap();
    Node::new(c, "test".into()).unwrap()
}

fn client(node: &Arc<Node>) -> (Client, Arc<ClientShared>) {
    let info = TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false };
    let shared = ClientShared::new(Encoding::Json, info, 64 << 20);
    (Client::new(node.clone(), shared.clone()), shared)
}

async fn publish(node: &Node, i: u64) {
    node.publish("hist:x", Bytes::from(format!("{{\"i\":{i}}}")), None, &ApiPublish::default()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn position_check_detects_a_stuck_subscriber() {
    let node = node(100);
    let (mut c, shared) = client(&node);
    c.handle_data(br#"{"id":1,"connect":{}}"#).await.unwrap();
    c.handle_data(br#"{"id":2,"subscribe":{"channel":"hist:x"}}"#).await.unwrap();
    let _ = shared.take_batch(16);
    // A publication that bypasses the hub (as a broker that dropped it would):
    // the client's position stays behind the stream top.
    node.hub.remove_sub("hist:x", &shared.id);
    publish(&node, 1).await;
    node.hub.add_sub("hist:x", &shared);
    // Within two position-check periods (40s each) the subscription ends with 2500.
    let start = tokio::time::Instant::now();
    let mut text = Vec::new();
    while start.elapsed() < Duration::from_secs(200) {
        tokio::time::sleep_until(c.next_deadline()).await;
        c.tick().await.unwrap();
        c.handle_controls().await.unwrap();
        let b = shared.take_batch(64);
        text.extend(b.messages.iter().map(|m| String::from_utf8_lossy(m).to_string()));
        if text.iter().any(|t| t.contains(r#""unsubscribe":{"code":2500"#)) {
            break;
        }
    }
    assert!(text.iter().any(|t| t.contains(r#""unsubscribe":{"code":2500"#)), "{text:?}");
    assert!(start.elapsed() <= Duration::from_secs(81), "detected within two checks: {:?}", start.elapsed());
}
