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

// ------------------------------------------------------------------ managed NATS with TLS

fn managed_tls_cr(replicas: i32, tls: serde_json::Value) -> crate::crd::Centrifugo {
    let mut c = managed_cr(replicas);
    c.spec.nats.as_mut().unwrap().server.as_mut().unwrap().tls = Some(serde_json::from_value(tls).unwrap());
    c
}

/// `nats.server.tls` with an issuer: two Certificates (the server's names every name a client or
/// a route dials; the client's is for Gyre), `tls {}` with `verify: true` on clients and routes,
/// the server Secret mounted as a directory next to a reloader sharing the process namespace,
/// and the Gyre pods pointed at `tls://` with the client Secret's files.
#[test]
fn managed_nats_tls_renders_certificates_mounts_reloader_and_tls_urls() {
    use serde_json::json;
    let c = managed_tls_cr(3, json!({"issuerRef": {"name": "nats-ca"}}));
    let n = managed_nats::managed(&c).unwrap();

    let certs = managed_nats::build_certificates(&c, &n);
    let by_name = |name: &str| certs.iter().find(|x| x.metadata.name.as_deref() == Some(name)).unwrap().data.clone();
    assert_eq!(certs.len(), 2);
    let server = by_name("chat-nats-server");
    assert_eq!(server["spec"]["secretName"], "chat-nats-server-tls");
    assert_eq!(server["spec"]["issuerRef"], json!({"name": "nats-ca", "kind": "Issuer", "group": "cert-manager.io"}));
    let dns: Vec<&str> = server["spec"]["dnsNames"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // The pods' URL host, the probe's host, and the host of every route in nats.conf.
    for want in ["chat-nats", "chat-nats.prod.svc", "chat-nats.prod.svc.cluster.local"] {
        assert!(dns.contains(&want), "{want} missing from {dns:?}");
    }
    for i in 0..3 {
        assert!(dns.contains(&format!("chat-nats-{i}.chat-nats-headless").as_str()), "pod {i}: {dns:?}");
    }
    assert_eq!(
        server["spec"]["usages"],
        json!(["digital signature", "key encipherment", "server auth", "client auth"])
    );
    let client = by_name("chat-nats-client");
    assert_eq!(client["spec"]["secretName"], "chat-nats-client-tls");
    assert_eq!(client["spec"]["commonName"], "chat");
    assert_eq!(client["spec"]["usages"], json!(["digital signature", "key encipherment", "client auth"]));
    let rendered = render_all(&c, &fixtures::inputs(&c), None);
    assert_eq!(rendered.iter().filter(|o| o["kind"] == "Certificate").count(), 2);

    let conf = managed_nats::nats_conf(&c, &n);
    let block = "tls {\n  cert_file: \"/etc/nats-tls/tls.crt\"\n  key_file: \"/etc/nats-tls/tls.key\"\n  ca_file: \"/etc/nats-tls/ca.crt\"\n  verify: true\n}\n";
    assert!(conf.contains(block), "{conf}");
    assert!(conf.contains("  tls {\n    cert_file: \"/etc/nats-tls/tls.crt\""), "route TLS: {conf}");
    assert!(conf.contains("\"tls://chat-nats-0.chat-nats-headless:6222\""), "{conf}");
    assert!(!conf.contains("nats://"), "{conf}");

    let sts = managed_nats::build_stateful_set(&c, &n);
    let pod = sts.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.share_process_namespace, Some(true));
    let names: Vec<&str> = pod.containers.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["nats", "reloader"]);
    let vol = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == managed_nats::TLS_VOLUME).unwrap();
    assert_eq!(vol.secret.as_ref().unwrap().secret_name.as_deref(), Some("chat-nats-server-tls"));
    for ctr in &pod.containers {
        let m = ctr.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == managed_nats::TLS_VOLUME).unwrap();
        // A directory mount: kubelet swaps renewed files only in those (never with subPath).
        assert_eq!((m.mount_path.as_str(), m.sub_path.as_deref()), ("/etc/nats-tls", None), "{}", ctr.name);
    }
    let reloader = &pod.containers[1];
    assert_eq!(reloader.image.as_deref(), Some(crate::crd::DEFAULT_NATS_RELOADER_IMAGE));
    let args = reloader.args.clone().unwrap().join(" ");
    assert_eq!(
        args,
        "-pid /var/run/nats/nats.pid -config /etc/nats/nats.conf -config /etc/nats-tls/tls.crt \
         -config /etc/nats-tls/tls.key -config /etc/nats-tls/ca.crt"
    );
    // It reads the pid file nats-server writes.
    assert!(reloader.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/var/run/nats"));

    let dep = build_deployment(&c, &fixtures::inputs(&c));
    let gyre_pod = dep.spec.unwrap().template.spec.unwrap();
    let env = gyre_pod.containers[0].env.clone().unwrap();
    let url = env.iter().find(|e| e.name == NATS_URL_ENV).and_then(|e| e.value.clone());
    assert_eq!(url.as_deref(), Some("tls://chat-nats:4222"));
    let vol = gyre_pod.volumes.unwrap().into_iter().find(|v| v.name == managed_nats::TLS_VOLUME).unwrap();
    assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("chat-nats-client-tls"));
    let m = gyre_pod.containers[0].volume_mounts.clone().unwrap();
    assert!(m.iter().any(|m| m.name == managed_nats::TLS_VOLUME && m.mount_path == "/etc/gyre-nats-tls"), "{m:?}");
    let cfg: serde_json::Value = serde_json::from_str(&build_config(&c.spec).unwrap().json).unwrap();
    assert_eq!(
        cfg["broker"]["nats"]["tls"],
        json!({"enabled": true, "server_ca_pem": "/etc/gyre-nats-tls/ca.crt",
               "cert_pem": "/etc/gyre-nats-tls/tls.crt", "key_pem": "/etc/gyre-nats-tls/tls.key"})
    );
    assert!(managed_nats::probe_url(&c).starts_with("tls://chat-nats.prod.svc:4222"));

    // The keys are the operator's: a conflicting value in spec.config is refused.
    let mut bad = c.clone();
    bad.spec.config = Some(json!({"broker": {"nats": {"tls": {"enabled": false}}}}));
    let e = build_config(&bad.spec).unwrap_err();
    assert!(e.to_string().contains("broker.nats.tls.enabled"), "{e}");
    // A user volume may not take the Secret's volume name.
    let mut clash = c.clone();
    clash.spec.pod = serde_json::from_value(json!({"volumes": [{"name": "nats-tls", "emptyDir": {}}]})).unwrap();
    assert!(build_config(&clash.spec).is_err());
}

