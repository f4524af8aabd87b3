//! Issue 10 row 6: a subscription token whose `sub` is the number 42 names
//! user "42" (as a connection token's numeric `sub` does): an anonymous
//! connection presenting it is refused with 3500, not subscribed.

use gyre_abuse::*;
use serde_json::json;

#[tokio::test]
async fn numeric_sub_in_a_subscription_token_is_not_anonymous() {
    let g = Gyre::start(json!({"client": {"allow_anonymous_connect_without_token": true}})).await;
    let mut ws = Ws::open(&g.ws_url()).await;
    let r = ws.call(1, json!({"connect": {}})).await;
    assert!(r["connect"].is_object(), "{r}");
    let sub = token(json!({"sub": 42, "channel": "$p", "exp": now() + 3600}));
    ws.send(&json!({"id": 2, "subscribe": {"channel": "$p", "token": sub}})).await;
    loop {
        match ws.next().await {
            Event::Close(code, reason) => {
                assert_eq!(code, 3500, "{reason}");
                break;
            }
            Event::Json(msgs) => {
                for m in msgs {
                    assert!(m["id"] != 2 || m["error"].is_object(), "subscribed with user 42's token: {m}");
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
