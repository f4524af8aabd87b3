//! Issue 10: JSON nested deeper than 128 levels in published data made the
//! server treat it as non-JSON and disconnect every JSON subscriber of the
//! channel with 3506. Valid JSON is valid at any depth: the subscribers stay
//! connected and receive it, and later publications too.

use std::time::Duration;

use gyre_abuse::{Event, Gyre, Ws, user_token};
use serde_json::json;
use tokio::time::Instant;

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Reads raw frames until one contains `needle`; panics on a close or timeout.
async fn wait_for(ws: &mut Ws, needle: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_text_within(left).await {
            Some(Ok(text)) if text.contains(needle) => return,
            Some(Ok(_)) => {}
            Some(Err(Event::Close(code, reason))) => panic!("{who} was disconnected: {code} {reason}"),
            Some(Err(other)) => panic!("{who}: unexpected {other:?}"),
            None => panic!("{who}: nothing containing {needle:.60} within 5 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_does_not_disconnect_json_subscribers() {
    let g = Gyre::start(json!({})).await;
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut ws = Ws::open(&g.ws_url()).await;
        let r = ws.call(1, json!({"connect": {"token": user_token(&format!("deep-{i}"))}})).await;
        assert!(r["connect"]["client"].is_string(), "{r}");
        let r = ws.call(2, json!({"subscribe": {"channel": "deep"}})).await;
        assert!(r.get("error").is_none(), "{r}");
        subs.push(ws);
    }
    let deep = nested(1000);
    let body = format!("{{\"channel\":\"deep\",\"data\":{{\"d\":{deep}}}}}");
    let (status, text) = gyre_abuse::http_post(
        g.addr,
        "/api/publish",
        &body,
        &[("X-API-Key", gyre_abuse::API_KEY), ("Content-Type", "application/json")],
    )
    .await
    .expect("API answered");
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("\"error\""), "valid JSON refused: {text}");
    // The same at the top level, as base64 bytes, and from a JSON client.
    let top = format!("{{\"channel\":\"deep\",\"data\":{}}}", nested(1001));
    let (status, text) = gyre_abuse::http_post(
        g.addr,
        "/api/publish",
        &top,
        &[("X-API-Key", gyre_abuse::API_KEY), ("Content-Type", "application/json")],
    )
    .await
    .expect("API answered");
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("\"error\""), "valid JSON refused: {text}");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(nested(1002));
    let (_, r) = g.api("publish", json!({"channel": "deep", "b64data": b64})).await;
    assert!(r.get("error").is_none(), "{r}");
    let mut publisher = Ws::open(&g.ws_url()).await;
    let r = publisher.call(1, json!({"connect": {"token": user_token("deep-publisher")}})).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    let r = publisher.call(3, json!({"subscribe": {"channel": "deep"}})).await;
    assert!(r.get("error").is_none(), "{r}");
    let deep_cmd = format!("{{\"id\":2,\"publish\":{{\"channel\":\"deep\",\"data\":{}}}}}", nested(1003));
    publisher.send_text(&deep_cmd).await;
    wait_for(&mut publisher, "{\"id\":2,\"publish\":{}}", "publisher").await;
    let (_, r) = g.api("publish", json!({"channel": "deep", "data": {"after": true}})).await;
    assert!(r.get("error").is_none(), "{r}");
    for (i, ws) in subs.iter_mut().enumerate() {
        wait_for(ws, &deep, &format!("subscriber {i}")).await;
        for depth in [1001, 1002, 1003] {
            wait_for(ws, &nested(depth), &format!("subscriber {i}, depth {depth}")).await;
        }
        wait_for(ws, "\"after\":true", &format!("subscriber {i}")).await;
    }
}
