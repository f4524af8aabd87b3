//! Reconcile scenarios against an in-memory apiserver behind kube's real client.
//!
//! The fake speaks the HTTP API over a `tower-test` mock transport: it stores objects by path,
//! answers GET/POST/PATCH/DELETE with the status codes the real apiserver uses (404, 409, 201),
//! keeps `status` across applies like a status subresource does, and can inject failures. Every
//! request is recorded so scenarios can assert on what was written, in which order.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Client, client::Body, runtime::controller::Action};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::fixtures::{self, full_spec};
use crate::{
    builders::{self, CONFIG_HASH_ANNOTATION},
    controller::{Context, RESYNC, SECRET_RETRY, Settings, error_policy, reconcile},
    crd::{Centrifugo, CentrifugoSpec, PAUSED_ANNOTATION, SecretsSpec},
    metrics::Metrics,
};

const CR_PATH: &str = "/apis/centrifugo.gyre.dev/v1alpha1/namespaces/prod/centrifugos/chat";
const SECRETS: &str = "/api/v1/namespaces/prod/secrets";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/prod/deployments/chat";
const CONFIGMAP: &str = "/api/v1/namespaces/prod/configmaps/chat-config";

#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Option<Value>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    /// (method, path substring, remaining failures)
    faults: Vec<(Method, String, u32)>,
    served_groups: Vec<String>,
    next_rv: u64,
}

#[derive(Clone, Default)]
struct FakeApiServer(Arc<Mutex<State>>);

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApiServer {
    fn new() -> Self {
        Self::default()
    }

    fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let (code, value) = me.handle(&parts.method, &parts.uri, &bytes);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        Client::new(svc, "default")
    }

    fn handle(&self, method: &Method, uri: &http::Uri, body: &[u8]) -> (u16, Value) {
        let mut st = self.0.lock();
        let path = uri.path().to_string();
        let body: Option<Value> = (!body.is_empty()).then(|| serde_json::from_slice(body).expect("JSON body"));
        st.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: uri.query().unwrap_or_default().to_string(),
            body: body.clone(),
        });
        if let Some(f) = st.faults.iter_mut().find(|(m, p, n)| m == method && path.contains(p.as_str()) && *n > 0) {
            f.2 -= 1;
            return (500, status_body(500, "InternalError", "injected failure"));
        }
        st.next_rv += 1;
        let rv = st.next_rv.to_string();
        match *method {
            Method::GET => {
                if let Some(group) = path.strip_prefix("/apis/").filter(|p| p.matches('/').count() == 1) {
                    return if st.served_groups.iter().any(|g| g == group) {
                        (
                            200,
                            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group,
                            "resources": if group.starts_with("gateway.") {
                                json!([{"name": "httproutes", "singularName": "httproute",
                                        "namespaced": true, "kind": "HTTPRoute", "verbs": ["get", "patch"]}])
                            } else if group.starts_with("cert-manager.") {
                                json!([{"name": "certificates", "singularName": "certificate",
                                        "namespaced": true, "kind": "Certificate", "verbs": ["get", "patch"]}])
                            } else {
                                json!([{"name": "servicemonitors", "singularName": "servicemonitor",
                                        "namespaced": true, "kind": "ServiceMonitor", "verbs": ["get", "patch"]}])
                            }}),
                        )
                    } else {
                        (404, status_body(404, "NotFound", "the server could not find the requested resource"))
                    };
                }
                if let Some(selector) = uri.query().and_then(label_selector) {
                    let items: Vec<Value> = st
                        .objects
                        .iter()
                        .filter(|(k, o)| {
                            collection_of(k) == path
                                && selector.iter().all(|(lk, lv)| o["metadata"]["labels"][lk.as_str()] == *lv.as_str())
                        })
                        .map(|(_, o)| o.clone())
                        .collect();
                    return (200, json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}));
                }
                match st.objects.get(&path) {
                    Some(o) => (200, o.clone()),
                    None => (404, status_body(404, "NotFound", "not found")),
                }
            }
            Method::POST => {
                let mut obj = body.expect("POST body");
                let name = obj["metadata"]["name"].as_str().expect("name").to_string();
                let key = format!("{path}/{name}");
                if st.objects.contains_key(&key) {
                    return (409, status_body(409, "AlreadyExists", "already exists"));
                }
                obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                obj["metadata"]["resourceVersion"] = json!(rv);
                st.objects.insert(key, obj.clone());
                (201, obj)
            }
            Method::PATCH => {
                let patch = body.expect("PATCH body");
                if let Some(base) = path.strip_suffix("/status") {
                    let Some(obj) = st.objects.get_mut(base) else {
                        return (404, status_body(404, "NotFound", "not found"));
                    };
                    obj["status"] = patch["status"].clone();
                    obj["metadata"]["resourceVersion"] = json!(rv);
                    return (200, obj.clone());
                }
                let previous = st.objects.get(&path).cloned();
                let manager = uri.query().and_then(|q| query_param(q, "fieldManager"));
                let Some(manager) = manager else {
                    // JSON merge patch (no field manager): merge into the stored object.
                    let Some(mut obj) = previous else {
                        return (404, status_body(404, "NotFound", "not found"));
                    };
                    json_merge(&mut obj, &patch);
                    obj["metadata"]["resourceVersion"] = json!(rv);
                    st.objects.insert(path, obj.clone());
                    return (200, obj);
                };
                if manager != "gyre-operator"
                    && let Some(mut obj) = previous.clone()
                {
                    // Another field manager applying a few fields: they merge into the object.
                    json_merge(&mut obj, &patch);
                    if patch["spec"].get("replicas").is_some() {
                        let owners = replica_owners(&obj).into_iter().chain([manager]).collect();
                        set_replica_owners(&mut obj, &owners);
                    }
                    obj["metadata"]["resourceVersion"] = json!(rv);
                    st.objects.insert(path, obj.clone());
                    return (200, obj);
                }
                let mut obj = patch;
                if path.contains("/deployments/") {
                    // Server-side apply semantics for spec.replicas: a field the applier omits is
                    // removed if the applier was its only owner (then defaulted to 1), and kept
                    // if another field manager also owns it.
                    let mut owners = previous.as_ref().map(replica_owners).unwrap_or_default();
                    if obj["spec"].get("replicas").is_some() {
                        owners.insert(manager.clone());
                    } else if let Some(prev_replicas) =
                        previous.as_ref().and_then(|p| p["spec"].get("replicas").cloned())
                    {
                        owners.remove(&manager);
                        obj["spec"]["replicas"] = if owners.is_empty() { json!(1) } else { prev_replicas };
                    }
                    set_replica_owners(&mut obj, &owners);
                }
                if let Some(prev) = &previous {
                    if let Some(s) = prev.get("status") {
                        obj["status"] = s.clone();
                    }
                    obj["metadata"]["uid"] = prev["metadata"]["uid"].clone();
                    let generation = prev["metadata"]["generation"].as_i64().unwrap_or(1);
                    let changed = prev.get("spec") != obj.get("spec");
                    obj["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
                } else {
                    obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                    obj["metadata"]["generation"] = json!(1);
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                st.objects.insert(path, obj.clone());
                (200, obj)
            }
            Method::PUT => {
                let mut obj = body.expect("PUT body");
                match st.objects.get(&path) {
                    None => return (404, status_body(404, "NotFound", "not found")),
                    Some(prev) if prev["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"] => {
                        return (409, status_body(409, "Conflict", "the object has been modified"));
                    }
                    Some(_) => {}
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                st.objects.insert(path, obj.clone());
                (200, obj)
            }
            Method::DELETE => match st.objects.remove(&path) {
                Some(o) => {
                    // Garbage collection: dependents of the deleted object go too.
                    if let Some(uid) = o["metadata"]["uid"].as_str() {
                        st.objects.retain(|_, d| {
                            !d["metadata"]["ownerReferences"]
                                .as_array()
                                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                        });
                    }
                    (200, o)
                }
                None => (404, status_body(404, "NotFound", "not found")),
            },
            _ => (405, status_body(405, "MethodNotAllowed", "unsupported")),
        }
    }

    fn put(&self, path: &str, v: Value) {
        self.0.lock().objects.insert(path.to_string(), v);
    }
    fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().objects.get(path).cloned()
    }
    fn calls(&self) -> Vec<Call> {
        self.0.lock().calls.clone()
    }
    fn clear_calls(&self) {
        self.0.lock().calls.clear();
    }
    fn fail(&self, method: Method, path: &str, times: u32) {
        self.0.lock().faults.push((method, path.to_string(), times));
    }
    fn serve_group(&self, gv: &str) {
        self.0.lock().served_groups.push(gv.to_string());
    }

    /// Stores the resource and returns it as a watch would deliver it.
    fn store_cr(&self, cr: &Centrifugo) -> Arc<Centrifugo> {
        self.put(CR_PATH, serde_json::to_value(cr).unwrap());
        self.cr()
    }
    fn cr(&self) -> Arc<Centrifugo> {
        Arc::new(serde_json::from_value(self.get(CR_PATH).expect("CR stored")).unwrap())
    }
    fn events(&self) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == Method::POST && c.path.ends_with("/events"))
            .map(|c| {
                let b = c.body.unwrap();
                (b["type"].as_str().unwrap().to_string(), b["reason"].as_str().unwrap().to_string())
            })
            .collect()
    }
    fn writes(&self) -> Vec<(Method, String)> {
        self.calls()
            .into_iter()
            .filter(|c| c.method != Method::GET && !c.path.ends_with("/events"))
            .map(|c| (c.method, c.path))
            .collect()
    }
}

