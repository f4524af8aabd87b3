//! Issue 10: bytes that are not UTF-8 (stored through the Protobuf side or
//! the API's `b64data`) blanked whole JSON WebSocket frames: the frame was
//! converted with `String::from_utf8(..).unwrap_or_default()`, so every reply
//! and push batched with the bad message vanished and the client saw an empty
//! text frame.
//!
//! The rule (client-protocol.md §4: a JSON client can only carry JSON; a
//! publication that is not JSON ends JSON subscribers with 3506): the message
//! that cannot be text is left out, everything batched with it is delivered,
//! and the connection then ends with 3506 "inappropriate protocol".

use std::time::Duration;

use gyre_abuse::{Event, Gyre, Ws, user_token};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_does_not_blank_the_rest_of_a_json_frame() {
    let g = Gyre::start(json!({"channel": {"without_namespace": {
        "history_size": 10, "history_ttl": "300s", "allow_history_for_client": true
    }}}))
    .await;
    // 0xff 0xfe: not UTF-8 (so not JSON either), stored in history while nobody listens.
    let (_, r) = g.api("publish", json!({"channel": "bin", "b64data": "//4="})).await;
    assert!(r.get("error").is_none(), "{r}");

    let mut ws = Ws::open(&g.ws_url()).await;
    let r = ws.call(1, json!({"connect": {"token": user_token("utf8-user")}})).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    let r = ws.call(2, json!({"subscribe": {"channel": "news"}})).await;
    assert!(r.get("error").is_none(), "{r}");

    // One client frame: a publish to a channel it is subscribed to (reply +
    // push) and a history read that returns the binary publication. Their
    // answers are queued together and leave in one frame.
    let frame = [
        json!({"id": 3, "publish": {"channel": "news", "data": {"x": 1}}}).to_string(),
        json!({"id": 4, "history": {"channel": "bin", "limit": 10}}).to_string(),
    ]
    .join("\n");
    ws.send_text(&frame).await;

    let mut got: Vec<Value> = Vec::new();
    let mut frames = Vec::new();
    let close = loop {
        match ws.next_within(Duration::from_secs(5)).await {
            Some(Event::Json(msgs)) => {
                frames.push(msgs.len());
                got.extend(msgs);
            }
            Some(Event::Close(code, reason)) => break (code, reason),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("neither the messages nor a close within 5 s; got {got:?} in frames {frames:?}"),
        }
    };
    assert!(got.iter().any(|m| m["id"] == 3 && m.get("publish").is_some()), "publish reply lost: {got:?}");
    assert!(
        got.iter().any(|m| m["push"]["channel"] == "news" && m["push"]["pub"]["data"] == json!({"x": 1})),
        "publication push lost: {got:?}"
    );
    assert!(!frames.contains(&0), "an empty frame was sent: {frames:?}");
    assert_eq!(close.0, 3506, "expected 3506 inappropriate protocol, got {close:?}");

    // Other clients are untouched.
    let mut other = Ws::open(&g.ws_url()).await;
    let r = other.call(1, json!({"connect": {"token": user_token("utf8-other")}})).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
}
