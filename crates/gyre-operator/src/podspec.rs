//! The user's escape hatches on the server pod, and the shutdown-timing rule.
//!
//! The builders produce the operator's opinionated pod; this module lays the typed overrides of
//! `spec.pod` on top (extra env, volumes, containers, probe replacements, strategy). Names the
//! operator relies on (`gyre` container, `config`/`tmp` volumes, its env variables) cannot be
//! taken over: those are refused with a message naming the field, because a silent merge would
//! either break the pod or make the override do nothing.
//!
//! Shutdown timing: on deletion kubelet runs preStop, then sends SIGTERM, then kills the container
//! when `terminationGracePeriodSeconds` (counted from the start of preStop) runs out. The server
//! drains for up to `shutdown.timeout` after SIGTERM, so preStop + `shutdown.timeout` + a margin
//! for the process to exit must fit in the grace period, or drains are cut short by SIGKILL.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};
use serde_json::Value;

use crate::{
    builders::{NATS_URL_ENV, SECRET_ENV},
    config::ConfigError,
    crd::{CentrifugoSpec, PodOptions},
};

/// Container and volume names the operator's pod already uses.
pub const SERVER_CONTAINER: &str = "gyre";
pub const RESERVED_VOLUMES: &[&str] = &["config", "tmp", crate::tls::TLS_VOLUME, crate::managed_nats::TLS_VOLUME];
/// Seconds kept free between the end of the drain and SIGKILL, for the process to exit.
pub const SHUTDOWN_MARGIN_SECONDS: i64 = 2;

/// Refuses overrides that would clash with what the operator builds.
pub fn validate(spec: &CentrifugoSpec) -> Result<(), ConfigError> {
    let pod = spec.pod();
    let bad = |m: String| Err(ConfigError::InvalidSpec(m));
    for v in &pod.volumes {
        if RESERVED_VOLUMES.contains(&v.name.as_str()) {
            return bad(format!("spec.pod.volumes: the name {:?} is used by the operator", v.name));
        }
    }
    for m in &pod.volume_mounts {
        if m.mount_path == crate::config::CONFIG_DIR || m.mount_path == "/tmp" {
            return bad(format!("spec.pod.volumeMounts: {} is mounted by the operator", m.mount_path));
        }
    }
    let mut names = std::collections::BTreeSet::from([SERVER_CONTAINER.to_string()]);
    for c in pod.sidecars.iter().chain(&pod.init_containers) {
        if !names.insert(c.name.clone()) {
            return bad(format!("spec.pod.sidecars/initContainers: container name {:?} is taken", c.name));
        }
    }
    for e in &pod.env {
        if SECRET_ENV.iter().any(|(_, var, _)| *var == e.name) || e.name == NATS_URL_ENV {
            return bad(format!(
                "spec.pod.env: {} is set by the operator from the credentials Secret or spec.nats",
                e.name
            ));
        }
    }
    Ok(())
}

/// Lays `spec.pod`'s overrides onto the built Deployment.
pub fn apply_overrides(d: &mut Deployment, pod: &PodOptions) {
    let Some(spec) = d.spec.as_mut() else { return };
    if let Some(s) = &pod.strategy {
        spec.strategy = Some(s.clone());
    }
    let Some(ps) = spec.template.spec.as_mut() else { return };
    if let Some(server) = ps.containers.iter_mut().find(|c| c.name == SERVER_CONTAINER) {
        override_container(server, pod);
    }
    ps.containers.extend(pod.sidecars.iter().cloned());
    if !pod.init_containers.is_empty() {
        ps.init_containers.get_or_insert_default().extend(pod.init_containers.iter().cloned());
    }
    if !pod.volumes.is_empty() {
        ps.volumes.get_or_insert_default().extend(pod.volumes.iter().cloned());
    }
}

fn override_container(c: &mut Container, pod: &PodOptions) {
    if !pod.env.is_empty() {
        c.env.get_or_insert_default().extend(pod.env.iter().cloned());
    }
    if !pod.env_from.is_empty() {
        c.env_from.get_or_insert_default().extend(pod.env_from.iter().cloned());
    }
    if !pod.volume_mounts.is_empty() {
        c.volume_mounts.get_or_insert_default().extend(pod.volume_mounts.iter().cloned());
    }
    if let Some(p) = &pod.liveness_probe {
        c.liveness_probe = Some(p.clone());
    }
    if let Some(p) = &pod.readiness_probe {
        c.readiness_probe = Some(p.clone());
    }
    if let Some(p) = &pod.startup_probe {
        c.startup_probe = Some(p.clone());
    }
}

/// Parses a Go-style duration (`30s`, `1m30s`, `500ms`) into whole seconds, rounding up.
pub fn parse_duration_seconds(s: &str) -> Option<i64> {
    let mut total_ms: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let ms = match unit {
            "ns" => n / 1e6,
            "us" | "µs" => n / 1e3,
            "ms" => n,
            "s" => n * 1e3,
            "m" => n * 60e3,
            "h" => n * 3600e3,
            _ => return None,
        };
        total_ms = total_ms.checked_add(ms.ceil() as i64)?;
        rest = tail;
    }
    Some((total_ms + 999) / 1000)
}

