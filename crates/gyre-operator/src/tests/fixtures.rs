//! Test-only constructors for resources as the apiserver would hand them to the operator.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use serde_json::json;

use crate::{
    builders::Inputs,
    config::build_config,
    crd::{Centrifugo, CentrifugoSpec, NatsSpec},
};

pub const UID: &str = "5c0ffee0-0000-4000-8000-000000000001";

/// A resource named `chat` in namespace `prod`, with uid and generation like a stored object.
pub fn cr(spec: CentrifugoSpec) -> Centrifugo {
    let mut c = Centrifugo::new("chat", spec);
    c.metadata.namespace = Some("prod".into());
    c.metadata.uid = Some(UID.into());
    c.metadata.generation = Some(1);
    c.metadata.resource_version = Some("100".into());
    c
}

pub fn nats() -> Option<NatsSpec> {
    Some(NatsSpec {
        url: Some("nats://nats.messaging.svc:4222".into()),
        url_from: None,
        prefix: "centrifugo".into(),
        ..Default::default()
    })
}

/// Fixed credentials, so hashes in tests are stable.
pub fn secret_values() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tokenHmacSecretKey".into(), "hmac-aaaa".into()),
        ("apiKey".into(), "api-bbbb".into()),
        ("adminPassword".into(), "pw-cccc".into()),
        ("adminSecret".into(), "sec-dddd".into()),
    ])
}

pub fn secret_data(values: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    values.iter().map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec()))).collect()
}

pub fn inputs(c: &Centrifugo) -> Inputs {
    Inputs {
        image: c.spec.image.clone().unwrap_or_else(|| "gyre:test".into()),
        config: build_config(&c.spec).expect("valid fixture"),
        secret_name: crate::builders::secret_name(c),
        secret_hash: crate::builders::credentials_hash(&secret_data(&secret_values())),
    }
}

/// A spec exercising every optional section.
pub fn full_spec() -> CentrifugoSpec {
    serde_json::from_value(json!({
        "replicas": 3,
        "image": "registry.example/gyre:1.2.3",
        "imagePullPolicy": "IfNotPresent",
        "imagePullSecrets": [{"name": "regcred"}],
        "config": {"client": {"allowed_origins": ["https://app.example"]}},
        "namespaces": [{"name": "chat", "presence": true, "historySize": 50, "historyTtl": "300s"}],
        "nats": {"url": "nats://nats.messaging.svc:4222", "prefix": "tenant-a"},
        "admin": {"enabled": true},
        "service": {"type": "LoadBalancer", "port": 80, "internalPort": 9100, "annotations": {"lb": "x"}},
        "ingress": {"className": "nginx", "hosts": ["rt.example.com"], "tls": [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}], "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "podDisruptionBudget": {"minAvailable": 2},
        "pod": {
            "labels": {"team": "rt"},
            "annotations": {"sidecar.example/inject": "false"},
            "nodeSelector": {"pool": "realtime"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "rt", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "terminationGracePeriodSeconds": 60,
            "preStopSleepSeconds": 10,
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]
        },
        "metrics": {"serviceMonitor": {"interval": "15s", "labels": {"release": "prom"}}},
        "networkPolicy": {"apiClients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "backend"}}}]},
        "logLevel": "debug"
    }))
    .expect("full spec deserializes")
}
