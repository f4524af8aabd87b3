//! Reads the configuration once: file (JSON, YAML or TOML) < `CENTRIFUGO_*`
//! environment variables < command-line flags, then validates it.
//!
//! The env mapping walks the serialized default config tree, so every key the
//! config knows is reachable as `CENTRIFUGO_<PATH>` without a hand-kept list
//! (keys contain underscores, so the mapping cannot be inverted by splitting).
//! Every key is looked up in the key registry ([`crate::config_keys`]): a
//! Centrifugo v6 key Gyre does not implement is an error naming it unless it
//! holds Centrifugo's default; keys nobody knows and unknown `CENTRIFUGO_*`
//! variables are warnings naming the key; a value of the wrong type or a
//! failed rule is an error naming the key. Every error is reported at once.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use gyre_node::config::Config;
use serde_json::{Map, Value};

/// What went wrong loading the config; each line names a key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct LoadError(pub Vec<String>);

/// A loaded config plus the warnings to log.
#[derive(Debug)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// Unknown keys and variables.
    pub warnings: Vec<String>,
}

/// Reads a config file into a JSON tree. `None` path or a missing default file → empty.
pub fn read_file(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError(vec![format!("{}: {e}", path.display())]))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("json").to_ascii_lowercase();
    parse_text(&text, &ext).map_err(|e| LoadError(vec![format!("{}: {e}", path.display())]))
}

/// Parses config file text by extension (`yaml`/`yml`, `toml`, anything else
/// JSON) into a JSON tree whose top level is an object (`null` → empty).
/// Pure, so the config fuzz target (crates/gyre-fuzz) exercises exactly this.
pub fn parse_text(text: &str, ext: &str) -> Result<Value, String> {
    let v: Value = match ext {
        "yaml" | "yml" => serde_norway::from_str(text).map_err(|e| e.to_string())?,
        "toml" => {
            let t: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
            serde_json::to_value(t).map_err(|e| e.to_string())?
        }
        _ => serde_json::from_str(text).map_err(|e| e.to_string())?,
    };
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err("the top level must be an object".into()),
    }
}

/// Parses one env value for a leaf whose default is `default`.
fn env_value(default: &Value, raw: &str) -> Result<Value, String> {
    match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(Value::Bool(true)),
            "0" | "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a boolean")),
        },
        Value::Number(_) => raw
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<f64>().map(Value::from))
            .map_err(|_| format!("{raw:?} is not a number")),
        Value::Array(_) => {
            if raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).map_err(|e| format!("invalid JSON array: {e}"))
            } else {
                Ok(Value::Array(raw.split_whitespace().map(|s| Value::String(s.into())).collect()))
            }
        }
        Value::Object(_) | Value::Null => {
            if raw.trim_start().starts_with('{') || raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))
            } else {
                Ok(Value::String(raw.into()))
            }
        }
        Value::String(_) => Ok(Value::String(raw.into())),
    }
}

fn env_name(path: &[&str]) -> String {
    let mut s = String::from("CENTRIFUGO_");
    s.push_str(&path.join("_").to_ascii_uppercase().replace(['.', '-'], "_"));
    s
}

