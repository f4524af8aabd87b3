//! The `Centrifugo` custom resource.
//!
//! The schema is the user-facing contract, so it carries as much validation as the apiserver can
//! enforce on its own (bounds, patterns, enums, CEL rules): a bad object is refused at `kubectl
//! apply` time instead of surfacing later as a crash-looping pod. Defaults are declared through
//! serde so they appear in the schema too and `kubectl get -o yaml` shows what the operator uses.
//! Rules that need more than one object (for example "the referenced Secret has the keys") live in
//! the reconciler and surface as status conditions.

// The derive's repeated `printcolumn(type_ = ...)` arguments trip this lint; they are distinct
// columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::DeploymentStrategy,
        autoscaling::v2::HorizontalPodAutoscalerBehavior,
        core::v1::{
            Affinity, Container, EnvFromSource, EnvVar, LocalObjectReference, Probe, ResourceRequirements,
            SecretKeySelector, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
        },
        networking::v1::{IngressTLS, NetworkPolicyPeer},
    },
    apimachinery::pkg::{apis::meta::v1::Condition, util::intstr::IntOrString},
};
use kube::{CustomResource, KubeSchema};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// API group of the custom resource; also the prefix of every annotation the operator reads or
/// writes.
pub const GROUP: &str = "centrifugo.gyre.dev";
/// Only served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Annotation that freezes reconciliation of one instance when set to `"true"`.
pub const PAUSED_ANNOTATION: &str = "centrifugo.gyre.dev/paused";

/// Desired state of one Centrifugo-compatible (Gyre) server deployment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "centrifugo.gyre.dev",
    version = "v1alpha1",
    kind = "Centrifugo",
    plural = "centrifugos",
    singular = "centrifugo",
    shortname = "cfgo",
    category = "centrifugo",
    namespaced,
    cel,
    status = "CentrifugoStatus",
    derive = "PartialEq",
    doc = "A Centrifugo-compatible real-time messaging server managed by the Gyre operator",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Image", type_ = "string", json_path = ".status.image", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("self.replicas <= 1 || has(self.nats)")
        .message("spec.nats is required when replicas > 1: without a broker the pods cannot fan out publications to each other")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.autoscaling) || !self.autoscaling.enabled || has(self.nats)")
        .message("spec.nats is required when autoscaling is enabled: without a broker the pods cannot fan out publications to each other")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase")]
pub struct CentrifugoSpec {
    /// Number of server pods. Ignored while autoscaling is enabled. More than one needs `nats`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Server image. Defaults to the image the operator was built for (its `--default-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Pull policy of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Secrets used to pull the server image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Centrifugo v6 configuration (snake_case keys, as in `config.json`). Passed through as-is
    /// except for the keys the operator owns (ports, health, prometheus, broker, log level) and
    /// secret keys, which are refused here: they come from the Secret as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub config: Option<Value>,

    /// Channel namespaces, merged into `channel.namespaces` of the generated configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub namespaces: Vec<ChannelNamespace>,

    /// NATS broker connection; required for more than one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,

    /// Where the token HMAC key, API key and admin credentials come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSpec>,

    /// Admin web UI (served on the internal port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,

    /// Services in front of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// Ingress for client connections (external port only, never the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Gateway API `HTTPRoute` for client connections (external port only), as an alternative or
    /// an addition to the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_api: Option<crate::ingress::GatewayApiSpec>,

    /// TLS of the client port: a cert-manager Certificate (`issuerRef`) or your own
    /// `kubernetes.io/tls` Secret, mounted into the pods (reloaded on renewal, no restart) and
    /// used by the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsSpec>,

    /// Container resources. Defaults: requests cpu 100m / memory 128Mi, limit memory 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// HorizontalPodAutoscaler; when enabled the Deployment's replica count is left to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// PodDisruptionBudget. Without this section a budget of maxUnavailable 1 is created when
    /// more than one pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,

    /// Pod scheduling and lifecycle settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOptions>,

    /// Prometheus integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,

    /// NetworkPolicy restricting who may reach the internal (API) port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,

    /// Server log level (`log.level`).
    #[serde(default)]
    pub log_level: LogLevel,
}

fn default_replicas() -> i32 {
    1
}
fn default_true() -> bool {
    true
}

fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Image pull policy of the server container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Server log level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    None,
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// A channel namespace. The common options are typed; anything else goes in `options` with the
/// upstream snake_case key names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelNamespace {
    /// Namespace name (the part of a channel before `:`).
    #[schemars(regex(pattern = r"^[-a-zA-Z0-9_.]{2,}$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_push_join_leave: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub history_size: Option<i32>,
    /// Duration string such as `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub history_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_recovery: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_subscribe_for_client: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_subscribe_for_anonymous: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_publish_for_subscriber: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_publish_for_client: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_presence_for_subscriber: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_history_for_subscriber: Option<bool>,
    /// Further channel options, upstream snake_case names, copied verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub options: Option<Value>,
}

