//! The permissions the operator needs: exactly the API calls the code makes, and nothing else.
//!
//! [`REQUIRED`] is the one table. The chart's rules are generated from it
//! (`gyre-operator rbac --helm` writes `charts/gyre-operator/templates/_rbac-rules.tpl`, drift
//! checked by `tests/operator/gen-manifests.sh --check`), CI checks the rendered Role/ClusterRole
//! grants exactly this, and a test (`tests::controller::rbac_is_exactly_what_the_code_calls`)
//! drives every reconcile path and the leader election against a recording apiserver, maps each
//! request to `(group, resource, verb)`, adds the controller's watches ([`WATCHED`]), and compares
//! the result with this table in both directions: a new API call without its grant fails, and so
//! does a grant no code uses.

use serde::Serialize;

/// Where a permission applies.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Namespaces the operator watches (ClusterRole, or Role in `watchNamespace`).
    Watched,
    /// Every namespace: copies of the API key (`spec.secrets.exportTo`). Only with the ClusterRole.
    Cluster,
    /// The operator's own namespace (the leader-election Lease).
    OperatorNamespace,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Chart value (under `rbac.`/top level) that switches this grant off, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<&'static str>,
    /// Why: which code path makes which call.
    pub why: &'static str,
}

/// Kinds the controller watches (list + watch): the Centrifugo resource and the `.owns()` calls
/// in `controller::run` (keep the two in step; the watches are the one kind of call the
/// recording test cannot observe, since it drives `reconcile` rather than the controller).
pub const WATCHED: &[(&str, &str)] = &[
    ("centrifugo.gyre.dev", "centrifugos"),
    ("apps", "deployments"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("networking.k8s.io", "ingresses"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "networkpolicies"),
];

const fn p(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    why: &'static str,
) -> Permission {
    Permission { group, resource, verbs, scope: Scope::Watched, optional: None, why }
}

/// Optional children (deleted when switched off) plus the controller's watch.
const OPTIONAL_CHILD: &[&str] = &["list", "watch", "patch", "delete"];
/// Always-present children: applied, watched, never deleted by the operator (GC does that).
const CHILD: &[&str] = &["list", "watch", "patch"];
/// Children that the managed NATS (spec.nats.managed) also uses and deletes when switched off.
const CHILD_OR_MANAGED_NATS: &[&str] = &["list", "watch", "patch", "delete"];

pub const REQUIRED: &[Permission] = &[
    p(
        "centrifugo.gyre.dev",
        "centrifugos",
        &["list", "watch"],
        "controller watch; startup check that the CRD is served",
    ),
    p("centrifugo.gyre.dev", "centrifugos/status", &["patch"], "status written with server-side apply"),
    // Not an API call: the OwnerReferencesPermissionEnforcement admission plugin requires it to
    // set blockOwnerDeletion on children's owner references.
    p(
        "centrifugo.gyre.dev",
        "centrifugos/finalizers",
        &["update"],
        "admission: blockOwnerDeletion on owner references",
    ),
    p(
        "",
        "secrets",
        &["list", "watch", "get", "create", "patch"],
        "watch of generated Secrets; read of the credentials Secret; create once; apply on rotation/repair; merge patch dropping a legacy owner reference",
    ),
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["list", "patch", "delete"],
        scope: Scope::Cluster,
        optional: Some("exportApiKey"),
        why: "spec.secrets.exportTo: apply API-key copies in other namespaces, find and delete stale ones",
    },
    p("", "configmaps", CHILD_OR_MANAGED_NATS, "config.json; the managed NATS config (deleted when switched off)"),
    p(
        "",
        "services",
        CHILD_OR_MANAGED_NATS,
        "client and internal Services; the managed NATS Services (deleted when switched off)",
    ),
    p("apps", "statefulsets", &["patch", "delete"], "managed NATS (spec.nats.managed; not watched)"),
    p("", "serviceaccounts", CHILD, "the server's ServiceAccount"),
    p(
        "apps",
        "deployments",
        &["list", "watch", "get", "patch"],
        "apply; get reads the live replica count before handing it to an HPA",
    ),
    p("networking.k8s.io", "ingresses", OPTIONAL_CHILD, "optional Ingress"),
    p("networking.k8s.io", "networkpolicies", OPTIONAL_CHILD, "optional NetworkPolicy"),
    p("policy", "poddisruptionbudgets", OPTIONAL_CHILD, "optional PodDisruptionBudget"),
    p("autoscaling", "horizontalpodautoscalers", OPTIONAL_CHILD, "optional HorizontalPodAutoscaler"),
    Permission {
        group: "monitoring.coreos.com",
        resource: "servicemonitors",
        verbs: &["patch", "delete"],
        scope: Scope::Watched,
        optional: Some("serviceMonitors"),
        why: "optional ServiceMonitor (not watched)",
    },
    Permission {
        group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: &["patch", "delete"],
        scope: Scope::Watched,
        optional: Some("httpRoutes"),
        why: "optional Gateway API HTTPRoute (not watched)",
    },
    Permission {
        group: "cert-manager.io",
        resource: "certificates",
        verbs: &["patch", "delete"],
        scope: Scope::Watched,
        optional: Some("certificates"),
        why: "optional cert-manager Certificates (spec.tls.issuerRef, nats.server.tls.issuerRef; not watched)",
    },
    p("events.k8s.io", "events", &["create", "patch"], "Events; the recorder patches a repeated Event's series"),
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::OperatorNamespace,
        optional: Some("leaderElection"),
        why: "leader election: read, create, renew (replace with resourceVersion)",
    },
];

