//! The credentials Secret: generation, per-key rotation with a previous-key window, retention
//! across deletion of the resource, and copies of the API key for backends in other namespaces.
//!
//! Rotation is per key, because the keys have different blast radii: a new API key only needs
//! backends to re-read the Secret, while a new token HMAC key would disconnect every client whose
//! token was signed with the old one. So a rotated HMAC key moves to
//! `tokenHmacPreviousSecretKey` with `tokenHmacPreviousSecretKeyValidUntil` (unix seconds), which
//! the pods read as `client.token.hmac_previous_secret_key[_valid_until]`: tokens signed with the
//! old key keep validating until the window ends, then the server itself stops accepting them
//! (the operator does not need to act at the deadline, so no pod roll happens then).
//!
//! The decision "which keys change" is a pure function of the spec, the current Secret and the
//! clock ([`plan`]), tested by a table; [`ensure_secret`] only does the I/O.
//!
//! Retention: by default the generated Secret carries no owner reference, so deleting the
//! resource (a GitOps prune and re-sync, a move between tools) does not take the keys with it;
//! the recreated resource adopts the Secret by name. `retainOnDelete: false` restores garbage
//! collection.
//!
//! Export: backends in other namespaces cannot reference a Secret across namespaces, so for each
//! namespace in `exportTo` the operator keeps a Secret `<name>-api-key` there (`apiKey`,
//! `apiUrl`). Copies are labelled with a hash of their source and removed when their namespace
//! leaves the list. They have no owner reference (owner references cannot cross namespaces), so
//! deleting the resource leaves them, like the retained Secret; `kubectl delete secret -A -l
//! centrifugo.gyre.dev/export-source=<hash>` removes them (the hash is in the copy's labels).

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    builders::{self, MANAGED_BY_LABEL, MANAGER, ROTATION_ANNOTATION},
    config::sha256_hex,
    controller::{Context, Error, apply, kube_err, publish, remove},
    crd::{Centrifugo, CentrifugoSpec},
};

/// Secret key holding the rotated-out token HMAC key during its window.
pub const PREVIOUS_HMAC_KEY: &str = "tokenHmacPreviousSecretKey";
/// Secret key holding the end of that window, unix seconds.
pub const PREVIOUS_HMAC_VALID_UNTIL: &str = "tokenHmacPreviousSecretKeyValidUntil";
/// Secret key of the current token HMAC key.
pub const HMAC_KEY: &str = "tokenHmacSecretKey";
/// Annotation prefix recording each key's rotation counter on the generated Secret.
pub const KEY_ROTATION_ANNOTATION_PREFIX: &str = "centrifugo.gyre.dev/rotate.";
/// Label on exported API-key copies: hash of the source `namespace/name`.
pub const EXPORT_SOURCE_LABEL: &str = "centrifugo.gyre.dev/export-source";
/// Annotation on copies naming the source readably.
pub const EXPORT_SOURCE_ANNOTATION: &str = "centrifugo.gyre.dev/exported-from";

pub fn default_previous_key_window() -> i64 {
    86_400
}

/// Per-key rotation counters; bump one to regenerate that key only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotation {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub token_hmac_secret_key: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub api_key: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub admin_password: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub admin_secret: i64,
}

impl KeyRotation {
    /// `(Secret key, counter)` for every rotatable key.
    pub fn counters(&self) -> [(&'static str, i64); 4] {
        [
            (HMAC_KEY, self.token_hmac_secret_key),
            ("apiKey", self.api_key),
            ("adminPassword", self.admin_password),
            ("adminSecret", self.admin_secret),
        ]
    }
}

/// The annotations the generated Secret carries: which global and per-key rotation produced it.
pub fn rotation_annotations(spec: &CentrifugoSpec) -> BTreeMap<String, String> {
    let s = spec.secrets();
    let mut out = BTreeMap::from([(ROTATION_ANNOTATION.to_string(), s.rotation_generation.to_string())]);
    for (key, n) in s.rotate.unwrap_or_default().counters() {
        out.insert(format!("{KEY_ROTATION_ANNOTATION_PREFIX}{key}"), n.to_string());
    }
    out
}

/// What one pass changes in the generated Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The complete new data.
    pub values: BTreeMap<String, String>,
    /// Keys given fresh values because their counter moved.
    pub rotated: Vec<String>,
    /// Keys that were missing and got generated.
    pub repaired: Vec<String>,
}

