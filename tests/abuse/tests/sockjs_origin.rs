//! Issue 10 (SockJS): any Origin was reflected with credentials, requests to
//! an existing session skipped the origin check, and the `JSESSIONID` cookie
//! had no `HttpOnly`/`SameSite`/`Secure`. SockJS now honours
//! `client.allowed_origins` like every other transport, on every request of a
//! session, and the cookie carries `sockjs.cookie_*`.

use std::net::SocketAddr;

use gyre_abuse::Gyre;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALLOWED: &str = "http://allowed.example";
const EVIL: &str = "http://evil.example";

/// A raw HTTP/1.1 request; status, lower-cased head, body (first 64 KiB, not de-chunked).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    origin: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n",
        body.len()
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(gyre_abuse::WAIT, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_honours_allowed_origins_on_every_request() {
    let g = Gyre::start(json!({"sockjs": {"enabled": true, "disconnect_delay": "2s"}})).await;
    let base = "/connection/sockjs/000/sess-origin";

    // A page of another origin cannot open a session, and gets no CORS grant.
    let (status, head, _) = request(g.addr, "POST", "/connection/sockjs/000/evil1/xhr", Some(EVIL), "").await;
    assert_eq!(status, 403, "session opened for a disallowed origin:\n{head}");
    let (_, head, _) = request(g.addr, "OPTIONS", &format!("{base}/xhr_send"), Some(EVIL), "").await;
    assert_eq!(header(&head, "access-control-allow-origin"), None, "CORS granted to {EVIL}:\n{head}");
    let (_, head, _) = request(g.addr, "GET", "/connection/sockjs/info", Some(EVIL), "").await;
    assert_eq!(header(&head, "access-control-allow-origin"), None, "CORS granted to {EVIL} on /info:\n{head}");

    // The allowed origin opens a session and is granted CORS with credentials.
    let (status, head, body) = request(g.addr, "POST", &format!("{base}/xhr"), Some(ALLOWED), "").await;
    assert_eq!(status, 200, "{head}");
    assert!(body.contains('o'), "no open frame: {body:?}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(header(&head, "access-control-allow-credentials"), Some("true"));

    // The existing session refuses the other origin for sends and polls.
    let send = serde_json::to_string(&vec![json!({"id": 1, "connect": {}}).to_string()]).unwrap();
    let (status, head, _) = request(g.addr, "POST", &format!("{base}/xhr_send"), Some(EVIL), &send).await;
    assert_eq!(status, 403, "send into an existing session from {EVIL} accepted:\n{head}");
    let (status, head, _) = request(g.addr, "POST", &format!("{base}/xhr"), Some(EVIL), "").await;
    assert_eq!(status, 403, "poll of an existing session from {EVIL} accepted:\n{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsessionid_cookie_carries_the_configured_attributes() {
    let g = Gyre::start(json!({"sockjs": {"enabled": true, "cookie_needed": true}})).await;
    let (status, head, _) = request(g.addr, "GET", "/connection/sockjs/info", Some(ALLOWED), "").await;
    assert_eq!(status, 200);
    let cookie = header(&head, "set-cookie").expect("JSESSIONID cookie").to_string();
    assert!(cookie.starts_with("jsessionid="), "{cookie}");
    assert!(cookie.contains("; httponly"), "default cookie is not HttpOnly: {cookie}");
    assert!(cookie.contains("; samesite=lax"), "default cookie is not SameSite=Lax: {cookie}");
    assert!(!cookie.contains("secure"), "Secure is off by default: {cookie}");
    drop(g);

    let g = Gyre::start(json!({"sockjs": {
        "enabled": true, "cookie_needed": true,
        "cookie_http_only": false, "cookie_same_site": "none", "cookie_secure": true
    }}))
    .await;
    let (_, head, _) = request(g.addr, "GET", "/connection/sockjs/info", Some(ALLOWED), "").await;
    let cookie = header(&head, "set-cookie").expect("JSESSIONID cookie").to_string();
    assert!(!cookie.contains("httponly"), "{cookie}");
    assert!(cookie.contains("; samesite=none") && cookie.contains("; secure"), "{cookie}");
}

#[tokio::test]
async fn same_site_none_without_secure_is_a_config_error() {
    let cfg = json!({"sockjs": {"cookie_same_site": "none"}});
    let dir = std::env::temp_dir().join(format!("gyre-abuse-samesite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out =
        std::process::Command::new(gyre_abuse::gyre_bin()).arg("checkconfig").arg("-c").arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "accepted: {text}");
    assert!(text.contains("sockjs.cookie_same_site"), "error does not name the key: {text}");
}

/// SockJS's protocol test services (`sockjs.test_services`) used to skip
/// admission: their sessions counted toward no limit. Now an echo session is
/// a connection like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_service_sessions_count_toward_the_connection_limit() {
    let g = Gyre::start(json!({"sockjs": {"test_services": true}, "client": {"connection_limit": 2}})).await;
    for i in 0..2 {
        let (status, head, _) = request(g.addr, "POST", &format!("/sockjs_test/echo/000/e{i}/xhr"), None, "").await;
        assert_eq!(status, 200, "session {i}:\n{head}");
    }
    let (status, head, _) = request(g.addr, "POST", "/sockjs_test/echo/000/e9/xhr", None, "").await;
    assert_eq!(status, 503, "a third echo session over connection_limit 2 was opened:\n{head}");
}
