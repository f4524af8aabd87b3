//! The reconcile loop: turn one `Centrifugo` into its children and report back.
//!
//! Everything is written with server-side apply under one field manager, so a pass is
//! idempotent and has almost no branches: the builders say what should exist and the apiserver
//! merges. The exceptions are deliberate: the generated Secret is created with a plain POST and
//! otherwise left alone (applying fresh random values on every pass would rotate credentials
//! constantly), and optional children are deleted when switched off. Bad input is reported on
//! the resource (conditions and Events) and waits for a spec change instead of hot-looping;
//! apiserver failures return errors so the controller retries with backoff.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use parking_lot::Mutex;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    builders::{self, Inputs, MANAGED_BY_LABEL, MANAGER},
    config::{ConfigError, build_config},
    crd::{Centrifugo, GROUP, VERSION},
    credentials, ingress,
    metrics::Metrics,
    status::{Observed, compute_status},
};

/// Periodic resync of a healthy instance; watches deliver changes sooner.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Retry interval while a user-provided Secret is missing or incomplete (it is not watched).
pub const SECRET_RETRY: Duration = Duration::from_secs(30);
/// Re-probe interval while `BrokerReady` is False (NATS is not watched).
pub const BROKER_RETRY: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Centrifugo {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// Condition/Event reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { verb: "apply", .. } => "ApplyFailed",
            Self::Kube { verb: "delete", .. } => "DeleteFailed",
            Self::Kube { verb: "create", .. } => "CreateFailed",
            Self::Kube { verb: "status", .. } => "StatusUpdateFailed",
            Self::Kube { verb: "patch", .. } => "PatchFailed",
            Self::Kube { .. } => "ReadFailed",
            Self::NoNamespace(_) => "NoNamespace",
        }
    }
}

pub(crate) fn kube_err(verb: &'static str, kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_string();
    move |source| Error::Kube { verb, kind, name, source: Box::new(source) }
}

/// Operator-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server image used when a resource does not name one.
    pub default_image: String,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: None };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

fn key(cr: &Centrifugo) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Entry point for the controller runtime.
pub async fn reconcile(cr: Arc<Centrifugo>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    if cr.is_paused() {
        info!(instance = %key(&cr), "paused; not reconciling");
        ctx.metrics.paused_skips.inc();
        return Ok(Action::await_change());
    }
    match reconcile_inner(&cr, &ctx).await {
        Ok(action) => {
            ctx.failures.lock().remove(&key(&cr));
            Ok(action)
        }
        Err(err) => {
            ctx.metrics.failures.inc();
            warn!(instance = %key(&cr), error = %err, "reconcile failed");
            report_failure(&cr, &ctx, &err).await;
            Err(err)
        }
    }
}

/// Exponential backoff per instance: 5 s, 10 s, 20 s … capped at 5 min; reset on success.
pub fn error_policy(cr: Arc<Centrifugo>, _err: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock();
    let n = failures.entry(key(&cr)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16))).min(BACKOFF_MAX);
    Action::requeue(delay)
}

pub(crate) async fn publish(ctx: &Context, cr: &Centrifugo, type_: EventType, reason: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &cr.object_ref(&())).await {
        warn!(instance = %key(cr), error = %e, "could not publish event");
    }
}

async fn write_status(ctx: &Context, cr: &Centrifugo, obs: &Observed<'_>) -> Result<(), Error> {
    let ns = cr.namespace().ok_or_else(|| Error::NoNamespace(cr.name_any()))?;
    let status = compute_status(cr, obs, &now());
    let api: Api<Centrifugo> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Centrifugo",
        "status": status,
    });
    api.patch_status(&cr.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err("status", "Centrifugo", &cr.name_any()))?;
    Ok(())
}

async fn report_failure(cr: &Centrifugo, ctx: &Context, err: &Error) {
    publish(ctx, cr, EventType::Warning, "ReconcileFailed", err.to_string()).await;
    let obs = Observed { error: Some((err.reason().to_string(), err.to_string())), ..Default::default() };
    if let Err(e) = write_status(ctx, cr, &obs).await {
        warn!(instance = %key(cr), error = %e, "could not record the failure in status");
    }
}

