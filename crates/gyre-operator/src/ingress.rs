//! How client traffic gets in: the Ingress and the optional Gateway API `HTTPRoute`.
//!
//! Both route only the client port, and only the transport paths: `/connection` (WebSocket,
//! HTTP-streaming, SSE and SockJS live under it) and `/emulation` (where HTTP-streaming and SSE
//! clients POST their commands; the receiving node forwards them over NATS to the node holding
//! the session, so `/emulation` needs no affinity). The API and the admin UI stay on the internal
//! port, which neither object can reach.
//!
//! SockJS sessions are node-local: every request of one session must reach the same pod. With
//! SockJS on and more than one pod possible, the Ingress asks ingress-nginx for cookie affinity.
//! Long-lived responses need ingress-nginx's 60 s defaults raised and response buffering off
//! (an SSE or HTTP-streaming response sitting in a proxy buffer never reaches the browser); the
//! operator adds those annotations unless told not to, and the user's own annotations win.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec as K8sIngressSpec, ServiceBackendPort,
};
use kube::{
    ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    builders::meta,
    config::ConfigError,
    crd::{Centrifugo, CentrifugoSpec},
};

/// A URL path prefix routed to the client port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub struct RoutePath(pub String);

impl RoutePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for RoutePath {
    fn schema_name() -> Cow<'static, str> {
        "RoutePath".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^/[-a-zA-Z0-9_./~]*$", "maxLength": 256})
    }
}

pub fn default_paths() -> Vec<RoutePath> {
    vec![RoutePath("/connection".into()), RoutePath("/emulation".into())]
}

/// Sticky sessions for node-local SockJS sessions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SessionAffinity {
    /// Cookie affinity when SockJS is enabled and more than one pod may run.
    #[default]
    Auto,
    Cookie,
    None,
}

/// A Gateway the `HTTPRoute` attaches to (Gateway API `ParentReference`, common fields).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Gateway; the resource's own namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener name on the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Gateway API route for client connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiSpec {
    #[serde(default = "crate::ingress::default_true")]
    pub enabled: bool,
    /// Gateways to attach to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<ParentRef>,
    /// Host names; empty means whatever the Gateway listener accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Path prefixes; defaults to the same transport paths as the Ingress.
    #[serde(default = "default_paths")]
    #[schemars(length(min = 1, max = 16))]
    pub paths: Vec<RoutePath>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

pub(crate) fn default_true() -> bool {
    true
}

/// ingress-nginx annotation names the operator sets by default.
pub const NGINX_READ_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
pub const NGINX_SEND_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-send-timeout";
pub const NGINX_BUFFERING: &str = "nginx.ingress.kubernetes.io/proxy-buffering";
pub const NGINX_AFFINITY: &str = "nginx.ingress.kubernetes.io/affinity";
pub const NGINX_AFFINITY_MODE: &str = "nginx.ingress.kubernetes.io/affinity-mode";
pub const NGINX_COOKIE_NAME: &str = "nginx.ingress.kubernetes.io/session-cookie-name";
/// Name of the affinity cookie.
pub const AFFINITY_COOKIE: &str = "gyre_affinity";
/// Read/send timeout for long-lived connections, seconds. The server pings every 25 s, so an
/// idle-but-alive connection never gets near it; it bounds only truly dead ones.
pub const LONG_TIMEOUT_SECONDS: &str = "3600";

/// Whether SockJS is switched on in the pass-through configuration.
pub fn sockjs_enabled(spec: &CentrifugoSpec) -> bool {
    spec.config.as_ref().and_then(|c| c.get("sockjs")).and_then(|s| s.get("enabled")).and_then(Value::as_bool)
        == Some(true)
}

/// Whether client requests must stick to one pod.
pub fn affinity_needed(spec: &CentrifugoSpec) -> bool {
    let Some(ing) = &spec.ingress else { return false };
    match ing.session_affinity {
        SessionAffinity::Cookie => true,
        SessionAffinity::None => false,
        SessionAffinity::Auto => sockjs_enabled(spec) && (spec.replicas > 1 || spec.autoscaling_enabled()),
    }
}

/// The Ingress's annotations: operator defaults, then the user's (which win).
pub fn ingress_annotations(spec: &CentrifugoSpec) -> BTreeMap<String, String> {
    let Some(ing) = &spec.ingress else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    if ing.controller_defaults {
        out.insert(NGINX_READ_TIMEOUT.into(), LONG_TIMEOUT_SECONDS.into());
        out.insert(NGINX_SEND_TIMEOUT.into(), LONG_TIMEOUT_SECONDS.into());
        out.insert(NGINX_BUFFERING.into(), "off".into());
        // The pods serve TLS on the client port (spec.tls): the controller must speak it.
        if crate::tls::enabled(spec).is_some() {
            out.insert(crate::tls::NGINX_BACKEND_PROTOCOL.into(), "HTTPS".into());
        }
    }
    if affinity_needed(spec) {
        out.insert(NGINX_AFFINITY.into(), "cookie".into());
        out.insert(NGINX_AFFINITY_MODE.into(), "persistent".into());
        out.insert(NGINX_COOKIE_NAME.into(), AFFINITY_COOKIE.into());
    }
    out.extend(ing.annotations.clone());
    out
}