fn query_param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(|v| v.replace("%2F", "/").replace("%3D", "=")))
}

fn label_selector(q: &str) -> Option<Vec<(String, String)>> {
    let sel = query_param(q, "labelSelector")?;
    Some(sel.split(',').filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect())
}

/// `/api/v1/namespaces/x/secrets/name` → `/api/v1/secrets` (cluster-wide collection).
fn collection_of(key: &str) -> String {
    let (parent, _) = key.rsplit_once('/').unwrap_or((key, ""));
    match parent.split_once("/namespaces/") {
        Some((base, rest)) => match rest.split_once('/') {
            Some((_, resource)) => format!("{base}/{resource}"),
            None => parent.to_string(),
        },
        None => parent.to_string(),
    }
}

fn json_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn replica_owners(obj: &Value) -> std::collections::BTreeSet<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["manager"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn set_replica_owners(obj: &mut Value, owners: &std::collections::BTreeSet<String>) {
    obj["metadata"]["managedFields"] = owners
        .iter()
        .map(|m| {
            json!({"manager": m, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:spec": {"f:replicas": {}}}})
        })
        .collect();
}

fn context(fake: &FakeApiServer) -> Arc<Context> {
    Arc::new(Context::new(fake.client(), Settings { default_image: "gyre:test".into() }, Arc::new(Metrics::default())))
}

fn condition(fake: &FakeApiServer, ty: &str) -> (String, String) {
    let cr = fake.get(CR_PATH).unwrap();
    let c = cr["status"]["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions in {cr}"))
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} condition"))
        .clone();
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

fn pod_hash(fake: &FakeApiServer) -> String {
    fake.get(DEPLOYMENT).unwrap()["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        .as_str()
        .unwrap()
        .to_string()
}

fn secret_values(fake: &FakeApiServer) -> Value {
    fake.get(&format!("{SECRETS}/chat-secrets")).unwrap()["data"].clone()
}

async fn run(cr: Arc<Centrifugo>, ctx: &Arc<Context>) -> Result<Action, crate::controller::Error> {
    tokio::time::timeout(Duration::from_secs(5), reconcile(cr, ctx.clone())).await.expect("reconcile finished")
}

#[tokio::test]
async fn create_from_scratch() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr = fake.store_cr(&fixtures::cr(CentrifugoSpec::default()));

    let action = run(cr, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));

    let writes = fake.writes();
    let expect = [
        (Method::POST, SECRETS.to_string()),
        // No managed NATS: its objects are removed if a previous spec had them.
        (Method::DELETE, "/apis/apps/v1/namespaces/prod/statefulsets/chat-nats".into()),
        (Method::DELETE, "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/chat-nats".into()),
        (Method::DELETE, "/api/v1/namespaces/prod/services/chat-nats".into()),
        (Method::DELETE, "/api/v1/namespaces/prod/services/chat-nats-headless".into()),
        (Method::DELETE, "/api/v1/namespaces/prod/configmaps/chat-nats-config".into()),
        (Method::DELETE, "/apis/cert-manager.io/v1/namespaces/prod/certificates/chat-nats-server".into()),
        (Method::DELETE, "/apis/cert-manager.io/v1/namespaces/prod/certificates/chat-nats-client".into()),
        (Method::PATCH, "/api/v1/namespaces/prod/serviceaccounts/chat".into()),
        (Method::PATCH, CONFIGMAP.into()),
        (Method::DELETE, "/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/chat".into()),
        (Method::PATCH, DEPLOYMENT.into()),
        (Method::PATCH, "/api/v1/namespaces/prod/services/chat".into()),
        (Method::PATCH, "/api/v1/namespaces/prod/services/chat-internal".into()),
        (Method::DELETE, "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/chat".into()),
        (Method::DELETE, "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/chat".into()),
        (Method::DELETE, "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/chat".into()),
        (Method::DELETE, "/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/chat".into()),
        (Method::DELETE, "/apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes/chat".into()),
        (Method::DELETE, "/apis/cert-manager.io/v1/namespaces/prod/certificates/chat".into()),
        (Method::PATCH, format!("{CR_PATH}/status")),
    ];
    assert_eq!(writes, expect);

    // Applies are server-side applies under our field manager, forced.
    for c in fake.calls().iter().filter(|c| c.method == Method::PATCH) {
        assert!(c.query.contains("fieldManager=gyre-operator"), "{c:?}");
        assert!(c.query.contains("force=true"), "{c:?}");
    }

    let secret = secret_values(&fake);
    assert_eq!(secret.as_object().unwrap().len(), 4);
    let cm = fake.get(CONFIGMAP).unwrap();
    let cfg: Value = serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["http_server"]["internal_port"], 9000);
    let dep: Deployment = serde_json::from_value(fake.get(DEPLOYMENT).unwrap()).unwrap();
    let ctr = &dep.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(ctr.image.as_deref(), Some("gyre:test"), "operator default image");

    let st = &fake.get(CR_PATH).unwrap()["status"];
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["secretName"], "chat-secrets");
    assert_eq!(st["configHash"].as_str().unwrap(), pod_hash(&fake));
    assert_eq!(st["endpoints"]["api"], "http://chat-internal.prod.svc:9000/api");
    assert_eq!(condition(&fake, "ConfigValid"), ("True".into(), "Valid".into()));
    assert_eq!(condition(&fake, "SecretsReady"), ("True".into(), "Generated".into()));
    assert_eq!(condition(&fake, "Ready"), ("False".into(), "ReplicasNotReady".into()));
    assert_eq!(condition(&fake, "Progressing"), ("True".into(), "RollingOut".into()));
    assert_eq!(condition(&fake, "ReconcileError"), ("False".into(), "ReconcileSucceeded".into()));

    let events = fake.events();
    assert!(events.contains(&("Normal".into(), "SecretGenerated".into())), "{events:?}");
    assert!(events.contains(&("Normal".into(), "Deployed".into())), "{events:?}");
}

