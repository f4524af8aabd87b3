//! NATS run by the operator for `spec.nats.managed: true`: the objects, as pure functions.
//!
//! Why the operator and not only a values file for the official NATS chart (docs/operator.md,
//! "Why the operator can run NATS"): Gyre cannot work without JetStream, and the official chart
//! ships with it off; a user without NATS then has a second chart to learn, configure and keep
//! in step. Here one resource is enough, the objects are rendered and schema-checked offline
//! like every other child, the generated `nats.conf` is run by a real nats-server in the tests,
//! and `BrokerReady` probes the same Service the pods use. Users with a NATS of their own keep
//! `nats.url`.
//!
//! What is built, all owned by the `Centrifugo` (deleted with it, except the volumes):
//! - ConfigMap `<name>-nats-config`: `nats.conf` with JetStream on `/data`, a cluster block with
//!   one route per pod when `replicas > 1` (server names from the pod names, so JetStream's
//!   RAFT membership is stable across restarts), lame-duck mode for graceful restarts.
//! - Service `<name>-nats-headless` (clusterIP None, publishes not-ready addresses so routes
//!   form before readiness) and Service `<name>-nats` for clients (port 4222).
//! - StatefulSet `<name>-nats`: the official image, non-root, read-only root filesystem, a
//!   PersistentVolumeClaim per pod, parallel start (JetStream needs a quorum to become ready),
//!   `/healthz` probes, preStop lame-duck so clients move before the server stops.
//! - PodDisruptionBudget `<name>-nats` (maxUnavailable 1) when `replicas > 1`.
//!
//! Failure modes: volumes outlive the StatefulSet (Kubernetes' default `Retain`), so switching
//! `managed` off and on again finds the old JetStream data; `storageSize` applies to new volumes
//! only (a StatefulSet's claim templates are immutable: the apply fails with the API server's
//! message in `ReconcileError`); an even replica count is refused by `build_config`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
            EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
            TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::{
    builders::{MANAGED_BY_LABEL, MANAGER},
    config::sha256_hex,
    crd::{Centrifugo, ManagedNatsSpec},
};

pub const CLIENT_PORT: i32 = 4222;
pub const CLUSTER_PORT: i32 = 6222;
pub const MONITOR_PORT: i32 = 8222;
const CONF_DIR: &str = "/etc/nats";
const CONF_FILE: &str = "nats.conf";
const DATA_DIR: &str = "/data";
const PID_DIR: &str = "/var/run/nats";
/// Non-root uid/gid for the NATS pods; fsGroup makes the volume writable for it.
const NATS_UID: i64 = 1000;
/// Lame duck spreads client moves over this long; the grace period leaves room for it.
const LAME_DUCK: &str = "30s";
const GRACE_SECONDS: i64 = 60;

/// The managed NATS settings of an instance, or `None` when NATS is not managed.
pub fn managed(cr: &Centrifugo) -> Option<ManagedNatsSpec> {
    let n = cr.spec.nats.as_ref().filter(|n| n.is_managed())?;
    Some(n.server.clone().unwrap_or_default())
}

pub fn name(cr: &Centrifugo) -> String {
    format!("{}-nats", cr.name_any())
}
pub fn headless_name(cr: &Centrifugo) -> String {
    format!("{}-nats-headless", cr.name_any())
}
pub fn config_name(cr: &Centrifugo) -> String {
    format!("{}-nats-config", cr.name_any())
}

/// The URL the Gyre pods use (same namespace, so the short Service name resolves).
pub fn pod_url(cr: &Centrifugo) -> String {
    format!("nats://{}:{CLIENT_PORT}", name(cr))
}

/// The URL the operator probes from its own namespace.
pub fn probe_url(cr: &Centrifugo) -> String {
    format!("nats://{}.{}.svc:{CLIENT_PORT}", name(cr), cr.namespace().unwrap_or_else(|| "default".into()))
}

pub fn selector_labels(cr: &Centrifugo) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "nats".to_string()),
        ("app.kubernetes.io/instance".to_string(), cr.name_any()),
    ])
}