/// NATS broker settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("(has(self.url) ? 1 : 0) + (has(self.urlFrom) ? 1 : 0) + (has(self.managed) && self.managed ? 1 : 0) == 1")
        .message("set exactly one of nats.url, nats.urlFrom and nats.managed: true")
)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// NATS URL, e.g. `nats://nats.messaging.svc:4222`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(nats|tls|ws|wss)://.+"))]
    pub url: Option<String>,
    /// Read the NATS URL from a Secret key (for URLs carrying credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretKeySelector>,
    /// Subject prefix, so several instances can share one NATS.
    #[serde(default = "default_nats_prefix")]
    #[schemars(length(min = 1))]
    pub prefix: String,
    /// The operator runs NATS for this instance: a StatefulSet of the official `nats` image with
    /// JetStream on PersistentVolumeClaims, a headless Service for its cluster routes and a
    /// client Service `<name>-nats`. For users without a NATS of their own (docs/operator.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    /// Settings of the managed NATS (used with `managed: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ManagedNatsSpec>,
}

impl NatsSpec {
    pub fn is_managed(&self) -> bool {
        self.managed == Some(true)
    }
}

/// The NATS StatefulSet the operator runs for `nats.managed: true`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedNatsSpec {
    /// NATS servers: 1, or an odd number (3, 5) so JetStream keeps a quorum through one loss.
    #[serde(default = "default_nats_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// The official NATS image.
    #[serde(default = "default_nats_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Size of each server's JetStream volume (history and presence live there).
    #[serde(default = "default_nats_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$"))]
    pub storage_size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Resources of each NATS container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Mutual TLS between the Gyre pods and NATS, and between the NATS servers (routes). Off
    /// unless this section is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ManagedNatsTlsSpec>,
}

/// TLS of the managed NATS: the client port (4222) and, with more than one server, the cluster
/// routes (6222) require TLS and a client certificate from the same CA (`verify: true`). Two
/// Secrets hold the keys `tls.crt`, `tls.key` and `ca.crt`: the server's (mounted into the NATS
/// pods) and the client's (mounted into the Gyre pods). With `issuerRef` cert-manager writes
/// both from two `Certificate`s the operator creates; the issuer must put `ca.crt` into the
/// Secrets (a CA or Vault issuer does; ACME issuers do not and cannot be used here). Without
/// `issuerRef` both Secrets are yours. Renewed files are picked up without restarts: NATS by a
/// config-reloader sidecar, Gyre on its next reconnect (docs/operator.md, "Managed NATS").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedNatsTlsSpec {
    /// Require TLS on the managed NATS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// cert-manager issuer of both certificates (server and client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<crate::tls::IssuerRef>,
    /// Secret of the NATS servers' certificate (`tls.crt`, `tls.key`, `ca.crt`). Defaults to
    /// `<name>-nats-server-tls`. Its certificate must name the client Service `<name>-nats` (the
    /// Gyre pods check it) and, with more than one server, `<name>-nats-<i>.<name>-nats-headless`
    /// (the routes), and allow both server and client auth (routes are mutual TLS too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_secret_name: Option<String>,
    /// Secret of the Gyre pods' client certificate (`tls.crt`, `tls.key`, `ca.crt`, the CA that
    /// signed the server certificate). Defaults to `<name>-nats-client-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_name: Option<String>,
    /// Image of the sidecar that tells nats-server to reload (SIGHUP) when the mounted
    /// certificate files change; nats-server does not watch them itself.
    #[serde(default = "default_nats_reloader_image")]
    #[schemars(length(min = 1))]
    pub reloader_image: String,
}

/// Pinned like the NATS image; the release the official NATS chart pairs with nats 2.10.
pub const DEFAULT_NATS_RELOADER_IMAGE: &str = "natsio/nats-server-config-reloader:0.15.1";
fn default_nats_reloader_image() -> String {
    DEFAULT_NATS_RELOADER_IMAGE.into()
}

impl Default for ManagedNatsSpec {
    fn default() -> Self {
        Self {
            replicas: default_nats_replicas(),
            image: default_nats_image(),
            storage_size: default_nats_storage(),
            storage_class_name: None,
            resources: None,
            tls: None,
        }
    }
}

fn default_nats_replicas() -> i32 {
    3
}
/// Pinned so an operator upgrade is what changes NATS, never a re-pulled tag.
pub const DEFAULT_NATS_IMAGE: &str = "nats:2.10.29-alpine";
fn default_nats_image() -> String {
    DEFAULT_NATS_IMAGE.into()
}
fn default_nats_storage() -> String {
    "10Gi".into()
}

fn default_nats_prefix() -> String {
    "centrifugo".into()
}