#[tokio::test]
async fn second_pass_keeps_secret_and_hash() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(CentrifugoSpec::default())), &ctx).await.unwrap();
    let secret = secret_values(&fake);
    let hash = pod_hash(&fake);
    fake.clear_calls();

    run(fake.cr(), &ctx).await.unwrap();
    assert_eq!(secret_values(&fake), secret, "never re-randomised");
    assert_eq!(pod_hash(&fake), hash, "nothing changed, no roll");
    assert!(
        !fake.writes().iter().any(|(_, p)| p.contains("/secrets")),
        "no writes to the Secret on a routine pass: {:?}",
        fake.writes()
    );
    assert!(fake.events().is_empty(), "quiet when nothing happens: {:?}", fake.events());
}

#[tokio::test]
async fn spec_change_rolls_the_deployment() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(CentrifugoSpec::default())), &ctx).await.unwrap();
    let hash1 = pod_hash(&fake);
    let gen1 = fake.get(DEPLOYMENT).unwrap()["metadata"]["generation"].clone();
    let secret = secret_values(&fake);

    let mut cr = (*fake.cr()).clone();
    cr.spec.config = Some(json!({"client": {"allowed_origins": ["https://app.example"]}}));
    cr.metadata.generation = Some(2);
    fake.clear_calls();
    run(fake.store_cr(&cr), &ctx).await.unwrap();

    let hash2 = pod_hash(&fake);
    assert_ne!(hash1, hash2);
    assert_ne!(fake.get(DEPLOYMENT).unwrap()["metadata"]["generation"], gen1, "pod template changed");
    let cm = fake.get(CONFIGMAP).unwrap();
    assert!(cm["data"]["config.json"].as_str().unwrap().contains("https://app.example"));
    assert_eq!(secret_values(&fake), secret);
    let st = &fake.get(CR_PATH).unwrap()["status"];
    assert_eq!(st["configHash"], json!(hash2));
    assert_eq!(st["observedGeneration"], 2);
    assert!(fake.events().contains(&("Normal".into(), "RollingUpdate".into())));
}

