//! Issue 10 row 3: a connect refused after token checks (a channel in an
//! unknown namespace, reply 102) must leave nothing in the hub, so it does not
//! count against `client.user_connection_limit`.

use gyre_abuse::*;
use serde_json::json;

#[tokio::test]
async fn a_refused_connect_does_not_count_against_the_user_limit() {
    let g = Gyre::start(json!({"client": {"user_connection_limit": 1}})).await;
    let bad = token(json!({"sub": "alice", "exp": now() + 3600, "channels": ["nosuchns:room"]}));
    let mut first = Ws::open(&g.ws_url()).await;
    let r = first.call(1, json!({"connect": {"token": bad}})).await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    // With the refused connection still open, and again after it closed.
    for round in 0..2 {
        let mut ok = Ws::open(&g.ws_url()).await;
        let r = ok.call(1, json!({"connect": {"token": user_token("alice")}})).await;
        assert!(r["connect"]["client"].is_string(), "round {round}: valid connect refused: {r}");
        drop(ok);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if round == 0 {
            drop(first);
            first = Ws::open(&g.ws_url()).await;
        }
    }
}