/// Where credentials come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// Use this Secret (keys `tokenHmacSecretKey`, `apiKey`, and `adminPassword`/`adminSecret`
    /// when the admin UI is on) instead of generating `<name>-secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub existing_secret: Option<String>,
    /// Bump to regenerate every key of the operator-generated Secret at once. The token HMAC key
    /// still goes through the previous-key window (see `previousKeyWindowSeconds`); the API key
    /// and admin credentials change immediately. Prefer the per-key `rotate` counters.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub rotation_generation: i64,
    /// Per-key rotation counters: bumping one regenerates only that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<crate::credentials::KeyRotation>,
    /// How long a rotated-out token HMAC key keeps validating tokens (as
    /// `client.token.hmac_previous_secret_key`), so clients holding tokens signed with it are not
    /// disconnected mid-rollout. 0 drops the old key at once.
    #[serde(default = "crate::credentials::default_previous_key_window")]
    #[schemars(range(min = 0, max = 2592000))]
    pub previous_key_window_seconds: i64,
    /// Keep the generated Secret when the resource is deleted (no owner reference), so deleting
    /// and recreating the resource (a GitOps re-sync, a move between tools) keeps the keys that
    /// issued tokens and backends hold. With `false` the Secret is garbage-collected with the
    /// resource.
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,
    /// Namespaces that get a copy of the API key (Secret `<name>-api-key`, key `apiKey`, plus the
    /// in-cluster `apiUrl`) for backends running there. Needs the operator's cluster-wide RBAC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub export_to: Vec<String>,
}

impl Default for SecretsSpec {
    fn default() -> Self {
        Self {
            existing_secret: None,
            rotation_generation: 0,
            rotate: None,
            previous_key_window_seconds: crate::credentials::default_previous_key_window(),
            retain_on_delete: true,
            export_to: Vec::new(),
        }
    }
}

/// Admin web UI (`admin.*`). Served on the internal port unless `external`; never routed by the
/// operator's Ingress or HTTPRoute. Password and token secret come from the credentials Secret
/// (`adminPassword`, `adminSecret`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `admin.insecure`: no login. Only for local experiments; refused together with `external`.
    #[serde(default)]
    pub insecure: bool,
    /// `admin.handler_prefix`, e.g. `/admin`. Empty serves the UI at the root of its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(/[-a-zA-Z0-9_./]*)?$"))]
    pub handler_prefix: Option<String>,
    /// `admin.external`: serve the UI on the client port. The operator still keeps it off its
    /// Ingress/HTTPRoute; exposing it is a deliberate, separate step.
    #[serde(default)]
    pub external: bool,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self { enabled: true, insecure: false, handler_prefix: None, external: false }
    }
}

/// Service type of the client Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Services in front of the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Type of the client Service (the internal Service is always ClusterIP).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port of the client Service (WebSocket and other client transports).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Port of the internal Service (`/api`, `/metrics`, `/health`, admin).
    #[serde(default = "default_internal_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub internal_port: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::ClusterIP,
            port: default_port(),
            internal_port: default_internal_port(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

fn default_port() -> i32 {
    8000
}
fn default_internal_port() -> i32 {
    9000
}

/// Ingress for client connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Host names; empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefixes routed to the client port. The default covers every transport: WebSocket,
    /// HTTP-streaming, SSE and SockJS under `/connection`, and `/emulation`, where HTTP-streaming
    /// and SSE clients POST their commands. Must match the server's `*.handler_prefix` settings.
    #[serde(default = "crate::ingress::default_paths")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub paths: Vec<crate::ingress::RoutePath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTLS>,
    /// Annotations; they win over the operator's ingress-nginx defaults (timeouts, buffering,
    /// session affinity), see `controllerDefaults`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Add ingress-nginx annotations long-lived connections need: 1 h read/send timeouts,
    /// response buffering off (HTTP-streaming/SSE), and cookie session affinity when SockJS is
    /// on with more than one pod. Other controllers ignore them.
    #[serde(default = "default_true")]
    pub controller_defaults: bool,
    /// Session affinity: `Auto` pins clients to one pod when SockJS (node-local sessions) is on
    /// and more than one pod may run; `Cookie` always; `None` never.
    #[serde(default)]
    pub session_affinity: crate::ingress::SessionAffinity,
}

/// HorizontalPodAutoscaler settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    #[serde(default = "default_cpu_target", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "targetMemoryUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: Option<i32>,
    /// Passed through as the HPA's `behavior` (scale-up/-down policies and stabilization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    10
}
fn default_cpu_target() -> i32 {
    70
}