#[tokio::test]
async fn existing_generated_secret_is_kept() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr = fixtures::cr(CentrifugoSpec::default());
    let pre = builders::build_generated_secret(&cr, &fixtures::secret_values());
    fake.put(&format!("{SECRETS}/chat-secrets"), serde_json::to_value(&pre).unwrap());
    let before = secret_values(&fake);

    run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert_eq!(secret_values(&fake), before);
    assert!(!fake.writes().iter().any(|(_, p)| p.contains("/secrets")));
    let expected = crate::builders::Inputs {
        image: "gyre:test".into(),
        config: crate::config::build_config(&cr.spec).unwrap(),
        secret_name: "chat-secrets".into(),
        secret_hash: builders::credentials_hash(&fixtures::secret_data(&fixtures::secret_values())),
    };
    assert_eq!(pod_hash(&fake), expected.pod_hash(), "pods consume the stored credentials");
}

#[tokio::test]
async fn rotation_regenerates_and_rolls() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(CentrifugoSpec::default())), &ctx).await.unwrap();
    let before = secret_values(&fake);
    let hash1 = pod_hash(&fake);

    let mut cr = (*fake.cr()).clone();
    cr.spec.secrets = Some(SecretsSpec { rotation_generation: 1, ..Default::default() });
    cr.metadata.generation = Some(2);
    fake.clear_calls();
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    let after = secret_values(&fake);
    for k in ["apiKey", "tokenHmacSecretKey", "adminPassword", "adminSecret"] {
        assert_ne!(before[k], after[k], "{k} rotated");
    }
    assert_ne!(pod_hash(&fake), hash1);
    let rotation = &fake.get(&format!("{SECRETS}/chat-secrets")).unwrap()["metadata"]["annotations"]
        [builders::ROTATION_ANNOTATION];
    assert_eq!(rotation, "1");
    assert!(fake.events().contains(&("Normal".into(), "SecretRotated".into())));

    // And a further pass does not rotate again.
    let after_hash = pod_hash(&fake);
    run(fake.cr(), &ctx).await.unwrap();
    assert_eq!(secret_values(&fake), after);
    assert_eq!(pod_hash(&fake), after_hash);
}

#[tokio::test]
async fn user_secret_missing_or_incomplete_is_reported() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr = fixtures::cr(CentrifugoSpec {
        secrets: Some(SecretsSpec { existing_secret: Some("my-creds".into()), ..Default::default() }),
        ..Default::default()
    });
    let action = run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(SECRET_RETRY));
    assert_eq!(condition(&fake, "SecretsReady"), ("False".into(), "SecretNotFound".into()));
    assert_eq!(condition(&fake, "Ready"), ("False".into(), "SecretsNotReady".into()));
    assert!(fake.get(DEPLOYMENT).is_none(), "no pods that would fail on a missing Secret");
    assert!(fake.events().contains(&("Warning".into(), "SecretNotFound".into())));

    fake.put(
        &format!("{SECRETS}/my-creds"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-creds", "namespace": "prod"},
               "data": {"apiKey": "YQ=="}}),
    );
    run(fake.cr(), &ctx).await.unwrap();
    assert_eq!(condition(&fake, "SecretsReady"), ("False".into(), "SecretKeyMissing".into()));
    let msg = fake.get(CR_PATH).unwrap()["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SecretsReady")
        .unwrap()["message"]
        .clone();
    assert!(msg.as_str().unwrap().contains("tokenHmacSecretKey"));

    fake.put(
        &format!("{SECRETS}/my-creds"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-creds", "namespace": "prod"},
               "data": {"apiKey": "YQ==", "tokenHmacSecretKey": "Yg=="}}),
    );
    fake.clear_calls();
    assert_eq!(run(fake.cr(), &ctx).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(condition(&fake, "SecretsReady"), ("True".into(), "ExistingSecret".into()));
    assert!(!fake.writes().iter().any(|(_, p)| p.contains("/secrets")), "user Secret is never written");
    let dep = fake.get(DEPLOYMENT).unwrap();
    assert!(dep.to_string().contains("my-creds"));
}

#[tokio::test]
async fn deployment_progress_drives_ready() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(CentrifugoSpec::default())), &ctx).await.unwrap();
    assert_eq!(condition(&fake, "Ready").0, "False");

    // The Deployment controller reports the rollout done.
    let mut dep = fake.get(DEPLOYMENT).unwrap();
    let generation = dep["metadata"]["generation"].clone();
    dep["status"] = json!({"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
                           "readyReplicas": 1, "availableReplicas": 1});
    fake.put(DEPLOYMENT, dep);
    run(fake.cr(), &ctx).await.unwrap();
    assert_eq!(condition(&fake, "Ready"), ("True".into(), "AllReplicasReady".into()));
    assert_eq!(condition(&fake, "Progressing"), ("False".into(), "RolloutComplete".into()));
    let st = &fake.get(CR_PATH).unwrap()["status"];
    assert_eq!((st["readyReplicas"].clone(), st["replicas"].clone()), (json!(1), json!(1)));
}

