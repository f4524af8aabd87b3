//! Health probes by failure domain, with the real `gyre` binary and a real
//! nats-server on free ports: liveness (`/health`, `/health/live`) stays 200
//! whatever NATS does; readiness (`/health/ready`) is 503 with the reason while
//! NATS is away and 200 once it is back; a Gyre started before NATS stays up,
//! unready, and becomes ready when NATS appears.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use gyre_engine_nats::testing::{NatsServer, free_port};
use serde_json::json;

const GYRE: &str = env!("CARGO_BIN_EXE_gyre");

/// The gyre binary as a child process, killed on drop.
struct Gyre {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Gyre {
    fn start(nats_url: &str) -> Gyre {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gyre-health-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = json!({
            "http_server": {"address": "127.0.0.1", "port": port},
            "health": {"enabled": true},
            "log": {"level": "info"},
            "client": {"token": {"hmac_secret_key": "health-test-secret"}},
            "http_api": {"key": "health-test-key"},
            "node": {"name": format!("health-{port}")},
            "broker": {"enabled": true, "type": "nats", "nats": {"url": nats_url, "prefix": format!("health{port}")}},
            "presence_manager": {"enabled": true, "type": "nats"},
        });
        let path = dir.join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("gyre.log")).unwrap();
        let child = Command::new(GYRE)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start gyre");
        let g = Gyre { port, child, dir };
        g.wait_for("/health", |code, _| code == 200, Duration::from_secs(20), "liveness 200 at start");
        g
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gyre.log")).unwrap_or_default()
    }

    /// GET `path`: status and body, or `None` when nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.split(' ').nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    }

    fn status(&self, path: &str) -> (u16, String) {
        self.get(path).unwrap_or_else(|| panic!("nothing answered {path}; log:\n{}", self.log()))
    }

    fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("gyre exited ({st}); log:\n{}", self.log());
        }
    }

    fn wait_for(&self, path: &str, ok: impl Fn(u16, &str) -> bool, within: Duration, what: &str) -> (u16, String) {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some((code, body)) = self.get(path) {
                if ok(code, &body) {
                    return (code, body);
                }
                last = Some((code, body));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: {path} last answered {last:?} within {within:?}; log:\n{}", self.log());
    }

    /// Liveness answers 200 on both paths.
    fn assert_live(&mut self) {
        self.assert_running();
        for p in ["/health", "/health/live"] {
            assert_eq!(self.status(p), (200, "{}".to_string()), "{p} must not depend on NATS");
        }
    }
}

impl Drop for Gyre {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn liveness_ignores_a_nats_outage_and_readiness_reports_it() {
    let mut nats = NatsServer::start();
    let mut g = Gyre::start(&nats.url);
    g.wait_for("/health/ready", |c, _| c == 200, Duration::from_secs(20), "ready once NATS is connected");
    g.assert_live();

    nats.kill();
    let (_, body) = g.wait_for("/health/ready", |c, _| c == 503, Duration::from_secs(10), "unready with NATS down");
    let reason: serde_json::Value = serde_json::from_str(&body).expect("JSON reason");
    let reason = reason["error"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("NATS") && reason.contains(&nats.url), "reason names NATS and its URL: {reason}");
    // The outage lasts: liveness stays 200 the whole time (a kubelet would not restart the pod).
    for _ in 0..10 {
        g.assert_live();
        assert_eq!(g.status("/health/ready").0, 503);
        std::thread::sleep(Duration::from_millis(200));
    }

    nats.restart();
    g.wait_for(
        "/health/ready",
        |c, b| c == 200 && b == "{}",
        Duration::from_secs(20),
        "ready again after NATS returns",
    );
    g.assert_live();
}

#[test]
fn nats_started_after_gyre_makes_it_ready_without_a_restart() {
    let mut nats = NatsServer::reserved(true);
    let mut g = Gyre::start(&nats.url);
    let (_, body) = g.wait_for("/health/ready", |c, _| c == 503, Duration::from_secs(10), "unready before NATS exists");
    assert!(body.contains("unreachable") || body.contains("connecting"), "reason: {body}");
    // Several connect attempts fail (one a second); the process stays up and live.
    std::thread::sleep(Duration::from_millis(2500));
    g.assert_live();
    assert_eq!(g.status("/health/ready").0, 503);

    nats.restart();
    g.wait_for("/health/ready", |c, _| c == 200, Duration::from_secs(20), "ready once NATS appears");
    g.assert_live();
}
