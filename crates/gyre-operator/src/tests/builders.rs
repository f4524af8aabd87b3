use k8s_openapi::{
    ByteString,
    api::apps::v1::{Deployment, DeploymentStatus},
    apimachinery::pkg::{
        apis::meta::v1::{Condition, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use serde_json::json;

use super::fixtures::{self, cr, full_spec, inputs, nats, secret_data, secret_values};
use crate::{
    builders::*,
    config::build_config,
    crd::{AutoscalingSpec, CentrifugoSpec, PodDisruptionBudgetSpec, SecretsSpec},
    nats::BrokerState,
    status::{Observed, compute_status, endpoints},
};

fn env_ref(d: &Deployment, var: &str) -> Option<(String, String, Option<bool>)> {
    let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    let e = c.env.as_ref()?.iter().find(|e| e.name == var)?;
    let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
    Some((r.name.clone(), r.key.clone(), r.optional))
}

fn pod_hash(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let c = cr(full_spec());
    let objs = render_all(&c, &inputs(&c), Some(&secret_values()));
    let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Secret",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "Service",
            "Ingress",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor"
        ]
    );
    for o in &objs {
        assert!(o["apiVersion"].is_string(), "{o}");
        assert_eq!(o["metadata"]["namespace"], "prod");
        if o["kind"] == "Secret" {
            // Retained across deletion of the resource by default (spec.secrets.retainOnDelete).
            assert!(o["metadata"].get("ownerReferences").is_none(), "{o}");
            assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/instance"], "chat");
            continue;
        }
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Centrifugo");
        assert_eq!(owner["apiVersion"], "centrifugo.gyre.dev/v1alpha1");
        assert_eq!(owner["uid"], fixtures::UID);
        assert_eq!(owner["controller"], true);
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/managed-by"], "gyre-operator");
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/instance"], "chat");
    }
}

#[test]
fn minimal_spec_renders_only_the_core_objects() {
    let c = cr(CentrifugoSpec::default());
    let objs = render_all(&c, &inputs(&c), None);
    let names: Vec<String> = objs
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        ["ServiceAccount/chat", "ConfigMap/chat-config", "Deployment/chat", "Service/chat", "Service/chat-internal"]
    );
    assert!(build_ingress(&c).is_none());
    assert!(build_hpa(&c).is_none());
    assert!(build_pdb(&c).is_none(), "one pod must not get a budget that blocks drains");
    assert!(build_network_policy(&c).is_none());
    assert!(build_service_monitor(&c).is_none());
}

#[test]
fn generated_secret_holds_all_credentials_and_rotation_marker() {
    let spec = CentrifugoSpec {
        secrets: Some(SecretsSpec { rotation_generation: 4, ..Default::default() }),
        ..Default::default()
    };
    let c = cr(spec);
    let s = build_generated_secret(&c, &secret_values());
    assert_eq!(s.metadata.name.as_deref(), Some("chat-secrets"));
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert_eq!(s.metadata.annotations.as_ref().unwrap()[ROTATION_ANNOTATION], "4");
    let data = s.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["adminPassword", "adminSecret", "apiKey", "tokenHmacSecretKey"]);
    assert_eq!(data["apiKey"], ByteString(b"api-bbbb".to_vec()));
}

