//! The admin UI and API against the real `gyre` binary: which listener serves it,
//! login (right / wrong password), token checks (missing, forged, expired), the legacy
//! and per-method admin API, insecure mode, the auth rate limit and config errors.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "correct horse battery staple";
const SECRET: &str = "admin-token-secret";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind :0").local_addr().expect("addr").port()
}

/// A gyre child process, killed on drop.
struct Gyre {
    child: Child,
    dir: PathBuf,
    external: SocketAddr,
    internal: SocketAddr,
}

impl Drop for Gyre {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(admin: Value) -> (PathBuf, PathBuf, u16, u16) {
    let (port, internal) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("gyre-admin-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = json!({
        "http_server": {"address": "127.0.0.1", "port": port, "internal_port": internal},
        "health": {"enabled": true},
        "log": {"level": "info"},
        "http_api": {"key": "api-key"},
        "channel": {"without_namespace": {"presence": true}},
        "admin": admin,
    });
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_string()).expect("write config");
    (dir, path, port, internal)
}

/// Unique within this test process (the directory name also has the pid).
fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn start(admin: Value) -> Gyre {
    let (dir, path, port, internal) = write_config(admin);
    let child = Command::new(env!("CARGO_BIN_EXE_gyre"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gyre");
    let g = Gyre {
        child,
        dir,
        external: SocketAddr::from(([127, 0, 0, 1], port)),
        internal: SocketAddr::from(([127, 0, 0, 1], internal)),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _, _)) = request(g.internal, "GET", "/health", "", &[]).await {
            return g;
        }
        assert!(Instant::now() < deadline, "gyre did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One raw HTTP/1.1 request: (status, lower-cased head, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut out)).await.expect("response in time")?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

async fn req(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    request(addr, method, path, body, headers).await.expect("request")
}

async fn login(addr: SocketAddr, password: &str) -> (u16, String) {
    let body = format!("password={}", password.replace(' ', "+"));
    let (status, _, body) =
        req(addr, "POST", "/admin/auth", &body, &[("Content-Type", "application/x-www-form-urlencoded")]).await;
    (status, body)
}

async fn admin_api(addr: SocketAddr, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("token {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let (status, _, body) = req(addr, "POST", "/admin/api", body, &headers).await;
    (status, body)
}

#[tokio::test]
async fn login_token_and_admin_api_on_the_internal_port() {
    let g = start(json!({"enabled": true, "password": PASSWORD, "secret": SECRET})).await;

    // The UI is on the internal listener only (admin.external is false).
    let (status, head, page) = req(g.internal, "GET", "/", "", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Gyre admin"), "{page:.200}");
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert_eq!(req(g.external, "GET", "/", "", &[]).await.0, 404);
    assert_eq!(login(g.external, PASSWORD).await.0, 404);
    let (status, _, init) = req(g.internal, "GET", "/admin/init", "", &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&init).unwrap()), (200, json!({"insecure": false})));

    // Wrong password → 401, right one → a token.
    assert_eq!(login(g.internal, "wrong").await.0, 401);
    assert_eq!(login(g.internal, "").await.0, 401);
    assert_eq!(req(g.internal, "POST", "/admin/auth", "nothing", &[]).await.0, 400);
    let (status, body) = login(g.internal, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"].as_str().unwrap().to_string();
    // JSON bodies work too (Centrifugo's newer UI posts JSON).
    let (status, _, _) = req(
        g.internal,
        "POST",
        "/admin/auth",
        &json!({"password": PASSWORD}).to_string(),
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(status, 200);

    // The legacy command format with the token.
    let (status, body) = admin_api(g.internal, Some(&token), r#"{"method":"info","params":{}}"#).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["result"]["nodes"].as_array().map(Vec::len), Some(1), "{reply}");
    let cmds = concat!(
        r#"{"id":1,"method":"publish","params":{"channel":"news","data":{"x":1}}}"#,
        "\n",
        r#"{"id":2,"method":"presence","params":{"channel":"news"}}"#,
        "\n",
        r#"{"id":3,"method":"channels","params":{}}"#,
        "\n",
        r#"{"id":4,"method":"history","params":{"channel":"news"}}"#,
        "\n",
        r#"{"id":5,"method":"disconnect","params":{"user":"nobody"}}"#,
    );
    let (status, body) = admin_api(g.internal, Some(&token), cmds).await;
    assert_eq!(status, 200, "{body}");
    let replies: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(replies[0], json!({"id": 1}));
    assert_eq!(replies[1], json!({"id": 2, "result": {"presence": {}}}));
    assert_eq!(replies[2], json!({"id": 3, "result": {"channels": {}}}));
    assert_eq!(replies[3]["error"]["code"], 108, "no history in this namespace: {body}");
    assert_eq!(replies[4], json!({"id": 5}));

    // The per-method format.
    let auth = format!("token {token}");
    let (status, _, body) = req(g.internal, "POST", "/admin/api/info", "{}", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"nodes\""), "{body}");
    assert_eq!(req(g.internal, "POST", "/admin/api/nope", "{}", &[("Authorization", &auth)]).await.0, 404);

    // Without a token, with a forged or expired one: 401.
    let now = gyre_node::node::unix_now();
    let forged = gyre_server::admin::mint_token("some-other-secret", now, 3600);
    let expired = gyre_server::admin::mint_token(SECRET, now - 7200, 3600);
    for bad in [None, Some("garbage"), Some(forged.as_str()), Some(expired.as_str())] {
        let (status, _) = admin_api(g.internal, bad, r#"{"method":"info","params":{}}"#).await;
        assert_eq!(status, 401, "token {bad:?}");
    }
    // The HTTP API key is not an admin token, and an admin token is not an API key.
    assert_eq!(admin_api(g.internal, Some("api-key"), r#"{"method":"info"}"#).await.0, 401);
    let (status, _) =
        common::http_post(g.internal, "/api/info", "{}", &[("Authorization", &format!("apikey {token}"))]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn password_guessing_is_rate_limited() {
    let g = start(json!({"enabled": true, "password": PASSWORD, "secret": SECRET})).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(login(g.internal, "guess").await.0);
    }
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&429), "20 rapid attempts must hit the limit: {statuses:?}");
}

#[tokio::test]
async fn insecure_mode_needs_no_token_and_external_moves_it() {
    let g = start(json!({"enabled": true, "insecure": true, "external": true, "handler_prefix": "/ops"})).await;
    // admin.external: on the public listener, under the prefix.
    let (status, _, page) = req(g.external, "GET", "/ops", "", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Gyre admin"));
    assert_eq!(req(g.internal, "GET", "/ops", "", &[]).await.0, 404);
    assert_eq!(req(g.external, "GET", "/", "", &[]).await.0, 404);
    let (status, _, init) = req(g.external, "GET", "/ops/admin/init", "", &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&init).unwrap()), (200, json!({"insecure": true})));
    let (status, _, body) = req(g.external, "POST", "/ops/admin/api", r#"{"method":"info","params":{}}"#, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"nodes\""));
}

#[test]
fn admin_without_password_or_secret_is_a_config_error() {
    for (admin, key) in [
        (json!({"enabled": true, "secret": SECRET}), "admin.password"),
        (json!({"enabled": true, "password": PASSWORD}), "admin.secret"),
        (
            json!({"enabled": true, "password": PASSWORD, "secret": SECRET, "handler_prefix": "ops"}),
            "admin.handler_prefix",
        ),
    ] {
        let (dir, path, _, _) = write_config(admin);
        let out = Command::new(env!("CARGO_BIN_EXE_gyre"))
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .expect("run gyre");
        let _ = std::fs::remove_dir_all(dir);
        assert!(!out.status.success(), "{key}: must not start");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(key), "{key} not named in: {text}");
    }
}