/// Paths that must never be routed publicly: the admin UI when it is served on the client port.
/// Refuses an Ingress/HTTPRoute path that would reach it, and duplicate paths.
pub fn validate(spec: &CentrifugoSpec) -> Result<(), ConfigError> {
    let mut lists: Vec<(&str, &[RoutePath])> = Vec::new();
    if let Some(i) = spec.ingress.as_ref().filter(|i| i.enabled) {
        lists.push(("spec.ingress.paths", &i.paths));
    }
    if let Some(g) = spec.gateway_api.as_ref().filter(|g| g.enabled) {
        lists.push(("spec.gatewayApi.paths", &g.paths));
    }
    let admin_prefix = spec
        .admin()
        .filter(|a| a.external)
        .map(|a| a.handler_prefix.clone().unwrap_or_default().trim_end_matches('/').to_string());
    for (field, paths) in lists {
        let mut seen = std::collections::BTreeSet::new();
        for p in paths {
            if !p.0.starts_with('/') {
                return Err(ConfigError::InvalidSpec(format!("{field}: {:?} must start with '/'", p.0)));
            }
            if !seen.insert(p.0.trim_end_matches('/')) {
                return Err(ConfigError::InvalidSpec(format!("{field}: {:?} is listed twice", p.0)));
            }
            if let Some(admin) = &admin_prefix {
                let route = p.0.trim_end_matches('/');
                // A Prefix route covers everything below it; the admin UI must not be below it.
                let covers_admin = route.is_empty() || admin == route || admin.starts_with(&format!("{route}/"));
                if covers_admin {
                    return Err(ConfigError::InvalidSpec(format!(
                        "{field}: {:?} would expose the admin UI (admin.external with handler prefix {:?}); \
                         the operator keeps the admin UI off public routes",
                        p.0,
                        if admin.is_empty() { "/" } else { admin.as_str() }
                    )));
                }
            }
        }
    }
    Ok(())
}

fn client_backend(cr: &Centrifugo) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: cr.name_any(),
            port: Some(ServiceBackendPort { name: Some("http".into()), ..Default::default() }),
        }),
        ..Default::default()
    }
}