/// Own Secrets (no issuer): mounted by name, no Certificate; TLS off or absent: nothing of it.
#[test]
fn managed_nats_tls_with_user_secrets_and_switched_off() {
    use serde_json::json;
    let c = managed_tls_cr(1, json!({"serverSecretName": "my-srv", "clientSecretName": "my-cli"}));
    let n = managed_nats::managed(&c).unwrap();
    assert!(managed_nats::build_certificates(&c, &n).is_empty());
    let pod = managed_nats::build_stateful_set(&c, &n).spec.unwrap().template.spec.unwrap();
    let vol = pod.volumes.unwrap().into_iter().find(|v| v.name == managed_nats::TLS_VOLUME).unwrap();
    assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("my-srv"));
    let dep = build_deployment(&c, &fixtures::inputs(&c)).spec.unwrap().template.spec.unwrap();
    let vol = dep.volumes.unwrap().into_iter().find(|v| v.name == managed_nats::TLS_VOLUME).unwrap();
    assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("my-cli"));
    // One server: the client block only, no cluster, so no route TLS.
    let conf = managed_nats::nats_conf(&c, &n);
    assert_eq!(conf.matches("tls {").count(), 1, "{conf}");

    for c in [managed_tls_cr(3, json!({"enabled": false, "issuerRef": {"name": "x"}})), managed_cr(3)] {
        let n = managed_nats::managed(&c).unwrap();
        assert!(managed_nats::build_certificates(&c, &n).is_empty());
        assert!(!managed_nats::nats_conf(&c, &n).contains("tls"));
        let pod = managed_nats::build_stateful_set(&c, &n).spec.unwrap().template.spec.unwrap();
        assert_eq!((pod.containers.len(), pod.share_process_namespace), (1, None));
        assert!(!pod.volumes.unwrap().iter().any(|v| v.name == managed_nats::TLS_VOLUME));
        assert_eq!(managed_nats::pod_url(&c), "nats://chat-nats:4222");
        let cfg: serde_json::Value = serde_json::from_str(&build_config(&c.spec).unwrap().json).unwrap();
        assert!(cfg["broker"]["nats"].get("tls").is_none(), "{cfg}");
    }
}