pub(crate) async fn apply<K>(api: &Api<K>, obj: &K, kind: &'static str) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(kube_err("apply", kind, &name))
}

/// Deletes an optional child that is switched off; absent is fine.
pub(crate) async fn remove<K>(api: &Api<K>, name: &str, kind: &'static str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err("delete", kind, name)(e)),
    }
}

async fn apply_or_remove<K>(api: &Api<K>, name: &str, desired: Option<K>, kind: &'static str) -> Result<(), Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    match desired {
        Some(obj) => apply(api, &obj, kind).await.map(|_| ()),
        None => remove(api, name, kind).await,
    }
}

/// Whether an optional API (ServiceMonitor, HTTPRoute) is served, by discovery.
async fn resource_served(
    client: &Client,
    group_version: &str,
    plural: &str,
    kind: &'static str,
) -> Result<bool, Error> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(kube_err("discover", kind, group_version)(e)),
    }
}

/// Field manager that holds `spec.replicas` of a Deployment handed over to an HPA.
pub const HPA_HANDOVER_MANAGER: &str = "gyre-operator-hpa-handover";

/// Before the Deployment is applied without `replicas` (autoscaling on), makes sure the field is
/// not solely owned by the operator's apply: if it were, the apiserver would remove it and the
/// Deployment would fall back to 1 replica until the HPA scales it up again, killing pods and
/// their connections. A second field manager applies the live value (the documented way to
/// transfer ownership under server-side apply), so dropping the operator's claim keeps it.
async fn hand_replicas_to_hpa(api: &Api<Deployment>, name: &str) -> Result<(), Error> {
    let Some(live) = api.get_opt(name).await.map_err(kube_err("get", "Deployment", name))? else {
        return Ok(());
    };
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else { return Ok(()) };
    let already = live.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(HPA_HANDOVER_MANAGER)
            && m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
    });
    if already {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(name, &PatchParams::apply(HPA_HANDOVER_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err("apply", "Deployment", name))?;
    info!(deployment = name, replicas, "replica count handed over to the HorizontalPodAutoscaler");
    Ok(())
}

async fn reconcile_inner(cr: &Centrifugo, ctx: &Context) -> Result<Action, Error> {
    let ns = cr.namespace().ok_or_else(|| Error::NoNamespace(cr.name_any()))?;
    let name = cr.name_any();
    let client = ctx.client.clone();
    let prev = cr.status.clone().unwrap_or_default();

    let config = match build_config(&cr.spec) {
        Ok(c) => c,
        Err(e) => {
            return invalid(cr, ctx, &e).await;
        }
    };

    let (secret_hash, secret_check, secret_data) = match credentials::ensure_secret(cr, ctx, &ns).await? {
        credentials::SecretOutcome::Ready { hash, check, data } => (hash, check, data),
        credentials::SecretOutcome::NotReady { reason, message } => {
            publish(ctx, cr, EventType::Warning, reason, message.clone()).await;
            let obs = Observed {
                config: Some(Ok("Valid")),
                secrets: Some(Err((reason.to_string(), message))),
                ..Default::default()
            };
            write_status(ctx, cr, &obs).await?;
            return Ok(Action::requeue(SECRET_RETRY));
        }
    };

    let inputs = Inputs {
        image: cr.spec.image.clone().unwrap_or_else(|| ctx.settings.default_image.clone()),
        config,
        secret_name: builders::secret_name(cr),
        secret_hash,
    };

    apply_managed_nats(cr, ctx, &ns).await?;
    apply(&Api::namespaced(client.clone(), &ns), &builders::build_service_account(cr), "ServiceAccount").await?;
    apply(&Api::namespaced(client.clone(), &ns), &builders::build_config_map(cr, &inputs), "ConfigMap").await?;
    // The HPA goes first and the replica count is handed over before the Deployment stops
    // claiming it: switching autoscaling on must not drop a running instance to one pod.
    apply_or_remove::<HorizontalPodAutoscaler>(
        &Api::namespaced(client.clone(), &ns),
        &name,
        builders::build_hpa(cr),
        "HorizontalPodAutoscaler",
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    if cr.spec.autoscaling_enabled() {
        hand_replicas_to_hpa(&deployments, &name).await?;
    }
    let deployment: Deployment = apply(&deployments, &builders::build_deployment(cr, &inputs), "Deployment").await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    apply(&services, &builders::build_client_service(cr), "Service").await?;
    apply(&services, &builders::build_internal_service(cr), "Service").await?;
    apply_or_remove::<Ingress>(&Api::namespaced(client.clone(), &ns), &name, builders::build_ingress(cr), "Ingress")
        .await?;
    apply_or_remove::<PodDisruptionBudget>(
        &Api::namespaced(client.clone(), &ns),
        &name,
        builders::build_pdb(cr),
        "PodDisruptionBudget",
    )
    .await?;
    apply_or_remove::<NetworkPolicy>(
        &Api::namespaced(client.clone(), &ns),
        &name,
        builders::build_network_policy(cr),
        "NetworkPolicy",
    )
    .await?;

    let sm_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &builders::service_monitor_resource());
    match builders::build_service_monitor(cr) {
        Some(sm) => {
            if resource_served(&client, "monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor").await? {
                apply(&sm_api, &sm, "ServiceMonitor").await?;
            } else {
                publish(
                    ctx,
                    cr,
                    EventType::Warning,
                    "ServiceMonitorUnavailable",
                    "metrics.serviceMonitor is enabled but monitoring.coreos.com/v1 ServiceMonitor is not served; skipped".into(),
                )
                .await;
            }
        }
        // Switched off, or never on: DELETE answers 404 both when the object is absent and when
        // the ServiceMonitor CRD is not installed, so no discovery round trip is needed.
        None => remove(&sm_api, &name, "ServiceMonitor").await?,
    }

    let route_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ingress::http_route_resource());
    match ingress::build_http_route(cr) {
        Some(route) => {
            if resource_served(&client, "gateway.networking.k8s.io/v1", "httproutes", "HTTPRoute").await? {
                apply(&route_api, &route, "HTTPRoute").await?;
            } else {
                publish(
                    ctx,
                    cr,
                    EventType::Warning,
                    "HTTPRouteUnavailable",
                    "gatewayApi is enabled but gateway.networking.k8s.io/v1 HTTPRoute is not served; skipped".into(),
                )
                .await;
            }
        }
        None => remove(&route_api, &name, "HTTPRoute").await?,
    }

    let cert_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &crate::tls::certificate_resource());
    match crate::tls::build_certificate(cr) {
        Some(cert) => {
            if resource_served(&client, "cert-manager.io/v1", "certificates", "Certificate").await? {
                apply(&cert_api, &cert, "Certificate").await?;
            } else {
                publish(
                    ctx,
                    cr,
                    EventType::Warning,
                    "CertManagerUnavailable",
                    "tls.issuerRef is set but cert-manager.io/v1 Certificate is not served (cert-manager not installed); skipped: the pods wait for the TLS Secret".into(),
                )
                .await;
            }
        }
        // As for the ServiceMonitor: a 404 covers both "absent" and "CRD not installed".
        None => remove(&cert_api, &name, "Certificate").await?,
    }

    let exported_to = credentials::sync_exports(cr, ctx, &secret_data, &prev.exported_to).await?;

    let pod_hash = inputs.pod_hash();
    match &prev.config_hash {
        None => {
            publish(
                ctx,
                cr,
                EventType::Normal,
                "Deployed",
                format!("created Deployment {name} with image {}", inputs.image),
            )
            .await;
        }
        Some(h) if *h != pod_hash => {
            publish(
                ctx,
                cr,
                EventType::Normal,
                "RollingUpdate",
                "configuration or credentials changed; rolling the pods".into(),
            )
            .await;
        }
        Some(_) => {}
    }

    let broker = crate::nats::check_instance(cr).await;
    let obs = Observed {
        config: Some(Ok("Valid")),
        secrets: Some(Ok(secret_check)),
        deployment: Some(&deployment),
        config_hash: Some(pod_hash),
        image: Some(inputs.image.clone()),
        broker: Some(broker.clone()),
        error: None,
        exported_to: Some(exported_to),
    };
    write_status(ctx, cr, &obs).await?;
    // Nothing watches NATS: look again soon while it is broken, so BrokerReady flips back.
    let broker_down = matches!(crate::nats::condition(&broker).0, "False");
    Ok(Action::requeue(if broker_down { BROKER_RETRY } else { RESYNC }))
}

