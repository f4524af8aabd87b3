//! The `BrokerReady` condition: whether the NATS an instance points at can serve Gyre.
//!
//! Gyre needs NATS with JetStream (history and presence live there). A pod only says "not ready",
//! so the operator looks for itself: it opens a TCP connection to the configured URL and reads
//! the `INFO` line every NATS server sends first (before TLS and before authentication, so no
//! credentials are needed and none are sent), which says whether JetStream is enabled.
//!
//! Failure modes, each a distinct reason in status:
//! - nothing answers (DNS, refused, timeout) → `BrokerUnreachable`. The probe runs from the
//!   operator's pod: a NetworkPolicy that admits Gyre's pods but not the operator shows up here
//!   as unreachable, which the message says.
//! - a server answers without JetStream → `NoJetStream` (the official NATS chart ships with it
//!   off: `config.jetstream.enabled=true`).
//! - something that is not NATS answers (no `INFO` line) → `NotNats`.
//! - the URL comes from a Secret (`nats.urlFrom`) or is a WebSocket URL → `Unknown`/`NotProbed`:
//!   the operator does not read user Secrets for this, and WebSocket needs an HTTP upgrade.
//!
//! Credentials in a URL (`nats://user:pass@host`) never appear in a status message.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::crd::{Centrifugo, NatsSpec};

pub const BROKER_READY: &str = "BrokerReady";

/// How long one probe may take in total (connect + INFO), so a black-holed address cannot stall
/// a reconcile pass.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest INFO line accepted (servers send well under 2 KiB).
const MAX_INFO: usize = 64 * 1024;

/// What the operator found out about an instance's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerState {
    /// No `spec.nats`: a single pod with the in-memory engine.
    NotUsed,
    /// A server at `addr` with JetStream.
    Ready { addr: String, version: String },
    /// Nothing answered at any address: the last error per address.
    Unreachable { errors: Vec<String> },
    /// A server answered without JetStream.
    NoJetStream { addr: String, version: String },
    /// Something answered that does not speak NATS.
    NotNats { addr: String, detail: String },
    /// The operator could not or would not probe (why).
    NotProbed(String),
}

/// One server address of a NATS URL list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub host: String,
    pub port: u16,
    /// `tls://`: still probed (INFO precedes the TLS handshake unless the server is TLS-first).
    pub tls: bool,
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a NATS URL list (`nats://a:4222,nats://user:pass@b`) into probe addresses.
/// WebSocket URLs are refused (`Err` with why); so is anything malformed.
pub fn parse_urls(list: &str) -> Result<Vec<Addr>, String> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| format!("'{}' has no scheme", redact(raw)))?;
        let tls = match scheme {
            "nats" => false,
            "tls" => true,
            "ws" | "wss" => return Err("WebSocket NATS URLs are not probed by the operator".into()),
            other => return Err(format!("unknown NATS URL scheme '{other}'")),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("bad IPv6 address in '{}'", redact(raw)))?;
            (h.to_string(), after.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in '{}'", redact(raw)));
        }
        let port = if port.is_empty() {
            4222
        } else {
            port.parse().map_err(|_| format!("bad port '{port}' in '{}'", redact(raw)))?
        };
        out.push(Addr { host, port, tls });
    }
    if out.is_empty() {
        return Err("empty NATS URL".into());
    }
    Ok(out)
}

/// The URL with any `user:pass@` removed, for messages.
fn redact(raw: &str) -> String {
    match raw.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..authority_end].rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[authority_end..]),
                None => raw.to_string(),
            }
        }
        None => raw.to_string(),
    }
}

/// What the INFO line says: (JetStream enabled, server version).
pub fn parse_info(line: &[u8]) -> Result<(bool, String), String> {
    let line = std::str::from_utf8(line).map_err(|_| "the first line is not text".to_string())?;
    let json = line
        .trim_end()
        .strip_prefix("INFO")
        .ok_or_else(|| format!("expected an INFO line, got '{}'", line.chars().take(40).collect::<String>()))?;
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| format!("INFO is not JSON: {e}"))?;
    let js = v.get("jetstream").and_then(serde_json::Value::as_bool).unwrap_or(false);
    let version = v.get("version").and_then(serde_json::Value::as_str).unwrap_or("unknown").to_string();
    Ok((js, version))
}

