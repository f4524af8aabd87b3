//! The `BrokerReady` probe against a real nats-server (Debian's `/usr/sbin/nats-server`, or
//! `$NATS_SERVER_BIN`) on a free loopback port: with JetStream, without, and nothing listening.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::crd::NatsSpec;
use crate::nats::{BrokerState, check, condition};

struct Nats {
    child: Child,
    port: u16,
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

fn nats_server(jetstream: bool) -> Nats {
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
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Nats { child, port, dir };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nats-server did not listen on {port}");
}

fn spec(url: &str) -> NatsSpec {
    NatsSpec { url: Some(url.into()), url_from: None, prefix: "p".into() }
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
    };
    let (status, reason, msg) = condition(&check(Some(&from)).await);
    assert_eq!((status, reason), ("Unknown", "NotProbed"));
    assert!(msg.contains("nats-creds/url"), "{msg}");
    assert_eq!(condition(&check(None).await).1, "NoBroker");
}
