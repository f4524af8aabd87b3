//! TLS of the listeners (`http_server.tls`, `http_server.internal_tls`) and of
//! NATS (`broker.nats.tls`), against certificates generated here with rcgen:
//! a Centrifuge client over wss:// with the right CA, a client trusting
//! another CA refused, a rotated certificate served to new connections
//! without a restart (a bad new file keeps the old one), mTLS and a rotated
//! client CA, HTTP/2 by ALPN, a stalled handshake closed by
//! `read_header_timeout`, start-up errors naming the key, and a real
//! `nats-server --tlsverify` reached with a client certificate, then
//! reconnected to after its CA and the node's files rotate. Every wait has a
//! deadline.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, WAIT, user_token};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA that signs leaf certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `localhost` and 127.0.0.1 named `cn`.
    fn leaf(&self, cn: &str) -> Leaf {
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("gyre-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Writes atomically (temp file + rename), as a Secret volume update is.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `leaf` as tls.crt/tls.key into `dir`.
fn install(dir: &Dir, leaf: &Leaf) {
    dir.write("tls.crt", &leaf.cert_pem);
    dir.write("tls.key", &leaf.key_pem);
}

fn client_config(roots: &[CertificateDer<'static>], client: Option<&Leaf>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut c = match client {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(vec![l.der.clone()], PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap())
            .unwrap(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

/// A TLS connection to `addr` as `localhost`.
async fn tls_connect(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(WAIT, connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The end-entity certificate a new connection gets.
async fn served_cert(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let s = tls_connect(addr, client_config(&[ca.der()], None, &[])).await.expect("TLS handshake");
    s.get_ref().1.peer_certificates().expect("server certificate")[0].clone().into_owned()
}

/// `GET path` over HTTP/1.1 on a TLS stream: (status, body).
async fn https_get(mut s: TlsStream<TcpStream>, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify is an error after the data; the data is what counts.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("response in time");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn tls_files(dir: &Dir) -> Value {
    json!({"enabled": true, "cert_pem": dir.path("tls.crt"), "key_pem": dir.path("tls.key")})
}

/// A Centrifuge client connects over wss:// with the right CA: WebSocket
/// upgrade, connect command, connect reply with the client id.
#[tokio::test]
async fn centrifuge_client_over_wss_with_the_right_ca() {
    let ca = Ca::new("gyre test ca");
    let dir = Dir::new();
    install(&dir, &ca.leaf("server-1"));
    let srv = TestServer::start(json!({"http_server": {"tls": tls_files(&dir)}})).await;

    let tls = tls_connect(srv.addr, client_config(&[ca.der()], None, &[b"http/1.1"])).await.expect("handshake");
    let url = format!("wss://localhost:{}/connection/websocket", srv.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("websocket upgrade over TLS");
    use futures_util::{SinkExt, StreamExt};
    let connect = json!({"id": 1, "connect": {"token": user_token("alice")}}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(connect.into())).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.expect("reply in time").expect("open").expect("frame");
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["connect"]["client"].as_str().is_some_and(|c| !c.is_empty()), "{reply}");

    // Plain HTTP on the TLS port is not served.
    let mut plain = TcpStream::connect(srv.addr).await.unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut out)).await.expect("closed in time");
    assert!(!out.starts_with(b"HTTP/"), "plain HTTP answered on a TLS listener: {:?}", String::from_utf8_lossy(&out));
}

/// A client trusting another CA is refused (the handshake fails on its
/// side: unknown issuer); the server keeps serving the right clients.
#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let ca = Ca::new("gyre test ca");
    let other = Ca::new("some other ca");
    let dir = Dir::new();
    install(&dir, &ca.leaf("server-1"));
    let srv = TestServer::start(json!({"http_server": {"tls": tls_files(&dir)}})).await;

    let e = tls_connect(srv.addr, client_config(&[other.der()], None, &[])).await.expect_err("must be refused");
    assert!(e.to_string().to_lowercase().contains("unknownissuer"), "{e}");
    let ok = tls_connect(srv.addr, client_config(&[ca.der()], None, &[])).await.expect("right CA accepted");
    assert_eq!(https_get(ok, "/health").await.0, 200);
}

/// Rotation: new files are served to new connections within a few reload
/// intervals, without a restart; a connection made before keeps working; a
/// broken new file (or a key that does not match) keeps the current one.
#[tokio::test]
async fn rotated_certificate_is_picked_up_live() {
    let ca = Ca::new("gyre test ca");
    let dir = Dir::new();
    let first = ca.leaf("server-1");
    install(&dir, &first);
    let srv = TestServer::start(json!({"http_server": {"tls": tls_files(&dir)}})).await;
    assert_eq!(served_cert(srv.addr, &ca).await, first.der);
    let old = tls_connect(srv.addr, client_config(&[ca.der()], None, &[])).await.unwrap();

    let second = ca.leaf("server-2");
    install(&dir, &second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if served_cert(srv.addr, &ca).await == second.der {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rotated certificate not served within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection made before rotation still serves requests.
    assert_eq!(https_get(old, "/health").await.0, 200);

    // A broken certificate file, then a certificate whose key is not the one
    // on disk: each keeps serving the second certificate.
    dir.write("tls.crt", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    tokio::time::sleep(gyre_server::tls::RELOAD_INTERVAL * 3).await;
    assert_eq!(served_cert(srv.addr, &ca).await, second.der);
    dir.write("tls.crt", &ca.leaf("server-3").cert_pem);
    tokio::time::sleep(gyre_server::tls::RELOAD_INTERVAL * 3).await;
    assert_eq!(served_cert(srv.addr, &ca).await, second.der);
    // Both files of a new pair: served.
    let fourth = ca.leaf("server-4");
    install(&dir, &fourth);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while served_cert(srv.addr, &ca).await != fourth.der {
        assert!(tokio::time::Instant::now() < deadline, "certificate after a bad one not served within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PEM strings (raw and base64) work as well as files; HTTP/2 is chosen by
/// ALPN and the server answers the HTTP/2 preface with its SETTINGS.
#[tokio::test]
async fn inline_pem_and_http2_by_alpn() {
    use base64::Engine as _;
    let ca = Ca::new("gyre test ca");
    let leaf = ca.leaf("inline");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&leaf.key_pem);
    let srv = TestServer::start(
        json!({"http_server": {"tls": {"enabled": true, "cert_pem": leaf.cert_pem, "key_pem": b64}}}),
    )
    .await;
    assert_eq!(served_cert(srv.addr, &ca).await, leaf.der);

    let mut s = tls_connect(srv.addr, client_config(&[ca.der()], None, &[b"h2", b"http/1.1"])).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Preface + an empty SETTINGS frame; the server's first frame is SETTINGS (type 4).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.expect("frame in time").unwrap();
    assert_eq!(head[3], 4, "first HTTP/2 frame from the server must be SETTINGS: {head:?}");
}

/// mTLS: with `client_ca_pem` a client without a certificate, or with one
/// from another CA, is refused; one signed by the client CA is served.
#[tokio::test]
async fn client_ca_requires_client_certificates() {
    let ca = Ca::new("gyre test ca");
    let clients = Ca::new("client ca");
    let dir = Dir::new();
    install(&dir, &ca.leaf("server"));
    dir.write("client-ca.crt", &clients.pem());
    let mut t = tls_files(&dir);
    t["client_ca_pem"] = json!(dir.path("client-ca.crt"));
    let srv = TestServer::start(json!({"http_server": {"tls": t}})).await;

    // TLS 1.3: the client learns of the refusal on its first read.
    for client in [None, Some(&ca.leaf("wrong-ca-client"))] {
        let refused = match tls_connect(srv.addr, client_config(&[ca.der()], client, &[])).await {
            Err(_) => true,
            Ok(s) => https_get(s, "/health").await.0 == 0,
        };
        assert!(refused, "client certificate {:?} must be refused", client.map(|_| "from another CA"));
    }
    let good = clients.leaf("client-1");
    let s = tls_connect(srv.addr, client_config(&[ca.der()], Some(&good), &[])).await.expect("mTLS handshake");
    assert_eq!(https_get(s, "/health").await.0, 200);
}

/// Whether a new mTLS connection presenting `client` is served (`/health`
/// answers 200); a refusal shows in the handshake or, with TLS 1.3, on the
/// client's first read.
async fn mtls_served(addr: SocketAddr, server_ca: &Ca, client: &Leaf) -> bool {
    match tls_connect(addr, client_config(&[server_ca.der()], Some(client), &[])).await {
        Err(_) => false,
        Ok(s) => https_get(s, "/health").await.0 == 200,
    }
}

/// Rotation of the client CA file (`client_ca_pem` as a path), without a
/// restart: within a few reload intervals a client certificate from the new
/// CA is served and one from the old CA refused; a connection made before
/// keeps working; a broken CA file then keeps the new CA.
#[tokio::test]
async fn rotated_client_ca_is_picked_up_live() {
    let ca = Ca::new("gyre test ca");
    let (old_ca, new_ca) = (Ca::new("client ca 1"), Ca::new("client ca 2"));
    let (old_client, new_client) = (old_ca.leaf("client-of-ca-1"), new_ca.leaf("client-of-ca-2"));
    let dir = Dir::new();
    install(&dir, &ca.leaf("server"));
    dir.write("client-ca.crt", &old_ca.pem());
    let mut t = tls_files(&dir);
    t["client_ca_pem"] = json!(dir.path("client-ca.crt"));
    let srv = TestServer::start(json!({"http_server": {"tls": t}})).await;
    assert!(mtls_served(srv.addr, &ca, &old_client).await, "client of the first CA before rotation");
    assert!(!mtls_served(srv.addr, &ca, &new_client).await, "client of a CA not yet trusted");
    let before = tls_connect(srv.addr, client_config(&[ca.der()], Some(&old_client), &[])).await.unwrap();

    dir.write("client-ca.crt", &new_ca.pem());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !mtls_served(srv.addr, &ca, &new_client).await {
        assert!(tokio::time::Instant::now() < deadline, "client of the rotated CA not served within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!mtls_served(srv.addr, &ca, &old_client).await, "client of the old CA must be refused after rotation");
    assert_eq!(https_get(before, "/health").await.0, 200, "a connection made before rotation keeps working");

    // A CA file that does not parse keeps the rotated CA.
    dir.write("client-ca.crt", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    tokio::time::sleep(gyre_server::tls::RELOAD_INTERVAL * 3).await;
    assert!(mtls_served(srv.addr, &ca, &new_client).await, "a broken CA file must keep the rotated CA");
    assert!(!mtls_served(srv.addr, &ca, &old_client).await);
}

/// A socket that starts a TLS handshake and stalls is closed after
/// `read_header_timeout`, counted from accept, like one that sends nothing.
#[tokio::test]
async fn stalled_handshake_is_closed_by_read_header_timeout() {
    let ca = Ca::new("gyre test ca");
    let dir = Dir::new();
    install(&dir, &ca.leaf("server"));
    let srv = TestServer::start(json!({"http_server": {"tls": tls_files(&dir), "read_header_timeout": "500ms"}})).await;
    for first in [&b""[..], &b"\x16\x03\x01\x02\x00\x01"[..]] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "closed too early: {:?}", started.elapsed());
    }
}

/// A socket in its TLS handshake is pending: over `max_pending_connections`
/// new sockets are closed at once; once the stalled one is gone (deadline),
/// handshakes succeed again.
#[tokio::test]
async fn sockets_in_handshake_count_as_pending() {
    let ca = Ca::new("gyre test ca");
    let dir = Dir::new();
    install(&dir, &ca.leaf("server"));
    let srv = TestServer::start(json!({"http_server": {"tls": tls_files(&dir), "read_header_timeout": "1s",
        "max_pending_connections": 1}}))
    .await;
    let mut stalled = TcpStream::connect(srv.addr).await.unwrap();
    stalled.write_all(b"\x16\x03\x01\x02\x00\x01").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tls_connect(srv.addr, client_config(&[ca.der()], None, &[])).await;
    assert!(refused.is_err(), "a second socket must be closed while one handshake is pending");
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await.expect("stalled closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let ok =
        tls_connect(srv.addr, client_config(&[ca.der()], None, &[])).await.expect("handshake after the slot freed");
    assert_eq!(https_get(ok, "/health").await.0, 200);
}

async fn start_err(cfg: Value) -> String {
    let mut base = common::base_config();
    common::merge(&mut base, cfg);
    let loaded = gyre_server::config_load::load(Some(base), &HashMap::new(), &vec![]).expect("config loads");
    let node = gyre_server::build_node(loaded.config).expect("node");
    gyre_server::http::start(node).await.err().expect("start-up must fail").to_string()
}

/// A missing file, a file that is not a certificate, or a key of another
/// certificate stops start-up with the key named (never plain HTTP).
#[tokio::test]
async fn bad_certificates_stop_start_up_naming_the_key() {
    let ca = Ca::new("gyre test ca");
    let dir = Dir::new();
    let a = ca.leaf("a");
    let b = ca.leaf("b");
    dir.write("a.crt", &a.cert_pem);
    dir.write("b.key", &b.key_pem);
    dir.write("junk.crt", "hello\n");
    let cases = [
        (
            json!({"cert_pem": dir.path("missing.crt"), "key_pem": dir.path("b.key")}),
            "http_server.tls.cert_pem: cannot read",
        ),
        (json!({"cert_pem": dir.path("junk.crt"), "key_pem": dir.path("b.key")}), "http_server.tls.cert_pem: "),
        (json!({"cert_pem": dir.path("a.crt"), "key_pem": dir.path("b.key")}), "http_server.tls.key_pem: "),
        (json!({"cert_pem": dir.path("a.crt")}), "http_server.tls.key_pem: required"),
    ];
    for (mut t, want) in cases {
        t["enabled"] = json!(true);
        let e = start_err(json!({"http_server": {"tls": t}})).await;
        assert!(e.starts_with(want), "{e}");
    }
}

/// The internal port: its own certificate with `internal_tls`, the external
/// one's by default, plain text with `tls_external`.
#[tokio::test]
async fn internal_port_tls() {
    let ca = Ca::new("gyre test ca");
    let dir = Dir::new();
    let ext = ca.leaf("external");
    install(&dir, &ext);
    let int = ca.leaf("internal");
    dir.write("int.crt", &int.cert_pem);
    dir.write("int.key", &int.key_pem);
    let internal_port = gyre_engine_nats::testing::free_port();
    let start = |hs: Value| async move {
        let mut cfg = common::base_config();
        common::merge(&mut cfg, json!({"http_server": hs}));
        let loaded = gyre_server::config_load::load(Some(cfg), &HashMap::new(), &vec![]).unwrap();
        let node = gyre_server::build_node(loaded.config).unwrap();
        gyre_server::http::start(node).await.unwrap()
    };

    // Own certificate.
    let r = start(json!({"internal_port": internal_port, "tls": tls_files(&dir),
        "internal_tls": {"enabled": true, "cert_pem": dir.path("int.crt"), "key_pem": dir.path("int.key")}}))
    .await;
    assert_eq!(served_cert(r.addr, &ca).await, ext.der);
    assert_eq!(served_cert(r.internal_addr, &ca).await, int.der);
    let s = tls_connect(r.internal_addr, client_config(&[ca.der()], None, &[])).await.unwrap();
    assert_eq!(https_get(s, "/health").await.0, 200);
    assert!(r.shutdown(Duration::from_secs(5)).await);

    // Shared with the external listener.
    let r = start(json!({"internal_port": internal_port, "tls": tls_files(&dir)})).await;
    assert_eq!(served_cert(r.internal_addr, &ca).await, ext.der);
    assert!(r.shutdown(Duration::from_secs(5)).await);

    // tls_external: the internal port stays plain HTTP.
    let r = start(json!({"internal_port": internal_port, "tls": tls_files(&dir), "tls_external": true})).await;
    let (status, _) = common::http_post(r.internal_addr, "/api/info", "{}", &[("X-API-Key", common::API_KEY)]).await;
    assert_eq!(status, 200);
    assert_eq!(served_cert(r.addr, &ca).await, ext.der);
    assert!(r.shutdown(Duration::from_secs(5)).await);
}

/// `broker.nats.tls`: a real nats-server requiring TLS and a client
/// certificate (`--tlsverify`) is reached with the CA and a client
/// certificate; without the client certificate, trusting another CA, or
/// with a `server_name` the certificate does not carry, the node stays not
/// ready (it never falls back to plain text); `insecure_skip_verify` skips
/// the server certificate check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_client_certificate() {
    let ca = Ca::new("nats ca");
    let dir = Dir::new();
    let server = ca.leaf("nats");
    let client = ca.leaf("gyre-client");
    dir.write("nats.crt", &server.cert_pem);
    dir.write("nats.key", &server.key_pem);
    dir.write("ca.crt", &ca.pem());
    let nats = gyre_engine_nats::testing::NatsServer::start_with_args(
        true,
        &[
            "--tls",
            "--tlscert",
            &dir.path("nats.crt"),
            "--tlskey",
            &dir.path("nats.key"),
            "--tlsverify",
            "--tlscacert",
            &dir.path("ca.crt"),
        ],
    );
    let ready = |tls: Value| {
        let url = nats.url.clone();
        async move {
            let srv = TestServer::start(json!({"broker": {"enabled": true, "type": "nats",
                "nats": {"url": url, "prefix": format!("tls{}", rand_suffix()), "tls": tls}}}))
            .await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
            loop {
                if srv.node.health() == gyre_node::engine::EngineHealth::Ready {
                    return true;
                }
                if tokio::time::Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let good = json!({"enabled": true, "server_ca_pem": dir.path("ca.crt"),
        "cert_pem": client.cert_pem, "key_pem": client.key_pem});
    assert!(ready(good).await, "TLS with the CA and a client certificate must connect");
    let no_client_cert = json!({"enabled": true, "server_ca_pem": ca.pem()});
    assert!(!ready(no_client_cert).await, "no client certificate must not connect to --tlsverify");
    let other = Ca::new("other");
    let wrong_ca = json!({"enabled": true, "server_ca_pem": other.pem(),
        "cert_pem": client.cert_pem, "key_pem": client.key_pem});
    assert!(!ready(wrong_ca).await, "a server certificate from another CA must be refused");
    // server_name: the certificate is checked against it instead of the URL's host.
    let named = |name: &str| {
        json!({"enabled": true, "server_ca_pem": ca.pem(), "server_name": name,
            "cert_pem": client.cert_pem, "key_pem": client.key_pem})
    };
    assert!(ready(named("localhost")).await, "server_name matching the certificate must connect");
    assert!(!ready(named("nats.other.example")).await, "server_name not in the certificate must be refused");
    // insecure_skip_verify: any server certificate (here from an unknown CA) is accepted.
    let insecure = json!({"enabled": true, "insecure_skip_verify": true, "server_ca_pem": other.pem(),
        "cert_pem": client.cert_pem, "key_pem": client.key_pem});
    assert!(ready(insecure).await, "insecure_skip_verify must accept the server certificate");
}

/// `broker.nats.tls` from files (a mounted Secret: `ca.crt`, `tls.crt`,
/// `tls.key`) rotated under a running node, against a real nats-server with
/// `--tlsverify` restarted to trust only the new CAs; the same node, not
/// restarted, reconnects each time and publishes again:
/// 1. the client certificate rotated to one from a new client CA, which
///    nats-server now trusts instead of the old one (the resolver re-read);
/// 2. nats-server's own certificate rotated to one from a new CA, written to
///    the node's `server_ca_pem` file (the server check re-built).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_files_rotated_to_a_new_ca_are_used_on_reconnect() {
    let dir = Dir::new();
    // nats-server's files, rewritten in place while it is down.
    let nats_server_cert = |ca: &Ca| {
        let server = ca.leaf("nats");
        dir.write("nats.crt", &server.cert_pem);
        dir.write("nats.key", &server.key_pem);
    };
    let nats_trusts_clients_of = |ca: &Ca| dir.write("nats-clients-ca.crt", &ca.pem());
    // The node's files.
    let node_trusts = |ca: &Ca| dir.write("ca.crt", &ca.pem());
    let node_client_cert = |ca: &Ca| install(&dir, &ca.leaf("gyre-client"));
    let (server_ca, client_ca) = (Ca::new("nats server ca 1"), Ca::new("nats client ca 1"));
    nats_server_cert(&server_ca);
    nats_trusts_clients_of(&client_ca);
    node_trusts(&server_ca);
    node_client_cert(&client_ca);
    let mut nats = gyre_engine_nats::testing::NatsServer::start_with_args(
        true,
        &[
            "--tls",
            "--tlscert",
            &dir.path("nats.crt"),
            "--tlskey",
            &dir.path("nats.key"),
            "--tlsverify",
            "--tlscacert",
            &dir.path("nats-clients-ca.crt"),
        ],
    );
    let srv = TestServer::start(json!({"broker": {"enabled": true, "type": "nats",
        "nats": {"url": nats.url, "prefix": format!("rot{}", rand_suffix()),
            "tls": {"enabled": true, "server_ca_pem": dir.path("ca.crt"),
                "cert_pem": dir.path("tls.crt"), "key_pem": dir.path("tls.key")}}}}))
    .await;
    publish_succeeds(&srv, 1).await;

    // 1. A new client CA: the node's client certificate first (cert-manager),
    // then nats-server restarts trusting only the new client CA.
    let client_ca_2 = Ca::new("nats client ca 2");
    node_client_cert(&client_ca_2);
    nats.kill();
    nats_trusts_clients_of(&client_ca_2);
    nats.restart();
    publish_succeeds(&srv, 2).await;

    // 2. A new server CA: the node's CA file, then nats-server restarts
    // serving a certificate from it.
    let server_ca_2 = Ca::new("nats server ca 2");
    node_trusts(&server_ca_2);
    nats.kill();
    nats_server_cert(&server_ca_2);
    nats.restart();
    publish_succeeds(&srv, 3).await;
    assert_eq!(srv.node.health(), gyre_node::engine::EngineHealth::Ready);
}

/// Publishes into a history channel (through the NATS engine's stream)
/// until the API answers with an offset, within 20 s.
async fn publish_succeeds(srv: &TestServer, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = srv.api("publish", json!({"channel": "hist:rotation", "data": {"n": n}})).await;
        if status == 200 && body["error"].is_null() && body["result"]["offset"].is_u64() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "publish {n} did not succeed within 20 s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rand_suffix() -> u64 {
    rand::random::<u64>() % 1_000_000
}