pub(crate) fn set_path(root: &mut Value, path: &[&str], v: Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("made an object above");
        if i == path.len() - 1 {
            obj.insert((*k).to_string(), v);
            return;
        }
        cur = obj.entry((*k).to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Applies `CENTRIFUGO_*` variables onto `tree`. Returns the names used.
fn overlay_env(
    tree: &mut Value,
    defaults: &Value,
    env: &HashMap<String, String>,
    errors: &mut Vec<String>,
) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    fn walk<'a>(node: &'a Value, path: &mut Vec<&'a str>, out: &mut Vec<(Vec<&'a str>, &'a Value)>) {
        match node {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    path.push(k);
                    walk(v, path, out);
                    path.pop();
                }
                // Objects are settable as a whole too (JSON), e.g. proxy sections.
            }
            _ => out.push((path.clone(), node)),
        }
    }
    let mut leaves = Vec::new();
    walk(defaults, &mut Vec::new(), &mut leaves);
    for (path, default) in leaves {
        let name = env_name(&path);
        if let Some(raw) = env.get(&name).filter(|v| !v.is_empty()) {
            used.insert(name.clone());
            match env_value(default, raw) {
                Ok(v) => set_path(tree, &path, v),
                Err(e) => errors.push(format!("{name} ({}): {e}", path.join("."))),
            }
        }
    }
    // Per-element overrides of named array items, e.g.
    // CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_<OPTION> or CENTRIFUGO_PROXIES_<NAME>_TIMEOUT;
    // element keys come from the registry (Centrifugo's and Gyre's).
    let reg = crate::config_keys::registry();
    for array in reg.top_arrays() {
        let parts: Vec<&str> = array.split('.').collect();
        let pointer = format!("/{}", parts.join("/"));
        let array_var = env_name(&parts);
        let Some(Value::Array(items)) = tree.pointer_mut(&pointer) else {
            continue;
        };
        for item in items.iter_mut() {
            let Some(name) = item.get("name").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let upper = name.to_ascii_uppercase().replace(['.', '-'], "_");
            for (rest, spec) in reg.element_keys(array) {
                if rest == "name" {
                    continue;
                }
                let sub: Vec<&str> = rest.split('.').collect();
                let var = format!("{array_var}_{upper}_{}", sub.join("_").to_ascii_uppercase());
                if let Some(raw) = env.get(&var).filter(|v| !v.is_empty()) {
                    used.insert(var.clone());
                    match env_value(&spec.default, raw) {
                        Ok(v) => set_path(item, &sub, v),
                        Err(e) => errors.push(format!("{var} ({array}[].{rest}): {e}")),
                    }
                }
            }
        }
    }
    used
}

