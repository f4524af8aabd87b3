//! Every object the operator writes, as a pure function of the custom resource and a few derived
//! inputs.
//!
//! Keeping construction free of I/O means the whole desired state can be unit-tested, rendered
//! offline (`gyre-operator render`) and schema-checked without a cluster, and the reconciler is
//! reduced to "apply what these functions return". Builders return complete objects with
//! `apiVersion`/`kind` set, because server-side apply needs them and so does offline validation.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
            MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, Service, ServiceAccount, ServicePort,
            ServiceSpec as K8sServiceSpec, SleepAction, TopologySpreadConstraint, Volume, VolumeMount,
        },
        networking::v1::{
            Ingress, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec as K8sNetworkPolicySpec,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec as K8sPdbSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{
    Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::json;

use crate::{
    config::{CLIENT_PORT, CONFIG_DIR, CONFIG_FILE, GeneratedConfig, INTERNAL_PORT, sha256_hex},
    crd::Centrifugo,
};

/// Field manager for server-side apply; also the `managed-by` label value.
pub const MANAGER: &str = "gyre-operator";
/// Pod-template annotation whose change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "centrifugo.gyre.dev/config-hash";
/// Annotation on the generated Secret recording which `rotationGeneration` produced it.
pub const ROTATION_ANNOTATION: &str = "centrifugo.gyre.dev/rotation-generation";
/// Label put on every child, used to keep the operator's Secret watch narrow.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Keys of the credentials Secret and the environment variables the server reads them from.
/// `required` keys must exist in a user-provided Secret; admin keys only when the admin UI is on.
pub const SECRET_ENV: &[(&str, &str, SecretKeyUse)] = &[
    ("tokenHmacSecretKey", "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", SecretKeyUse::Always),
    ("apiKey", "CENTRIFUGO_HTTP_API_KEY", SecretKeyUse::Always),
    ("adminPassword", "CENTRIFUGO_ADMIN_PASSWORD", SecretKeyUse::Admin),
    ("adminSecret", "CENTRIFUGO_ADMIN_SECRET", SecretKeyUse::Admin),
    // Written by the operator during an HMAC key rotation (see `credentials`); never required.
    (crate::credentials::PREVIOUS_HMAC_KEY, "CENTRIFUGO_CLIENT_TOKEN_HMAC_PREVIOUS_SECRET_KEY", SecretKeyUse::Optional),
    (
        crate::credentials::PREVIOUS_HMAC_VALID_UNTIL,
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_PREVIOUS_SECRET_KEY_VALID_UNTIL",
        SecretKeyUse::Optional,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKeyUse {
    Always,
    Admin,
    /// Present only at times (a rotation window); the env reference is optional.
    Optional,
}

/// Environment variable carrying the NATS URL when it comes from a Secret.
pub const NATS_URL_ENV: &str = "CENTRIFUGO_BROKER_NATS_URL";

/// Values the builders need beyond the custom resource itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Resolved server image (spec or the operator's default).
    pub image: String,
    pub config: GeneratedConfig,
    /// Secret the credentials are read from.
    pub secret_name: String,
    /// Hash of the credential values the pods consume (see [`credentials_hash`]).
    pub secret_hash: String,
}

impl Inputs {
    /// What the pod-template annotation carries: changes when the file or the credentials do.
    pub fn pod_hash(&self) -> String {
        sha256_hex(format!("{}\n{}", self.config.hash, self.secret_hash).as_bytes())
    }
}

pub fn config_map_name(cr: &Centrifugo) -> String {
    format!("{}-config", cr.name_any())
}
pub fn generated_secret_name(cr: &Centrifugo) -> String {
    format!("{}-secrets", cr.name_any())
}
pub fn internal_service_name(cr: &Centrifugo) -> String {
    format!("{}-internal", cr.name_any())
}
/// Secret the pods read credentials from: the user's, or the one the operator generates.
pub fn secret_name(cr: &Centrifugo) -> String {
    cr.spec.existing_secret().map_or_else(|| generated_secret_name(cr), str::to_string)
}

/// Labels that identify the pods of one instance; immutable once a Deployment exists.
pub fn selector_labels(cr: &Centrifugo) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "gyre".to_string()),
        ("app.kubernetes.io/instance".to_string(), cr.name_any()),
    ])
}