#[tokio::test]
async fn errors_are_reported_and_retried_with_backoff() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr = fake.store_cr(&fixtures::cr(CentrifugoSpec::default()));
    fake.fail(Method::PATCH, "/configmaps/", 2);

    let err = run(cr.clone(), &ctx).await.unwrap_err();
    assert_eq!(err.reason(), "ApplyFailed");
    assert!(err.to_string().contains("ConfigMap chat-config"), "{err}");
    assert_eq!(error_policy(cr.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(5)));
    assert_eq!(condition(&fake, "ReconcileError"), ("True".into(), "ApplyFailed".into()));
    assert!(fake.events().contains(&("Warning".into(), "ReconcileFailed".into())));
    assert!(fake.get(DEPLOYMENT).is_none(), "stopped at the failing step");

    let err = run(fake.cr(), &ctx).await.unwrap_err();
    assert_eq!(error_policy(fake.cr(), &err, ctx.clone()), Action::requeue(Duration::from_secs(10)));
    assert_eq!(ctx.metrics.failures.get(), 2);

    // Third attempt: the apiserver recovered.
    assert_eq!(run(fake.cr(), &ctx).await.unwrap(), Action::requeue(RESYNC));
    assert!(fake.get(DEPLOYMENT).is_some());
    assert_eq!(condition(&fake, "ReconcileError"), ("False".into(), "ReconcileSucceeded".into()));
    // Backoff was reset by the success.
    assert_eq!(error_policy(fake.cr(), &err, ctx.clone()), Action::requeue(Duration::from_secs(5)));
    // The Secret generated on the first (failed) pass survived the retries.
    assert_eq!(fake.calls().iter().filter(|c| c.method == Method::POST && c.path == SECRETS).count(), 1);
}

#[tokio::test]
async fn backoff_is_capped() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr = fake.store_cr(&fixtures::cr(CentrifugoSpec::default()));
    let err = crate::controller::Error::NoNamespace("x".into());
    let mut last = Action::await_change();
    for _ in 0..20 {
        last = error_policy(cr.clone(), &err, ctx.clone());
    }
    assert_eq!(last, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn paused_instance_gets_no_writes() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let mut cr = fixtures::cr(CentrifugoSpec::default());
    cr.metadata.annotations = Some(BTreeMap::from([(PAUSED_ANNOTATION.to_string(), "true".to_string())]));
    let action = run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(fake.calls().is_empty(), "no requests at all: {:?}", fake.calls());
    assert_eq!(ctx.metrics.paused_skips.get(), 1);

    // "false" does not pause.
    cr.metadata.annotations = Some(BTreeMap::from([(PAUSED_ANNOTATION.to_string(), "false".to_string())]));
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert!(fake.get(DEPLOYMENT).is_some());
}

#[tokio::test]
async fn invalid_config_is_reported_without_touching_children() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr =
        fixtures::cr(CentrifugoSpec { config: Some(json!({"http_api": {"key": "plaintext"}})), ..Default::default() });
    let action = run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert_eq!(action, Action::await_change(), "no hot loop on bad input");
    assert_eq!(fake.writes(), [(Method::PATCH, format!("{CR_PATH}/status"))]);
    assert_eq!(condition(&fake, "ConfigValid"), ("False".into(), "SecretInConfig".into()));
    assert_eq!(condition(&fake, "Ready"), ("False".into(), "InvalidConfig".into()));
    assert!(fake.events().contains(&("Warning".into(), "SecretInConfig".into())));
    assert_eq!(fake.get(CR_PATH).unwrap()["status"]["observedGeneration"], 1);
}

#[tokio::test]
async fn full_spec_applies_optional_children() {
    let fake = FakeApiServer::new();
    fake.serve_group("monitoring.coreos.com/v1");
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(full_spec())), &ctx).await.unwrap();
    for p in [
        "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/chat",
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/chat",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/chat",
        "/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/chat",
    ] {
        assert!(fake.get(p).is_some(), "{p} applied");
    }
    assert!(fake.get("/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/chat").is_none());

    // Switching the Ingress off deletes it.
    let mut cr = (*fake.cr()).clone();
    cr.spec.ingress.as_mut().unwrap().enabled = false;
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert!(fake.get("/apis/networking.k8s.io/v1/namespaces/prod/ingresses/chat").is_none());
}

#[tokio::test]
async fn service_monitor_skipped_when_crd_missing() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(full_spec())), &ctx).await.unwrap();
    assert!(fake.get("/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/chat").is_none());
    assert!(fake.events().contains(&("Warning".into(), "ServiceMonitorUnavailable".into())));
    assert_eq!(condition(&fake, "ReconcileError").0, "False", "not an error, only a warning");
}

/// Managed NATS with TLS from an issuer: both Certificates are applied before the NATS and Gyre
/// objects that mount their Secrets; without cert-manager a Warning says so and the rest is
/// still applied; switching TLS off deletes the Certificates.
#[tokio::test]
async fn managed_nats_tls_applies_its_certificates_or_warns() {
    const CERTS: &str = "/apis/cert-manager.io/v1/namespaces/prod/certificates";
    let spec: CentrifugoSpec = serde_json::from_value(json!({
        "replicas": 2, "nats": {"managed": true, "server": {"tls": {"issuerRef": {"name": "nats-ca"}}}}
    }))
    .unwrap();

    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(spec.clone())), &ctx).await.unwrap();
    assert!(fake.get(&format!("{CERTS}/chat-nats-server")).is_none());
    assert!(fake.events().contains(&("Warning".into(), "CertManagerUnavailable".into())), "{:?}", fake.events());
    assert!(fake.get("/apis/apps/v1/namespaces/prod/statefulsets/chat-nats").is_some());

    let fake = FakeApiServer::new();
    fake.serve_group("cert-manager.io/v1");
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(spec)), &ctx).await.unwrap();
    let writes = fake.writes();
    let at = |p: &str| {
        writes.iter().position(|(m, w)| *m == Method::PATCH && w == p).unwrap_or_else(|| panic!("{p}: {writes:?}"))
    };
    let (server, client) = (at(&format!("{CERTS}/chat-nats-server")), at(&format!("{CERTS}/chat-nats-client")));
    assert!(server < at("/apis/apps/v1/namespaces/prod/statefulsets/chat-nats") && client < at(DEPLOYMENT));
    let cert = fake.get(&format!("{CERTS}/chat-nats-server")).unwrap();
    assert_eq!(cert["spec"]["secretName"], "chat-nats-server-tls");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["uid"], fixtures::UID);

    let mut cr = (*fake.cr()).clone();
    cr.spec.nats.as_mut().unwrap().server.as_mut().unwrap().tls.as_mut().unwrap().enabled = false;
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert!(fake.get(&format!("{CERTS}/chat-nats-server")).is_none());
    assert!(fake.get(&format!("{CERTS}/chat-nats-client")).is_none());
}

