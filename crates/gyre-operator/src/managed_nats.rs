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
//! - With `nats.server.tls` (opt-in): a `tls {}` block with `verify: true` on the client port and
//!   on the routes, the server Secret mounted as a directory, a config-reloader sidecar (see
//!   [`reloader`] for why), and two cert-manager `Certificate`s (server, client) when an issuer
//!   is named ([`build_certificates`]).
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
            ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort,
            ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt, api::DynamicObject};
use serde_json::{Value, json};

use crate::{
    builders::{MANAGED_BY_LABEL, MANAGER},
    config::sha256_hex,
    crd::{Centrifugo, CentrifugoSpec, ManagedNatsSpec, ManagedNatsTlsSpec},
    tls::IssuerKind,
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

/// Where the server Secret is mounted in the NATS pods (under `/etc/`, as in the official chart).
pub const SERVER_TLS_DIR: &str = "/etc/nats-tls";
/// Where the client Secret is mounted in the Gyre pods.
pub const CLIENT_TLS_DIR: &str = "/etc/gyre-nats-tls";
/// Name of the Secret volume, in the NATS pods (server Secret) and the Gyre pods (client Secret).
pub const TLS_VOLUME: &str = "nats-tls";

/// The managed NATS settings of an instance, or `None` when NATS is not managed.
pub fn managed(cr: &Centrifugo) -> Option<ManagedNatsSpec> {
    let n = cr.spec.nats.as_ref().filter(|n| n.is_managed())?;
    Some(n.server.clone().unwrap_or_default())
}

/// `nats.server.tls` of a managed NATS, when switched on.
pub fn tls_of(spec: &CentrifugoSpec) -> Option<&ManagedNatsTlsSpec> {
    spec.nats.as_ref().filter(|n| n.is_managed())?.server.as_ref()?.tls.as_ref().filter(|t| t.enabled)
}

/// The server Secret's name, when TLS is on.
pub fn server_secret_name(cr: &Centrifugo) -> Option<String> {
    let t = tls_of(&cr.spec)?;
    Some(t.server_secret_name.clone().unwrap_or_else(|| format!("{}-nats-server-tls", cr.name_any())))
}

/// The client Secret's name, when TLS is on.
pub fn client_secret_name(cr: &Centrifugo) -> Option<String> {
    let t = tls_of(&cr.spec)?;
    Some(t.client_secret_name.clone().unwrap_or_else(|| format!("{}-nats-client-tls", cr.name_any())))
}

pub fn server_certificate_name(cr: &Centrifugo) -> String {
    format!("{}-nats-server", cr.name_any())
}
pub fn client_certificate_name(cr: &Centrifugo) -> String {
    format!("{}-nats-client", cr.name_any())
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

fn scheme(cr: &Centrifugo) -> &'static str {
    if tls_of(&cr.spec).is_some() { "tls" } else { "nats" }
}

/// The URL the Gyre pods use (same namespace, so the short Service name resolves). With TLS its
/// host, `<name>-nats`, is the name the server certificate is checked against.
pub fn pod_url(cr: &Centrifugo) -> String {
    format!("{}://{}:{CLIENT_PORT}", scheme(cr), name(cr))
}

/// The URL the operator probes from its own namespace. With TLS still probed in the clear: the
/// server sends INFO before the handshake (it is not TLS-first), and that is all the probe reads.
pub fn probe_url(cr: &Centrifugo) -> String {
    format!("{}://{}.{}.svc:{CLIENT_PORT}", scheme(cr), name(cr), cr.namespace().unwrap_or_else(|| "default".into()))
}

/// DNS names of the server certificate: every name the client Service answers to (the Gyre pods
/// use the short one, the operator's probe `<svc>.<ns>.svc`), and with more than one server each
/// pod's name under the headless Service, short (the form the routes in `nats.conf` dial) and
/// qualified. The pod names are listed one by one rather than as a wildcard: cert-manager's CA
/// issuer signs either, but some issuers refuse wildcards.
pub fn server_dns_names(cr: &Centrifugo, spec: &ManagedNatsSpec) -> Vec<String> {
    let ns = cr.namespace().unwrap_or_else(|| "default".into());
    let qualified = |host: &str| {
        [host.to_string(), format!("{host}.{ns}"), format!("{host}.{ns}.svc"), format!("{host}.{ns}.svc.cluster.local")]
    };
    let mut names: Vec<String> = qualified(&name(cr)).into();
    if spec.replicas > 1 {
        for i in 0..spec.replicas {
            names.extend(qualified(&format!("{}-{i}.{}", name(cr), headless_name(cr))));
        }
    }
    names
}

fn certificate(
    cr: &Centrifugo,
    name: String,
    secret: String,
    subject: Value,
    usages: &[&str],
) -> Option<DynamicObject> {
    let issuer = tls_of(&cr.spec)?.issuer_ref.as_ref()?;
    let kind = match issuer.kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    };
    let mut spec = json!({
        "secretName": secret,
        "issuerRef": {"name": issuer.name, "kind": kind, "group": issuer.group},
        "usages": usages,
        // A fresh key at every renewal; the reloader (server) and the next reconnect (Gyre) pick it up.
        "privateKey": {"rotationPolicy": "Always"},
    });
    spec.as_object_mut().expect("object").extend(subject.as_object().expect("object").clone());
    let mut obj = DynamicObject::new(&name, &crate::tls::certificate_resource()).data(json!({ "spec": spec }));
    obj.metadata = meta(cr, name);
    Some(obj)
}