/// `key=value,...` form of the selector, as the scale subresource wants it.
pub fn selector_string(cr: &Centrifugo) -> String {
    selector_labels(cr).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn labels(cr: &Centrifugo, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cr);
    l.insert("app.kubernetes.io/component".into(), component.into());
    l.insert("app.kubernetes.io/part-of".into(), "centrifugo".into());
    l.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    l
}

pub(crate) fn meta(cr: &Centrifugo, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cr.namespace(),
        labels: Some(labels(cr, component)),
        owner_references: cr.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn with_type<K: Resource<DynamicType = ()>>(meta: ObjectMeta) -> (ObjectMeta, String, String) {
    (meta, K::api_version(&()).into_owned(), K::kind(&()).into_owned())
}

/// Random credentials for a new generated Secret: 32 bytes each, base64url without padding.
pub fn generate_secret_values() -> BTreeMap<String, String> {
    use rand::RngCore as _;
    let mut rng = rand::rng();
    SECRET_ENV
        .iter()
        .filter(|(_, _, u)| *u != SecretKeyUse::Optional)
        .map(|(key, _, _)| {
            let mut buf = [0u8; 32];
            rng.fill_bytes(&mut buf);
            ((*key).to_string(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
        })
        .collect()
}

/// The operator-generated credentials Secret. Only ever sent with freshly generated values (on
/// creation or on an explicit rotation), never re-sent with new randomness on a routine pass.
pub fn build_generated_secret(cr: &Centrifugo, values: &BTreeMap<String, String>) -> Secret {
    let mut m = meta(cr, generated_secret_name(cr), "credentials");
    m.annotations = Some(crate::credentials::rotation_annotations(&cr.spec));
    if cr.spec.secrets().retain_on_delete {
        // Not garbage-collected with the resource: a deleted-and-recreated resource adopts it.
        m.owner_references = None;
    }
    Secret {
        metadata: m,
        type_: Some("Opaque".into()),
        data: Some(values.iter().map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Default::default()
    }
}

/// Hash over the credential keys the pods consume, so a changed credential rolls the pods while
/// unrelated keys in a shared Secret do not.
pub fn credentials_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Vec::new();
    for (key, _, _) in SECRET_ENV {
        h.extend_from_slice(key.as_bytes());
        h.push(0);
        if let Some(v) = data.get(*key) {
            h.extend_from_slice(&v.0);
        }
        h.push(0);
    }
    sha256_hex(&h)
}

/// Keys a Secret lacks for this spec (empty when usable).
pub fn missing_secret_keys(cr: &Centrifugo, data: &BTreeMap<String, ByteString>) -> Vec<String> {
    SECRET_ENV
        .iter()
        .filter(|(_, _, u)| *u == SecretKeyUse::Always || (*u == SecretKeyUse::Admin && cr.spec.admin_enabled()))
        .filter(|(k, _, _)| data.get(*k).is_none_or(|v| v.0.is_empty()))
        .map(|(k, _, _)| (*k).to_string())
        .collect()
}

pub fn build_config_map(cr: &Centrifugo, inputs: &Inputs) -> ConfigMap {
    let mut m = meta(cr, config_map_name(cr), "config");
    m.annotations = Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), inputs.config.hash.clone())]));
    ConfigMap {
        metadata: m,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), inputs.config.json.clone())])),
        ..Default::default()
    }
}

pub fn build_service_account(cr: &Centrifugo) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(cr, cr.name_any(), "server"),
        // The server never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

fn env_from_secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("256Mi".into()))])),
        ..Default::default()
    }
}