enum One {
    Answer(Result<(bool, String), String>),
    Unreachable(String),
}

async fn probe_one(addr: &Addr) -> One {
    let mut s = match TcpStream::connect((addr.host.as_str(), addr.port)).await {
        Ok(s) => s,
        Err(e) => return One::Unreachable(format!("{addr}: {e}")),
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return One::Answer(parse_info(&buf[..end]));
        }
        if buf.len() > MAX_INFO {
            return One::Answer(Err("no line end within 64 KiB".into()));
        }
        match s.read(&mut chunk).await {
            Ok(0) => return One::Unreachable(format!("{addr}: connection closed before INFO")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return One::Unreachable(format!("{addr}: {e}")),
        }
    }
}

/// Probes the addresses in order; the first that answers decides.
pub async fn probe(addrs: &[Addr], timeout: Duration) -> BrokerState {
    let mut errors = Vec::new();
    for addr in addrs {
        let outcome = match tokio::time::timeout(timeout, probe_one(addr)).await {
            Ok(o) => o,
            Err(_) => One::Unreachable(format!(
                "{addr}: no INFO within {timeout:?}{}",
                if addr.tls { " (a TLS-first server sends none before the handshake)" } else { "" }
            )),
        };
        match outcome {
            One::Answer(Ok((true, version))) => return BrokerState::Ready { addr: addr.to_string(), version },
            One::Answer(Ok((false, version))) => return BrokerState::NoJetStream { addr: addr.to_string(), version },
            One::Answer(Err(detail)) => return BrokerState::NotNats { addr: addr.to_string(), detail },
            One::Unreachable(e) => errors.push(e),
        }
    }
    BrokerState::Unreachable { errors }
}

/// The broker state of an instance: its managed NATS's Service, or `spec.nats`.
pub async fn check_instance(cr: &Centrifugo) -> BrokerState {
    if crate::managed_nats::managed(cr).is_some() {
        let url = crate::managed_nats::probe_url(cr);
        return match parse_urls(&url) {
            Ok(addrs) => probe(&addrs, PROBE_TIMEOUT).await,
            Err(e) => BrokerState::NotProbed(e),
        };
    }
    check(cr.spec.nats.as_ref()).await
}

/// The broker state of a `spec.nats` naming a URL (or a Secret holding one).
pub async fn check(nats: Option<&NatsSpec>) -> BrokerState {
    let Some(nats) = nats else { return BrokerState::NotUsed };
    let Some(url) = nats.url.as_deref() else {
        let from = nats.url_from.as_ref().map(|s| format!("Secret key {}/{}", s.name, s.key)).unwrap_or_default();
        return BrokerState::NotProbed(format!(
            "the NATS URL comes from {from}, which the operator does not read; the pods' /health/ready says whether NATS is usable"
        ));
    };
    match parse_urls(url) {
        Ok(addrs) => probe(&addrs, PROBE_TIMEOUT).await,
        Err(e) => BrokerState::NotProbed(e),
    }
}

