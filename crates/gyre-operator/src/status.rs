//! What the operator reports on a `Centrifugo`, computed from what one reconcile pass saw.
//!
//! Pure so every condition transition can be tested from fixtures. Conditions follow the
//! Kubernetes conventions: a fixed set of types that are always present, CamelCase reasons,
//! and `lastTransitionTime` that only moves when the status value flips, so `kubectl wait` and
//! alerting see real transitions rather than a new timestamp on every pass.

use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;

use crate::{
    builders::{internal_service_name, secret_name, selector_string},
    crd::{Centrifugo, CentrifugoStatus, Endpoints},
    nats::{self, BROKER_READY, BrokerState},
};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const CONFIG_VALID: &str = "ConfigValid";
pub const SECRETS_READY: &str = "SecretsReady";
pub const RECONCILE_ERROR: &str = "ReconcileError";

/// Outcome of one check: `Ok(reason)` or `Err((reason, message))`.
pub type Check = Result<&'static str, (String, String)>;

/// Everything one pass learned. `None` means "not reached in this pass": the previous value is
/// kept rather than guessed.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub config: Option<Check>,
    pub secrets: Option<Check>,
    pub deployment: Option<&'a Deployment>,
    pub config_hash: Option<String>,
    pub image: Option<String>,
    /// What the operator's own probe of `spec.nats` found (`BrokerReady`).
    pub broker: Option<BrokerState>,
    /// `Some` when the pass failed: (reason, message).
    pub error: Option<(String, String)>,
    /// Namespaces holding a copy of the API key after this pass (`None`: not reached).
    pub exported_to: Option<Vec<String>>,
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Accumulates conditions, carrying `lastTransitionTime` over from the previous status when
/// the value did not flip.
struct Conditions<'a> {
    out: Vec<Condition>,
    prev: &'a [Condition],
    generation: Option<i64>,
    now: &'a Time,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        self.set_status(type_, if status { "True" } else { "False" }, reason, message);
    }

    /// `status` is `True`, `False` or `Unknown`.
    fn set_status(&mut self, type_: &str, status: &str, reason: &str, message: String) {
        let last_transition_time = match find(self.prev, type_) {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => self.now.clone(),
        };
        self.out.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        });
    }

    /// Keeps the previous condition (a check not reached in this pass), or records it pending.
    fn keep(&mut self, type_: &str, pending: &str) {
        match find(self.prev, type_) {
            Some(c) => self.out.push(c.clone()),
            None => self.set(type_, false, "Pending", pending.to_string()),
        }
    }

    fn check(&mut self, type_: &str, check: &Option<Check>, ok_message: &str) {
        match check {
            Some(Ok(reason)) => self.set(type_, true, reason, ok_message.to_string()),
            Some(Err((reason, message))) => self.set(type_, false, reason, message.clone()),
            None => self.keep(type_, "not checked yet"),
        }
    }
}

/// Rollout facts of the owned Deployment: (desired, rolled out, available).
fn rollout(dep: &Deployment) -> (i32, bool, i32) {
    let desired = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = dep.status.clone().unwrap_or_default();
    let observed = st.observed_generation.unwrap_or(0) >= dep.metadata.generation.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let done = observed && updated >= desired && total == updated;
    (desired, done, available)
}

pub fn endpoints(cr: &Centrifugo) -> Endpoints {
    let ns = cr.namespace().unwrap_or_else(|| "default".into());
    let svc = cr.spec.service();
    let external_client = cr.spec.ingress.as_ref().filter(|i| i.enabled).and_then(|i| {
        let host = i.hosts.first()?;
        let tls = crate::tls::ingress_tls(cr).iter().any(|t| t.hosts.as_ref().is_none_or(|h| h.contains(host)));
        Some(format!("{}://{host}/connection/websocket", if tls { "wss" } else { "ws" }))
    });
    Endpoints {
        api: format!("http://{}.{ns}.svc:{}/api", internal_service_name(cr), svc.internal_port),
        // spec.tls: the client port itself serves TLS.
        client: format!(
            "{}://{}.{ns}.svc:{}/connection/websocket",
            if crate::tls::enabled(&cr.spec).is_some() { "wss" } else { "ws" },
            cr.name_any(),
            svc.port
        ),
        external_client,
    }
}