/// The NATS the operator runs for `spec.nats.managed: true` (managed_nats.rs), or its removal
/// when switched off (the volumes stay: Kubernetes retains StatefulSet claims).
async fn apply_managed_nats(cr: &Centrifugo, ctx: &Context, ns: &str) -> Result<(), Error> {
    let client = &ctx.client;
    use crate::managed_nats as m;
    let spec = m::managed(cr);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let certs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &crate::tls::certificate_resource());
    // As for spec.tls: a 404 covers both "absent" and "cert-manager not installed".
    let remove_certs = async || -> Result<(), Error> {
        remove(&certs, &m::server_certificate_name(cr), "Certificate").await?;
        remove(&certs, &m::client_certificate_name(cr), "Certificate").await
    };
    let Some(spec) = spec else {
        // Never managed (the common case) or switched off: DELETE of an absent object is a 404.
        remove(&sts, &m::name(cr), "StatefulSet").await?;
        remove(&pdbs, &m::name(cr), "PodDisruptionBudget").await?;
        remove(&svcs, &m::name(cr), "Service").await?;
        remove(&svcs, &m::headless_name(cr), "Service").await?;
        remove(&cms, &m::config_name(cr), "ConfigMap").await?;
        return remove_certs().await;
    };
    // Certificates first: the pods wait (ContainerCreating) until cert-manager wrote the Secrets.
    let wanted = m::build_certificates(cr, &spec);
    if wanted.is_empty() {
        remove_certs().await?;
    } else if resource_served(client, "cert-manager.io/v1", "certificates", "Certificate").await? {
        for cert in &wanted {
            apply(&certs, cert, "Certificate").await?;
        }
    } else {
        publish(
            ctx,
            cr,
            EventType::Warning,
            "CertManagerUnavailable",
            "nats.server.tls.issuerRef is set but cert-manager.io/v1 Certificate is not served (cert-manager not installed); skipped: the NATS and Gyre pods wait for the TLS Secrets".into(),
        )
        .await;
    }
    apply(&cms, &m::build_config_map(cr, &spec), "ConfigMap").await?;
    apply(&svcs, &m::build_headless_service(cr), "Service").await?;
    apply(&svcs, &m::build_client_service(cr), "Service").await?;
    apply(&sts, &m::build_stateful_set(cr, &spec), "StatefulSet").await?;
    apply_or_remove(&pdbs, &m::name(cr), m::build_pdb(cr, &spec), "PodDisruptionBudget").await
}