#[test]
fn generated_values_are_random_and_strong() {
    let a = generate_secret_values();
    let b = generate_secret_values();
    assert_eq!(a.len(), 4);
    for (k, v) in &a {
        assert_eq!(v.len(), 43, "32 bytes base64url unpadded");
        assert_ne!(v, &b[k]);
        assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
    let vals: std::collections::BTreeSet<_> = a.values().collect();
    assert_eq!(vals.len(), 4, "each credential is distinct");
}

#[test]
fn credentials_hash_tracks_only_consumed_keys() {
    let base = secret_data(&secret_values());
    let h = credentials_hash(&base);
    let mut extra = base.clone();
    extra.insert("unrelated".into(), ByteString(b"x".to_vec()));
    assert_eq!(h, credentials_hash(&extra));
    let mut changed = base.clone();
    changed.insert("apiKey".into(), ByteString(b"new".to_vec()));
    assert_ne!(h, credentials_hash(&changed));
}

#[test]
fn missing_keys_depend_on_admin() {
    let mut data = secret_data(&secret_values());
    data.remove("adminPassword");
    let c = cr(CentrifugoSpec::default());
    assert!(missing_secret_keys(&c, &data).is_empty());
    let mut full = full_spec();
    full.replicas = 1;
    let admin = cr(full);
    assert_eq!(missing_secret_keys(&admin, &data), ["adminPassword"]);
    data.insert("apiKey".into(), ByteString(vec![]));
    assert_eq!(missing_secret_keys(&c, &data), ["apiKey"], "empty values count as missing");
}

#[test]
fn config_map_carries_the_generated_file() {
    let c = cr(full_spec());
    let i = inputs(&c);
    let cm = build_config_map(&c, &i);
    assert_eq!(cm.metadata.name.as_deref(), Some("chat-config"));
    let text = &cm.data.as_ref().unwrap()["config.json"];
    assert_eq!(text, &i.config.json);
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["broker"]["nats"]["prefix"], "tenant-a");
    assert_eq!(v["log"]["level"], "debug");
    assert_eq!(v["channel"]["namespaces"][0]["history_size"], 50);
    for secret in ["hmac-aaaa", "api-bbbb", "pw-cccc", "sec-dddd"] {
        assert!(!text.contains(secret), "no credential may reach the ConfigMap");
    }
}

#[test]
fn deployment_defaults() {
    let c = cr(CentrifugoSpec::default());
    let i = inputs(&c);
    let d = build_deployment(&c, &i);
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.selector.match_labels.as_ref().unwrap(), &selector_labels(&c));
    let su = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(su.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("chat"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
    assert_eq!(spread.topology_key, "kubernetes.io/hostname");
    assert_eq!(spread.when_unsatisfiable, "ScheduleAnyway");
    assert_eq!(spread.label_selector.as_ref().unwrap().match_labels.as_ref().unwrap(), &selector_labels(&c));

    let ctr = &pod.containers[0];
    assert_eq!(ctr.image.as_deref(), Some("gyre:test"));
    assert_eq!(ctr.args.as_ref().unwrap(), &["--config", "/etc/gyre/config.json"]);
    let ports: Vec<(String, i32)> =
        ctr.ports.as_ref().unwrap().iter().map(|p| (p.name.clone().unwrap(), p.container_port)).collect();
    assert_eq!(ports, [("http".into(), 8000), ("internal".into(), 9000)]);
    // Probes by failure domain: only readiness depends on NATS; a startupProbe guards liveness.
    for (probe, path) in [
        (&ctr.readiness_probe, "/health/ready"),
        (&ctr.liveness_probe, "/health/live"),
        (&ctr.startup_probe, "/health/live"),
    ] {
        let g = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(g.path.as_deref(), Some(path));
        assert_eq!(g.port, IntOrString::String("internal".into()));
    }
    assert_eq!(ctr.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap().sleep.as_ref().unwrap().seconds, 5);
    let sc = ctr.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let res = ctr.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "256Mi");

    assert_eq!(
        env_ref(&d, "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY"),
        Some(("chat-secrets".into(), "tokenHmacSecretKey".into(), None))
    );
    assert_eq!(env_ref(&d, "CENTRIFUGO_HTTP_API_KEY"), Some(("chat-secrets".into(), "apiKey".into(), None)));
    assert_eq!(
        env_ref(&d, "CENTRIFUGO_ADMIN_PASSWORD"),
        Some(("chat-secrets".into(), "adminPassword".into(), Some(true)))
    );
    assert_eq!(env_ref(&d, "CENTRIFUGO_ADMIN_SECRET"), Some(("chat-secrets".into(), "adminSecret".into(), Some(true))));
    assert!(env_ref(&d, "CENTRIFUGO_BROKER_NATS_URL").is_none());
    assert_eq!(pod_hash(&d), i.pod_hash());
}