pub fn compute_status(cr: &Centrifugo, obs: &Observed<'_>, now: &Time) -> CentrifugoStatus {
    let prev = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let mut conds = Conditions { out: Vec::new(), prev: &prev.conditions, generation, now };
    conds.check(CONFIG_VALID, &obs.config, "configuration generated");
    conds.check(SECRETS_READY, &obs.secrets, "credentials available");
    // A broken broker is why pods are unready: Ready names it rather than only counting pods.
    let broker_problem = match &obs.broker {
        Some(state) => {
            let (st, reason, message) = nats::condition(state);
            conds.set_status(BROKER_READY, st, reason, message.clone());
            (st == "False").then_some(message)
        }
        None => {
            conds.keep(BROKER_READY, "not checked yet");
            None
        }
    };

    let mut status = CentrifugoStatus {
        observed_generation: prev.observed_generation,
        selector: Some(selector_string(cr)),
        secret_name: Some(secret_name(cr)),
        endpoints: Some(endpoints(cr)),
        config_hash: obs.config_hash.clone().or(prev.config_hash.clone()),
        image: obs.image.clone().or(prev.image.clone()),
        replicas: prev.replicas,
        ready_replicas: prev.ready_replicas,
        updated_replicas: prev.updated_replicas,
        available_replicas: prev.available_replicas,
        conditions: Vec::new(),
        exported_to: obs.exported_to.clone().unwrap_or(prev.exported_to.clone()),
    };

    let blocked = match (&obs.config, &obs.secrets) {
        (Some(Err(_)), _) => Some(("InvalidConfig", "the configuration is invalid, see ConfigValid")),
        (_, Some(Err(_))) => Some(("SecretsNotReady", "credentials are not available, see SecretsReady")),
        _ => None,
    };

    if let Some(dep) = obs.deployment {
        let st = dep.status.clone().unwrap_or_default();
        status.replicas = st.replicas.unwrap_or(0);
        status.ready_replicas = st.ready_replicas.unwrap_or(0);
        status.updated_replicas = st.updated_replicas.unwrap_or(0);
        status.available_replicas = st.available_replicas.unwrap_or(0);
        let (desired, done, available) = rollout(dep);
        let progress = format!("{}/{desired} pods updated, {available} available", status.updated_replicas);
        if done {
            conds.set(PROGRESSING, false, "RolloutComplete", progress.clone());
        } else {
            conds.set(PROGRESSING, true, "RollingOut", progress.clone());
        }
        let ready = done && available >= desired;
        match (ready, desired, broker_problem) {
            (true, 0, _) => conds.set(READY, true, "ScaledToZero", progress),
            (true, _, _) => conds.set(READY, true, "AllReplicasReady", progress),
            (false, _, Some(m)) => conds.set(READY, false, "BrokerNotReady", format!("{progress}; {m}")),
            (false, _, None) => conds.set(READY, false, "ReplicasNotReady", progress),
        }
    } else {
        conds.keep(PROGRESSING, "nothing deployed yet");
        let (reason, msg) = match (blocked, &obs.error) {
            (Some((r, m)), _) => (r.to_string(), m.to_string()),
            (None, Some((_, m))) => ("ReconcileFailed".to_string(), m.clone()),
            (None, None) => ("Pending".to_string(), "nothing deployed yet".to_string()),
        };
        conds.set(READY, false, &reason, msg);
    }

    match &obs.error {
        Some((reason, msg)) => conds.set(RECONCILE_ERROR, true, reason, msg.clone()),
        None => conds.set(RECONCILE_ERROR, false, "ReconcileSucceeded", "last pass succeeded".into()),
    }

    // observedGeneration advances only when this pass fully handled the current spec.
    if obs.error.is_none() && (obs.deployment.is_some() || blocked.is_some()) {
        status.observed_generation = generation;
    }
    status.conditions = conds.out;
    status
}
