//! Reads the configuration once: file (JSON, YAML or TOML) < `CENTRIFUGO_*`
//! environment variables < command-line flags, then validates it.
//!
//! The env mapping walks the serialized default config tree, so every key the
//! config knows is reachable as `CENTRIFUGO_<PATH>` without a hand-kept list
//! (keys contain underscores, so the mapping cannot be inverted by splitting).
//! Unknown keys in the file and unknown `CENTRIFUGO_*` variables are warnings
//! naming the key; a value of the wrong type or a failed rule is an error
//! naming the key, and every error is reported at once.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use gyre_node::config::{ChannelOptions, Config};
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

fn set_path(root: &mut Value, path: &[&str], v: Value) {
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
    // Per-namespace overrides: CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_<OPTION>.
    let opt_defaults = serde_json::to_value(ChannelOptions::default()).expect("options serialize");
    if let Some(Value::Array(nss)) = tree.pointer_mut("/channel/namespaces") {
        for ns in nss.iter_mut() {
            let Some(name) = ns.get("name").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let upper = name.to_ascii_uppercase().replace(['.', '-'], "_");
            if let Some(m) = opt_defaults.as_object() {
                for (k, d) in m {
                    let var = format!("CENTRIFUGO_CHANNEL_NAMESPACES_{upper}_{}", k.to_ascii_uppercase());
                    if let Some(raw) = env.get(&var).filter(|v| !v.is_empty()) {
                        used.insert(var.clone());
                        match env_value(d, raw) {
                            Ok(v) => set_path(ns, &[k.as_str()], v),
                            Err(e) => errors.push(format!("{var}: {e}")),
                        }
                    }
                }
            }
        }
    }
    used
}

/// Flag overrides, as dotted paths and raw values.
pub type FlagOverrides = Vec<(String, Value)>;

/// Loads and validates. `env` is passed in (the binary hands it `std::env::vars()`),
/// so tests never touch the process environment.
pub fn load(file: Option<Value>, env: &HashMap<String, String>, flags: &FlagOverrides) -> Result<Loaded, LoadError> {
    let mut tree = file.unwrap_or_else(|| Value::Object(Map::new()));
    let defaults = serde_json::to_value(Config::default()).expect("default config serializes");
    let mut errors = Vec::new();
    let used = overlay_env(&mut tree, &defaults, env, &mut errors);
    for (path, v) in flags {
        let parts: Vec<&str> = path.split('.').collect();
        set_path(&mut tree, &parts, v.clone());
    }
    let mut warnings = Vec::new();
    for name in env.keys() {
        if name.starts_with("CENTRIFUGO_")
            && !used.contains(name)
            && !name.starts_with("CENTRIFUGO_VAR_")
            && !name.contains("_PORT")
            && !name.contains("_SERVICE_")
        {
            warnings.push(format!("unknown environment variable {name}"));
        }
    }
    let mut unknown = Vec::new();
    let mut track = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let de = serde_ignored::Deserializer::new(tree, &mut track);
    let config: Config = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            errors.push(format!("{}: {}", e.path(), e.inner()));
            return Err(LoadError(errors));
        }
    };
    warnings.extend(unknown.into_iter().map(|k| format!("unknown config key {k}")));
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
}
