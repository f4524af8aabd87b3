//! TLS of the client port (`spec.tls`): one Secret of type `kubernetes.io/tls` (`tls.crt`,
//! `tls.key`), written by cert-manager from a `Certificate` the operator renders (`issuerRef`) or
//! provided by the user, is
//!
//! * mounted into every pod at [`TLS_DIR`] as a whole-directory Secret volume (never `subPath`:
//!   kubelet updates only whole-volume mounts), and the server's `http_server.tls.cert_pem` /
//!   `key_pem` point at its files. The server reloads the files when they change, so a renewal by
//!   cert-manager reaches new connections without rolling the pods;
//! * the Ingress's `tls` section (unless `spec.ingress.tls` is given), and the Ingress asks
//!   ingress-nginx to talk HTTPS to the pods (`backend-protocol: HTTPS`, with the controller
//!   defaults).
//!
//! Only the client port serves TLS (`http_server.tls_external`): probes, metrics scraping and the
//! server API stay on the internal port in plain HTTP, inside the cluster.
//!
//! Failure modes: the Secret does not exist yet (cert-manager has not issued, or a user Secret is
//! missing): kubelet keeps the pods in `ContainerCreating` until it does, so nothing ever serves
//! plain text on the client port; cert-manager not installed: the `Certificate` is skipped with a
//! Warning Event (`CertManagerUnavailable`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::api::networking::v1::IngressTLS;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::builders::meta;
use crate::crd::{Centrifugo, CentrifugoSpec};

/// Where the TLS Secret is mounted in the server container.
pub const TLS_DIR: &str = "/etc/gyre-tls";
/// Name of the pod volume holding the TLS Secret.
pub const TLS_VOLUME: &str = "tls";
/// ingress-nginx: talk HTTPS to the pods (they serve TLS).
pub const NGINX_BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// `spec.tls`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve TLS on the client port.
    #[serde(default = "crate::ingress::default_true")]
    pub enabled: bool,
    /// Secret of type `kubernetes.io/tls` (`tls.crt`, `tls.key`). With `issuerRef` cert-manager
    /// writes it; without, it is yours. Defaults to `<name>-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// cert-manager issuer: the operator creates a `cert-manager.io/v1` `Certificate` named
    /// after the resource that writes `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// DNS names of the certificate. Defaults to the Ingress hosts and Gateway API hostnames, or,
    /// when there are none, the client Service's in-cluster names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub dns_names: Vec<String>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub kind: IssuerKind,
    /// API group of the issuer (external issuers have their own).
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Kind of a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    /// In the resource's namespace.
    #[default]
    Issuer,
    /// Cluster-wide.
    ClusterIssuer,
}

/// `spec.tls` when switched on.
pub fn enabled(spec: &CentrifugoSpec) -> Option<&TlsSpec> {
    spec.tls.as_ref().filter(|t| t.enabled)
}

/// The TLS Secret's name, when TLS is on.
pub fn secret_name(cr: &Centrifugo) -> Option<String> {
    enabled(&cr.spec).map(|t| t.secret_name.clone().unwrap_or_else(|| format!("{}-tls", cr.name_any())))
}

/// Server keys the operator owns when TLS is on (the files of the mounted Secret).
pub fn config_keys(spec: &CentrifugoSpec) -> Vec<(&'static str, Value)> {
    if enabled(spec).is_none() {
        return Vec::new();
    }
    vec![
        ("http_server.tls.enabled", json!(true)),
        ("http_server.tls.cert_pem", json!(format!("{TLS_DIR}/tls.crt"))),
        ("http_server.tls.key_pem", json!(format!("{TLS_DIR}/tls.key"))),
        ("http_server.tls_external", json!(true)),
    ]
}