/// `(group, plural)` of a child kind, for matching rendered objects against [`REQUIRED`].
pub fn resource_of(api_version: &str, kind: &str) -> (String, String) {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g).to_string();
    let plural = match kind {
        "PodDisruptionBudget" => "poddisruptionbudgets".to_string(),
        "NetworkPolicy" => "networkpolicies".to_string(),
        "Ingress" => "ingresses".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    (group, plural)
}

/// `(group, resource, verb)` of one API request, or `None` for non-resource requests
/// (discovery, which every authenticated user may do).
pub fn request_permission(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, r @ ..] if !r.is_empty() => r,
        r => r,
    };
    let (resource, named) = match rest {
        [] => return None,
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub] => (format!("{r}/{sub}"), true),
        _ => return None,
    };
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if query.split('&').any(|kv| kv == "watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

fn helm_rule(p: &Permission, indent: &str) -> String {
    let verbs = p.verbs.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "{indent}# {}\n{indent}- apiGroups: [{:?}]\n{indent}  resources: [{:?}]\n{indent}  verbs: [{verbs}]\n",
        p.why, p.group, p.resource
    )
}

/// The chart's rule lists, generated from [`REQUIRED`]: `gyre-operator.rbacRules` (watched
/// namespaces), `gyre-operator.rbacClusterRules` (exports) and `gyre-operator.leaderRules`.
pub fn helm_rules_template() -> String {
    let mut out = String::from(
        "{{/* Generated by `gyre-operator rbac --helm` from crates/gyre-operator/src/rbac.rs; do not edit. */}}\n",
    );
    for (name, scope) in [
        ("gyre-operator.rbacRules", Scope::Watched),
        ("gyre-operator.rbacClusterRules", Scope::Cluster),
        ("gyre-operator.leaderRules", Scope::OperatorNamespace),
    ] {
        out.push_str(&format!("{{{{- define {name:?} -}}}}\n"));
        for p in REQUIRED.iter().filter(|p| p.scope == scope) {
            // The leader-election Role as a whole is conditional in rbac.yaml.
            match p.optional.filter(|_| scope != Scope::OperatorNamespace) {
                Some(flag) => {
                    out.push_str(&format!("{{{{- if .Values.rbac.{flag} }}}}\n"));
                    out.push_str(&helm_rule(p, ""));
                    out.push_str("{{- end }}\n");
                }
                None => out.push_str(&helm_rule(p, "")),
            }
        }
        out.push_str("{{- end }}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{builders::render_all, tests::fixtures};

    #[test]
    fn every_child_kind_is_covered() {
        let mut spec = fixtures::full_spec();
        spec.autoscaling = serde_json::from_value(serde_json::json!({"maxReplicas": 4})).unwrap();
        spec.gateway_api = serde_json::from_value(serde_json::json!({"parentRefs": [{"name": "gw"}]})).unwrap();
        spec.tls = serde_json::from_value(serde_json::json!({"issuerRef": {"name": "ca"}})).unwrap();
        let c = fixtures::cr(spec);
        let objs = render_all(&c, &fixtures::inputs(&c), Some(&fixtures::secret_values()));
        assert!(objs.len() >= 12);
        for o in objs {
            let (g, r) = resource_of(o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap());
            let p = REQUIRED
                .iter()
                .find(|p| p.group == g && p.resource == r && p.scope == Scope::Watched)
                .unwrap_or_else(|| panic!("no permission for {g}/{r}"));
            assert!(p.verbs.contains(&"patch"), "{g}/{r} is applied");
        }
    }

    #[test]
    fn request_mapping_table() {
        let cases = [
            ("GET", "/api/v1/namespaces/prod/secrets/x", "", Some(("", "secrets", "get"))),
            ("GET", "/api/v1/secrets", "labelSelector=a%3Db", Some(("", "secrets", "list"))),
            ("GET", "/apis/apps/v1/deployments", "watch=true&labelSelector=x", Some(("apps", "deployments", "watch"))),
            (
                "PATCH",
                "/apis/c.g/v1/namespaces/p/centrifugos/chat/status",
                "",
                Some(("c.g", "centrifugos/status", "patch")),
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/o/leases/l",
                "",
                Some(("coordination.k8s.io", "leases", "update")),
            ),
            ("POST", "/apis/events.k8s.io/v1/namespaces/p/events", "", Some(("events.k8s.io", "events", "create"))),
            (
                "DELETE",
                "/apis/policy/v1/namespaces/p/poddisruptionbudgets/x",
                "",
                Some(("policy", "poddisruptionbudgets", "delete")),
            ),
            ("GET", "/apis/monitoring.coreos.com/v1", "", None),
        ];
        for (m, path, q, want) in cases {
            let got = request_permission(m, path, q);
            let want = want.map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()));
            assert_eq!(got, want, "{m} {path}");
        }
    }

    #[test]
    fn helm_template_has_every_permission_once() {
        let t = helm_rules_template();
        for p in REQUIRED {
            assert!(t.contains(&format!("resources: [{:?}]", p.resource)), "{}", p.resource);
        }
        assert_eq!(t.matches("define").count(), 3);
    }
}
