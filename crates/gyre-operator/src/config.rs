//! The server's `config.json`, derived from the custom resource.
//!
//! The file must be a pure, deterministic function of the spec: its hash goes into a pod-template
//! annotation, so any nondeterminism (map order, float formatting) would roll every pod on every
//! reconcile. Keys are therefore emitted sorted and the document is built from `serde_json` values
//! only. Secrets never enter this file; they reach the server as `CENTRIFUGO_*` environment
//! variables from a Secret, so the ConfigMap can be read by anyone who may read ConfigMaps.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{CentrifugoSpec, ChannelNamespace};

/// Port of the client listener inside the pod (`http_server.port`).
pub const CLIENT_PORT: i32 = 8000;
/// Port of the internal listener inside the pod (`http_server.internal_port`).
pub const INTERNAL_PORT: i32 = 9000;
/// Where the ConfigMap is mounted and the file the server is started with.
pub const CONFIG_DIR: &str = "/etc/gyre";
pub const CONFIG_FILE: &str = "config.json";

/// Config paths that hold credentials. They are refused in `spec.config`, because the ConfigMap
/// is not a place for secrets and the generated Secret would silently lose to them otherwise.
pub const SECRET_PATHS: &[&str] = &[
    "client.token.hmac_secret_key",
    "client.token.hmac_previous_secret_key",
    "client.subscription_token.hmac_secret_key",
    "client.subscription_token.hmac_previous_secret_key",
    "http_api.key",
    "grpc_api.key",
    "admin.password",
    "admin.secret",
    "engine.redis.password",
    "engine.redis.sentinel_password",
    "broker.redis.password",
    "presence_manager.redis.password",
];

/// Why a spec cannot be turned into a configuration. The reason strings become condition reasons
/// and Event reasons, so they are stable CamelCase identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("spec.config.{0} holds a credential; credentials come from the Secret (see spec.secrets)")]
    SecretInConfig(String),
    #[error("spec.config.{path} is managed by the operator (it must be {expected}); remove it from spec.config")]
    OperatorOwnedKey { path: String, expected: String },
    #[error("spec.config must be a JSON object, and so must spec.config.{0}")]
    NotAnObject(String),
    #[error("channel namespace name {0:?} is invalid: use at least 2 of [-a-zA-Z0-9_.]")]
    InvalidNamespaceName(String),
    #[error("channel namespace {0:?} is defined more than once")]
    DuplicateNamespace(String),
    #[error("spec.namespaces[{0}].options must be an object")]
    NamespaceOptionsNotObject(String),
    #[error("{0}")]
    InvalidSpec(String),
}

impl ConfigError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretInConfig(_) => "SecretInConfig",
            Self::OperatorOwnedKey { .. } => "OperatorOwnedKey",
            Self::NotAnObject(_) => "ConfigNotAnObject",
            Self::InvalidNamespaceName(_) | Self::NamespaceOptionsNotObject(_) => "InvalidNamespace",
            Self::DuplicateNamespace(_) => "DuplicateNamespace",
            Self::InvalidSpec(_) => "InvalidSpec",
        }
    }
}

/// The generated configuration: canonical text and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedConfig {
    pub json: String,
    pub hash: String,
}

