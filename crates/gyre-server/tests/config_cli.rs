//! The real `gyre` binary and its configuration: quickstart only when nothing
//! configures the server, configured secrets never logged, refused Centrifugo
//! keys stopping start-up (issue 10: row 5 and "configuration that is
//! silently not applied"). Every process is started with a clean environment
//! in its own temporary directory, listens on port 0, and is killed by the
//! guard that owns it; every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

// Outside a runtime this is the system clock (the project bans std::time::Instant).
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("gyre-config-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gyre(dir: &Dir, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gyre"));
    c.env_clear().current_dir(&dir.0).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A running server: its output lines and the address it reported.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("gyre starts");
        let (tx, lines) = mpsc::channel();
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut s = Server { child, lines, seen: Vec::new(), addr: String::new() };
        let start = Instant::now();
        while s.addr.is_empty() {
            let left =
                DEADLINE.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("no 'gyre serving' line: {:?}", s.seen));
            let line = s.lines.recv_timeout(left).unwrap_or_else(|_| panic!("gyre exited or hung: {:?}", s.seen));
            if line.contains("gyre serving")
                && let Some(a) = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))
            {
                s.addr = a.to_string();
            }
            s.seen.push(line);
        }
        s
    }

    /// All output so far (after a short settle for lines logged at start-up).
    fn output(&mut self) -> String {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(300)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Runs a command to completion within the deadline; returns (success, stdout + stderr).
fn run(mut cmd: Command) -> (bool, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
            return (status.success(), out);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gyre did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HMAC: &str = "configured-hmac-9f1c2e";
const API_KEY: &str = "configured-api-key-77ab";

#[test]
fn secrets_from_env_without_file_are_used_not_logged_and_no_quickstart() {
    let dir = Dir::new();
    let mut s = Server::start(gyre(
        &dir,
        &[],
        &[
            ("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", HMAC),
            ("CENTRIFUGO_HTTP_API_KEY", API_KEY),
            ("CENTRIFUGO_HTTP_SERVER_ADDRESS", "127.0.0.1"),
            ("CENTRIFUGO_HTTP_SERVER_PORT", "0"),
        ],
    ));
    // The configured API key works: the env was applied, not replaced by generated secrets.
    let (status, body) = http(&s.addr, "POST", "/api/info", &[("X-API-Key", API_KEY)], "{}");
    assert_eq!(status, 200, "{body}");
    // No demo token endpoint minting tokens with the configured secret.
    let (status, _) = http(&s.addr, "GET", "/demo/token", &[], "");
    assert_eq!(status, 404);
    let out = s.output();
    assert!(!out.contains(HMAC) && !out.contains(API_KEY), "a configured secret was logged:\n{out}");
    assert!(!out.contains("quickstart"), "{out}");
}

#[test]
fn nothing_configured_is_a_quickstart_on_loopback_only() {
    let dir = Dir::new();
    let mut s = Server::start(gyre(&dir, &["--port", "0"], &[]));
    assert!(s.addr.starts_with("127.0.0.1:"), "quickstart bound {}", s.addr);
    let (status, body) = http(&s.addr, "GET", "/demo/token", &[], "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("token"), "{body}");
    assert!(s.output().contains("quickstart"));
}

#[test]
fn any_configuring_flag_or_variable_disables_quickstart() {
    let dir = Dir::new();
    // A flag other than --port.
    let s = Server::start(gyre(&dir, &["--port", "0", "--address", "127.0.0.1"], &[]));
    assert_eq!(http(&s.addr, "GET", "/demo/token", &[], "").0, 404);
    drop(s);
    // Any CENTRIFUGO_* variable naming a key, even one unrelated to secrets.
    let s = Server::start(gyre(&dir, &["--port", "0"], &[("CENTRIFUGO_LOG_LEVEL", "info")]));
    assert_eq!(http(&s.addr, "GET", "/demo/token", &[], "").0, 404);
    assert!(!s.addr.starts_with("127.0.0.1:"), "not a quickstart: binds what is configured (all interfaces)");
    drop(s);
    // Kubernetes service-link variables alone do not configure anything.
    let s = Server::start(gyre(
        &dir,
        &["--port", "0"],
        &[("CENTRIFUGO_SERVICE_HOST", "10.0.0.1"), ("CENTRIFUGO_PORT_8000_TCP_ADDR", "10.0.0.1")],
    ));
    assert_eq!(http(&s.addr, "GET", "/demo/token", &[], "").0, 200);
}

#[test]
fn tls_without_a_usable_certificate_stops_startup_instead_of_serving_plain_http() {
    let dir = Dir::new();
    let cfg = dir.write(
        "config.json",
        r#"{"http_server": {"port": 0, "address": "127.0.0.1",
            "tls": {"enabled": true, "cert_pem": "cert.pem", "key_pem": "key.pem"}}}"#,
    );
    let (ok, out) = run(gyre(&dir, &["-c", cfg.to_str().unwrap()], &[]));
    assert!(!ok, "{out}");
    assert!(out.contains("http_server.tls.cert_pem: cannot read cert.pem"), "{out}");
    assert!(!out.contains("gyre serving"), "{out}");

    // No config file here: TLS on through the environment, no certificate.
    let empty = Dir::new();
    let (ok, out) = run(gyre(
        &empty,
        &["--port", "0"],
        &[("CENTRIFUGO_HTTP_SERVER_TLS_ENABLED", "true"), ("CENTRIFUGO_HTTP_SERVER_ADDRESS", "127.0.0.1")],
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("http_server.tls.cert_pem: required when TLS is enabled"), "{out}");
    assert!(!out.contains("gyre serving"), "{out}");
}

#[test]
fn checkconfig_reports_refused_keys_as_errors() {
    let dir = Dir::new();
    let bad = dir.write(
        "bad.yaml",
        "grpc_api:\n  enabled: true\n  reflection: true\nadmin:\n  enabled: true\n  web_path: /srv/ui\nengine:\n  type: memory\nlog:\n  level: loud\n",
    );
    let (ok, out) = run(gyre(&dir, &["checkconfig", "-c", bad.to_str().unwrap()], &[]));
    assert!(!ok, "{out}");
    for key in ["grpc_api.reflection: not supported", "admin.web_path: not supported", "log.level"] {
        assert!(out.contains(key), "{key} missing:\n{out}");
    }
    // Refused keys at Centrifugo's defaults, or in switched-off sections, are valid and not "unknown".
    let good = dir.write(
        "good.json",
        r#"{"grpc_api": {"enabled": false, "port": 10000, "tls": {"enabled": false}},
            "http_server": {"tls": {"enabled": false, "cert_pem": "x"}, "http3": {"enabled": false}},
            "admin": {"enabled": false, "password": "p", "secret": "s"},
            "engine": {"type": "memory", "redis": {"address": ["redis://127.0.0.1:6379"]}},
            "usage_stats": {"disabled": true}}"#,
    );
    let (ok, out) = run(gyre(&dir, &["checkconfig", "-s", "-c", good.to_str().unwrap()], &[]));
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "{out}");
}