#[tokio::test]
async fn autoscaling_leaves_replicas_out_of_the_apply() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let spec: CentrifugoSpec = serde_json::from_value(json!({
        "nats": {"url": "nats://nats:4222"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}
    }))
    .unwrap();
    run(fake.store_cr(&fixtures::cr(spec)), &ctx).await.unwrap();
    let apply = fake.calls().into_iter().find(|c| c.method == Method::PATCH && c.path == DEPLOYMENT).unwrap();
    assert!(apply.body.unwrap()["spec"].get("replicas").is_none());
    let hpa = fake.get("/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/chat").unwrap();
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    assert!(fake.get("/apis/policy/v1/namespaces/prod/poddisruptionbudgets/chat").is_some());
}

/// `BrokerReady` through a whole pass, against a real nats-server: True while it runs; once it
/// is gone, False with `BrokerUnreachable`, `Ready` says `BrokerNotReady`, and the operator
/// looks again after `BROKER_RETRY` rather than the 5-minute resync.
#[tokio::test]
async fn broker_condition_follows_a_real_nats() {
    let nats = super::nats::nats_server(true);
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let spec: CentrifugoSpec = serde_json::from_value(json!({"replicas": 2, "nats": {"url": url}})).unwrap();
    let action = run(fake.store_cr(&fixtures::cr(spec)), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    assert_eq!(condition(&fake, "BrokerReady"), ("True".into(), "JetStreamAvailable".into()));
    assert_eq!(condition(&fake, "Ready"), ("False".into(), "ReplicasNotReady".into()));

    drop(nats);
    let action = run(fake.cr(), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(crate::controller::BROKER_RETRY));
    assert_eq!(condition(&fake, "BrokerReady"), ("False".into(), "BrokerUnreachable".into()));
    assert_eq!(condition(&fake, "Ready"), ("False".into(), "BrokerNotReady".into()));
}

/// Issue 11 #4: a running instance at 3 pods, autoscaling switched on. The Deployment apply
/// leaves `replicas` out; if the operator were still its only owner the apiserver would reset it
/// to 1 (the fake models that), dropping two pods and their connections.
#[tokio::test]
async fn switching_autoscaling_on_keeps_the_live_replica_count() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let spec: CentrifugoSpec =
        serde_json::from_value(json!({"replicas": 3, "nats": {"url": "nats://nats:4222"}})).unwrap();
    run(fake.store_cr(&fixtures::cr(spec)), &ctx).await.unwrap();
    assert_eq!(fake.get(DEPLOYMENT).unwrap()["spec"]["replicas"], 3);

    let mut cr = (*fake.cr()).clone();
    cr.spec.autoscaling = serde_json::from_value(json!({"minReplicas": 2, "maxReplicas": 8})).unwrap();
    fake.clear_calls();
    run(fake.store_cr(&cr), &ctx).await.unwrap();

    let dep = fake.get(DEPLOYMENT).unwrap();
    assert_eq!(dep["spec"]["replicas"], 3, "live replica count kept, never 1");
    // The HPA exists before the Deployment stops claiming the field.
    let writes = fake.writes();
    let pos = |p: &str| writes.iter().position(|(m, w)| *m == Method::PATCH && w == p).unwrap();
    assert!(pos("/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/chat") < pos(DEPLOYMENT));
    let handover = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == Method::PATCH && c.path == DEPLOYMENT)
        .find(|c| c.query.contains("gyre-operator-hpa-handover"))
        .expect("replicas handed over under a second field manager");
    assert_eq!(handover.body.unwrap()["spec"], json!({"replicas": 3}));

    // The HPA scales to 6; later passes neither reset it nor repeat the handover.
    let mut d = fake.get(DEPLOYMENT).unwrap();
    d["spec"]["replicas"] = json!(6);
    fake.put(DEPLOYMENT, d);
    fake.clear_calls();
    run(fake.cr(), &ctx).await.unwrap();
    assert_eq!(fake.get(DEPLOYMENT).unwrap()["spec"]["replicas"], 6);
    assert!(!fake.calls().iter().any(|c| c.query.contains("hpa-handover")));

    // Autoscaling off again: the operator owns the count once more.
    let mut cr = (*fake.cr()).clone();
    cr.spec.autoscaling = None;
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert_eq!(fake.get(DEPLOYMENT).unwrap()["spec"]["replicas"], 3);
    let hpa = fake.get("/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/chat");
    assert!(hpa.is_none());
}

#[tokio::test]
async fn hpa_behavior_is_passed_through() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let spec: CentrifugoSpec = serde_json::from_value(json!({
        "nats": {"url": "nats://nats:4222"},
        "autoscaling": {"maxReplicas": 5, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}}}
    }))
    .unwrap();
    run(fake.store_cr(&fixtures::cr(spec)), &ctx).await.unwrap();
    let hpa = fake.get("/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/chat").unwrap();
    assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 600);
    assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["policies"][0]["periodSeconds"], 120);
}