/// Test certificates from the `openssl` CLI (present wherever nats-server is): a CA in `ca_dir`
/// (made once), and in `dir` a leaf with the given DNS names and extended key usages, written as
/// a Secret volume holds them (`tls.crt`, `tls.key`, `ca.crt`).
fn issue(dir: &std::path::Path, ca_dir: &std::path::Path, dns: &[String], eku: &str) {
    let run = |cwd: &std::path::Path, args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(cwd).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(ca_dir).unwrap();
    if !ca_dir.join("ca.key").exists() {
        run(ca_dir, &[&["genpkey"][..], &ec, &["-out", "ca.key"]].concat());
        run(
            ca_dir,
            &["req", "-x509", "-new", "-key", "ca.key", "-days", "1", "-subj", "/CN=test nats ca", "-out", "ca.crt"],
        );
    }
    let san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={}\nextendedKeyUsage={eku}\n", san.join(","))).unwrap();
    run(dir, &[&["genpkey"][..], &ec, &["-out", "tls.key"]].concat());
    run(dir, &["req", "-new", "-key", "tls.key", "-subj", &format!("/CN={}", dns[0]), "-out", "tls.csr"]);
    let (ca_crt, ca_key) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
    run(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            ca_crt.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "tls.crt",
        ],
    );
    std::fs::copy(&ca_crt, dir.join("ca.crt")).unwrap();
}

/// The TLS `nats.conf`, run by the real nats-server with certificates for the names the
/// operator's server Certificate asks for: JetStream comes up; a plain client is refused
/// ("TLS Required"); the operator's `BrokerReady` probe still reads INFO and reports JetStream
/// (no false failure); and the 3-server form (route TLS) passes `nats-server -t`.
#[tokio::test]
async fn generated_tls_nats_conf_requires_tls_and_the_probe_still_sees_jetstream() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let dir = std::env::temp_dir().join(format!("gyre-op-natstls-{}-{}", std::process::id(), free_port()));
    let tls_dir = dir.join("nats-tls");

    let c3 = managed_tls_cr(3, serde_json::json!({"issuerRef": {"name": "ca"}}));
    let n3 = managed_nats::managed(&c3).unwrap();
    let names = managed_nats::server_dns_names(&c3, &n3);
    issue(&tls_dir, &dir, &names, "serverAuth,clientAuth");
    let at_dir = |conf: String| conf.replace(managed_nats::SERVER_TLS_DIR, tls_dir.to_str().unwrap());
    std::fs::write(dir.join("nats3.conf"), at_dir(managed_nats::nats_conf(&c3, &n3))).unwrap();
    let out = Command::new(&bin)
        .args(["-t", "-c"])
        .arg(dir.join("nats3.conf"))
        .env("POD_NAME", "chat-nats-0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nats-server -t refused the TLS cluster config: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let c1 = managed_tls_cr(1, serde_json::json!({"issuerRef": {"name": "ca"}}));
    let conf = at_dir(managed_nats::nats_conf(&c1, &managed_nats::managed(&c1).unwrap()))
        .replace("store_dir: \"/data\"", &format!("store_dir: \"{}\"", dir.join("js").display()))
        .replace("\"/var/run/nats/nats.pid\"", &format!("\"{}\"", dir.join("nats.pid").display()));
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
    let nats = Nats { child, port, dir };
    // The probe as the operator runs it for this instance (tls:// URL): Ready, not a failure.
    let url = managed_nats::probe_url(&c1).replace("chat-nats.prod.svc:4222", &format!("127.0.0.1:{port}"));
    assert!(url.starts_with("tls://"), "{url}");
    let mut state = BrokerState::NotUsed;
    for _ in 0..100 {
        state = check(Some(&spec(&url))).await;
        if matches!(state, BrokerState::Ready { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(state, BrokerState::Ready { .. }), "{state:?}");
    assert_eq!(condition(&state).1, "JetStreamAvailable");

    // A client that skips TLS: INFO says TLS is required, and a plain CONNECT is refused.
    let s = tokio::net::TcpStream::connect(("127.0.0.1", nats.port)).await.unwrap();
    let mut s = BufReader::new(s);
    let mut info = String::new();
    s.read_line(&mut info).await.unwrap();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(info.contains("\"tls_verify\":true"), "mutual TLS announced: {info}");
    s.get_mut().write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await.unwrap();
    let mut reply = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut reply)).await;
    assert!(!reply.starts_with("PONG"), "a plain client was served: {reply}");
    drop(nats);
}