async fn invalid(cr: &Centrifugo, ctx: &Context, e: &ConfigError) -> Result<Action, Error> {
    publish(ctx, cr, EventType::Warning, e.reason(), e.to_string()).await;
    let obs = Observed { config: Some(Err((e.reason().to_string(), e.to_string()))), ..Default::default() };
    write_status(ctx, cr, &obs).await?;
    // Nothing to retry: only a spec change can fix this, and that triggers a new pass.
    Ok(Action::await_change())
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(
    client: Client,
    settings: Settings,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    // Resolves when this replica must stop reconciling (lost leadership).
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let crs: Api<Centrifugo> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = crs.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list centrifugos.{GROUP}: {e}. Is the CRD installed (kubectl apply --server-side -f manifests/crd.yaml) and does the operator's RBAC allow it?"
        );
    }
    metrics.set_ready(true);
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    macro_rules! api {
        ($t:ty) => {
            match &namespace {
                Some(ns) => Api::<$t>::namespaced(client.clone(), ns),
                None => Api::<$t>::all(client.clone()),
            }
        };
    }
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics));
    Controller::new(crs, watcher::Config::default().any_semantic())
        .owns(api!(Deployment), owned.clone())
        .owns(api!(ConfigMap), owned.clone())
        .owns(api!(Secret), owned.clone())
        .owns(api!(Service), owned.clone())
        .owns(api!(ServiceAccount), owned.clone())
        .owns(api!(Ingress), owned.clone())
        .owns(api!(HorizontalPodAutoscaler), owned.clone())
        .owns(api!(PodDisruptionBudget), owned.clone())
        .owns(api!(NetworkPolicy), owned)
        .shutdown_on_signal()
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => info!(instance = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        })
        .await;
    Ok(())
}