/// Issue 11 #6: deleting and recreating the resource (new uid) keeps the generated keys.
#[tokio::test]
async fn generated_secret_survives_delete_and_recreate() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(CentrifugoSpec::default())), &ctx).await.unwrap();
    let before = secret_values(&fake);
    assert!(fake.get(&format!("{SECRETS}/chat-secrets")).unwrap()["metadata"].get("ownerReferences").is_none());

    // kubectl delete: the apiserver garbage-collects every owned child.
    fake.handle(&Method::DELETE, &CR_PATH.parse().unwrap(), b"");
    assert!(fake.get(DEPLOYMENT).is_none(), "owned children collected");
    assert!(fake.get(&format!("{SECRETS}/chat-secrets")).is_some(), "the Secret is retained");

    let mut again = fixtures::cr(CentrifugoSpec::default());
    again.metadata.uid = Some("another-uid".into());
    run(fake.store_cr(&again), &ctx).await.unwrap();
    assert_eq!(secret_values(&fake), before, "same keys after recreation");

    // retainOnDelete: false ties the Secret to the resource again.
    let mut cr = (*fake.cr()).clone();
    cr.spec.secrets = Some(SecretsSpec { retain_on_delete: false, ..Default::default() });
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    let s = fake.get(&format!("{SECRETS}/chat-secrets")).unwrap();
    assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "another-uid");
    assert_eq!(secret_values(&fake), before, "re-owning does not rotate");
    fake.handle(&Method::DELETE, &CR_PATH.parse().unwrap(), b"");
    assert!(fake.get(&format!("{SECRETS}/chat-secrets")).is_none());
}

/// A Secret from before retention (owner reference set) loses the reference on the next pass.
#[tokio::test]
async fn legacy_owned_secret_is_released() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let cr = fixtures::cr(CentrifugoSpec::default());
    let mut legacy = serde_json::to_value(builders::build_generated_secret(&cr, &fixtures::secret_values())).unwrap();
    legacy["metadata"]["ownerReferences"] = json!([{"apiVersion": "centrifugo.gyre.dev/v1alpha1", "kind": "Centrifugo",
        "name": "chat", "uid": fixtures::UID, "controller": true}]);
    fake.put(&format!("{SECRETS}/chat-secrets"), legacy);
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    let s = fake.get(&format!("{SECRETS}/chat-secrets")).unwrap();
    assert!(s["metadata"].get("ownerReferences").is_none(), "{s}");
    assert_eq!(s["data"]["apiKey"], "YXBpLWJiYmI=", "values untouched (base64 of api-bbbb)");
}

/// Issue 11 #6: rotating the HMAC key keeps the old one as the previous key for the window, and
/// leaves the other keys alone; the pods read both.
#[tokio::test]
async fn per_key_rotation_keeps_the_previous_hmac_key() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    run(fake.store_cr(&fixtures::cr(CentrifugoSpec::default())), &ctx).await.unwrap();
    let before = secret_values(&fake);
    let hash_before = pod_hash(&fake);

    let mut cr = (*fake.cr()).clone();
    cr.spec.secrets = Some(serde_json::from_value(json!({"rotate": {"tokenHmacSecretKey": 1}})).unwrap());
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    let after = secret_values(&fake);
    assert_ne!(after["tokenHmacSecretKey"], before["tokenHmacSecretKey"]);
    assert_eq!(after["tokenHmacPreviousSecretKey"], before["tokenHmacSecretKey"]);
    assert_eq!(after["apiKey"], before["apiKey"], "only the rotated key changes");
    assert_eq!(after["adminSecret"], before["adminSecret"]);
    let until: i64 = {
        use base64::Engine as _;
        let b64 = after["tokenHmacPreviousSecretKeyValidUntil"].as_str().unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        String::from_utf8(raw).unwrap().parse().unwrap()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((until - now - 86_400).abs() < 60, "window of 24 h, got {}", until - now);
    assert_ne!(pod_hash(&fake), hash_before, "pods roll to pick up the keys");
    assert!(fake.events().contains(&("Normal".into(), "SecretRotated".into())));

    let dep: Deployment = serde_json::from_value(fake.get(DEPLOYMENT).unwrap()).unwrap();
    let env = dep.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let previous = env.iter().find(|e| e.name == "CENTRIFUGO_CLIENT_TOKEN_HMAC_PREVIOUS_SECRET_KEY").unwrap();
    let r = previous.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((r.key.as_str(), r.optional), ("tokenHmacPreviousSecretKey", Some(true)));

    // Steady state: no further writes to the Secret.
    fake.clear_calls();
    run(fake.cr(), &ctx).await.unwrap();
    assert!(!fake.writes().iter().any(|(_, p)| p.contains("/secrets")), "{:?}", fake.writes());
}

/// Issue 11 #6: backends in other namespaces get a copy of the API key; a namespace leaving
/// the list loses its copy.
#[tokio::test]
async fn api_key_is_exported_to_listed_namespaces() {
    let fake = FakeApiServer::new();
    let ctx = context(&fake);
    let spec = CentrifugoSpec {
        secrets: Some(SecretsSpec { export_to: vec!["backend".into(), "billing".into()], ..Default::default() }),
        ..Default::default()
    };
    run(fake.store_cr(&fixtures::cr(spec)), &ctx).await.unwrap();
    let key = secret_values(&fake)["apiKey"].clone();
    for ns in ["backend", "billing"] {
        let copy = fake.get(&format!("/api/v1/namespaces/{ns}/secrets/chat-api-key")).unwrap();
        assert_eq!(copy["data"]["apiKey"], key);
    }
    assert_eq!(fake.get(CR_PATH).unwrap()["status"]["exportedTo"], json!(["backend", "billing"]));

    let mut cr = (*fake.cr()).clone();
    cr.spec.secrets.as_mut().unwrap().export_to = vec!["backend".into()];
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    assert!(fake.get("/api/v1/namespaces/billing/secrets/chat-api-key").is_none(), "removed copy");
    assert!(fake.get("/api/v1/namespaces/backend/secrets/chat-api-key").is_some());
    assert_eq!(fake.get(CR_PATH).unwrap()["status"]["exportedTo"], json!(["backend"]));
}

