//! Leader election on a `coordination.k8s.io/v1` Lease, so the chart can run two operator
//! replicas: one reconciles, the other waits and takes over within a lease duration of the
//! leader's death.
//!
//! The protocol is client-go's: the holder renews `renewTime` every [`RENEW_INTERVAL`]; a
//! candidate may take the Lease only when it is unheld or its `renewTime + leaseDurationSeconds`
//! has passed. Every write is a replace carrying the `resourceVersion` that was read, so two
//! candidates racing for an expired Lease cannot both win: the apiserver answers the loser 409,
//! which is "not leader", never an error. A leader that cannot renew for [`RENEW_DEADLINE`]
//! (shorter than the lease duration, so it stops before anyone may take over) gives up: the
//! controller shuts down and the process exits non-zero, and kubelet restarts it as a candidate.
//!
//! Clocks: expiry compares the holder's `renewTime` with the candidate's clock, as client-go does;
//! skew between nodes shortens or lengthens the takeover by the skew, it never allows two leaders
//! while the leader renews on time (it renews every 5 s of a 15 s lease).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// A leader that has not renewed for this long stops leading (before others may take over).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a candidate retries.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn lease_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(holder) = spec.holder_identity.as_deref() else { return true };
    if holder.is_empty() {
        return true;
    }
    let Some(MicroTime(renewed)) = spec.renew_time.as_ref() else { return true };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_DURATION.as_secs() as i32));
    renewed.saturating_add(SignedDuration::from_secs(duration)).is_ok_and(|until| until < now)
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self { api, name: name.into(), identity: identity.into() }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to become or stay leader at `now`. `Ok(false)`: someone else leads (or won a
    /// race); `Err`: the apiserver could not be asked.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let pp = PostParams::default();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&pp, &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !mine {
            if !lease_expired(spec, now) {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        // `lease` still carries the resourceVersion read above: a concurrent writer makes this 409.
        match self.api.replace(&self.name, &pp, &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once instead of after expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) if !logged => {
                    info!(lease = %self.name, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(lease = %self.name, error = %e, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    /// Renews until leadership is lost (another holder, or no successful renewal within
    /// [`RENEW_DEADLINE`]); returns then.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leadership taken over by another replica");
                    return;
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "could not renew the leader Lease");
                    if last_ok.elapsed() >= RENEW_DEADLINE {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{Method, Request, Response};
    use kube::{Client, client::Body};
    use parking_lot::Mutex;
    use serde_json::{Value, json};

    use super::*;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/gyre-operator";

    /// A Lease store with the apiserver's optimistic concurrency (409 on a stale
    /// resourceVersion), recording the methods it saw.
    #[derive(Clone, Default)]
    struct FakeLeases {
        lease: Arc<Mutex<Option<Value>>>,
        rv: Arc<Mutex<u64>>,
        calls: Arc<Mutex<Vec<Method>>>,
        conflict_next_put: Arc<Mutex<bool>>,
        conflict_next_post: Arc<Mutex<bool>>,
    }

    impl FakeLeases {
        fn client(&self) -> Client {
            let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let me = self.clone();
            tokio::spawn(async move {
                while let Some((req, send)) = handle.next_request().await {
                    let (parts, body) = req.into_parts();
                    let bytes = body.collect_bytes().await.unwrap();
                    let body: Option<Value> = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
                    let (code, v) = me.handle(&parts.method, parts.uri.path(), body);
                    send.send_response(
                        Response::builder().status(code).body(Body::from(serde_json::to_vec(&v).unwrap())).unwrap(),
                    );
                }
            });
            Client::new(svc, "ops")
        }

        fn handle(&self, method: &Method, path: &str, body: Option<Value>) -> (u16, Value) {
            self.calls.lock().push(method.clone());
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "nf", "metadata": {}});
            let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "conflict", "metadata": {}});
            let mut lease = self.lease.lock();
            let mut rv = self.rv.lock();
            match *method {
                Method::GET if path == PATH => lease.clone().map_or((404, not_found), |l| (200, l)),
                Method::POST => {
                    if lease.is_some() || std::mem::take(&mut *self.conflict_next_post.lock()) {
                        return (409, conflict);
                    }
                    *rv += 1;
                    let mut l = body.unwrap();
                    l["metadata"]["resourceVersion"] = json!(rv.to_string());
                    *lease = Some(l.clone());
                    (201, l)
                }
                Method::PUT if path == PATH => {
                    let mut l = body.unwrap();
                    let current = lease.as_ref().map(|c| c["metadata"]["resourceVersion"].clone());
                    let raced = std::mem::take(&mut *self.conflict_next_put.lock());
                    if raced || current != Some(l["metadata"]["resourceVersion"].clone()) {
                        return (409, conflict);
                    }
                    *rv += 1;
                    l["metadata"]["resourceVersion"] = json!(rv.to_string());
                    *lease = Some(l.clone());
                    (200, l)
                }
                _ => (404, not_found),
            }
        }

        fn holder(&self) -> Option<String> {
            self.lease.lock().as_ref().and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        }
        fn transitions(&self) -> i64 {
            self.lease.lock().as_ref().map_or(0, |l| l["spec"]["leaseTransitions"].as_i64().unwrap_or(0))
        }
    }

    fn elector(fake: &FakeLeases, id: &str) -> LeaderElector {
        LeaderElector::new(Api::namespaced(fake.client(), "ops"), "gyre-operator", id)
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[tokio::test]
    async fn two_replicas_one_leader_and_takeover_after_expiry() {
        let fake = FakeLeases::default();
        let (a, b) = (elector(&fake, "pod-a"), elector(&fake, "pod-b"));

        assert!(a.try_acquire_or_renew(at(0)).await.unwrap(), "unheld Lease is created and taken");
        assert_eq!(fake.holder().as_deref(), Some("pod-a"));
        assert!(!b.try_acquire_or_renew(at(1)).await.unwrap(), "a fresh Lease is not taken");
        assert!(a.try_acquire_or_renew(at(5)).await.unwrap(), "the holder renews");
        assert!(!b.try_acquire_or_renew(at(19)).await.unwrap(), "renewed at 5 + 15 s: still valid at 19");
        assert_eq!(fake.holder().as_deref(), Some("pod-a"));

        // pod-a stops renewing (dead); after the lease duration pod-b takes over.
        assert!(b.try_acquire_or_renew(at(21)).await.unwrap());
        assert_eq!(fake.holder().as_deref(), Some("pod-b"));
        assert_eq!(fake.transitions(), 1);
        // pod-a comes back: it must see that it lost.
        assert!(!a.try_acquire_or_renew(at(22)).await.unwrap());
        assert_eq!(fake.holder().as_deref(), Some("pod-b"));
    }

    #[tokio::test]
    async fn a_lost_race_is_not_leadership() {
        let fake = FakeLeases::default();
        let (a, b) = (elector(&fake, "pod-a"), elector(&fake, "pod-b"));
        assert!(a.try_acquire_or_renew(at(0)).await.unwrap());
        // pod-a's Lease has expired; pod-b reads it, but another candidate writes first, so
        // pod-b's replace carries a stale resourceVersion and is answered 409.
        *fake.conflict_next_put.lock() = true;
        assert!(!b.try_acquire_or_renew(at(100)).await.unwrap(), "409 means someone else won");
        assert_eq!(fake.holder().as_deref(), Some("pod-a"));
        // A create race (the Lease appeared between GET and POST) is likewise not leadership.
        *fake.conflict_next_post.lock() = true;
        *fake.lease.lock() = None;
        assert!(!b.try_acquire_or_renew(at(101)).await.unwrap());
    }

    #[tokio::test]
    async fn release_hands_over_at_once() {
        let fake = FakeLeases::default();
        let (a, b) = (elector(&fake, "pod-a"), elector(&fake, "pod-b"));
        assert!(a.try_acquire_or_renew(Timestamp::now()).await.unwrap());
        assert!(!b.try_acquire_or_renew(Timestamp::now()).await.unwrap());
        a.release().await.unwrap();
        assert_eq!(fake.holder(), None);
        assert!(b.try_acquire_or_renew(Timestamp::now()).await.unwrap(), "no wait for expiry after a release");
        // Releasing a Lease held by someone else changes nothing.
        a.release().await.unwrap();
        assert_eq!(fake.holder().as_deref(), Some("pod-b"));
        let calls = fake.calls.lock().clone();
        assert!(calls.contains(&Method::PUT) && calls.contains(&Method::POST));
    }

    #[test]
    fn expiry_table() {
        let spec = |holder: Option<&str>, renewed: Option<i64>| LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(lease_expired(&spec(None, Some(0)), at(1)));
        assert!(lease_expired(&spec(Some(""), Some(0)), at(1)));
        assert!(lease_expired(&spec(Some("x"), None), at(1)));
        assert!(!lease_expired(&spec(Some("x"), Some(0)), at(15)));
        assert!(lease_expired(&spec(Some("x"), Some(0)), at(16)));
    }
}
