//! The permissions the operator needs, kept next to the code that uses them.
//!
//! The chart's Role/ClusterRole is written by hand; CI renders it and checks it grants at least
//! this list (`gyre-operator rbac` prints it), and a unit test checks that every kind the
//! builders produce is covered, so a new child type cannot ship without its RBAC.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

const OWNED: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

pub const REQUIRED: &[Permission] = &[
    Permission { group: "centrifugo.gyre.dev", resource: "centrifugos", verbs: &["get", "list", "watch"] },
    Permission { group: "centrifugo.gyre.dev", resource: "centrifugos/status", verbs: &["get", "patch"] },
    // Owner references with blockOwnerDeletion need update on the owner's finalizers where the
    // OwnerReferencesPermissionEnforcement admission plugin is on.
    Permission { group: "centrifugo.gyre.dev", resource: "centrifugos/finalizers", verbs: &["update"] },
    Permission { group: "", resource: "secrets", verbs: OWNED },
    Permission { group: "", resource: "configmaps", verbs: OWNED },
    Permission { group: "", resource: "services", verbs: OWNED },
    Permission { group: "", resource: "serviceaccounts", verbs: OWNED },
    Permission { group: "apps", resource: "deployments", verbs: OWNED },
    // Managed NATS (spec.nats.managed).
    Permission { group: "apps", resource: "statefulsets", verbs: OWNED },
    Permission { group: "networking.k8s.io", resource: "ingresses", verbs: OWNED },
    Permission { group: "networking.k8s.io", resource: "networkpolicies", verbs: OWNED },
    Permission { group: "policy", resource: "poddisruptionbudgets", verbs: OWNED },
    Permission { group: "autoscaling", resource: "horizontalpodautoscalers", verbs: OWNED },
    Permission {
        group: "monitoring.coreos.com",
        resource: "servicemonitors",
        verbs: &["get", "create", "patch", "delete"],
    },
    Permission { group: "events.k8s.io", resource: "events", verbs: &["create", "patch"] },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{builders::render_all, tests::fixtures};

    #[test]
    fn every_child_kind_is_covered() {
        let mut spec = fixtures::full_spec();
        spec.autoscaling = serde_json::from_value(serde_json::json!({"maxReplicas": 4})).unwrap();
        let c = fixtures::cr(spec);
        let objs = render_all(&c, &fixtures::inputs(&c), Some(&fixtures::secret_values()));
        assert!(objs.len() >= 11);
        for o in objs {
            let (g, r) = resource_of(o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap());
            let p = REQUIRED
                .iter()
                .find(|p| p.group == g && p.resource == r)
                .unwrap_or_else(|| panic!("no permission for {g}/{r}"));
            assert!(p.verbs.contains(&"patch") && p.verbs.contains(&"delete"), "{g}/{r}");
        }
    }
}