#[test]
fn deployment_full_spec() {
    let c = cr(full_spec());
    let d = build_deployment(&c, &inputs(&c));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let tmpl_meta = spec.template.metadata.as_ref().unwrap();
    assert_eq!(tmpl_meta.labels.as_ref().unwrap()["team"], "rt");
    assert_eq!(tmpl_meta.annotations.as_ref().unwrap()["sidecar.example/inject"], "false");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "realtime");
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("dedicated"));
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
    assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread.when_unsatisfiable, "DoNotSchedule");
    assert!(spread.label_selector.is_some(), "selector injected into user constraints");
    let ctr = &pod.containers[0];
    assert_eq!(ctr.image.as_deref(), Some("registry.example/gyre:1.2.3"));
    assert_eq!(ctr.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(ctr.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap().sleep.as_ref().unwrap().seconds, 10);
    assert_eq!(ctr.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(env_ref(&d, "CENTRIFUGO_ADMIN_PASSWORD").unwrap().2, None, "admin on: keys required");
}

#[test]
fn deployment_under_hpa_leaves_replicas_to_the_autoscaler() {
    let mut spec = CentrifugoSpec { nats: nats(), ..Default::default() };
    spec.autoscaling = Some(AutoscalingSpec {
        enabled: true,
        min_replicas: 2,
        max_replicas: 6,
        target_cpu_utilization_percentage: 60,
        target_memory_utilization_percentage: Some(80),
        behavior: None,
    });
    let c = cr(spec);
    let d = build_deployment(&c, &inputs(&c));
    assert_eq!(d.spec.as_ref().unwrap().replicas, None);
    let v = serde_json::to_value(&d).unwrap();
    assert!(v["spec"].get("replicas").is_none(), "must be absent, not null, for SSA");
    let hpa = build_hpa(&c).unwrap();
    let hs = hpa.spec.unwrap();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 6));
    assert_eq!(hs.scale_target_ref.kind, "Deployment");
    assert_eq!(hs.scale_target_ref.name, "chat");
    let metrics = hs.metrics.unwrap();
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[0].resource.as_ref().unwrap().target.average_utilization, Some(60));
    // Autoscaling implies several pods: a default budget appears.
    assert_eq!(build_pdb(&c).unwrap().spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn nats_url_from_secret_becomes_env() {
    let spec: CentrifugoSpec = serde_json::from_value(json!({
        "replicas": 2,
        "nats": {"urlFrom": {"name": "nats-auth", "key": "url"}}
    }))
    .unwrap();
    let c = cr(spec);
    let d = build_deployment(&c, &inputs(&c));
    assert_eq!(env_ref(&d, "CENTRIFUGO_BROKER_NATS_URL"), Some(("nats-auth".into(), "url".into(), None)));
}

#[test]
fn existing_secret_is_referenced_not_generated() {
    let spec = CentrifugoSpec {
        secrets: Some(SecretsSpec { existing_secret: Some("my-creds".into()), ..Default::default() }),
        ..Default::default()
    };
    let c = cr(spec);
    assert_eq!(secret_name(&c), "my-creds");
    let d = build_deployment(&c, &inputs(&c));
    assert_eq!(env_ref(&d, "CENTRIFUGO_HTTP_API_KEY").unwrap().0, "my-creds");
}

#[test]
fn pod_hash_changes_only_when_config_or_credentials_change() {
    let c = cr(CentrifugoSpec::default());
    let base = inputs(&c);
    let h = pod_hash(&build_deployment(&c, &base));

    // Same inputs → same hash (deterministic).
    assert_eq!(h, pod_hash(&build_deployment(&c, &inputs(&c))));

    // Scaling, image and scheduling changes roll pods through the template anyway, but must
    // not touch the config hash.
    let mut scaled = c.clone();
    scaled.spec.replicas = 0;
    scaled.spec.image = Some("gyre:other".into());
    assert_eq!(h, pod_hash(&build_deployment(&scaled, &inputs(&scaled))));

    let mut cfg = c.clone();
    cfg.spec.config = Some(json!({"client": {"allowed_origins": ["*"]}}));
    assert_ne!(h, pod_hash(&build_deployment(&cfg, &inputs(&cfg))));

    let mut rotated = base.clone();
    let mut vals = secret_values();
    vals.insert("tokenHmacSecretKey".into(), "new".into());
    rotated.secret_hash = credentials_hash(&secret_data(&vals));
    assert_ne!(h, pod_hash(&build_deployment(&c, &rotated)));
}

#[test]
fn services_split_client_and_internal_ports() {
    let c = cr(full_spec());
    let client = build_client_service(&c);
    let cs = client.spec.unwrap();
    assert_eq!(cs.type_.as_deref(), Some("LoadBalancer"));
    let p = &cs.ports.unwrap()[0];
    assert_eq!((p.name.as_deref(), p.port), (Some("http"), 80));
    assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
    assert_eq!(client.metadata.annotations.unwrap()["lb"], "x");
    let internal = build_internal_service(&c);
    assert_eq!(internal.metadata.name.as_deref(), Some("chat-internal"));
    assert_eq!(internal.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"], "internal");
    let is = internal.spec.unwrap();
    assert_eq!(is.type_.as_deref(), Some("ClusterIP"));
    let p = &is.ports.unwrap()[0];
    assert_eq!((p.name.as_deref(), p.port), (Some("internal"), 9100));
    assert_eq!(is.selector.unwrap(), selector_labels(&c));
}

#[test]
fn ingress_routes_client_port_only() {
    let c = cr(full_spec());
    let ing = build_ingress(&c).unwrap();
    assert_eq!(ing.metadata.annotations.as_ref().unwrap()["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
    let s = ing.spec.unwrap();
    assert_eq!(s.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &s.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("rt.example.com"));
    let path = &rule.http.as_ref().unwrap().paths[0];
    assert_eq!(path.path.as_deref(), Some("/connection"));
    assert_eq!(path.path_type, "Prefix");
    let svc = path.backend.service.as_ref().unwrap();
    assert_eq!(svc.name, "chat");
    assert_eq!(svc.port.as_ref().unwrap().name.as_deref(), Some("http"));
    assert_eq!(s.tls.unwrap()[0].secret_name.as_deref(), Some("rt-tls"));

    let mut off = c.clone();
    off.spec.ingress.as_mut().unwrap().enabled = false;
    assert!(build_ingress(&off).is_none());
}

#[test]
fn pdb_rules() {
    let mut c = cr(CentrifugoSpec { replicas: 3, nats: nats(), ..Default::default() });
    let p = build_pdb(&c).unwrap().spec.unwrap();
    assert_eq!((p.min_available, p.max_unavailable), (None, Some(IntOrString::Int(1))));
    assert_eq!(p.selector.unwrap().match_labels.unwrap(), selector_labels(&c));

    c.spec.pod_disruption_budget = Some(PodDisruptionBudgetSpec {
        enabled: true,
        min_available: Some(IntOrString::String("50%".into())),
        max_unavailable: None,
    });
    let p = build_pdb(&c).unwrap().spec.unwrap();
    assert_eq!((p.min_available, p.max_unavailable), (Some(IntOrString::String("50%".into())), None));

    c.spec.pod_disruption_budget =
        Some(PodDisruptionBudgetSpec { enabled: false, min_available: None, max_unavailable: None });
    assert!(build_pdb(&c).is_none());

    // Explicitly asked for on a single pod: honoured.
    let mut single = cr(CentrifugoSpec::default());
    single.spec.pod_disruption_budget =
        Some(PodDisruptionBudgetSpec { enabled: true, min_available: None, max_unavailable: None });
    assert!(build_pdb(&single).is_some());
}

#[test]
fn network_policy_opens_client_port_and_guards_internal_port() {
    let c = cr(full_spec());
    let np = build_network_policy(&c).unwrap().spec.unwrap();
    assert_eq!(np.policy_types.unwrap(), ["Ingress"]);
    let rules = np.ingress.unwrap();
    assert!(rules[0].from.is_none());
    assert_eq!(rules[0].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(8000)));
    let from = rules[1].from.as_ref().unwrap();
    assert!(from[0].namespace_selector.is_some());
    assert_eq!(rules[1].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(9000)));

    let mut same_ns = c.clone();
    same_ns.spec.network_policy.as_mut().unwrap().api_clients.clear();
    let np = build_network_policy(&same_ns).unwrap().spec.unwrap();
    let from = &np.ingress.unwrap()[1].from.clone().unwrap()[0];
    assert!(from.pod_selector.is_some() && from.namespace_selector.is_none());
}

#[test]
fn service_monitor_scrapes_internal_metrics() {
    let c = cr(full_spec());
    let sm = serde_json::to_value(build_service_monitor(&c).unwrap()).unwrap();
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["kind"], "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0], json!({"port": "internal", "path": "/metrics", "interval": "15s"}));
    assert_eq!(sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "internal");
}

fn t(s: &str) -> Time {
    Time(s.parse::<Timestamp>().unwrap())
}

fn cond<'a>(st: &'a crate::crd::CentrifugoStatus, ty: &str) -> &'a Condition {
    st.conditions.iter().find(|c| c.type_ == ty).unwrap_or_else(|| panic!("{ty} missing"))
}

