//! Issue 10 row 4: once SIGTERM began the shutdown, a connect on a socket
//! opened before is answered with close 3001 at once (not accepted, and not
//! a dropped socket seconds later).

use std::time::Duration;

use tokio::time::Instant;

use gyre_abuse::*;
use serde_json::json;

#[tokio::test]
async fn connect_after_sigterm_gets_3001_promptly() {
    let g = Gyre::start(json!({"shutdown": {"timeout": "10s"}})).await;
    let mut ws = Ws::open(&g.ws_url()).await;
    // Another connected client keeps the drain going for a while.
    let mut other = Ws::open(&g.ws_url()).await;
    let r = other.call(1, json!({"connect": {"token": user_token("other")}})).await;
    assert!(r["connect"].is_object(), "{r}");
    g.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    ws.send(&json!({"id": 1, "connect": {"token": user_token("late")}})).await;
    let got = ws.next_within(Duration::from_secs(3)).await;
    match got {
        Some(Event::Close(code, reason)) => {
            assert_eq!(code, 3001, "closed with {code} {reason:?}");
        }
        other => panic!("expected close 3001 at once, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "3001 took {:?}", started.elapsed());
}