/// Checks that the API server's CEL rules also enforce, for clusters or clients that skipped
/// them (e.g. a CRD installed without the rules, or objects created before an upgrade).
pub fn validate_spec(spec: &CentrifugoSpec) -> Result<(), ConfigError> {
    if spec.replicas > 1 && spec.nats.is_none() {
        return Err(ConfigError::InvalidSpec("spec.nats is required when replicas > 1".into()));
    }
    if spec.autoscaling_enabled() && spec.nats.is_none() {
        return Err(ConfigError::InvalidSpec("spec.nats is required when autoscaling is enabled".into()));
    }
    if let Some(a) = &spec.autoscaling
        && a.min_replicas > a.max_replicas
    {
        return Err(ConfigError::InvalidSpec("autoscaling.minReplicas must not exceed autoscaling.maxReplicas".into()));
    }
    if let Some(p) = &spec.pod_disruption_budget
        && p.min_available.is_some()
        && p.max_unavailable.is_some()
    {
        return Err(ConfigError::InvalidSpec(
            "set at most one of podDisruptionBudget.minAvailable and maxUnavailable".into(),
        ));
    }
    if let Some(n) = &spec.nats
        && [n.url.is_some(), n.url_from.is_some(), n.is_managed()].iter().filter(|x| **x).count() != 1
    {
        return Err(ConfigError::InvalidSpec(
            "set exactly one of nats.url, nats.urlFrom and nats.managed: true".into(),
        ));
    }
    if let Some(server) = spec.nats.as_ref().filter(|n| n.is_managed()).and_then(|n| n.server.as_ref())
        && server.replicas > 1
        && server.replicas % 2 == 0
    {
        return Err(ConfigError::InvalidSpec(format!(
            "nats.server.replicas must be 1 or odd (JetStream needs a majority), got {}",
            server.replicas
        )));
    }
    if spec.admin().is_some_and(|a| a.insecure && a.external) {
        return Err(ConfigError::InvalidSpec(
            "spec.admin.insecure together with spec.admin.external would put an unauthenticated admin UI on the client port"
                .into(),
        ));
    }
    crate::ingress::validate(spec)?;
    crate::podspec::validate(spec)?;
    Ok(())
}

/// Builds `config.json` for a spec.
pub fn build_config(spec: &CentrifugoSpec) -> Result<GeneratedConfig, ConfigError> {
    validate_spec(spec)?;
    let mut root = match &spec.config {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ConfigError::NotAnObject(String::new())),
    };
    for path in SECRET_PATHS {
        if lookup(&root, path).is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::SecretInConfig((*path).to_string()));
        }
    }

    // Operator-owned keys: the pod spec (ports, probes, scraping, broker env) depends on them.
    let mut owned: Vec<(&str, Value)> = vec![
        ("http_server.port", json!(CLIENT_PORT)),
        ("http_server.internal_port", json!(INTERNAL_PORT)),
        ("health.enabled", json!(true)),
        ("prometheus.enabled", json!(true)),
        ("log.level", json!(spec.log_level.as_str())),
        ("admin.enabled", json!(spec.admin_enabled())),
    ];
    if let Some(admin) = spec.admin() {
        owned.push(("admin.insecure", json!(admin.insecure)));
        owned.push(("admin.external", json!(admin.external)));
        if let Some(prefix) = &admin.handler_prefix {
            owned.push(("admin.handler_prefix", json!(prefix)));
        }
    }
    // preStop + drain must fit in the grace period (see `podspec`); a configured value is checked.
    if let Some(timeout) = crate::podspec::shutdown_timeout(spec)? {
        owned.push(("shutdown.timeout", json!(timeout)));
    }
    if let Some(nats) = &spec.nats {
        owned.push(("broker.enabled", json!(true)));
        owned.push(("broker.type", json!("nats")));
        if let Some(url) = &nats.url {
            owned.push(("broker.nats.url", json!(url)));
        }
        owned.push(("broker.nats.prefix", json!(nats.prefix)));
        owned.push(("presence_manager.enabled", json!(true)));
        owned.push(("presence_manager.type", json!("nats")));
    }
    // TLS: the mounted Secret's files (see `tls`), and the managed NATS's client Secret.
    owned.extend(crate::tls::config_keys(spec));
    owned.extend(crate::managed_nats::gyre_config_keys(spec));
    for (path, value) in owned {
        if let Some(existing) = lookup(&root, path)
            && !existing.is_null()
            && !same_value(existing, &value)
        {
            return Err(ConfigError::OperatorOwnedKey { path: path.to_string(), expected: value.to_string() });
        }
        insert(&mut root, path, value)?;
    }

    merge_namespaces(&mut root, &spec.namespaces)?;

    let doc = Value::Object(root);
    let json = canonical_json(&doc);
    let hash = sha256_hex(json.as_bytes());
    Ok(GeneratedConfig { json, hash })
}