fn deployment_with(replicas: i32, updated: i32, available: i32, gen_seen: i64) -> Deployment {
    let c = cr(CentrifugoSpec { replicas, nats: nats(), ..Default::default() });
    let mut d = build_deployment(&c, &inputs(&c));
    d.metadata.generation = Some(2);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(gen_seen),
        replicas: Some(updated),
        updated_replicas: Some(updated),
        ready_replicas: Some(available),
        available_replicas: Some(available),
        ..Default::default()
    });
    d
}

#[test]
fn status_ready_progressing_and_transition_times() {
    let c = cr(CentrifugoSpec { replicas: 3, nats: nats(), ..Default::default() });
    let rolling = deployment_with(3, 1, 1, 2);
    let obs = Observed {
        config: Some(Ok("Valid")),
        secrets: Some(Ok("Generated")),
        deployment: Some(&rolling),
        config_hash: Some("h1".into()),
        image: Some("gyre:test".into()),
        broker: Some(BrokerState::Ready { addr: "nats:4222".into(), version: "2.10.24".into() }),
        error: None,
        exported_to: None,
    };
    let st = compute_status(&c, &obs, &t("2026-01-01T00:00:00Z"));
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(cond(&st, "BrokerReady").status, "True");
    assert_eq!(cond(&st, "Ready").status, "False");
    assert_eq!(cond(&st, "Ready").reason, "ReplicasNotReady");
    assert_eq!(cond(&st, "Progressing").status, "True");
    assert_eq!(cond(&st, "ConfigValid").status, "True");
    assert_eq!(cond(&st, "SecretsReady").reason, "Generated");
    assert_eq!(cond(&st, "ReconcileError").status, "False");
    assert_eq!((st.replicas, st.available_replicas), (1, 1));
    assert_eq!(st.selector.as_deref(), Some("app.kubernetes.io/instance=chat,app.kubernetes.io/name=gyre"));
    assert_eq!(st.secret_name.as_deref(), Some("chat-secrets"));

    // Later pass: rollout finished. Ready flips (new time), ConfigValid keeps its old time.
    let mut c2 = c.clone();
    c2.status = Some(st);
    let done = deployment_with(3, 3, 3, 2);
    let obs = Observed { deployment: Some(&done), ..obs };
    let st2 = compute_status(&c2, &obs, &t("2026-01-01T00:05:00Z"));
    assert_eq!(cond(&st2, "Ready").status, "True");
    assert_eq!(cond(&st2, "Ready").reason, "AllReplicasReady");
    assert_eq!(cond(&st2, "Ready").last_transition_time, t("2026-01-01T00:05:00Z"));
    assert_eq!(cond(&st2, "Progressing").status, "False");
    assert_eq!(cond(&st2, "ConfigValid").last_transition_time, t("2026-01-01T00:00:00Z"));
    assert_eq!(st2.ready_replicas, 3);

    // Deployment controller has not seen the new template yet: still progressing.
    let stale = deployment_with(3, 3, 3, 1);
    let obs = Observed { deployment: Some(&stale), ..obs };
    assert_eq!(cond(&compute_status(&c2, &obs, &t("2026-01-01T00:06:00Z")), "Progressing").status, "True");
}

