//! The `BrokerReady` probe against a real nats-server (Debian's `/usr/sbin/nats-server`, or
//! `$NATS_SERVER_BIN`) on a free loopback port: with JetStream, without, and nothing listening.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::crd::NatsSpec;
use crate::nats::{BrokerState, check, condition};

pub(super) struct Nats {
    child: Child,
    pub(super) port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(super) fn nats_server(jetstream: bool) -> Nats {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("gyre-op-nats-{}-{port}", std::process::id()));
    let mut cmd = Command::new(&bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if jetstream {
        cmd.arg("-js").arg("-sd").arg(&dir);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} (apt-get install nats-server or set NATS_SERVER_BIN): {e}"));
    // Owned from here on: dropping it (also on the panic below) kills and reaps the server.
    let nats = Nats { child, port, dir };
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return nats;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nats-server did not listen on {port}");
}

fn spec(url: &str) -> NatsSpec {
    NatsSpec { url: Some(url.into()), url_from: None, prefix: "p".into(), ..Default::default() }
}

#[tokio::test]
async fn jetstream_server_is_ready() {
    let n = nats_server(true);
    let state = check(Some(&spec(&format!("nats://user:secret@127.0.0.1:{}", n.port)))).await;
    assert!(matches!(&state, BrokerState::Ready { addr, .. } if addr == &format!("127.0.0.1:{}", n.port)), "{state:?}");
    let (status, reason, msg) = condition(&state);
    assert_eq!((status, reason), ("True", "JetStreamAvailable"));
    assert!(!msg.contains("secret"), "{msg}");
}

#[tokio::test]
async fn server_without_jetstream_is_named() {
    let n = nats_server(false);
    let state = check(Some(&spec(&format!("nats://127.0.0.1:{}", n.port)))).await;
    let (status, reason, msg) = condition(&state);
    assert_eq!((status, reason), ("False", "NoJetStream"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", n.port)), "{msg}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable_and_a_later_address_in_the_list_is_tried() {
    let dead = free_port();
    let state = check(Some(&spec(&format!("nats://127.0.0.1:{dead}")))).await;
    let (status, reason, msg) = condition(&state);
    assert_eq!((status, reason), ("False", "BrokerUnreachable"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{dead}")), "{msg}");

    let n = nats_server(true);
    let state = check(Some(&spec(&format!("nats://127.0.0.1:{dead},nats://127.0.0.1:{}", n.port)))).await;
    assert_eq!(condition(&state).1, "JetStreamAvailable", "{state:?}");
}

#[tokio::test]
async fn url_from_secret_and_no_nats_are_not_probed() {
    let from = NatsSpec {
        url: None,
        url_from: Some(k8s_openapi::api::core::v1::SecretKeySelector {
            name: "nats-creds".into(),
            key: "url".into(),
            ..Default::default()
        }),
        prefix: "p".into(),
        ..Default::default()
    };
    let (status, reason, msg) = condition(&check(Some(&from)).await);
    assert_eq!((status, reason), ("Unknown", "NotProbed"));
    assert!(msg.contains("nats-creds/url"), "{msg}");
    assert_eq!(condition(&check(None).await).1, "NoBroker");
}

// ------------------------------------------------------------------ managed NATS (managed_nats.rs)

use crate::{
    builders::{NATS_URL_ENV, build_deployment, render_all},
    config::build_config,
    crd::{CentrifugoSpec, ManagedNatsSpec},
    managed_nats,
    tests::fixtures,
};

fn managed_cr(replicas: i32) -> crate::crd::Centrifugo {
    fixtures::cr(CentrifugoSpec {
        replicas: 2,
        nats: Some(NatsSpec {
            managed: Some(true),
            server: Some(ManagedNatsSpec { replicas, storage_size: "5Gi".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[test]
fn managed_nats_renders_a_jetstream_statefulset_and_points_the_pods_at_it() {
    let c = managed_cr(3);
    let objs = render_all(&c, &fixtures::inputs(&c), None);
    let kinds: Vec<(String, String)> = objs
        .iter()
        .map(|o| (o["kind"].as_str().unwrap().to_string(), o["metadata"]["name"].as_str().unwrap().to_string()))
        .collect();
    for want in [
        ("ConfigMap", "chat-nats-config"),
        ("Service", "chat-nats-headless"),
        ("Service", "chat-nats"),
        ("StatefulSet", "chat-nats"),
        ("PodDisruptionBudget", "chat-nats"),
    ] {
        assert!(kinds.contains(&(want.0.into(), want.1.into())), "{want:?} missing from {kinds:?}");
    }
    let sts = managed_nats::build_stateful_set(&c, &managed_nats::managed(&c).unwrap());
    let s = sts.spec.as_ref().unwrap();
    assert_eq!((s.replicas, s.service_name.as_deref()), (Some(3), Some("chat-nats-headless")));
    assert_eq!(s.pod_management_policy.as_deref(), Some("Parallel"));
    let pvc = &s.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "5Gi");
    let pod = s.template.spec.as_ref().unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some(crate::crd::DEFAULT_NATS_IMAGE));
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    // NATS pods must not match the Gyre Services' selector.
    let labels = s.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "nats");

    let conf = managed_nats::nats_conf(&c, &managed_nats::managed(&c).unwrap());
    assert!(conf.contains("jetstream {"), "{conf}");
    for i in 0..3 {
        assert!(conf.contains(&format!("nats://chat-nats-{i}.chat-nats-headless:6222")), "{conf}");
    }

    // The Gyre pods get the Service URL by env; the file carries no URL.
    let dep = build_deployment(&c, &fixtures::inputs(&c));
    let env = dep.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let url = env.iter().find(|e| e.name == NATS_URL_ENV).and_then(|e| e.value.clone());
    assert_eq!(url.as_deref(), Some("nats://chat-nats:4222"));
    let cfg: serde_json::Value = serde_json::from_str(&build_config(&c.spec).unwrap().json).unwrap();
    assert_eq!(cfg["broker"]["type"], "nats");
    assert!(cfg["broker"]["nats"].get("url").is_none(), "{cfg}");
}

#[test]
fn managed_nats_single_server_has_no_cluster_and_no_budget_and_even_counts_are_refused() {
    let c = managed_cr(1);
    let n = managed_nats::managed(&c).unwrap();
    assert!(!managed_nats::nats_conf(&c, &n).contains("cluster {"));
    assert!(managed_nats::build_pdb(&c, &n).is_none());
    let e = build_config(&managed_cr(2).spec).unwrap_err();
    assert!(e.to_string().contains("must be 1 or odd"), "{e}");
    // Unmanaged instances render none of it.
    let plain = fixtures::cr(CentrifugoSpec { nats: fixtures::nats(), ..Default::default() });
    assert!(managed_nats::managed(&plain).is_none());
    assert!(!render_all(&plain, &fixtures::inputs(&plain), None).iter().any(|o| o["kind"] == "StatefulSet"));
}

/// The generated nats.conf, run by the real nats-server (ports and paths moved to free ones by
/// command-line flags, which override the file): JetStream comes up, the probe paths answer.
#[tokio::test]
async fn generated_nats_conf_runs_a_real_jetstream_server() {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let dir = std::env::temp_dir().join(format!("gyre-op-managed-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();

    // Three servers: the cluster block parses and validates (`-t` checks and exits).
    let c3 = managed_cr(3);
    std::fs::write(dir.join("nats3.conf"), managed_nats::nats_conf(&c3, &managed_nats::managed(&c3).unwrap())).unwrap();
    let out = Command::new(&bin)
        .args(["-t", "-c"])
        .arg(dir.join("nats3.conf"))
        .env("POD_NAME", "chat-nats-0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nats-server -t refused the 3-server config: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let c1 = managed_cr(1);
    // nats-server refuses `-sd` next to a store_dir in the file: move the two in-pod paths here.
    let conf = managed_nats::nats_conf(&c1, &managed_nats::managed(&c1).unwrap())
        .replace("store_dir: \"/data\"", &format!("store_dir: \"{}\"", dir.join("js").display()))
        .replace("\"/var/run/nats/nats.pid\"", &format!("\"{}\"", dir.join("nats.pid").display()));
    assert!(conf.contains(&dir.display().to_string()), "{conf}");
    std::fs::write(dir.join("nats.conf"), conf).unwrap();
    let (port, mon) = (free_port(), free_port());
    let child = Command::new(&bin)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &mon.to_string()])
        .env("POD_NAME", "chat-nats-0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Dropped at the end: kills the server and removes the directory.
    let nats = Nats { child, port, dir };
    let mut state = BrokerState::NotUsed;
    for _ in 0..100 {
        state = check(Some(&spec(&format!("nats://127.0.0.1:{}", nats.port)))).await;
        if matches!(state, BrokerState::Ready { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(state, BrokerState::Ready { .. }), "{state:?}");
    // The probe paths the StatefulSet uses answer 200 on this server.
    for q in ["", "?js-enabled-only=true", "?js-server-only=true"] {
        let code = http_status(mon, &format!("/healthz{q}")).await;
        assert_eq!(code, 200, "/healthz{q}");
    }
    drop(nats);
}

async fn http_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