/// The `shutdown.timeout` the pods get: derived from the grace period and preStop when
/// `spec.config` does not set it (returned as `Some`), checked when it does (`None`: keep it).
pub fn shutdown_timeout(spec: &CentrifugoSpec) -> Result<Option<String>, ConfigError> {
    let pod = spec.pod();
    let budget = pod.termination_grace_period_seconds - pod.pre_stop_sleep_seconds - SHUTDOWN_MARGIN_SECONDS;
    let configured = spec.config.as_ref().and_then(|c| c.get("shutdown")).and_then(|s| s.get("timeout"));
    match configured {
        None | Some(Value::Null) => {
            if budget < 1 {
                return Err(ConfigError::InvalidSpec(format!(
                    "spec.pod.terminationGracePeriodSeconds ({}) must exceed spec.pod.preStopSleepSeconds ({}) by more \
                     than {SHUTDOWN_MARGIN_SECONDS} s, or the server gets no time to drain connections",
                    pod.termination_grace_period_seconds, pod.pre_stop_sleep_seconds
                )));
            }
            Ok(Some(format!("{budget}s")))
        }
        Some(v) => {
            let text = v.as_str().ok_or_else(|| {
                ConfigError::InvalidSpec(
                    "spec.config.shutdown.timeout must be a duration string such as \"20s\"".into(),
                )
            })?;
            let secs = parse_duration_seconds(text).ok_or_else(|| {
                ConfigError::InvalidSpec(format!(
                    "spec.config.shutdown.timeout {text:?} is not a duration such as \"20s\""
                ))
            })?;
            if secs > budget {
                return Err(ConfigError::InvalidSpec(format!(
                    "spec.config.shutdown.timeout ({text}) + spec.pod.preStopSleepSeconds ({}) + {SHUTDOWN_MARGIN_SECONDS} s \
                     exceeds spec.pod.terminationGracePeriodSeconds ({}): kubelet would kill the server mid-drain; \
                     raise the grace period or lower the timeout (at most {}s)",
                    pod.pre_stop_sleep_seconds,
                    pod.termination_grace_period_seconds,
                    budget.max(0)
                )));
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{builders::build_deployment, tests::fixtures};

    fn spec(v: Value) -> CentrifugoSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("30s", Some(30)),
            ("1m30s", Some(90)),
            ("500ms", Some(1)),
            ("0", Some(0)),
            ("2h", Some(7200)),
            ("x", None),
            ("", None),
            ("5", None),
        ] {
            assert_eq!(parse_duration_seconds(s), want, "{s}");
        }
    }

    /// (grace, preStop, configured timeout) → Ok(derived) / Err.
    #[test]
    fn shutdown_timing_table() {
        type Case = (i64, i64, Option<&'static str>, Result<Option<&'static str>, ()>);
        let cases: [Case; 6] = [
            (30, 5, None, Ok(Some("23s"))),
            (60, 10, None, Ok(Some("48s"))),
            (30, 5, Some("23s"), Ok(None)),
            (30, 5, Some("30s"), Err(())),
            (7, 5, None, Err(())),
            (30, 0, Some("nonsense"), Err(())),
        ];
        for (grace, pre, cfg, want) in cases {
            let mut v = json!({"pod": {"terminationGracePeriodSeconds": grace, "preStopSleepSeconds": pre}});
            if let Some(c) = cfg {
                v["config"] = json!({"shutdown": {"timeout": c}});
            }
            let got = shutdown_timeout(&spec(v));
            match want {
                Ok(w) => assert_eq!(got.unwrap().as_deref(), w, "{grace} {pre} {cfg:?}"),
                Err(()) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains("spec.pod.") || e.contains("shutdown.timeout"), "{e}");
                }
            }
        }
    }

    #[test]
    fn overrides_land_on_the_server_container_and_pod() {
        let c = fixtures::cr(spec(json!({"pod": {
            "env": [{"name": "GYRE_EXTRA", "value": "1"}],
            "envFrom": [{"secretRef": {"name": "more-settings"}}],
            "volumes": [{"name": "certs", "secret": {"secretName": "tls"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/certs", "readOnly": true}],
            "sidecars": [{"name": "proxy", "image": "envoy:1"}],
            "initContainers": [{"name": "wait", "image": "busybox:1", "command": ["true"]}],
            "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 7},
            "readinessProbe": {"httpGet": {"path": "/custom", "port": 9000}},
            "startupProbe": {"httpGet": {"path": "/start", "port": 9000}, "failureThreshold": 60},
            "strategy": {"type": "Recreate"},
        }})));
        let d = build_deployment(&c, &fixtures::inputs(&c));
        let spec = d.spec.unwrap();
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let ps = spec.template.spec.unwrap();
        let names: Vec<_> = ps.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gyre", "proxy"]);
        assert_eq!(ps.init_containers.unwrap()[0].name, "wait");
        let vols: Vec<_> = ps.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(vols, ["config", "tmp", "certs"]);
        let g = &ps.containers[0];
        assert!(g.env.as_ref().unwrap().iter().any(|e| e.name == "GYRE_EXTRA"));
        assert!(g.env.as_ref().unwrap().iter().any(|e| e.name == "CENTRIFUGO_HTTP_API_KEY"), "operator env kept");
        assert_eq!(g.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "more-settings");
        assert!(g.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/certs"));
        assert_eq!(g.liveness_probe.as_ref().unwrap().period_seconds, Some(7));
        assert_eq!(g.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/custom"));
        assert_eq!(g.startup_probe.as_ref().unwrap().failure_threshold, Some(60));
    }

    #[test]
    fn clashing_overrides_are_refused_naming_the_field() {
        let cases = [
            (json!({"volumes": [{"name": "config", "emptyDir": {}}]}), "spec.pod.volumes"),
            (json!({"volumeMounts": [{"name": "x", "mountPath": "/etc/gyre"}]}), "spec.pod.volumeMounts"),
            (json!({"sidecars": [{"name": "gyre", "image": "x"}]}), "spec.pod.sidecars"),
            (json!({"env": [{"name": "CENTRIFUGO_HTTP_API_KEY", "value": "x"}]}), "spec.pod.env"),
        ];
        for (pod, field) in cases {
            let e = validate(&spec(json!({ "pod": pod }))).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(validate(&CentrifugoSpec::default()).is_ok());
    }
}