/// Decides the generated Secret's next data. `None`: nothing changes.
pub fn plan(
    spec: &CentrifugoSpec,
    current: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    now_unix: i64,
) -> Option<Plan> {
    let s = spec.secrets();
    let recorded = |k: &str| annotations.get(k).map_or("0", String::as_str).to_string();
    let global = recorded(ROTATION_ANNOTATION) != s.rotation_generation.to_string();
    let fresh = builders::generate_secret_values();
    let mut values = current.clone();
    let mut rotated = Vec::new();
    let mut repaired = Vec::new();
    for (key, wanted) in s.rotate.clone().unwrap_or_default().counters() {
        let moved = global || recorded(&format!("{KEY_ROTATION_ANNOTATION_PREFIX}{key}")) != wanted.to_string();
        let present = current.get(key).is_some_and(|v| !v.is_empty());
        if moved && present {
            if key == HMAC_KEY {
                if s.previous_key_window_seconds > 0 {
                    values.insert(PREVIOUS_HMAC_KEY.into(), current[key].clone());
                    values.insert(
                        PREVIOUS_HMAC_VALID_UNTIL.into(),
                        now_unix.saturating_add(s.previous_key_window_seconds).to_string(),
                    );
                } else {
                    values.remove(PREVIOUS_HMAC_KEY);
                    values.remove(PREVIOUS_HMAC_VALID_UNTIL);
                }
            }
            values.insert(key.into(), fresh[key].clone());
            rotated.push(key.to_string());
        } else if !present {
            values.insert(key.into(), fresh[key].clone());
            repaired.push(key.to_string());
        }
    }
    // A moved counter on a key that was missing anyway is a repair; either way the annotations
    // must be rewritten, so an annotation-only change still yields a plan.
    let annotations_stale = rotation_annotations(spec).iter().any(|(k, v)| recorded(k) != *v);
    (!rotated.is_empty() || !repaired.is_empty() || annotations_stale).then_some(Plan { values, rotated, repaired })
}

/// Outcome of the credentials step.
pub enum SecretOutcome {
    /// `data` is what the pods read.
    Ready {
        hash: String,
        check: &'static str,
        data: BTreeMap<String, ByteString>,
    },
    NotReady {
        reason: &'static str,
        message: String,
    },
}

fn decode(data: &BTreeMap<String, ByteString>) -> BTreeMap<String, String> {
    data.iter().filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?))).collect()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Makes sure the Secret the pods read exists and has the keys the spec needs.
pub async fn ensure_secret(cr: &Centrifugo, ctx: &Context, ns: &str) -> Result<SecretOutcome, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(name) = cr.spec.existing_secret() {
        let Some(secret) = api.get_opt(name).await.map_err(kube_err("get", "Secret", name))? else {
            return Ok(SecretOutcome::NotReady {
                reason: "SecretNotFound",
                message: format!("Secret {name} (spec.secrets.existingSecret) does not exist"),
            });
        };
        let data = secret.data.unwrap_or_default();
        let missing = builders::missing_secret_keys(cr, &data);
        if !missing.is_empty() {
            return Ok(SecretOutcome::NotReady {
                reason: "SecretKeyMissing",
                message: format!("Secret {name} lacks keys: {}", missing.join(", ")),
            });
        }
        return Ok(SecretOutcome::Ready { hash: builders::credentials_hash(&data), check: "ExistingSecret", data });
    }

    let name = builders::generated_secret_name(cr);
    let Some(current) = api.get_opt(&name).await.map_err(kube_err("get", "Secret", &name))? else {
        let values = builders::generate_secret_values();
        let secret = builders::build_generated_secret(cr, &values);
        let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        let created = match api.create(&pp, &secret).await {
            Ok(s) => {
                publish(
                    ctx,
                    cr,
                    EventType::Normal,
                    "SecretGenerated",
                    format!("generated credentials in Secret {name}"),
                )
                .await;
                s
            }
            // Someone (an earlier pass whose reply was lost) created it first: use theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                api.get(&name).await.map_err(kube_err("get", "Secret", &name))?
            }
            Err(e) => return Err(kube_err("create", "Secret", &name)(e)),
        };
        let data = created.data.unwrap_or_default();
        return Ok(SecretOutcome::Ready { hash: builders::credentials_hash(&data), check: "Generated", data });
    };

    let mut data = current.data.clone().unwrap_or_default();
    let retain = cr.spec.secrets().retain_on_delete;
    let uid = cr.uid();
    let owned = current.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref());
    if retain && !current.owner_references().is_empty() {
        // Created before retention (or with retainOnDelete: false): drop the owner reference so
        // deleting the resource keeps the keys. A merge patch, because the reference may be owned
        // by the create call's field manager entry, which an apply would not remove.
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": null}})))
            .await
            .map_err(kube_err("patch", "Secret", &name))?;
    }
    let annotations = current.annotations().clone();
    let next = plan(&cr.spec, &decode(&data), &annotations, now_unix());
    if next.is_some() || (!retain && !owned) {
        let p = next.unwrap_or_else(|| Plan { values: decode(&data), rotated: Vec::new(), repaired: Vec::new() });
        let secret = builders::build_generated_secret(cr, &p.values);
        let applied = apply(&api, &secret, "Secret").await?;
        data = applied.data.unwrap_or_else(|| secret.data.clone().unwrap_or_default());
        if !p.rotated.is_empty() {
            let window = cr.spec.secrets().previous_key_window_seconds;
            let hmac_note = if p.rotated.iter().any(|k| k == HMAC_KEY) && window > 0 {
                format!("; the previous token HMAC key stays valid for {window} s")
            } else {
                String::new()
            };
            publish(
                ctx,
                cr,
                EventType::Normal,
                "SecretRotated",
                format!("rotated {} in Secret {name}{hmac_note}", p.rotated.join(", ")),
            )
            .await;
        }
        if !p.repaired.is_empty() {
            publish(
                ctx,
                cr,
                EventType::Normal,
                "SecretRepaired",
                format!("added missing keys to Secret {name}: {}", p.repaired.join(", ")),
            )
            .await;
        }
    }
    Ok(SecretOutcome::Ready { hash: builders::credentials_hash(&data), check: "Generated", data })
}

