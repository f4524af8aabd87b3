//! Issue 10: `api_calls`, `api_errors` and `connections_accepted` were
//! exported on `/metrics` but never incremented. Scrape before and after real
//! API calls and a real connect; the counters must move by exactly what was done.

use gyre_abuse::{Gyre, Ws, http_get, user_token};
use serde_json::json;

async fn scrape(g: &Gyre) -> String {
    let (status, body) = http_get(g.addr, "/metrics").await.expect("metrics answered");
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// The value of the sample named exactly `series` (name plus labels), 0 if absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().expect("numeric sample") as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_connection_counters_move() {
    let g = Gyre::start(json!({"prometheus": {"enabled": true}})).await;
    let before = scrape(&g).await;

    // Two good publishes, one failing (no channel), one good call in a batch,
    // one failing batch command.
    for _ in 0..2 {
        let (s, r) = g.api("publish", json!({"channel": "news", "data": {"n": 1}})).await;
        assert_eq!(s, 200, "{r}");
        assert!(r.get("error").is_none(), "{r}");
    }
    let (_, r) = g.api("publish", json!({"channel": "", "data": {}})).await;
    assert!(r.get("error").is_some(), "publish without a channel must fail: {r}");
    let (_, r) = g.api("batch", json!({"commands": [{"info": {}}, {"presence_stats": {"channel": ""}}]})).await;
    assert!(r["replies"][1].get("error").is_some(), "{r}");

    // One connection that connects, one that never does.
    let mut ok = Ws::open(&g.ws_url()).await;
    let reply = ok.call(1, json!({"connect": {"token": user_token("metrics-user")}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let _idle = Ws::open(&g.ws_url()).await;

    let after = scrape(&g).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(delta("centrifugo_api_command_count"), 5, "api calls:\n{after}");
    assert_eq!(delta("centrifugo_api_command_errors_count"), 2, "api errors:\n{after}");
    assert_eq!(delta("gyre_api_command_count{method=\"publish\",failed=\"false\"}"), 2, "{after}");
    assert_eq!(delta("gyre_api_command_count{method=\"publish\",failed=\"true\"}"), 1, "{after}");
    assert_eq!(delta("gyre_api_command_count{method=\"info\",failed=\"false\"}"), 1, "{after}");
    assert_eq!(delta("gyre_api_command_count{method=\"presence_stats\",failed=\"true\"}"), 1, "{after}");
    assert_eq!(delta("centrifugo_client_connections_accepted"), 1, "connections accepted:\n{after}");
}
