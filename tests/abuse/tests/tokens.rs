//! Issue 10: `expire_at` far outside any date (±1e30) is an invalid token
//! (close 3500), never a saturated expiry or an overflow panic; the server
//! keeps serving.

use gyre_abuse::*;
use serde_json::json;

#[tokio::test]
async fn absurd_expire_at_is_an_invalid_token() {
    let g = Gyre::start(json!({})).await;
    for at in [-1e30, 1e30] {
        let mut ws = Ws::open(&g.ws_url()).await;
        let t = token(json!({"sub": "u", "expire_at": at}));
        ws.send(&json!({"id": 1, "connect": {"token": t}})).await;
        let (code, reason) = ws.close_code().await;
        assert_eq!(code, 3500, "expire_at {at}: closed {code} {reason:?}");
    }
    // Refreshing into the past ends the connection as expired (3005).
    let mut ws = Ws::open(&g.ws_url()).await;
    let t = token(json!({"sub": "u", "expire_at": now() + 60}));
    let r = ws.call(1, json!({"connect": {"token": t}})).await;
    assert_eq!(r["connect"]["expires"], true, "{r}");
    let past = token(json!({"sub": "u", "expire_at": now() - 10}));
    ws.send(&json!({"id": 2, "refresh": {"token": past}})).await;
    assert_eq!(ws.close_code().await.0, 3005);
    let (status, _) = http_get(g.addr, "/health").await.unwrap();
    assert_eq!(status, 200);
}