/// Name of the API-key copy in other namespaces.
pub fn export_name(cr: &Centrifugo) -> String {
    format!("{}-api-key", cr.name_any())
}

/// Label value identifying one instance's copies (label values are limited to 63 characters,
/// so a hash of `namespace/name`).
pub fn export_source(cr: &Centrifugo) -> String {
    sha256_hex(format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()).as_bytes())[..40].to_string()
}

/// The copy of the API key for one namespace.
pub fn build_export(cr: &Centrifugo, target_ns: &str, api_key: &[u8]) -> Secret {
    let api_url = format!(
        "http://{}.{}.svc:{}/api",
        builders::internal_service_name(cr),
        cr.namespace().unwrap_or_default(),
        cr.spec.service().internal_port
    );
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(export_name(cr)),
            namespace: Some(target_ns.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
                ("app.kubernetes.io/component".to_string(), "api-key-export".to_string()),
                (EXPORT_SOURCE_LABEL.to_string(), export_source(cr)),
            ])),
            annotations: Some(BTreeMap::from([(
                EXPORT_SOURCE_ANNOTATION.to_string(),
                format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("apiKey".to_string(), ByteString(api_key.to_vec())),
            ("apiUrl".to_string(), ByteString(api_url.into_bytes())),
        ])),
        ..Default::default()
    }
}