/// Issue 11 #9: the grants are exactly what the code calls. Every reconcile path (create, every
/// optional child on and off, autoscaling handover, rotation, repair, legacy Secret, exports
/// added and removed, invalid config twice so the recorder patches an Event series, missing
/// user Secret) and the leader election run against the recording apiserver; each request is
/// mapped to (group, resource, verb), the controller's watches are added, and the union must
/// equal `rbac::REQUIRED` (admission-only grants aside).
#[tokio::test]
async fn rbac_is_exactly_what_the_code_calls() {
    use std::collections::BTreeSet;

    use crate::{
        leader::LeaderElector,
        rbac::{REQUIRED, WATCHED, request_permission},
    };

    let fake = FakeApiServer::new();
    fake.serve_group("monitoring.coreos.com/v1");
    fake.serve_group("gateway.networking.k8s.io/v1");
    fake.serve_group("cert-manager.io/v1");
    let ctx = context(&fake);

    // Everything on, with exports and a legacy owned Secret.
    let mut spec = full_spec();
    spec.gateway_api = serde_json::from_value(json!({"parentRefs": [{"name": "gw"}]})).unwrap();
    spec.tls = serde_json::from_value(json!({"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}})).unwrap();
    spec.secrets = Some(SecretsSpec { export_to: vec!["backend".into(), "billing".into()], ..Default::default() });
    let cr = fixtures::cr(spec);
    let mut legacy = serde_json::to_value(builders::build_generated_secret(&cr, &fixtures::secret_values())).unwrap();
    legacy["metadata"]["ownerReferences"] = json!([{"apiVersion": "centrifugo.gyre.dev/v1alpha1", "kind": "Centrifugo",
        "name": "chat", "uid": fixtures::UID, "controller": true}]);
    fake.put(&format!("{SECRETS}/chat-secrets"), legacy);
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    // The operator's own NATS (spec.nats.managed): StatefulSet, Services, ConfigMap, PDB applied.
    let mut cr = (*fake.cr()).clone();
    cr.spec.nats = serde_json::from_value(json!({"managed": true})).unwrap();
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    // ... with TLS from an issuer: its two Certificates applied.
    let mut cr = (*fake.cr()).clone();
    cr.spec.nats =
        serde_json::from_value(json!({"managed": true, "server": {"tls": {"issuerRef": {"name": "ca"}}}})).unwrap();
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    // Autoscaling on (handover), rotation, one export removed.
    let mut cr = (*fake.cr()).clone();
    cr.spec.autoscaling = serde_json::from_value(json!({"maxReplicas": 6})).unwrap();
    cr.spec.secrets.as_mut().unwrap().rotate = Some(serde_json::from_value(json!({"tokenHmacSecretKey": 1})).unwrap());
    cr.spec.secrets.as_mut().unwrap().export_to = vec!["backend".into()];
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    // Every optional child off.
    let mut cr = (*fake.cr()).clone();
    for f in [
        |c: &mut Centrifugo| c.spec.ingress = None,
        |c: &mut Centrifugo| c.spec.gateway_api = None,
        |c: &mut Centrifugo| c.spec.tls = None,
        |c: &mut Centrifugo| c.spec.metrics = None,
        |c: &mut Centrifugo| c.spec.network_policy = None,
        |c: &mut Centrifugo| c.spec.autoscaling = None,
        |c: &mut Centrifugo| c.spec.pod_disruption_budget = serde_json::from_value(json!({"enabled": false})).unwrap(),
    ] {
        f(&mut cr);
    }
    run(fake.store_cr(&cr), &ctx).await.unwrap();
    // A key removed by hand: repaired.
    let mut s = fake.get(&format!("{SECRETS}/chat-secrets")).unwrap();
    s["data"].as_object_mut().unwrap().remove("apiKey");
    fake.put(&format!("{SECRETS}/chat-secrets"), s);
    run(fake.cr(), &ctx).await.unwrap();
    // The Secret deleted by hand: generated anew.
    fake.handle(&Method::DELETE, &format!("{SECRETS}/chat-secrets").parse().unwrap(), b"");
    run(fake.cr(), &ctx).await.unwrap();
    // Invalid config twice: the same Warning twice is patched as an Event series.
    let mut bad = (*fake.cr()).clone();
    bad.spec.config = Some(json!({"http_api": {"key": "x"}}));
    run(fake.store_cr(&bad), &ctx).await.unwrap();
    run(fake.cr(), &ctx).await.unwrap();
    // A user Secret that does not exist.
    let mut ext = (*fake.cr()).clone();
    ext.spec.config = None;
    ext.spec.secrets = Some(SecretsSpec { existing_secret: Some("nope".into()), ..Default::default() });
    run(fake.store_cr(&ext), &ctx).await.unwrap();
    // Leader election: create, renew, release.
    let leases = LeaderElector::new(kube::Api::namespaced(fake.client(), "ops"), "gyre-operator", "pod-a");
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(leases.try_acquire_or_renew(now).await.unwrap());
    assert!(leases.try_acquire_or_renew(now).await.unwrap());
    leases.release().await.unwrap();

    let mut called: BTreeSet<(String, String, String)> =
        fake.calls().iter().filter_map(|c| request_permission(c.method.as_str(), &c.path, &c.query)).collect();
    for (g, r) in WATCHED {
        called.insert((g.to_string(), r.to_string(), "list".into()));
        called.insert((g.to_string(), r.to_string(), "watch".into()));
    }
    let granted: BTreeSet<(String, String, String)> = REQUIRED
        .iter()
        .filter(|p| !p.why.starts_with("admission:"))
        .flat_map(|p| p.verbs.iter().map(|v| (p.group.to_string(), p.resource.to_string(), v.to_string())))
        .collect();
    let unused: Vec<_> = granted.difference(&called).collect();
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(
        unused.is_empty() && missing.is_empty(),
        "granted but never called: {unused:?}\ncalled without a grant: {missing:?}"
    );
}