/// PodDisruptionBudget settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))")
        .message("set at most one of podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable")
)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Pod scheduling and lifecycle settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Spread constraints; a missing labelSelector is filled with the instance's selector.
    /// Default: spread over `kubernetes.io/hostname`, maxSkew 1, ScheduleAnyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Time a pod gets to drain its connections after SIGTERM.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: i64,
    /// Sleep before SIGTERM so endpoint removal reaches the load balancers first; 0 disables.
    /// preStop + `shutdown.timeout` must fit in `terminationGracePeriodSeconds`: the operator
    /// derives `shutdown.timeout` from the two when `spec.config` does not set it, and refuses a
    /// configured one that does not fit.
    #[serde(default = "default_prestop")]
    #[schemars(range(min = 0, max = 300))]
    pub pre_stop_sleep_seconds: i64,
    /// Extra environment variables of the server container (after the operator's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra `envFrom` sources of the server container, e.g. a Secret of `CENTRIFUGO_*` settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Extra pod volumes (names `config`, `tmp`, `tls` and `nats-tls` are taken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra mounts of the server container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Extra containers next to the server (name `gyre` is taken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Container>,
    /// Init containers run before the server starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    /// Replaces the operator's liveness probe of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Replaces the operator's readiness probe of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Replaces the operator's startup probe of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Deployment strategy. Default: RollingUpdate with maxSurge 1, maxUnavailable 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
}

impl Default for PodOptions {
    fn default() -> Self {
        Self {
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: None,
            priority_class_name: None,
            termination_grace_period_seconds: default_grace(),
            pre_stop_sleep_seconds: default_prestop(),
            env: Vec::new(),
            env_from: Vec::new(),
            volumes: Vec::new(),
            volume_mounts: Vec::new(),
            sidecars: Vec::new(),
            init_containers: Vec::new(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            strategy: None,
        }
    }
}

fn default_grace() -> i64 {
    30
}
fn default_prestop() -> i64 {
    5
}

/// Prometheus integration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Create a prometheus-operator ServiceMonitor (only when that CRD is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
}

/// ServiceMonitor settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    /// Extra labels, typically what the Prometheus instance selects on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_interval() -> String {
    "30s".into()
}

/// NetworkPolicy settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may reach the internal port (API, metrics, admin). Empty: pods of the same namespace.
    /// The client port stays open to everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_clients: Vec<NetworkPolicyPeer>,
    /// Who scrapes `/metrics` on the internal port, admitted while a ServiceMonitor is on.
    /// Empty: Prometheus pods (`app.kubernetes.io/name: prometheus`, as prometheus-operator
    /// labels them) in any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_scrapers: Vec<NetworkPolicyPeer>,
}

/// Observed state, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CentrifugoStatus {
    /// `metadata.generation` of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, ConfigValid, SecretsReady, ReconcileError.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    /// Label selector of the pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Hash of the generated configuration and credentials the pods run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Name of the Secret holding the credentials (never the values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Namespaces holding a copy of the API key (`spec.secrets.exportTo`), so copies can be
    /// removed when a namespace leaves the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exported_to: Vec<String>,
}

/// Where to reach the server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// In-cluster server API base URL for backends (`POST <api>/publish`).
    pub api: String,
    /// In-cluster WebSocket URL for clients.
    pub client: String,
    /// Public WebSocket URL, when an Ingress with a host is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_client: Option<String>,
}

impl CentrifugoSpec {
    pub fn autoscaling_enabled(&self) -> bool {
        self.autoscaling.as_ref().is_some_and(|a| a.enabled)
    }
    pub fn admin_enabled(&self) -> bool {
        self.admin.as_ref().is_some_and(|a| a.enabled)
    }
    pub fn service(&self) -> ServiceSpec {
        self.service.clone().unwrap_or_default()
    }
    pub fn pod(&self) -> PodOptions {
        self.pod.clone().unwrap_or_default()
    }
    pub fn rotation_generation(&self) -> i64 {
        self.secrets.as_ref().map_or(0, |s| s.rotation_generation)
    }
    pub fn existing_secret(&self) -> Option<&str> {
        self.secrets.as_ref().and_then(|s| s.existing_secret.as_deref())
    }
    pub fn secrets(&self) -> SecretsSpec {
        self.secrets.clone().unwrap_or_default()
    }
    pub fn admin(&self) -> Option<&AdminSpec> {
        self.admin.as_ref().filter(|a| a.enabled)
    }
}

impl Default for CentrifugoSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            image: None,
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            config: None,
            namespaces: Vec::new(),
            nats: None,
            secrets: None,
            admin: None,
            service: None,
            ingress: None,
            gateway_api: None,
            tls: None,
            resources: None,
            autoscaling: None,
            pod_disruption_budget: None,
            pod: None,
            metrics: None,
            network_policy: None,
            log_level: LogLevel::Info,
        }
    }
}

impl Centrifugo {
    pub fn is_paused(&self) -> bool {
        self.metadata.annotations.as_ref().and_then(|a| a.get(PAUSED_ANNOTATION)).is_some_and(|v| v == "true")
    }
}