/// The cert-manager `Certificate`s (server, client) when TLS is on with an issuer; empty
/// otherwise (the reconciler then deletes the ones it made before).
pub fn build_certificates(cr: &Centrifugo, spec: &ManagedNatsSpec) -> Vec<DynamicObject> {
    let (Some(server_secret), Some(client_secret)) = (server_secret_name(cr), client_secret_name(cr)) else {
        return Vec::new();
    };
    // Routes are mutual TLS too: a server dialing a route presents the same certificate as a
    // client, so the server certificate needs "client auth" as well.
    let server = certificate(
        cr,
        server_certificate_name(cr),
        server_secret,
        json!({"dnsNames": server_dns_names(cr, spec)}),
        &["digital signature", "key encipherment", "server auth", "client auth"],
    );
    // The Gyre pods' identity; the name is the Gyre Service's, at most 63 characters like every
    // Service name, so it fits a commonName (64).
    let client = certificate(
        cr,
        client_certificate_name(cr),
        client_secret,
        json!({"commonName": cr.name_any()}),
        &["digital signature", "key encipherment", "client auth"],
    );
    server.into_iter().chain(client).collect()
}

/// The Gyre server's `broker.nats.tls` keys when the managed NATS has TLS: the client Secret's
/// files, reloaded by Gyre and used on its next reconnect (docs/tls.md).
pub fn gyre_config_keys(spec: &CentrifugoSpec) -> Vec<(&'static str, Value)> {
    if tls_of(spec).is_none() {
        return Vec::new();
    }
    vec![
        ("broker.nats.tls.enabled", json!(true)),
        ("broker.nats.tls.server_ca_pem", json!(format!("{CLIENT_TLS_DIR}/ca.crt"))),
        ("broker.nats.tls.cert_pem", json!(format!("{CLIENT_TLS_DIR}/tls.crt"))),
        ("broker.nats.tls.key_pem", json!(format!("{CLIENT_TLS_DIR}/tls.key"))),
    ]
}

fn secret_volume(secret: String, dir: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: TLS_VOLUME.into(),
        // Default mode 0644: the files are root's and the non-root servers read them as "others".
        // A whole-directory mount (never subPath): kubelet updates only those on renewal.
        secret: Some(SecretVolumeSource { secret_name: Some(secret), ..Default::default() }),
        ..Default::default()
    };
    let mount =
        VolumeMount { name: TLS_VOLUME.into(), mount_path: dir.into(), read_only: Some(true), ..Default::default() };
    (volume, mount)
}

