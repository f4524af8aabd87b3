//! Health endpoints on the internal port, split by failure domain so that an
//! orchestrator restarts a process only when restarting can help:
//!
//! - `{health.handler_prefix}` (Centrifugo's `/health`, always 200 `{}` there)
//!   and `{prefix}/live`: liveness. 200 whenever this process can answer HTTP;
//!   independent of NATS. A NATS outage is not cured by restarting Gyre (the
//!   node rides it out: clients stay connected, publishes are refused), so a
//!   liveness probe tied to NATS would only turn a broker blip into a restart
//!   of every pod.
//! - `{prefix}/ready`: readiness. 503 with `{"error": reason}` while an engine
//!   is not usable (NATS connecting, lost, or without JetStream) and while the
//!   node drains for shutdown, so a load balancer stops sending new clients
//!   here; 200 `{}` otherwise.
//!
//! Leaf module: the caller passes the engine health and the shutdown flag.

use gyre_node::engine::EngineHealth;
use http::StatusCode;

/// Which question a health request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Can the process serve at all (restart it if not)?
    Live,
    /// Should new traffic come here now?
    Ready,
}

/// The probe a request path asks for under `prefix` (`health.handler_prefix`),
/// or `None` when the path is not a health path.
pub fn probe_for(prefix: &str, path: &str) -> Option<Probe> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    match rest {
        "" | "/" | "/live" => Some(Probe::Live),
        "/ready" => Some(Probe::Ready),
        _ => None,
    }
}

/// Status and JSON body for `probe` given the engines' health and whether the
/// node is shutting down.
pub fn answer(probe: Probe, health: &EngineHealth, shutting_down: bool) -> (StatusCode, String) {
    if probe == Probe::Live {
        return (StatusCode::OK, "{}".into());
    }
    let reason = match health {
        _ if shutting_down => "shutting down".to_string(),
        EngineHealth::Ready => return (StatusCode::OK, "{}".into()),
        EngineHealth::NotReady(m) | EngineHealth::Fatal(m) => m.clone(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": reason }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_probes() {
        let table: &[(&str, &str, Option<Probe>)] = &[
            ("/health", "/health", Some(Probe::Live)),
            ("/health", "/health/", Some(Probe::Live)),
            ("/health", "/health/live", Some(Probe::Live)),
            ("/health", "/health/ready", Some(Probe::Ready)),
            ("/health/", "/health/ready", Some(Probe::Ready)),
            ("/health", "/healthz", None),
            ("/health", "/health/ready/x", None),
            ("/health", "/api", None),
            ("/hc", "/hc/ready", Some(Probe::Ready)),
            ("/hc", "/health", None),
        ];
        for (prefix, path, want) in table {
            assert_eq!(probe_for(prefix, path), *want, "prefix {prefix} path {path}");
        }
    }

    #[test]
    fn answers_by_failure_domain() {
        let down = EngineHealth::NotReady("NATS at nats://x:4222 unreachable".into());
        let fatal = EngineHealth::Fatal("no JetStream".into());
        let table: &[(Probe, &EngineHealth, bool, u16, &str)] = &[
            (Probe::Live, &EngineHealth::Ready, false, 200, "{}"),
            (Probe::Live, &down, false, 200, "{}"),
            (Probe::Live, &fatal, false, 200, "{}"),
            (Probe::Live, &EngineHealth::Ready, true, 200, "{}"),
            (Probe::Ready, &EngineHealth::Ready, false, 200, "{}"),
            (Probe::Ready, &down, false, 503, r#"{"error":"NATS at nats://x:4222 unreachable"}"#),
            (Probe::Ready, &fatal, false, 503, r#"{"error":"no JetStream"}"#),
            (Probe::Ready, &EngineHealth::Ready, true, 503, r#"{"error":"shutting down"}"#),
        ];
        for (probe, health, shutting, code, body) in table {
            let (c, b) = answer(*probe, health, *shutting);
            assert_eq!((c.as_u16(), b.as_str()), (*code, *body), "{probe:?} {health:?} shutting_down={shutting}");
        }
    }
}