#[test]
fn status_names_the_broker_problem() {
    let c = cr(CentrifugoSpec { replicas: 2, nats: nats(), ..Default::default() });
    let unready = deployment_with(2, 2, 0, 1);
    let down = BrokerState::Unreachable { errors: vec!["nats.messaging.svc:4222: connection refused".into()] };
    let obs = Observed {
        config: Some(Ok("Valid")),
        secrets: Some(Ok("Generated")),
        deployment: Some(&unready),
        broker: Some(down),
        ..Default::default()
    };
    let st = compute_status(&c, &obs, &t("2026-01-01T00:00:00Z"));
    let b = cond(&st, "BrokerReady");
    assert_eq!((b.status.as_str(), b.reason.as_str()), ("False", "BrokerUnreachable"));
    assert!(b.message.contains("connection refused"), "{}", b.message);
    let r = cond(&st, "Ready");
    assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", "BrokerNotReady"));
    assert!(r.message.contains("nats.messaging.svc:4222"), "{}", r.message);

    let no_js = BrokerState::NoJetStream { addr: "nats:4222".into(), version: "2.10.24".into() };
    let obs = Observed { broker: Some(no_js), ..obs };
    let st = compute_status(&c, &obs, &t("2026-01-01T00:01:00Z"));
    assert_eq!(cond(&st, "BrokerReady").reason, "NoJetStream");
    assert_eq!(cond(&st, "Ready").reason, "BrokerNotReady");

    // URL from a Secret: Unknown, and Ready falls back to counting pods.
    let obs = Observed { broker: Some(BrokerState::NotProbed("urlFrom".into())), ..obs };
    let st = compute_status(&c, &obs, &t("2026-01-01T00:02:00Z"));
    assert_eq!(cond(&st, "BrokerReady").status, "Unknown");
    assert_eq!(cond(&st, "Ready").reason, "ReplicasNotReady");
}

