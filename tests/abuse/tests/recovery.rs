//! Issue 10: recovery with an empty client epoch must not report
//! `recovered: true` (the client cannot prove it is on the current stream).
//! Also: history and presence commands validate the channel name (107) like
//! subscribe does, before any engine sees it.

use gyre_abuse::*;
use serde_json::json;

fn config() -> serde_json::Value {
    json!({"channel": {"namespaces": [{
        "name": "hist",
        "history_size": 10, "history_ttl": "60s", "force_recovery": true,
        "presence": true,
        "allow_subscribe_for_client": true, "allow_history_for_client": true,
        "allow_presence_for_client": true
    }]}})
}

#[tokio::test]
async fn empty_epoch_recovery_is_not_recovered() {
    let g = Gyre::start(config()).await;
    for i in 0..2 {
        let (status, body) = g.api("publish", json!({"channel": "hist:x", "data": {"i": i}})).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut ws = Ws::open(&g.ws_url()).await;
    ws.call(1, json!({"connect": {"token": user_token("u")}})).await;
    let r = ws.call(2, json!({"subscribe": {"channel": "hist:x", "recover": true, "offset": 2, "epoch": ""}})).await;
    let s = &r["subscribe"];
    assert_eq!(s["was_recovering"], true, "{r}");
    assert!(s["recovered"].is_null() || s["recovered"] == false, "recovered with no epoch: {r}");
    assert!(s["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
}

#[tokio::test]
async fn history_and_presence_validate_the_channel_name() {
    let g = Gyre::start(config()).await;
    let mut ws = Ws::open(&g.ws_url()).await;
    ws.call(1, json!({"connect": {"token": user_token("u")}})).await;
    let long = format!("hist:{}", "x".repeat(4096));
    let cmds = [
        json!({"history": {"channel": long, "limit": 1}}),
        json!({"presence": {"channel": long}}),
        json!({"presence_stats": {"channel": long}}),
    ];
    for (i, c) in cmds.into_iter().enumerate() {
        let op = c.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
        let r = ws.call(10 + i as u32, c).await;
        assert_eq!(
            r["error"]["code"],
            107,
            "{op}: answered {}",
            if r["error"].is_null() { "without error" } else { "another error" }
        );
    }
    let (status, body) = g.api("history", json!({"channel": long})).await;
    assert!(status == 200 && body["error"]["code"] == 107, "API history: {status} {}", body["error"]);
}