/// The Gyre pods' volume and mount of the client Secret, when TLS is on.
pub fn client_volume(cr: &Centrifugo) -> Option<(Volume, VolumeMount)> {
    Some(secret_volume(client_secret_name(cr)?, CLIENT_TLS_DIR))
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
    // The same files for clients and routes: one certificate names the Service and every pod.
    let tls_block = |indent: &str| {
        format!(
            "{indent}tls {{\n\
             {indent}  cert_file: \"{SERVER_TLS_DIR}/tls.crt\"\n\
             {indent}  key_file: \"{SERVER_TLS_DIR}/tls.key\"\n\
             {indent}  ca_file: \"{SERVER_TLS_DIR}/ca.crt\"\n\
             {indent}  verify: true\n\
             {indent}}}\n"
        )
    };
    let tls = tls_of(&cr.spec).is_some();
    if tls {
        c.push_str(&tls_block(""));
    }
    if spec.replicas > 1 {
        let routes: Vec<String> = (0..spec.replicas)
            .map(|i| format!("    \"{}://{}-{i}.{}:{CLUSTER_PORT}\"", scheme(cr), name(cr), headless_name(cr)))
            .collect();
        c.push_str(&format!(
            "cluster {{\n  name: \"{}\"\n  listen: \"0.0.0.0:{CLUSTER_PORT}\"\n  routes: [\n{}\n  ]\n{}}}\n",
            name(cr),
            routes.join("\n"),
            if tls { tls_block("  ") } else { String::new() }
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

/// The container security context of every container the operator renders
/// (Gyre's and the managed NATS's): no privilege escalation, read-only root,
/// non-root, no capabilities, the runtime's default seccomp profile.
pub(crate) fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// The sidecar that makes nats-server load renewed certificates. nats-server reads its TLS files
/// only at start and on a reload signal; cert-manager renews the Secret and kubelet swaps the
/// mounted files, but nothing would tell the server. NATS's own config-reloader, run with the
/// same arguments by the official chart (which relies on it for mounted cert-manager Secrets),
/// watches the listed files and sends SIGHUP to the pid in the pid file: a reload keeps every
/// client and route connection and serves the new certificate to the next handshake (the tests
/// show this part with a real nats-server; the image is not run there). It needs the
/// server's process, hence `shareProcessNamespace`, and runs as the same uid so it may signal it
/// without any capability. Alternatives not taken: rolling the StatefulSet on renewal (the
/// operator would have to read and hash the Secret, and every renewal would drop every client
/// and restart JetStream's RAFT groups), or documenting that renewals need a manual restart.
fn reloader(t: &ManagedNatsTlsSpec, mount: &dyn Fn(&str, &str, bool) -> VolumeMount) -> Container {
    let mut args =
        vec!["-pid".to_string(), format!("{PID_DIR}/nats.pid"), "-config".into(), format!("{CONF_DIR}/{CONF_FILE}")];
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        args.extend(["-config".to_string(), format!("{SERVER_TLS_DIR}/{f}")]);
    }
    Container {
        name: "reloader".into(),
        image: Some(t.reloader_image.clone()),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        security_context: Some(hardened()),
        volume_mounts: Some(vec![
            mount("config", CONF_DIR, true),
            mount("pid", PID_DIR, false),
            mount(TLS_VOLUME, SERVER_TLS_DIR, true),
        ]),
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
    let tls = tls_of(&cr.spec).cloned();
    let mut mounts =
        vec![mount("config", CONF_DIR, true), mount("data", DATA_DIR, false), mount("pid", PID_DIR, false)];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: config_name(cr), ..Default::default() }),
            ..Default::default()
        },
        Volume { name: "pid".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    if let Some(secret) = server_secret_name(cr) {
        let (volume, m) = secret_volume(secret, SERVER_TLS_DIR);
        volumes.push(volume);
        mounts.push(m);
    }
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
        security_context: Some(hardened()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut containers = vec![container];
    containers.extend(tls.as_ref().map(|t| reloader(t, &mount)));
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
                    containers,
                    // The reloader signals nats-server (see `reloader`); only with TLS.
                    share_process_namespace: tls.is_some().then_some(true),
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
                    volumes: Some(volumes),
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