#[test]
fn status_for_invalid_config_and_errors() {
    let c = cr(CentrifugoSpec::default());
    let err = build_config(&CentrifugoSpec { replicas: 4, ..Default::default() }).unwrap_err();
    let obs = Observed { config: Some(Err((err.reason().into(), err.to_string()))), ..Default::default() };
    let st = compute_status(&c, &obs, &t("2026-01-01T00:00:00Z"));
    assert_eq!(cond(&st, "ConfigValid").status, "False");
    assert_eq!(cond(&st, "ConfigValid").reason, "InvalidSpec");
    assert_eq!(cond(&st, "Ready").reason, "InvalidConfig");
    assert_eq!(cond(&st, "SecretsReady").reason, "Pending");
    assert_eq!(st.observed_generation, Some(1), "the spec was fully judged");

    let obs =
        Observed { error: Some(("ApplyFailed".into(), "apply Deployment chat: boom".into())), ..Default::default() };
    let st = compute_status(&c, &obs, &t("2026-01-01T00:00:00Z"));
    assert_eq!(cond(&st, "ReconcileError").status, "True");
    assert_eq!(cond(&st, "ReconcileError").reason, "ApplyFailed");
    assert_eq!(cond(&st, "Ready").reason, "ReconcileFailed");
    assert_eq!(st.observed_generation, None, "a failed pass does not claim the generation");
}

#[test]
fn endpoints_in_status() {
    let c = cr(full_spec());
    let e = endpoints(&c);
    assert_eq!(e.api, "http://chat-internal.prod.svc:9100/api");
    assert_eq!(e.client, "ws://chat.prod.svc:80/connection/websocket");
    assert_eq!(e.external_client.as_deref(), Some("wss://rt.example.com/connection/websocket"));
    let plain = cr(CentrifugoSpec::default());
    assert_eq!(endpoints(&plain).external_client, None);
    // spec.tls: the pods serve TLS, and the Ingress gets the Secret without an explicit ingress.tls.
    let tls: CentrifugoSpec =
        serde_json::from_value(serde_json::json!({"tls": {}, "ingress": {"hosts": ["rt.example.com"]}})).unwrap();
    let e = endpoints(&cr(tls));
    assert_eq!(e.client, "wss://chat.prod.svc:8000/connection/websocket");
    assert_eq!(e.external_client.as_deref(), Some("wss://rt.example.com/connection/websocket"));
}

/// Issue 11 #8: with a ServiceMonitor on and `apiClients` restricted to the backend namespace,
/// Prometheus must still reach /metrics on the internal port.
#[test]
fn network_policy_admits_the_scraper_when_a_service_monitor_is_on() {
    let c = cr(full_spec());
    let rules = build_network_policy(&c).unwrap().spec.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 3);
    let scrape = &rules[2];
    assert_eq!(scrape.ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(9000)));
    let peer = &scrape.from.as_ref().unwrap()[0];
    assert_eq!(peer.namespace_selector, Some(Default::default()), "any namespace");
    assert_eq!(
        peer.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app.kubernetes.io/name"],
        "prometheus"
    );

    // Configurable: the cluster's own Prometheus namespace/labels.
    let mut custom = c.clone();
    custom.spec.network_policy.as_mut().unwrap().metrics_scrapers = serde_json::from_value(json!([
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app": "vmagent"}}}
    ]))
    .unwrap();
    let rules = build_network_policy(&custom).unwrap().spec.unwrap().ingress.unwrap();
    let peer = &rules[2].from.as_ref().unwrap()[0];
    assert_eq!(peer.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"], "vmagent");

    // No ServiceMonitor: no scrape rule.
    let mut off = c.clone();
    off.spec.metrics = None;
    assert_eq!(build_network_policy(&off).unwrap().spec.unwrap().ingress.unwrap().len(), 2);
}