/// The pod volume and container mount of the TLS Secret.
pub fn volume(cr: &Centrifugo) -> Option<(Volume, VolumeMount)> {
    let secret = secret_name(cr)?;
    let volume = Volume {
        name: TLS_VOLUME.into(),
        // Default mode 0644: the files are root's, and the server (uid 65532) reads them as "others".
        secret: Some(SecretVolumeSource { secret_name: Some(secret), ..Default::default() }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: TLS_VOLUME.into(),
        mount_path: TLS_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    };
    Some((volume, mount))
}

/// The Ingress's `tls` section: the user's when given, else the TLS Secret for the Ingress hosts.
pub fn ingress_tls(cr: &Centrifugo) -> Vec<IngressTLS> {
    let Some(ing) = cr.spec.ingress.as_ref() else { return Vec::new() };
    if !ing.tls.is_empty() {
        return ing.tls.clone();
    }
    match secret_name(cr) {
        Some(secret) => {
            vec![IngressTLS { hosts: (!ing.hosts.is_empty()).then(|| ing.hosts.clone()), secret_name: Some(secret) }]
        }
        None => Vec::new(),
    }
}

/// cert-manager's `Certificate` kind, addressed dynamically because its CRD may not be installed.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

/// DNS names of the certificate (see [`TlsSpec::dns_names`]), sorted and unique.
pub fn dns_names(cr: &Centrifugo) -> Vec<String> {
    let Some(t) = enabled(&cr.spec) else { return Vec::new() };
    if !t.dns_names.is_empty() {
        return t.dns_names.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    }
    let mut names = BTreeSet::new();
    if let Some(i) = cr.spec.ingress.as_ref().filter(|i| i.enabled) {
        names.extend(i.hosts.iter().cloned());
    }
    if let Some(g) = cr.spec.gateway_api.as_ref().filter(|g| g.enabled) {
        names.extend(g.hostnames.iter().cloned());
    }
    if names.is_empty() {
        let (name, ns) = (cr.name_any(), cr.namespace().unwrap_or_default());
        names.extend([
            name.clone(),
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.cluster.local"),
        ]);
    }
    names.into_iter().collect()
}

/// The cert-manager `Certificate`; `None` without `issuerRef` (the reconciler then deletes one
/// it made before).
pub fn build_certificate(cr: &Centrifugo) -> Option<DynamicObject> {
    let t = enabled(&cr.spec)?;
    let issuer = t.issuer_ref.as_ref()?;
    let kind = match issuer.kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    };
    let spec = json!({
        "secretName": secret_name(cr)?,
        "dnsNames": dns_names(cr),
        "issuerRef": {"name": issuer.name, "kind": kind, "group": issuer.group},
        "usages": ["digital signature", "key encipherment", "server auth"],
        // Renewed a third of the lifetime early (cert-manager's default), then reloaded by the pods.
        "privateKey": {"rotationPolicy": "Always"},
    });
    let mut obj = DynamicObject::new(&cr.name_any(), &certificate_resource()).data(json!({ "spec": spec }));
    obj.metadata = meta(cr, cr.name_any(), "server");
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fixtures::cr;

    fn spec_with(v: Value) -> CentrifugoSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn certificate_and_secret_table() {
        // (spec, secret name, certificate dnsNames or None when no Certificate)
        type Case<'a> = (Value, Option<&'a str>, Option<Vec<&'a str>>);
        let cases: Vec<Case> = vec![
            (json!({}), None, None),
            (json!({"tls": {"enabled": false, "issuerRef": {"name": "le"}}}), None, None),
            (json!({"tls": {"secretName": "mine"}}), Some("mine"), None),
            (
                json!({"tls": {"issuerRef": {"name": "le", "kind": "ClusterIssuer"}}, "ingress": {"hosts": ["chat.example.com"]}}),
                Some("chat-tls"),
                Some(vec!["chat.example.com"]),
            ),
            (
                json!({"tls": {"issuerRef": {"name": "ca"}}}),
                Some("chat-tls"),
                Some(vec!["chat", "chat.prod", "chat.prod.svc", "chat.prod.svc.cluster.local"]),
            ),
            (
                json!({"tls": {"issuerRef": {"name": "ca"}, "dnsNames": ["b.x", "a.x", "b.x"]}, "ingress": {"hosts": ["h"]}}),
                Some("chat-tls"),
                Some(vec!["a.x", "b.x"]),
            ),
        ];
        for (spec, secret, dns) in cases {
            let c = cr(spec_with(spec.clone()));
            assert_eq!(secret_name(&c).as_deref(), secret, "{spec}");
            let cert = build_certificate(&c);
            match dns {
                None => assert!(cert.is_none(), "{spec}"),
                Some(names) => {
                    let cert = cert.expect("certificate");
                    assert_eq!(cert.data["spec"]["dnsNames"], json!(names), "{spec}");
                    assert_eq!(cert.data["spec"]["secretName"], json!(secret.unwrap()), "{spec}");
                }
            }
        }
    }

    /// With `spec.tls` the pods mount the Secret (whole directory, so renewals reach them), the
    /// config points the client port at its files and leaves the internal port plain, and the
    /// Ingress terminates with the same Secret and speaks HTTPS to the pods. Without it, none.
    #[test]
    fn pods_config_and_ingress_carry_the_secret() {
        use crate::tests::fixtures::inputs;
        for on in [true, false] {
            let mut v = json!({"ingress": {"hosts": ["chat.example.com"]}});
            if on {
                v["tls"] = json!({"issuerRef": {"name": "le", "kind": "ClusterIssuer"}});
            }
            let c = cr(spec_with(v));
            let d = crate::builders::build_deployment(&c, &inputs(&c));
            let pod = d.spec.unwrap().template.spec.unwrap();
            let vol = pod.volumes.unwrap().into_iter().find(|v| v.name == TLS_VOLUME);
            let mount = pod.containers[0].volume_mounts.clone().unwrap().into_iter().find(|m| m.name == TLS_VOLUME);
            let cfg: Value = serde_json::from_str(&crate::config::build_config(&c.spec).unwrap().json).unwrap();
            let ing = crate::builders::build_ingress(&c).unwrap();
            let ann = ing.metadata.annotations.unwrap_or_default();
            let ing_tls = ing.spec.unwrap().tls;
            if on {
                assert_eq!(vol.unwrap().secret.unwrap().secret_name.as_deref(), Some("chat-tls"));
                let mount = mount.unwrap();
                assert_eq!((mount.mount_path.as_str(), mount.sub_path), (TLS_DIR, None));
                assert_eq!(cfg["http_server"]["tls"]["cert_pem"], json!("/etc/gyre-tls/tls.crt"));
                assert_eq!(cfg["http_server"]["tls"]["key_pem"], json!("/etc/gyre-tls/tls.key"));
                assert_eq!(cfg["http_server"]["tls"]["enabled"], json!(true));
                assert_eq!(cfg["http_server"]["tls_external"], json!(true));
                let t = ing_tls.unwrap();
                assert_eq!(t[0].secret_name.as_deref(), Some("chat-tls"));
                assert_eq!(t[0].hosts, Some(vec!["chat.example.com".to_string()]));
                assert_eq!(ann.get(NGINX_BACKEND_PROTOCOL).map(String::as_str), Some("HTTPS"));
            } else {
                assert!(vol.is_none() && mount.is_none());
                assert!(cfg["http_server"].get("tls").is_none(), "{cfg}");
                assert!(ing_tls.is_none());
                assert!(!ann.contains_key(NGINX_BACKEND_PROTOCOL));
            }
        }
        // The keys are the operator's: a conflicting value in spec.config is refused.
        let c = cr(spec_with(json!({"tls": {}, "config": {"http_server": {"tls": {"enabled": false}}}})));
        let e = crate::config::build_config(&c.spec).unwrap_err();
        assert!(e.to_string().contains("http_server.tls.enabled"), "{e}");
    }
}