fn meta(cr: &Centrifugo, name: String) -> ObjectMeta {
    let mut labels = selector_labels(cr);
    labels.insert("app.kubernetes.io/component".into(), "broker".into());
    labels.insert("app.kubernetes.io/part-of".into(), "centrifugo".into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    ObjectMeta {
        name: Some(name),
        namespace: cr.namespace(),
        labels: Some(labels),
        owner_references: cr.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// `nats.conf`. `$POD_NAME` is read from the environment by nats-server.
pub fn nats_conf(cr: &Centrifugo, spec: &ManagedNatsSpec) -> String {
    let mut c = format!(
        "# Generated by gyre-operator for Centrifugo {name}; edits are overwritten.\n\
         server_name: $POD_NAME\n\
         listen: \"0.0.0.0:{CLIENT_PORT}\"\n\
         http: \"0.0.0.0:{MONITOR_PORT}\"\n\
         pid_file: \"{PID_DIR}/nats.pid\"\n\
         lame_duck_duration: \"{LAME_DUCK}\"\n\
         lame_duck_grace_period: \"10s\"\n\
         jetstream {{\n  store_dir: \"{DATA_DIR}\"\n}}\n",
        name = cr.name_any()
    );
    if spec.replicas > 1 {
        let routes: Vec<String> = (0..spec.replicas)
            .map(|i| format!("    \"nats://{}-{i}.{}:{CLUSTER_PORT}\"", name(cr), headless_name(cr)))
            .collect();
        c.push_str(&format!(
            "cluster {{\n  name: \"{}\"\n  listen: \"0.0.0.0:{CLUSTER_PORT}\"\n  routes: [\n{}\n  ]\n}}\n",
            name(cr),
            routes.join("\n")
        ));
    }
    c
}

pub fn build_config_map(cr: &Centrifugo, spec: &ManagedNatsSpec) -> ConfigMap {
    ConfigMap {
        metadata: meta(cr, config_name(cr)),
        data: Some(BTreeMap::from([(CONF_FILE.to_string(), nats_conf(cr, spec))])),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub fn build_headless_service(cr: &Centrifugo) -> Service {
    Service {
        metadata: meta(cr, headless_name(cr)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Routes must form before any server is ready: JetStream needs the quorum to start.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cr)),
            ports: Some(vec![
                port("client", CLIENT_PORT),
                port("cluster", CLUSTER_PORT),
                port("monitor", MONITOR_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn build_client_service(cr: &Centrifugo) -> Service {
    Service {
        metadata: meta(cr, name(cr)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cr)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn healthz(query: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(format!("/healthz{query}")),
            port: IntOrString::String("monitor".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("256Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("1Gi".into()))])),
        ..Default::default()
    }
}

pub fn build_stateful_set(cr: &Centrifugo, spec: &ManagedNatsSpec) -> StatefulSet {
    let mount = |name: &str, path: &str, ro: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: ro.then_some(true),
        ..Default::default()
    };
    let container = Container {
        name: "nats".into(),
        image: Some(spec.image.clone()),
        args: Some(vec!["--config".into(), format!("{CONF_DIR}/{CONF_FILE}")]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(
            [("client", CLIENT_PORT), ("cluster", CLUSTER_PORT), ("monitor", MONITOR_PORT)]
                .into_iter()
                .map(|(n, p)| ContainerPort {
                    name: Some(n.into()),
                    container_port: p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        // The same split as the official chart: a server that answers but whose JetStream is
        // still catching up is live, not yet ready.
        startup_probe: Some(healthz("", 5, 60)),
        liveness_probe: Some(healthz("?js-enabled-only=true", 10, 3)),
        readiness_probe: Some(healthz("?js-server-only=true", 10, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["nats-server".into(), "--signal".into(), format!("ldm={PID_DIR}/nats.pid")]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONF_DIR, true),
            mount("data", DATA_DIR, false),
            mount("pid", PID_DIR, false),
        ]),
        ..Default::default()
    };
    let conf_hash = sha256_hex(nats_conf(cr, spec).as_bytes());
    let selector = LabelSelector { match_labels: Some(selector_labels(cr)), ..Default::default() };
    let mut pod_labels = meta(cr, String::new()).labels.unwrap_or_default();
    pod_labels.remove(MANAGED_BY_LABEL);
    StatefulSet {
        metadata: meta(cr, name(cr)),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless_name(cr)),
            pod_management_policy: Some("Parallel".into()),
            selector: selector.clone(),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        "centrifugo.gyre.dev/nats-config-hash".to_string(),
                        conf_hash,
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(GRACE_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NATS_UID),
                        run_as_group: Some(NATS_UID),
                        fs_group: Some(NATS_UID),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(selector),
                        ..Default::default()
                    }]),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource { name: config_name(cr), ..Default::default() }),
                            ..Default::default()
                        },
                        Volume {
                            name: "pid".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("data".into()), ..Default::default() },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_string(), Quantity(spec.storage_size.clone()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `None` for a single server: a budget of zero disruptions would block node drains forever.
pub fn build_pdb(cr: &Centrifugo, spec: &ManagedNatsSpec) -> Option<PodDisruptionBudget> {
    (spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(cr, name(cr)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(cr)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}