/// Keeps the API-key copies in `exportTo` namespaces and removes copies from namespaces that
/// left the list. Skips the cluster-wide list when nothing is exported and nothing ever was
/// (recorded in the instance's status).
pub async fn sync_exports(
    cr: &Centrifugo,
    ctx: &Context,
    data: &BTreeMap<String, ByteString>,
    previously: &[String],
) -> Result<Vec<String>, Error> {
    let wanted = cr.spec.secrets().export_to;
    let own_ns = cr.namespace().unwrap_or_default();
    let wanted: Vec<String> = wanted.into_iter().filter(|n| *n != own_ns).collect();
    if let Some(key) = data.get("apiKey") {
        for ns in &wanted {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            apply(&api, &build_export(cr, ns, &key.0), "Secret").await?;
        }
    }
    let stale: Vec<&String> = previously.iter().filter(|n| !wanted.contains(n)).collect();
    if !stale.is_empty() {
        // Listing by label finds copies even if the status record was lost.
        let all: Api<Secret> = Api::all(ctx.client.clone());
        let lp = ListParams::default().labels(&format!("{EXPORT_SOURCE_LABEL}={}", export_source(cr)));
        let list = all.list(&lp).await.map_err(kube_err("list", "Secret", &export_name(cr)))?;
        for s in list.items {
            let ns = s.namespace().unwrap_or_default();
            if !wanted.contains(&ns) {
                remove(&Api::<Secret>::namespaced(ctx.client.clone(), &ns), &s.name_any(), "Secret").await?;
            }
        }
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: serde_json::Value) -> CentrifugoSpec {
        serde_json::from_value(v).unwrap()
    }

    fn current() -> BTreeMap<String, String> {
        BTreeMap::from([
            (HMAC_KEY.into(), "hmac-old".into()),
            ("apiKey".into(), "api-old".into()),
            ("adminPassword".into(), "pw-old".into()),
            ("adminSecret".into(), "sec-old".into()),
        ])
    }

    fn annotations_for(v: serde_json::Value) -> BTreeMap<String, String> {
        rotation_annotations(&spec(v))
    }

    /// (recorded spec, new spec) → (rotated keys, previous key kept?)
    #[test]
    fn rotation_table() {
        let cases = [
            (json!({}), json!({}), vec![], false),
            (json!({}), json!({"secrets": {"rotate": {"apiKey": 1}}}), vec!["apiKey"], false),
            (json!({}), json!({"secrets": {"rotate": {"tokenHmacSecretKey": 1}}}), vec![HMAC_KEY], true),
            (
                json!({}),
                json!({"secrets": {"rotate": {"tokenHmacSecretKey": 1}, "previousKeyWindowSeconds": 0}}),
                vec![HMAC_KEY],
                false,
            ),
            (
                json!({}),
                json!({"secrets": {"rotationGeneration": 1}}),
                vec![HMAC_KEY, "apiKey", "adminPassword", "adminSecret"],
                true,
            ),
            (
                json!({"secrets": {"rotate": {"adminSecret": 3}}}),
                json!({"secrets": {"rotate": {"adminSecret": 3}}}),
                vec![],
                false,
            ),
        ];
        for (before, after, want_rotated, want_previous) in cases {
            let p = plan(&spec(after.clone()), &current(), &annotations_for(before.clone()), 1_000);
            let rotated: Vec<String> = p.as_ref().map(|p| p.rotated.clone()).unwrap_or_default();
            assert_eq!(rotated, want_rotated, "{before} -> {after}");
            if let Some(p) = &p {
                for (k, old) in current() {
                    let changed = p.values[&k] != old;
                    assert_eq!(changed, want_rotated.contains(&k.as_str()), "{k} in {after}");
                }
                assert_eq!(p.values.get(PREVIOUS_HMAC_KEY).map(String::as_str), want_previous.then_some("hmac-old"));
                if want_previous {
                    let window = spec(after).secrets().previous_key_window_seconds;
                    assert_eq!(p.values[PREVIOUS_HMAC_VALID_UNTIL], (1_000 + window).to_string());
                }
            }
        }
    }

    #[test]
    fn missing_keys_are_repaired_without_touching_the_others() {
        let mut cur = current();
        cur.remove("apiKey");
        let p = plan(&CentrifugoSpec::default(), &cur, &annotations_for(json!({})), 0).unwrap();
        assert_eq!(p.repaired, ["apiKey"]);
        assert!(p.rotated.is_empty());
        assert_eq!(p.values[HMAC_KEY], "hmac-old");
        assert!(!p.values["apiKey"].is_empty());
    }

    #[test]
    fn a_second_rotation_replaces_the_previous_key() {
        let mut cur = current();
        cur.insert(PREVIOUS_HMAC_KEY.into(), "hmac-older".into());
        cur.insert(PREVIOUS_HMAC_VALID_UNTIL.into(), "5".into());
        let s = json!({"secrets": {"rotate": {"tokenHmacSecretKey": 2}}});
        let p = plan(&spec(s), &cur, &annotations_for(json!({"secrets": {"rotate": {"tokenHmacSecretKey": 1}}})), 10)
            .unwrap();
        assert_eq!(p.values[PREVIOUS_HMAC_KEY], "hmac-old");
        assert_eq!(p.values[PREVIOUS_HMAC_VALID_UNTIL], "86410");
    }

    #[test]
    fn export_copy_carries_key_url_and_source_labels() {
        let c = crate::tests::fixtures::cr(CentrifugoSpec::default());
        let s = build_export(&c, "backend", b"k");
        assert_eq!(s.metadata.namespace.as_deref(), Some("backend"));
        assert!(s.metadata.owner_references.is_none(), "owner references cannot cross namespaces");
        let d = s.data.unwrap();
        assert_eq!(d["apiKey"].0, b"k");
        assert_eq!(String::from_utf8(d["apiUrl"].0.clone()).unwrap(), "http://chat-internal.prod.svc:9000/api");
        assert_eq!(s.metadata.labels.unwrap()[EXPORT_SOURCE_LABEL], export_source(&c));
    }
}