/// Probes by failure domain (the server's `health.rs`): liveness and startup ask
/// `/health/live`, which is 200 whenever the process serves HTTP, so a NATS outage never
/// restarts pods (restarting cannot bring NATS back); readiness asks `/health/ready`, 503
/// while NATS/JetStream is unavailable or the pod drains, so Services stop routing to it.
pub const LIVENESS_PATH: &str = "/health/live";
pub const READINESS_PATH: &str = "/health/ready";

fn health_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("internal".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn spread_constraints(cr: &Centrifugo) -> Vec<TopologySpreadConstraint> {
    let selector = LabelSelector { match_labels: Some(selector_labels(cr)), ..Default::default() };
    match cr.spec.pod().topology_spread_constraints {
        None => vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector),
            ..Default::default()
        }],
        Some(list) => list
            .into_iter()
            .map(|mut c| {
                if c.label_selector.is_none() {
                    c.label_selector = Some(selector.clone());
                }
                c
            })
            .collect(),
    }
}

pub fn build_deployment(cr: &Centrifugo, inputs: &Inputs) -> Deployment {
    let spec = &cr.spec;
    let pod = spec.pod();
    let mut env: Vec<EnvVar> = SECRET_ENV
        .iter()
        .map(|(key, var, usage)| {
            let optional = match usage {
                SecretKeyUse::Always => false,
                SecretKeyUse::Admin => !spec.admin_enabled(),
                SecretKeyUse::Optional => true,
            };
            env_from_secret(var, &inputs.secret_name, key, optional)
        })
        .collect();
    if let Some(sel) = spec.nats.as_ref().and_then(|n| n.url_from.as_ref()) {
        env.push(env_from_secret(NATS_URL_ENV, &sel.name, &sel.key, false));
    }
    if crate::managed_nats::managed(cr).is_some() {
        env.push(EnvVar {
            name: NATS_URL_ENV.into(),
            value: Some(crate::managed_nats::pod_url(cr)),
            ..Default::default()
        });
    }

    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(labels(cr, "server"));
    let mut pod_annotations = pod.annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), inputs.pod_hash());

    let container = Container {
        name: "gyre".into(),
        image: Some(inputs.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/{CONFIG_FILE}")]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: CLIENT_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("internal".into()),
                container_port: INTERNAL_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env: Some(env),
        readiness_probe: Some(health_probe(READINESS_PATH, 5, 2)),
        liveness_probe: Some(health_probe(LIVENESS_PATH, 10, 3)),
        // Up to 60 s to start listening before liveness takes over (no initialDelay guesswork).
        startup_probe: Some(health_probe(LIVENESS_PATH, 2, 30)),
        lifecycle: (pod.pre_stop_sleep_seconds > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: pod.pre_stop_sleep_seconds }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(crate::managed_nats::hardened()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        ..Default::default()
    };

    let tls_volume = crate::tls::volume(cr);
    let mut container = container;
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: config_map_name(cr), ..Default::default() }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("16Mi".into())), ..Default::default() }),
            ..Default::default()
        },
    ];
    // The client-port Secret, and the managed NATS's client Secret (nats.server.tls).
    for (volume, mount) in tls_volume.into_iter().chain(crate::managed_nats::client_volume(cr)) {
        volumes.push(volume);
        container.volume_mounts.get_or_insert_with(Vec::new).push(mount);
    }

    let pod_spec = PodSpec {
        service_account_name: Some(cr.name_any()),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(pod.termination_grace_period_seconds),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty()).then(|| spec.image_pull_secrets.clone()),
        node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
        tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
        affinity: pod.affinity.clone(),
        priority_class_name: pod.priority_class_name.clone(),
        topology_spread_constraints: Some(spread_constraints(cr)),
        ..Default::default()
    };

    let mut deployment = Deployment {
        metadata: meta(cr, cr.name_any(), "server"),
        spec: Some(DeploymentSpec {
            // Under an HPA the field is left out so the apply never fights the autoscaler.
            replicas: (!spec.autoscaling_enabled()).then_some(spec.replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(cr)), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    crate::podspec::apply_overrides(&mut deployment, &pod);
    deployment
}

/// Client-facing Service: the transports only, never the API.
pub fn build_client_service(cr: &Centrifugo) -> Service {
    let s = cr.spec.service();
    let mut m = meta(cr, cr.name_any(), "server");
    m.labels.get_or_insert_default().extend(s.labels.clone());
    if !s.annotations.is_empty() {
        m.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata: m,
        spec: Some(K8sServiceSpec {
            type_: Some(s.type_.as_str().into()),
            selector: Some(selector_labels(cr)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: s.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// In-cluster Service for backends and monitoring: `/api`, `/metrics`, `/health`, admin.
pub fn build_internal_service(cr: &Centrifugo) -> Service {
    let s = cr.spec.service();
    Service {
        metadata: meta(cr, internal_service_name(cr), "internal"),
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cr)),
            ports: Some(vec![ServicePort {
                name: Some("internal".into()),
                port: s.internal_port,
                target_port: Some(IntOrString::String("internal".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `None` when the Ingress is off (the reconciler then deletes any previous one).
pub fn build_ingress(cr: &Centrifugo) -> Option<Ingress> {
    crate::ingress::build_ingress(cr)
}

pub fn build_hpa(cr: &Centrifugo) -> Option<HorizontalPodAutoscaler> {
    let a = cr.spec.autoscaling.as_ref().filter(|a| a.enabled)?;
    let resource_metric = |name: &str, pct: i32| MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target: MetricTarget { type_: "Utilization".into(), average_utilization: Some(pct), ..Default::default() },
        }),
        ..Default::default()
    };
    let mut metrics = vec![resource_metric("cpu", a.target_cpu_utilization_percentage)];
    if let Some(mem) = a.target_memory_utilization_percentage {
        metrics.push(resource_metric("memory", mem));
    }
    Some(HorizontalPodAutoscaler {
        metadata: meta(cr, cr.name_any(), "server"),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: cr.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: a.behavior.clone(),
        }),
        ..Default::default()
    })
}

/// On when asked for, or by default whenever more than one pod is expected; one pod behind a
/// budget would block node drains forever.
pub fn build_pdb(cr: &Centrifugo) -> Option<PodDisruptionBudget> {
    let spec = &cr.spec;
    let (min_available, max_unavailable) = match &spec.pod_disruption_budget {
        Some(p) if !p.enabled => return None,
        Some(p) => (p.min_available.clone(), p.max_unavailable.clone()),
        None if spec.replicas >= 2 || spec.autoscaling_enabled() => (None, None),
        None => return None,
    };
    let max_unavailable = match (&min_available, max_unavailable) {
        (None, None) => Some(IntOrString::Int(1)),
        (_, m) => m,
    };
    Some(PodDisruptionBudget {
        metadata: meta(cr, cr.name_any(), "server"),
        spec: Some(K8sPdbSpec {
            selector: Some(LabelSelector { match_labels: Some(selector_labels(cr)), ..Default::default() }),
            min_available,
            max_unavailable,
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn build_network_policy(cr: &Centrifugo) -> Option<NetworkPolicy> {
    let np = cr.spec.network_policy.as_ref().filter(|n| n.enabled)?;
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let api_from = if np.api_clients.is_empty() {
        vec![NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() }]
    } else {
        np.api_clients.clone()
    };
    let mut rules = vec![
        NetworkPolicyIngressRule { from: None, ports: Some(vec![port(CLIENT_PORT)]) },
        NetworkPolicyIngressRule { from: Some(api_from), ports: Some(vec![port(INTERNAL_PORT)]) },
    ];
    // A ServiceMonitor is pointless if the scraper cannot reach /metrics (internal port).
    if build_service_monitor(cr).is_some() {
        rules.push(NetworkPolicyIngressRule {
            from: Some(metrics_scrapers(np)),
            ports: Some(vec![port(INTERNAL_PORT)]),
        });
    }
    Some(NetworkPolicy {
        metadata: meta(cr, cr.name_any(), "server"),
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(cr)), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..Default::default()
        }),
    })
}

/// Peers admitted to the internal port for scraping: the configured ones, or Prometheus pods
/// (prometheus-operator labels them `app.kubernetes.io/name: prometheus`) in any namespace.
pub fn metrics_scrapers(np: &crate::crd::NetworkPolicySpec) -> Vec<NetworkPolicyPeer> {
    if !np.metrics_scrapers.is_empty() {
        return np.metrics_scrapers.clone();
    }
    vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_string(), "prometheus".to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

/// prometheus-operator's ServiceMonitor kind, addressed dynamically because its CRD may not exist.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn build_service_monitor(cr: &Centrifugo) -> Option<DynamicObject> {
    let sm = cr.spec.metrics.as_ref().and_then(|m| m.service_monitor.as_ref()).filter(|s| s.enabled)?;
    let mut m = meta(cr, cr.name_any(), "server");
    m.labels.get_or_insert_default().extend(sm.labels.clone());
    let mut match_labels = selector_labels(cr);
    match_labels.insert("app.kubernetes.io/component".into(), "internal".into());
    let mut obj = DynamicObject::new(&cr.name_any(), &service_monitor_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": match_labels},
            "endpoints": [{"port": "internal", "path": "/metrics", "interval": sm.interval}],
        }
    }));
    obj.metadata = m;
    Some(obj)
}

/// Every child for the given inputs, as JSON values in apply order, for offline rendering. The
/// Secret is included only when the operator would generate it, with the values supplied.
pub fn render_all(
    cr: &Centrifugo,
    inputs: &Inputs,
    generated_secret: Option<&BTreeMap<String, String>>,
) -> Vec<serde_json::Value> {
    fn typed<K: Resource<DynamicType = ()> + serde::Serialize>(k: &K) -> serde_json::Value {
        let mut v = serde_json::to_value(k).expect("k8s objects serialize");
        let (_, api_version, kind) = with_type::<K>(ObjectMeta::default());
        v["apiVersion"] = api_version.into();
        v["kind"] = kind.into();
        v
    }
    let mut out = Vec::new();
    if let Some(values) = generated_secret {
        out.push(typed(&build_generated_secret(cr, values)));
    }
    // Managed NATS first: the server pods wait for it.
    if let Some(n) = crate::managed_nats::managed(cr) {
        use crate::managed_nats as m;
        out.push(typed(&m::build_config_map(cr, &n)));
        out.push(typed(&m::build_headless_service(cr)));
        out.push(typed(&m::build_client_service(cr)));
        out.push(typed(&m::build_stateful_set(cr, &n)));
        if let Some(pdb) = m::build_pdb(cr, &n) {
            out.push(typed(&pdb));
        }
        for cert in m::build_certificates(cr, &n) {
            out.push(serde_json::to_value(&cert).expect("dynamic objects serialize"));
        }
    }
    out.push(typed(&build_service_account(cr)));
    out.push(typed(&build_config_map(cr, inputs)));
    out.push(typed(&build_deployment(cr, inputs)));
    out.push(typed(&build_client_service(cr)));
    out.push(typed(&build_internal_service(cr)));
    if let Some(x) = build_ingress(cr) {
        out.push(typed(&x));
    }
    if let Some(x) = build_hpa(cr) {
        out.push(typed(&x));
    }
    if let Some(x) = build_pdb(cr) {
        out.push(typed(&x));
    }
    if let Some(x) = build_network_policy(cr) {
        out.push(typed(&x));
    }
    if let Some(x) = build_service_monitor(cr) {
        out.push(serde_json::to_value(&x).expect("dynamic objects serialize"));
    }
    if let Some(x) = crate::ingress::build_http_route(cr) {
        out.push(serde_json::to_value(&x).expect("dynamic objects serialize"));
    }
    if let Some(x) = crate::tls::build_certificate(cr) {
        out.push(serde_json::to_value(&x).expect("dynamic objects serialize"));
    }
    out
}