fn same_value(a: &Value, b: &Value) -> bool {
    // A port given as a string ("8000") is the same port for the server's config loader.
    a == b || a.as_str().is_some_and(|s| s == b.to_string().trim_matches('"'))
}

fn merge_namespaces(root: &mut Map<String, Value>, typed: &[ChannelNamespace]) -> Result<(), ConfigError> {
    let existing = match lookup(root, "channel.namespaces") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ConfigError::InvalidSpec("spec.config.channel.namespaces must be a list".into()));
        }
    };
    if existing.is_empty() && typed.is_empty() {
        return Ok(());
    }
    let mut out = existing;
    for ns in typed {
        out.push(namespace_to_config(ns)?);
    }
    let mut seen = std::collections::BTreeSet::new();
    for ns in &out {
        let name = ns.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_namespace_name(name) {
            return Err(ConfigError::InvalidNamespaceName(name.to_string()));
        }
        if !seen.insert(name.to_string()) {
            return Err(ConfigError::DuplicateNamespace(name.to_string()));
        }
    }
    insert(root, "channel.namespaces", Value::Array(out))
}

/// Mirrors the server's own check, so a bad name is reported on the resource instead of as a
/// crash loop.
pub fn valid_namespace_name(name: &str) -> bool {
    name.len() >= 2 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn namespace_to_config(ns: &ChannelNamespace) -> Result<Value, ConfigError> {
    let mut m = match &ns.options {
        None => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(ConfigError::NamespaceOptionsNotObject(ns.name.clone())),
    };
    let typed: [(&str, Option<Value>); 12] = [
        ("presence", ns.presence.map(Value::from)),
        ("join_leave", ns.join_leave.map(Value::from)),
        ("force_push_join_leave", ns.force_push_join_leave.map(Value::from)),
        ("history_size", ns.history_size.map(Value::from)),
        ("history_ttl", ns.history_ttl.clone().map(Value::from)),
        ("force_recovery", ns.force_recovery.map(Value::from)),
        ("allow_subscribe_for_client", ns.allow_subscribe_for_client.map(Value::from)),
        ("allow_subscribe_for_anonymous", ns.allow_subscribe_for_anonymous.map(Value::from)),
        ("allow_publish_for_subscriber", ns.allow_publish_for_subscriber.map(Value::from)),
        ("allow_publish_for_client", ns.allow_publish_for_client.map(Value::from)),
        ("allow_presence_for_subscriber", ns.allow_presence_for_subscriber.map(Value::from)),
        ("allow_history_for_subscriber", ns.allow_history_for_subscriber.map(Value::from)),
    ];
    for (k, v) in typed {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    m.insert("name".into(), Value::from(ns.name.clone()));
    Ok(Value::Object(m))
}

fn lookup<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = root.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn insert(root: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), ConfigError> {
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().expect("non-empty path");
    let mut cur = root;
    let mut walked = String::new();
    for p in parents {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(p);
        let entry = cur.entry((*p).to_string()).or_insert_with(|| Value::Object(Map::new()));
        if entry.is_null() {
            *entry = Value::Object(Map::new());
        }
        cur = entry.as_object_mut().ok_or_else(|| ConfigError::NotAnObject(walked.clone()))?;
    }
    cur.insert((*last).to_string(), value);
    Ok(())
}

/// JSON with object keys sorted at every level, two-space indented, trailing newline. Independent
/// of serde_json's `preserve_order` feature, which another crate in the build could switch on.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, 0, &mut out);
    out.push('\n');
    out
}

fn write_canonical(v: &Value, indent: usize, out: &mut String) {
    let pad = |n: usize, out: &mut String| out.extend(std::iter::repeat_n(' ', n));
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                pad(indent + 2, out);
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push_str(": ");
                write_canonical(&m[k.as_str()], indent + 2, out);
                if i + 1 < keys.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(indent, out);
            out.push('}');
        }
        Value::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, item) in a.iter().enumerate() {
                pad(indent + 2, out);
                write_canonical(item, indent + 2, out);
                if i + 1 < a.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(indent, out);
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AdminSpec, LogLevel, NatsSpec};

    fn spec_with_config(config: Value) -> CentrifugoSpec {
        CentrifugoSpec { config: Some(config), ..Default::default() }
    }

    fn parse(c: &GeneratedConfig) -> Value {
        serde_json::from_str(&c.json).expect("generated config is JSON")
    }

    #[test]
    fn defaults_set_operator_owned_keys() {
        let c = build_config(&CentrifugoSpec::default()).unwrap();
        let v = parse(&c);
        assert_eq!(v["http_server"]["port"], 8000);
        assert_eq!(v["http_server"]["internal_port"], 9000);
        assert_eq!(v["health"]["enabled"], true);
        assert_eq!(v["prometheus"]["enabled"], true);
        assert_eq!(v["log"]["level"], "info");
        assert_eq!(v["admin"]["enabled"], false);
        assert!(v.get("broker").is_none(), "no broker without nats");
        assert!(c.json.ends_with("}\n"));
    }

    #[test]
    fn passthrough_keys_survive_and_output_is_sorted() {
        let spec = spec_with_config(json!({
            "client": {"allowed_origins": ["https://app.example"], "ping_interval": "20s"},
            "websocket": {"compression": true},
            "channel": {"without_namespace": {"presence": true}}
        }));
        let c = build_config(&spec).unwrap();
        let v = parse(&c);
        assert_eq!(v["client"]["allowed_origins"][0], "https://app.example");
        assert_eq!(v["websocket"]["compression"], true);
        assert_eq!(v["channel"]["without_namespace"]["presence"], true);
        let pos = |k: &str| c.json.find(&format!("\"{k}\"")).unwrap();
        assert!(pos("admin") < pos("channel") && pos("channel") < pos("client"));
        assert!(pos("client") < pos("websocket"));
    }

    #[test]
    fn same_spec_same_hash_and_key_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":{"y":1,"x":2},"a":[1,2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[1,2],"b":{"x":2,"y":1}}"#).unwrap();
        let ca = build_config(&spec_with_config(a)).unwrap();
        let cb = build_config(&spec_with_config(b)).unwrap();
        assert_eq!(ca, cb);
        assert_eq!(ca.hash.len(), 64);
    }

    #[test]
    fn hash_changes_with_config_and_log_level_but_not_with_unrelated_fields() {
        let base = CentrifugoSpec::default();
        let h0 = build_config(&base).unwrap().hash;
        let mut debug = base.clone();
        debug.log_level = LogLevel::Debug;
        assert_ne!(h0, build_config(&debug).unwrap().hash);
        let mut cfg = base.clone();
        cfg.config = Some(json!({"client": {"channel_limit": 10}}));
        assert_ne!(h0, build_config(&cfg).unwrap().hash);
        // Pod scheduling, resources, service settings are not part of the file.
        let mut other = base.clone();
        other.image = Some("example/gyre:2".into());
        other.pod = Some(Default::default());
        other.ingress = None;
        assert_eq!(h0, build_config(&other).unwrap().hash);
    }

    #[test]
    fn secrets_in_config_are_refused() {
        for (cfg, path) in [
            (json!({"client": {"token": {"hmac_secret_key": "x"}}}), "client.token.hmac_secret_key"),
            (json!({"http_api": {"key": "x"}}), "http_api.key"),
            (json!({"admin": {"password": "x"}}), "admin.password"),
            (json!({"admin": {"secret": "x"}}), "admin.secret"),
        ] {
            let err = build_config(&spec_with_config(cfg)).unwrap_err();
            assert_eq!(err, ConfigError::SecretInConfig(path.into()));
            assert_eq!(err.reason(), "SecretInConfig");
            assert!(err.to_string().contains(path));
        }
    }

    #[test]
    fn conflicting_owned_keys_are_refused_but_equal_ones_accepted() {
        let err = build_config(&spec_with_config(json!({"http_server": {"port": 9999}}))).unwrap_err();
        assert_eq!(err.reason(), "OperatorOwnedKey");
        assert!(err.to_string().contains("http_server.port"));
        build_config(&spec_with_config(json!({"http_server": {"port": 8000}}))).unwrap();
        build_config(&spec_with_config(json!({"health": {"enabled": true}}))).unwrap();
        let err = build_config(&spec_with_config(json!({"http_server": 5}))).unwrap_err();
        assert_eq!(err, ConfigError::NotAnObject("http_server".into()));
        let err = build_config(&spec_with_config(json!([1, 2]))).unwrap_err();
        assert_eq!(err.reason(), "ConfigNotAnObject");
    }

    #[test]
    fn nats_sets_broker_and_presence_manager() {
        let spec = CentrifugoSpec {
            replicas: 3,
            nats: Some(NatsSpec {
                url: Some("nats://nats:4222".into()),
                url_from: None,
                prefix: "tenant-a".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = parse(&build_config(&spec).unwrap());
        assert_eq!(
            v["broker"],
            json!({"enabled": true, "type": "nats", "nats": {"url": "nats://nats:4222", "prefix": "tenant-a"}})
        );
        assert_eq!(v["presence_manager"], json!({"enabled": true, "type": "nats"}));
    }

    #[test]
    fn nats_url_from_secret_stays_out_of_the_file() {
        let spec = CentrifugoSpec {
            nats: Some(NatsSpec {
                url: None,
                url_from: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                    name: "nats-creds".into(),
                    key: "url".into(),
                    optional: None,
                }),
                prefix: "centrifugo".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = parse(&build_config(&spec).unwrap());
        assert!(v["broker"]["nats"].get("url").is_none());
        assert_eq!(v["broker"]["type"], "nats");
    }

    #[test]
    fn spec_rules_mirror_cel() {
        let multi = CentrifugoSpec { replicas: 2, ..Default::default() };
        assert_eq!(build_config(&multi).unwrap_err().reason(), "InvalidSpec");
        let both = CentrifugoSpec {
            nats: Some(NatsSpec { url: None, url_from: None, prefix: "p".into(), ..Default::default() }),
            ..Default::default()
        };
        assert!(build_config(&both).unwrap_err().to_string().contains("exactly one"));
    }

    #[test]
    fn typed_namespaces_merge_with_config_namespaces() {
        let mut spec = spec_with_config(json!({"channel": {"namespaces": [{"name": "legacy", "presence": true}]}}));
        spec.admin = Some(AdminSpec::default());
        spec.namespaces = vec![ChannelNamespace {
            name: "chat".into(),
            presence: Some(true),
            history_size: Some(100),
            history_ttl: Some("300s".into()),
            allow_subscribe_for_client: Some(true),
            options: Some(json!({"allowed_delta_types": ["fossil"]})),
            ..Default::default()
        }];
        let v = parse(&build_config(&spec).unwrap());
        let ns = v["channel"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0]["name"], "legacy");
        assert_eq!(
            ns[1],
            json!({"name": "chat", "presence": true, "history_size": 100, "history_ttl": "300s", "allow_subscribe_for_client": true, "allowed_delta_types": ["fossil"]})
        );
        assert_eq!(v["admin"]["enabled"], true);
    }

    #[test]
    fn bad_and_duplicate_namespaces_are_refused() {
        let mut spec = CentrifugoSpec {
            namespaces: vec![ChannelNamespace { name: "x".into(), ..Default::default() }],
            ..Default::default()
        };
        assert_eq!(build_config(&spec).unwrap_err().reason(), "InvalidNamespace");
        spec.namespaces = vec![
            ChannelNamespace { name: "chat".into(), ..Default::default() },
            ChannelNamespace { name: "chat".into(), ..Default::default() },
        ];
        assert_eq!(build_config(&spec).unwrap_err(), ConfigError::DuplicateNamespace("chat".into()));
    }

    #[test]
    fn canonical_json_is_stable_text() {
        let v = json!({"b": [], "a": {}, "c": [1, {"z": null, "y": "s"}]});
        assert_eq!(
            canonical_json(&v),
            "{\n  \"a\": {},\n  \"b\": [],\n  \"c\": [\n    1,\n    {\n      \"y\": \"s\",\n      \"z\": null\n    }\n  ]\n}\n"
        );
    }
}