/// `None` when the Ingress is off (the reconciler then deletes any previous one).
pub fn build_ingress(cr: &Centrifugo) -> Option<Ingress> {
    let ing = cr.spec.ingress.as_ref().filter(|i| i.enabled)?;
    let http = HTTPIngressRuleValue {
        paths: ing
            .paths
            .iter()
            .map(|p| HTTPIngressPath {
                path: Some(p.0.clone()),
                path_type: "Prefix".into(),
                backend: client_backend(cr),
            })
            .collect(),
    };
    let rules = if ing.hosts.is_empty() {
        vec![IngressRule { host: None, http: Some(http) }]
    } else {
        ing.hosts.iter().map(|h| IngressRule { host: Some(h.clone()), http: Some(http.clone()) }).collect()
    };
    let mut m = meta(cr, cr.name_any(), "server");
    let annotations = ingress_annotations(&cr.spec);
    if !annotations.is_empty() {
        m.annotations = Some(annotations);
    }
    Some(Ingress {
        metadata: m,
        spec: Some(K8sIngressSpec {
            ingress_class_name: ing.class_name.clone(),
            rules: Some(rules),
            tls: Some(crate::tls::ingress_tls(cr)).filter(|t| !t.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Gateway API's HTTPRoute kind, addressed dynamically because its CRD may not be installed.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// `None` when no route is wanted. Session persistence is not part of the Gateway API's standard
/// channel, so SockJS with several pods needs the implementation's own affinity settings
/// (documented); everything else works through any conformant Gateway.
pub fn build_http_route(cr: &Centrifugo) -> Option<DynamicObject> {
    let g = cr.spec.gateway_api.as_ref().filter(|g| g.enabled)?;
    let port = cr.spec.service().port;
    let parent_refs: Vec<Value> = g
        .parent_refs
        .iter()
        .map(|p| {
            let mut r = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name});
            if let Some(ns) = &p.namespace {
                r["namespace"] = json!(ns);
            }
            if let Some(s) = &p.section_name {
                r["sectionName"] = json!(s);
            }
            r
        })
        .collect();
    let matches: Vec<Value> = g.paths.iter().map(|p| json!({"path": {"type": "PathPrefix", "value": p.0}})).collect();
    let mut spec = json!({
        "parentRefs": parent_refs,
        "rules": [{
            "matches": matches,
            "backendRefs": [{"group": "", "kind": "Service", "name": cr.name_any(), "port": port}],
        }],
    });
    if !g.hostnames.is_empty() {
        spec["hostnames"] = json!(g.hostnames);
    }
    let mut m = meta(cr, cr.name_any(), "server");
    if !g.annotations.is_empty() {
        m.annotations = Some(g.annotations.clone());
    }
    let mut obj = DynamicObject::new(&cr.name_any(), &http_route_resource()).data(json!({ "spec": spec }));
    obj.metadata = m;
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fixtures::{cr, nats};

    fn spec(v: Value) -> CentrifugoSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_ingress_routes_every_transport_to_the_client_port() {
        let c = cr(spec(json!({"ingress": {"hosts": ["rt.example"]}})));
        let ing = build_ingress(&c).unwrap();
        let rule = &ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        let paths: Vec<_> = rule
            .http
            .as_ref()
            .unwrap()
            .paths
            .iter()
            .map(|p| {
                let svc = p.backend.service.as_ref().unwrap();
                (p.path.clone().unwrap(), p.path_type.clone(), svc.name.clone(), svc.port.clone().unwrap().name)
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("/connection".into(), "Prefix".into(), "chat".into(), Some("http".into())),
                ("/emulation".into(), "Prefix".into(), "chat".into(), Some("http".into())),
            ]
        );
        let ann = ing.metadata.annotations.unwrap();
        assert_eq!(ann[NGINX_READ_TIMEOUT], "3600");
        assert_eq!(ann[NGINX_BUFFERING], "off");
        assert!(!ann.contains_key(NGINX_AFFINITY), "no SockJS, no affinity");
    }

    /// (sockjs, replicas, autoscaling, affinity setting) → cookie affinity?
    #[test]
    fn affinity_table() {
        let cases = [
            (true, 2, false, "Auto", true),
            (true, 1, false, "Auto", false),
            (true, 1, true, "Auto", true),
            (false, 3, false, "Auto", false),
            (false, 1, false, "Cookie", true),
            (true, 3, false, "None", false),
        ];
        for (sockjs, replicas, hpa, mode, want) in cases {
            let mut s = spec(json!({
                "replicas": replicas,
                "config": {"sockjs": {"enabled": sockjs}},
                "ingress": {"sessionAffinity": mode},
            }));
            s.nats = nats();
            if hpa {
                s.autoscaling = serde_json::from_value(json!({"minReplicas": 1, "maxReplicas": 3})).unwrap();
            }
            assert_eq!(affinity_needed(&s), want, "{sockjs} {replicas} {hpa} {mode}");
            let ann = ingress_annotations(&s);
            assert_eq!(ann.get(NGINX_AFFINITY).map(String::as_str), want.then_some("cookie"));
        }
    }

    #[test]
    fn user_annotations_win_and_defaults_can_be_switched_off() {
        let s = spec(json!({"ingress": {"annotations": {NGINX_READ_TIMEOUT: "86400"}}}));
        assert_eq!(ingress_annotations(&s)[NGINX_READ_TIMEOUT], "86400");
        let s = spec(json!({"ingress": {"controllerDefaults": false}}));
        assert!(ingress_annotations(&s).is_empty());
    }

    #[test]
    fn admin_ui_never_reachable_through_public_routes() {
        // (paths, admin external, handler prefix) → refused?
        let cases: [(&[&str], bool, &str, bool); 6] = [
            (&["/connection", "/emulation"], true, "/admin", false),
            (&["/"], true, "/admin", true),
            (&["/admin"], true, "/admin", true),
            (&["/connection"], true, "", false),
            (&["/"], false, "", false),
            (&["/connection", "/connection/"], false, "", true),
        ];
        for (paths, external, prefix, refused) in cases {
            let s = spec(json!({
                "admin": {"external": external, "handlerPrefix": prefix},
                "ingress": {"paths": paths},
            }));
            assert_eq!(validate(&s).is_err(), refused, "{paths:?} {external} {prefix:?}");
        }
        // The same rule for the HTTPRoute.
        let s = spec(json!({"admin": {"external": true, "handlerPrefix": "/admin"},
                            "gatewayApi": {"parentRefs": [{"name": "gw"}], "paths": ["/"]}}));
        assert!(validate(&s).is_err());
    }

    #[test]
    fn http_route_targets_the_client_service_with_every_path() {
        let c = cr(spec(json!({
            "service": {"port": 80},
            "gatewayApi": {"parentRefs": [{"name": "public", "namespace": "gw", "sectionName": "https"}],
                           "hostnames": ["rt.example"]},
        })));
        let r = serde_json::to_value(build_http_route(&c).unwrap()).unwrap();
        assert_eq!(r["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(r["kind"], "HTTPRoute");
        assert_eq!(r["spec"]["parentRefs"][0]["sectionName"], "https");
        assert_eq!(r["spec"]["hostnames"][0], "rt.example");
        let rule = &r["spec"]["rules"][0];
        assert_eq!(rule["backendRefs"][0]["name"], "chat");
        assert_eq!(rule["backendRefs"][0]["port"], 80);
        let paths: Vec<_> = rule["matches"].as_array().unwrap().iter().map(|m| m["path"]["value"].clone()).collect();
        assert_eq!(paths, [json!("/connection"), json!("/emulation")]);
        assert!(build_http_route(&cr(CentrifugoSpec::default())).is_none());
    }
}
