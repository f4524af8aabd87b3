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

/// Whether `line` holds exactly `depth` levels (`nested(depth)` is a substring
/// of every deeper one, so a bare `contains` would match the wrong message).
fn has_exact(line: &str, depth: usize) -> bool {
    let n = nested(depth);
    let b = line.as_bytes();
    line.match_indices(&n).any(|(i, _)| (i == 0 || b[i - 1] != b'[') && b.get(i + n.len()) != Some(&b']'))
}

/// Reads raw frames until a message containing `needle`; returns every message
/// (one per line: the server batches several pushes into one frame) up to and
/// including it. Panics on a close or timeout.
async fn lines_until(ws: &mut Ws, needle: &str, who: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_text_within(left).await {
            Some(Ok(text)) => {
                for l in text.split('\n').filter(|l| !l.is_empty()) {
                    lines.push(l.to_string());
                    if l.contains(needle) {
                        return lines;
                    }
                }
            }
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
    lines_until(&mut publisher, "{\"id\":2,\"publish\":{}}", "publisher").await;
    let (_, r) = g.api("publish", json!({"channel": "deep", "data": {"after": true}})).await;
    assert!(r.get("error").is_none(), "{r}");
    for (i, ws) in subs.iter_mut().enumerate() {
        let lines = lines_until(ws, "\"after\":true", &format!("subscriber {i}")).await;
        // Every deep publication arrived, once, in publish order, before the later one.
        let at: Vec<usize> = [1000, 1001, 1002, 1003]
            .iter()
            .map(|&d| {
                let hits: Vec<usize> = (0..lines.len()).filter(|&k| has_exact(&lines[k], d)).collect();
                assert_eq!(hits.len(), 1, "subscriber {i}: depth {d} seen {} times", hits.len());
                hits[0]
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "subscriber {i}: out of order {at:?}");
    }
}