/// Every key's default as one tree: Gyre's typed defaults, then the registry's
/// (Centrifugo keys Gyre refuses, Gyre-only keys), so that each of them is
/// reachable as a `CENTRIFUGO_*` variable.
fn known_defaults() -> Value {
    let mut tree = serde_json::to_value(Config::default()).expect("default config serializes");
    fn merge(dst: &mut Value, src: &Value) {
        match (dst, src) {
            (Value::Object(d), Value::Object(s)) => {
                for (k, v) in s {
                    match d.get_mut(k) {
                        Some(existing) if existing.is_object() => merge(existing, v),
                        Some(existing) if existing.is_null() => *existing = v.clone(),
                        Some(_) => {}
                        None => {
                            d.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (d, s) if d.is_null() => *d = s.clone(),
            _ => {}
        }
    }
    merge(&mut tree, &crate::config_keys::registry().defaults_tree());
    tree
}

/// Variables that do not configure the server: `CENTRIFUGO_VAR_*` (values
/// referenced from string maps) and the ones Kubernetes injects for a Service
/// whose name starts with `centrifugo` (`CENTRIFUGO_SERVICE_HOST`,
/// `CENTRIFUGO_PORT_8000_TCP_ADDR`, …). A variable naming a real key
/// (`CENTRIFUGO_HTTP_SERVER_PORT`) is never one of them.
pub fn is_service_link_var(name: &str) -> bool {
    static KNOWN: std::sync::LazyLock<BTreeSet<String>> = std::sync::LazyLock::new(|| {
        let mut out = BTreeSet::new();
        fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeSet<String>) {
            match v {
                Value::Object(m) if !m.is_empty() => {
                    for (k, v) in m {
                        path.push(k.clone());
                        walk(v, path, out);
                        path.pop();
                    }
                }
                _ => {
                    let p: Vec<&str> = path.iter().map(String::as_str).collect();
                    out.insert(env_name(&p));
                }
            }
        }
        walk(&known_defaults(), &mut Vec::new(), &mut out);
        out
    });
    if !name.starts_with("CENTRIFUGO_") || KNOWN.contains(name) {
        return false;
    }
    name.starts_with("CENTRIFUGO_VAR_")
        || name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || name.contains("_PORT_")
}

/// Flag overrides, as dotted paths and raw values.
pub type FlagOverrides = Vec<(String, Value)>;

/// Loads and validates. `env` is passed in (the binary hands it `std::env::vars()`),
/// so tests never touch the process environment.
pub fn load(file: Option<Value>, env: &HashMap<String, String>, flags: &FlagOverrides) -> Result<Loaded, LoadError> {
    let mut tree = file.unwrap_or_else(|| Value::Object(Map::new()));
    let defaults = known_defaults();
    let mut errors = Vec::new();
    let used = overlay_env(&mut tree, &defaults, env, &mut errors);
    for (path, v) in flags {
        let parts: Vec<&str> = path.split('.').collect();
        set_path(&mut tree, &parts, v.clone());
    }
    let mut warnings = Vec::new();
    for name in env.keys() {
        if name.starts_with("CENTRIFUGO_") && !used.contains(name) && !is_service_link_var(name) {
            warnings.push(format!("unknown environment variable {name}"));
        }
    }
    let checked = crate::config_keys::check(&tree);
    errors.extend(checked.errors);
    warnings.extend(checked.unknown.into_iter().map(|k| format!("unknown config key {k}")));
    let config: Config = match serde_path_to_error::deserialize(tree) {
        Ok(c) => c,
        Err(e) => {
            errors.push(format!("{}: {}", e.path(), e.inner()));
            return Err(LoadError(errors));
        }
    };
    if let Err(errs) = config.validate() {
        errors.extend(errs.into_iter().map(|e| e.to_string()));
    }
    if !errors.is_empty() {
        return Err(LoadError(errors));
    }
    warnings.sort();
    Ok(Loaded { config, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let file = json!({"http_server": {"port": 9000}, "client": {"token": {"hmac_secret_key": "f"}}});
        let e = env(&[
            ("CENTRIFUGO_HTTP_SERVER_PORT", "9100"),
            ("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", "e"),
            ("CENTRIFUGO_CLIENT_ALLOWED_ORIGINS", "https://a.com https://b.com"),
            ("CENTRIFUGO_CLIENT_INSECURE", "true"),
            ("CENTRIFUGO_CHANNEL_NAMESPACES", r#"[{"name":"chat","presence":true}]"#),
            ("CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_HISTORY_SIZE", "10"),
            ("CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_HISTORY_TTL", "60s"),
            ("CENTRIFUGO_CLIENT_PING_INTERVAL", "30s"),
            ("CENTRIFUGO_NATS_SERVICE_PORT", "4222"),
        ]);
        let flags = vec![("http_server.port".to_string(), json!(9200))];
        let l = load(Some(file), &e, &flags).unwrap();
        assert_eq!(l.config.http_server.port, 9200);
        assert_eq!(l.config.client.token.hmac_secret_key, "e");
        assert_eq!(l.config.client.allowed_origins, vec!["https://a.com", "https://b.com"]);
        assert!(l.config.client.insecure);
        assert_eq!(l.config.channel.namespaces[0].options.history_size, 10);
        assert!(l.config.channel.namespaces[0].options.presence);
        assert_eq!(l.config.client.ping_interval.0, Some(std::time::Duration::from_secs(30)));
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn unknown_keys_warn_and_bad_values_name_the_key() {
        let l = load(Some(json!({"client": {"bogus": 1}, "nope": true})), &env(&[("CENTRIFUGO_WHAT", "1")]), &vec![])
            .unwrap();
        assert!(l.warnings.iter().any(|w| w.contains("client.bogus")), "{:?}", l.warnings);
        assert!(l.warnings.iter().any(|w| w.contains("nope")));
        assert!(l.warnings.iter().any(|w| w.contains("CENTRIFUGO_WHAT")));

        let err = load(Some(json!({"http_server": {"port": "abc"}})), &env(&[]), &vec![]).unwrap_err();
        assert!(err.to_string().contains("http_server.port"), "{err}");
        let err = load(Some(json!({"client": {"ping_interval": "5s"}})), &env(&[]), &vec![]).unwrap_err();
        assert!(err.to_string().contains("client.ping_interval"), "{err}");
        let err = load(None, &env(&[("CENTRIFUGO_CLIENT_INSECURE", "maybe")]), &vec![]).unwrap_err();
        assert!(err.to_string().contains("CENTRIFUGO_CLIENT_INSECURE"), "{err}");
    }

    #[test]
    fn yaml_and_toml_files() {
        let dir = std::env::temp_dir().join(format!("gyre-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let y = dir.join("c.yaml");
        std::fs::write(
            &y,
            "http_server:\n  port: 8123\nchannel:\n  namespaces:\n    - name: chat\n      presence: true\n",
        )
        .unwrap();
        let l = load(Some(read_file(&y).unwrap()), &env(&[]), &vec![]).unwrap();
        assert_eq!(l.config.http_server.port, 8123);
        let t = dir.join("c.toml");
        std::fs::write(&t, "[http_server]\nport = 8124\n[client]\nallowed_origins = [\"*\"]\n").unwrap();
        let l = load(Some(read_file(&t).unwrap()), &env(&[]), &vec![]).unwrap();
        assert_eq!(l.config.http_server.port, 8124);
        assert_eq!(l.config.client.allowed_origins, vec!["*"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    use crate::config_keys::{KeySpec, KeyType, Status, registry};

    /// A non-default value for `spec`, valid for Gyre's own rules where one exists.
    fn sample(spec: &KeySpec) -> Value {
        let last = spec.key.rsplit('.').next().unwrap_or_default();
        match spec.key.as_str() {
            "log.level" => return json!("debug"),
            "engine.type" => return json!("redis"),
            "broker.type" | "presence_manager.type" => return json!("nats"),
            "http_api.error_mode" | "grpc_api.error_mode" => return json!("transport"),
            "admin.handler_prefix" => return json!("/admin"),
            "http_server.internal_port" => return json!("9123"),
            "client.token.jwks_public_endpoint" | "client.subscription_token.jwks_public_endpoint" => {
                return json!("https://example.com/jwks");
            }
            _ => {}
        }
        match last {
            "force_recovery_mode" => return json!("cache"),
            "publication_data_format" => return json!("json"),
            "allowed_delta_types" => return json!(["fossil"]),
            "channel_regex" | "audience_regex" | "issuer_regex" => return json!("^a$"),
            "name" if spec.key.starts_with("channel.namespaces") || spec.key.starts_with("rpc.namespaces") => {
                return json!("zz");
            }
            _ => {}
        }
        match spec.typ {
            KeyType::Bool => json!(!spec.default.as_bool().unwrap_or(false)),
            KeyType::Int => json!(spec.default.as_i64().unwrap_or(0) + 7),
            KeyType::Str => json!("zz"),
            KeyType::Duration => json!("17s"),
            KeyType::StrList => json!(["zz"]),
            KeyType::Map | KeyType::Object => json!({"zz": "1"}),
            KeyType::ObjectList => json!([{"name": "zz"}]),
        }
    }

    /// Companion settings that make a sample pass Gyre's cross-key rules.
    fn companions(key: &str) -> Value {
        let opts = |prefix: &str| -> Value {
            let o = json!({"history_size": 10, "history_ttl": "60s"});
            if let Some(rest) = prefix.strip_prefix("channel.namespaces[]") {
                let _ = rest;
                json!({"channel": {"namespaces": [o]}})
            } else {
                json!({"channel": {"without_namespace": o}})
            }
        };
        for field in ["history_size", "history_ttl", "force_recovery"] {
            if let Some(prefix) = key.strip_suffix(&format!(".{field}")) {
                return opts(prefix);
            }
        }
        if key == "admin.enabled" {
            return json!({"admin": {"password": "p", "secret": "s"}});
        }
        // Proxies: an enabled proxy or a reference needs an endpoint to exist.
        let ep = json!("http://127.0.0.1:1");
        if key.starts_with("proxies[].") {
            return json!({"proxies": [{"name": "pp", "endpoint": ep}]});
        }
        if let Some(kind) = key.strip_prefix("client.proxy.").and_then(|k| k.strip_suffix(".enabled")) {
            return json!({"client": {"proxy": {kind: {"endpoint": ep}}}});
        }
        for kind in ["subscribe", "publish", "sub_refresh"] {
            if key.ends_with(&format!(".{kind}_proxy_enabled")) {
                return json!({"channel": {"proxy": {kind: {"endpoint": ep}}}});
            }
        }
        if key.starts_with("rpc.") && key.ends_with(".proxy_enabled") {
            return json!({"rpc": {"proxy": {"endpoint": ep}}});
        }
        json!({})
    }

    fn merge(dst: &mut Value, src: &Value) {
        match (dst, src) {
            (Value::Object(d), Value::Object(s)) => {
                for (k, v) in s {
                    merge(d.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (Value::Array(d), Value::Array(s)) => {
                for (i, v) in s.iter().enumerate() {
                    if i < d.len() {
                        merge(&mut d[i], v);
                    } else {
                        d.push(v.clone());
                    }
                }
            }
            (d, s) => *d = s.clone(),
        }
    }

    /// A tree holding `v` at `key` (`a[].b` puts one element in `a`, named
    /// when it is a top-level array such as a namespace list).
    fn tree_with(key: &str, v: Value) -> Value {
        fn build(key: &str, v: Value, top: bool) -> Value {
            let mut root = json!({});
            match key.split_once("[].") {
                None => set_path(&mut root, &key.split('.').collect::<Vec<_>>(), v),
                Some((array, rest)) => {
                    let mut item = build(rest, v, false);
                    if top && item.get("name").is_none() {
                        item["name"] = json!("zz");
                    }
                    set_path(&mut root, &array.split('.').collect::<Vec<_>>(), json!([item]));
                }
            }
            root
        }
        build(key, v, true)
    }

    /// Turns on what a refused key needs to matter: every ancestor `enabled`,
    /// backend selectors, the proxy flag of a `*_proxy_name`.
    fn ungate(key: &str, tree: &mut Value) {
        let reg = registry();
        let mut p = key;
        while let Some((parent, _)) = p.rsplit_once('.') {
            let flag = format!("{parent}.enabled");
            if flag != key && reg.get(&flag).is_some() {
                merge(tree, &tree_with(&flag, json!(true)));
            }
            p = parent;
        }
        for (prefix, selector, value) in [
            ("engine.redis.", "engine.type", "redis"),
            ("broker.redis.", "broker.type", "redis"),
            ("broker.nats.", "broker.type", "nats"),
            ("broker.postgres", "broker.type", "postgres"),
            ("broker.redisnats", "broker.type", "redisnats"),
            ("presence_manager.redis.", "presence_manager.type", "redis"),
            ("map_broker.redis", "map_broker.type", "redis"),
            ("map_broker.postgres", "map_broker.type", "postgres"),
        ] {
            if key.starts_with(prefix) {
                merge(tree, &tree_with(selector, json!(value)));
            }
        }
        for ws in ["websocket", "uni_websocket"] {
            if key.starts_with(&format!("{ws}.compression_")) || key == format!("{ws}.decompressed_message_size_limit")
            {
                merge(tree, &tree_with(&format!("{ws}.compression"), json!(true)));
            }
        }
        if let Some(stem) = key.strip_suffix("proxy_name") {
            merge(tree, &tree_with(&format!("{stem}proxy_enabled"), json!(true)));
        }
        if let Some((options, last)) = key.rsplit_once('.')
            && key.starts_with("channel.")
        {
            let kind = if last == "map" || last.starts_with("map_") || last.starts_with("allow_map_") {
                Some("map")
            } else if last == "shared_poll" {
                Some("shared_poll")
            } else {
                None
            };
            if let Some(kind) = kind {
                merge(tree, &tree_with(&format!("{options}.subscription_type"), json!(kind)));
            }
        }
    }

    fn same(a: &Value, b: &Value) -> bool {
        a == b
            || crate::config_keys::text(a) == crate::config_keys::text(b)
            || matches!((a.as_str(), b.as_str()), (Some(x), Some(y))
                if gyre_node::config::parse_duration(x).ok().is_some_and(|d| Some(d) == gyre_node::config::parse_duration(y).ok()))
    }

    /// The issue's rule, walked over the whole Centrifugo v6 list: each key is
    /// implemented (a non-default value reaches the typed config, or is
    /// rejected by a rule naming the key) or refused (a non-default value,
    /// with its section switched on, stops loading with an error naming it).
    #[test]
    fn every_v6_key_is_implemented_or_refused() {
        let (mut implemented, mut refused) = (0, 0);
        for spec in &registry().keys {
            if spec.typ == KeyType::ObjectList || spec.status == Status::GyreOnly {
                continue; // arrays are checked through their element keys
            }
            let shown = spec.key.replace("[]", "[0]");
            let v = sample(spec);
            let mut tree = companions(&spec.key);
            merge(&mut tree, &tree_with(&spec.key, v.clone()));
            match spec.status {
                Status::Refused => {
                    refused += 1;
                    ungate(&spec.key, &mut tree);
                    let err = load(Some(tree.clone()), &HashMap::new(), &vec![])
                        .expect_err(&format!("{shown} must be refused ({tree})"));
                    assert!(err.0.iter().any(|e| e.starts_with(&format!("{shown}: not supported"))), "{shown}: {err}");
                }
                Status::Implemented => {
                    implemented += 1;
                    match load(Some(tree.clone()), &HashMap::new(), &vec![]) {
                        Ok(l) => {
                            let back = serde_json::to_value(&l.config).unwrap();
                            let pointer = format!("/{}", shown.replace("[0]", "/0").replace('.', "/"));
                            let got = back.pointer(&pointer).unwrap_or_else(|| panic!("{shown} missing from Config"));
                            assert!(same(got, &v), "{shown}: set {v}, config holds {got}");
                        }
                        Err(e) => {
                            assert!(
                                e.0.iter().all(|m| !m.contains("not supported by this Gyre version"))
                                    && e.0.iter().any(|m| m.starts_with(&shown)),
                                "{shown}: {e}"
                            );
                        }
                    }
                }
                Status::GyreOnly => {}
            }
        }
        assert!(implemented > 440 && refused > 360, "implemented {implemented}, refused {refused}");
    }

    /// A config holding Centrifugo's defaults for every key (what
    /// `centrifugo defaultconfig` writes) loads without errors or warnings,
    /// with a namespace and an RPC namespace spelled out in full.
    #[test]
    fn centrifugo_defaults_export_loads() {
        let reg = registry();
        let mut tree = json!({});
        for spec in &reg.keys {
            if spec.status != Status::GyreOnly && !spec.key.contains("[]") {
                let parts: Vec<&str> = spec.key.split('.').collect();
                let v = match spec.typ {
                    // Centrifugo writes durations like Go does.
                    KeyType::Duration if spec.default_text == "720h" => json!("720h0m0s"),
                    _ => spec.default.clone(),
                };
                set_path(&mut tree, &parts, v);
            }
        }
        for array in ["channel.namespaces", "rpc.namespaces"] {
            let mut item = json!({});
            for (rest, spec) in reg.element_keys(array) {
                if spec.status != Status::GyreOnly {
                    let sub: Vec<&str> = rest.split('.').collect();
                    set_path(&mut item, &sub, spec.default.clone());
                }
            }
            item["name"] = json!("chat");
            let parts: Vec<&str> = array.split('.').collect();
            set_path(&mut tree, &parts, json!([item]));
        }
        let l = load(Some(tree), &HashMap::new(), &vec![]).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.config.channel.namespaces[0].name, "chat");
    }

    /// Every key the typed config parses is registered (implemented, refused
    /// or Gyre-only), and every implemented key is parsed by the typed config.
    #[test]
    fn typed_config_and_registry_agree() {
        let reg = registry();
        let mut c = gyre_node::config::Config::default();
        c.channel.namespaces.push(Default::default());
        c.rpc.namespaces.push(Default::default());
        c.client.connect_code_to_unidirectional_disconnect.transforms.push(Default::default());
        c.proxies.push(gyre_node::config::ProxyConfig { name: "p".into(), ..Default::default() });
        for p in [
            &mut c.client.proxy.connect.proxy,
            &mut c.client.proxy.refresh.proxy,
            &mut c.channel.proxy.subscribe,
            &mut c.channel.proxy.publish,
            &mut c.channel.proxy.sub_refresh,
            &mut c.rpc.proxy,
            &mut c.proxies[0],
        ] {
            p.http.status_to_code_transforms.push(Default::default());
        }
        let tree = serde_json::to_value(&c).unwrap();
        let mut leaves = Vec::new();
        fn walk(v: &Value, path: String, out: &mut Vec<String>) {
            match v {
                Value::Object(m) if !m.is_empty() => {
                    for (k, v) in m {
                        walk(v, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
                    }
                }
                Value::Array(a) if a.first().is_some_and(Value::is_object) => {
                    out.push(path.clone());
                    walk(&a[0], format!("{path}[]"), out);
                }
                Value::Null => {} // opaque sections (proxies), registered key by key
                _ => out.push(path),
            }
        }
        walk(&tree, String::new(), &mut leaves);
        for leaf in &leaves {
            assert!(reg.get(leaf).is_some(), "{leaf} is parsed by Config but not in the registry");
        }
        for spec in reg.keys.iter().filter(|k| k.status == Status::Implemented) {
            assert!(leaves.contains(&spec.key), "{} is marked implemented but Config does not parse it", spec.key);
        }
    }

    #[test]
    fn env_vars_reach_refused_and_element_keys() {
        let err = load(None, &env(&[("CENTRIFUGO_HTTP_SERVER_TLS_AUTOCERT_ENABLED", "true")]), &vec![]).unwrap_err();
        assert!(err.to_string().contains("http_server.tls_autocert.enabled: not supported"), "{err}");
        let l = load(None, &env(&[("CENTRIFUGO_HTTP_SERVER_TLS_ENABLED", "true")]), &vec![]).unwrap();
        assert!(l.config.http_server.tls.enabled);
        let err = load(
            None,
            &env(&[
                ("CENTRIFUGO_CHANNEL_NAMESPACES", r#"[{"name":"chat"}]"#),
                ("CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_SUBSCRIBE_STREAM_PROXY_ENABLED", "true"),
            ]),
            &vec![],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("channel.namespaces[0].subscribe_stream_proxy_enabled: not supported"),
            "{err}"
        );
        // A refused key at its default, and one in a switched-off section, load quietly.
        let l = load(
            None,
            &env(&[("CENTRIFUGO_GRPC_API_PORT", "10001"), ("CENTRIFUGO_ENGINE_REDIS_PREFIX", "centrifugo")]),
            &vec![],
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }
}