/// Condition status (`True`/`False`/`Unknown`), reason and message for a state.
pub fn condition(state: &BrokerState) -> (&'static str, &'static str, String) {
    match state {
        BrokerState::NotUsed => ("True", "NoBroker", "no spec.nats: one pod with the in-memory engine".into()),
        BrokerState::Ready { addr, version } => {
            ("True", "JetStreamAvailable", format!("NATS {version} at {addr} has JetStream"))
        }
        BrokerState::Unreachable { errors } => (
            "False",
            "BrokerUnreachable",
            format!(
                "no NATS server answered the operator ({}); Gyre pods stay up but unready until it does",
                errors.join("; ")
            ),
        ),
        BrokerState::NoJetStream { addr, version } => (
            "False",
            "NoJetStream",
            format!(
                "NATS {version} at {addr} has JetStream disabled; Gyre keeps history and presence in JetStream: \
                 run nats-server with -js (official NATS chart: config.jetstream.enabled=true)"
            ),
        ),
        BrokerState::NotNats { addr, detail } => {
            ("False", "NotNats", format!("{addr} answered but not as a NATS server: {detail}"))
        }
        BrokerState::NotProbed(why) => ("Unknown", "NotProbed", why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(host: &str, port: u16, tls: bool) -> Addr {
        Addr { host: host.into(), port, tls }
    }

    #[test]
    fn url_lists_parse_into_addresses() {
        let table: &[(&str, Result<Vec<Addr>, &str>)] = &[
            ("nats://nats.messaging.svc:4222", Ok(vec![a("nats.messaging.svc", 4222, false)])),
            ("nats://nats", Ok(vec![a("nats", 4222, false)])),
            ("tls://u:p@nats:4443", Ok(vec![a("nats", 4443, true)])),
            ("nats://a:1, nats://b:2", Ok(vec![a("a", 1, false), a("b", 2, false)])),
            ("nats://[::1]:4222", Ok(vec![a("::1", 4222, false)])),
            ("nats://token@host/", Ok(vec![a("host", 4222, false)])),
            ("ws://nats:8080", Err("WebSocket")),
            ("http://nats:4222", Err("unknown NATS URL scheme 'http'")),
            ("nats://:4222", Err("no host")),
            ("nats://h:xx", Err("bad port 'xx'")),
            ("nats.svc:4222", Err("has no scheme")),
            ("", Err("empty")),
        ];
        for (url, want) in table {
            match (parse_urls(url), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{url}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{url}: {e}"),
                (got, w) => panic!("{url}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn credentials_never_reach_messages() {
        let e = parse_urls("nats://user:hunter2@h:bad").unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("***@h:bad"), "{e}");
        assert_eq!(a("::1", 4222, false).to_string(), "[::1]:4222");
    }

    #[test]
    fn info_lines() {
        type Want = Result<(bool, &'static str), &'static str>;
        let table: &[(&[u8], Want)] = &[
            (br#"INFO {"version":"2.10.1","jetstream":true}"#, Ok((true, "2.10.1"))),
            (br#"INFO {"version":"2.9.0"}"#, Ok((false, "2.9.0"))),
            (br#"INFO {"jetstream":false}"#, Ok((false, "unknown"))),
            (b"HTTP/1.1 400 Bad Request", Err("expected an INFO line")),
            (b"INFO {", Err("INFO is not JSON")),
            (b"\xff\xfe", Err("not text")),
        ];
        for (line, want) in table {
            match (parse_info(line), want) {
                (Ok((js, v)), Ok((wjs, wv))) => assert_eq!((js, v.as_str()), (*wjs, *wv)),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, w) => panic!("{:?}: got {got:?}, want {w:?}", String::from_utf8_lossy(line)),
            }
        }
    }

    #[test]
    fn states_map_to_conditions() {
        let table: &[(BrokerState, &str, &str, &str)] = &[
            (BrokerState::NotUsed, "True", "NoBroker", "in-memory"),
            (
                BrokerState::Ready { addr: "n:4222".into(), version: "2.10".into() },
                "True",
                "JetStreamAvailable",
                "n:4222",
            ),
            (
                BrokerState::Unreachable { errors: vec!["n:4222: refused".into()] },
                "False",
                "BrokerUnreachable",
                "refused",
            ),
            (
                BrokerState::NoJetStream { addr: "n:4222".into(), version: "2.10".into() },
                "False",
                "NoJetStream",
                "jetstream.enabled",
            ),
            (BrokerState::NotNats { addr: "n:80".into(), detail: "HTTP".into() }, "False", "NotNats", "n:80"),
            (BrokerState::NotProbed("urlFrom".into()), "Unknown", "NotProbed", "urlFrom"),
        ];
        for (state, status, reason, needle) in table {
            let (s, r, m) = condition(state);
            assert_eq!((s, r), (*status, *reason), "{state:?}");
            assert!(m.contains(needle), "{state:?}: {m}");
        }
    }
}
