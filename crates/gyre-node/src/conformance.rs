//! The engine conformance suite: one set of checks every [`Broker`] +
//! [`PresenceManager`] must pass, so the memory engine and the NATS engine
//! give clients the same history and recovery semantics
//! (client-protocol.md §16).
//!
//! It runs in real time (engines over a network cannot use Tokio's paused
//! clock), with TTLs of a second or two. The memory engine runs it in this
//! crate's tests; `gyre-engine-nats` runs it against a real nats-server.
//! Each case uses its own random channel, so one engine instance (or one
//! NATS server) can serve the whole suite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gyre_proto::protocol::{ClientInfo, Publication};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::engine::*;

/// One delivered publication: channel, offset, epoch, prev offset, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Channel.
    pub channel: String,
    /// Offset.
    pub offset: u64,
    /// Epoch.
    pub epoch: String,
    /// Offset of the delta base handed along, if any.
    pub prev: Option<u64>,
    /// Payload.
    pub data: Bytes,
}

/// A handler that records everything delivered to it.
#[derive(Default)]
pub struct Recorder {
    /// Publications in delivery order.
    pub pubs: Mutex<Vec<Delivered>>,
    /// Joins and leaves: (channel, "join"/"leave", client).
    pub presence_events: Mutex<Vec<(String, &'static str, String)>>,
    notify: Notify,
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, p: Arc<Publication>, epoch: &str, prev: Option<Arc<Publication>>) {
        self.pubs.lock().push(Delivered {
            channel: channel.to_string(),
            offset: p.offset,
            epoch: epoch.to_string(),
            prev: prev.map(|p| p.offset),
            data: p.data.clone(),
        });
        self.notify.notify_waiters();
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.presence_events.lock().push((channel.to_string(), "join", info.client));
        self.notify.notify_waiters();
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.presence_events.lock().push((channel.to_string(), "leave", info.client));
        self.notify.notify_waiters();
    }
}

impl Recorder {
    /// Publications of `channel` delivered so far.
    pub fn of(&self, channel: &str) -> Vec<Delivered> {
        self.pubs.lock().iter().filter(|d| d.channel == channel).cloned().collect()
    }

    /// Waits (bounded) until `channel` has `n` deliveries; returns them.
    pub async fn wait(&self, channel: &str, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            let got = self.of(channel);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.of(channel);
                panic!("timeout: {} of {n} publications on {channel}: {got:?}", got.len());
            }
        }
    }

    /// Waits (bounded) for a join or leave event.
    pub async fn wait_event(&self, channel: &str, kind: &str, client: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.presence_events.lock().iter().any(|(c, k, cl)| c == channel && *k == kind && cl == client) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timeout waiting for {kind} of {client} on {channel}: {:?}", self.presence_events.lock());
            }
        }
    }
}

/// An engine under test with its recording handler.
pub struct Harness {
    /// Broker (handler registered).
    pub broker: Arc<dyn Broker>,
    /// Presence manager.
    pub presence: Arc<dyn PresenceManager>,
    /// What the broker delivered.
    pub rec: Arc<Recorder>,
}

const WAIT: Duration = Duration::from_secs(10);

fn chan(case: &str) -> String {
    format!("conf-{case}-{}", crate::memory::new_epoch())
}

fn publ(d: &str) -> Publication {
    Publication { data: Bytes::from(d.to_string()), ..Default::default() }
}

fn opts(size: usize, ttl: Duration, meta: Duration) -> PublishOptions {
    PublishOptions { history_size: size, history_ttl: ttl, history_meta_ttl: meta, ..Default::default() }
}

fn all(meta: Duration) -> HistoryQuery {
    HistoryQuery { since: None, limit: None, reverse: false, meta_ttl: meta, ensure_stream: true }
}

fn offsets(p: &[Publication]) -> Vec<u64> {
    p.iter().map(|p| p.offset).collect()
}

/// Runs every case but the meta TTL one against `h` (engines configured
/// with a long meta TTL, e.g. an hour).
pub async fn run_all(h: &Harness) {
    let meta_ttl = Duration::from_secs(3600);
    offsets_are_contiguous_and_bounded_by_size(h, meta_ttl).await;
    queries_since_reverse_limit(h, meta_ttl).await;
    empty_read_starts_a_stream_whose_epoch_publishes_keep(h, meta_ttl).await;
    a_plain_read_creates_no_stream(h, meta_ttl).await;
    publications_without_history_have_no_position(h, meta_ttl).await;
    idempotent_publish_delivers_once(h, meta_ttl).await;
    remove_history_keeps_the_position(h, meta_ttl).await;
    concurrent_publishers_get_unique_contiguous_offsets(h, meta_ttl).await;
    delta_publications_carry_their_base(h, meta_ttl).await;
    join_and_leave_are_delivered(h).await;
    presence_entries_and_stats(h).await;
    history_ttl_drops_items_but_keeps_the_position(h, meta_ttl).await;
}

async fn offsets_are_contiguous_and_bounded_by_size(h: &Harness, meta: Duration) {
    let ch = chan("size");
    h.broker.subscribe(&ch).await.unwrap();
    let o = opts(3, Duration::from_secs(60), meta);
    let mut epoch = String::new();
    for i in 1..=5u64 {
        let r = h.broker.publish(&ch, publ(&format!("\"{i}\"")), &o).await.unwrap();
        assert_eq!(r.position.offset, i, "offsets count from 1");
        assert!(!r.suppressed);
        if i == 1 {
            epoch = r.position.epoch.clone();
            assert!(!epoch.is_empty(), "a stream has an epoch");
        }
        assert_eq!(r.position.epoch, epoch, "epoch is stable");
    }
    let (pubs, pos) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert_eq!(offsets(&pubs), vec![3, 4, 5], "history_size bounds the stream");
    assert_eq!(pubs[2].data, Bytes::from_static(b"\"5\""));
    assert_eq!(pos, StreamPosition { offset: 5, epoch: epoch.clone() });
    let got = h.rec.wait(&ch, 5, WAIT).await;
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "delivered in offset order");
    assert!(got.iter().all(|d| d.epoch == epoch));
    // A position-only read.
    let (p, pos2) = h.broker.history(&ch, &HistoryQuery { limit: Some(0), ..all(meta) }).await.unwrap();
    assert!(p.is_empty());
    assert_eq!(pos2, pos);
    h.broker.unsubscribe(&ch).await.unwrap();
}

async fn queries_since_reverse_limit(h: &Harness, meta: Duration) {
    let ch = chan("query");
    let o = opts(100, Duration::from_secs(60), meta);
    for i in 1..=60u64 {
        h.broker.publish(&ch, publ(&i.to_string()), &o).await.unwrap();
    }
    let q = all(meta);
    let (p, _) = h.broker.history(&ch, &HistoryQuery { since: Some(57), ..q.clone() }).await.unwrap();
    assert_eq!(offsets(&p), vec![58, 59, 60], "since, short read");
    let (p, _) = h.broker.history(&ch, &HistoryQuery { since: Some(10), ..q.clone() }).await.unwrap();
    assert_eq!(offsets(&p), (11..=60).collect::<Vec<_>>(), "since, long read");
    let (p, _) = h.broker.history(&ch, &HistoryQuery { since: Some(10), limit: Some(3), ..q.clone() }).await.unwrap();
    assert_eq!(offsets(&p), vec![11, 12, 13]);
    let (p, _) = h.broker.history(&ch, &HistoryQuery { since: Some(60), ..q.clone() }).await.unwrap();
    assert!(p.is_empty(), "nothing after the top");
    let (p, _) = h.broker.history(&ch, &HistoryQuery { reverse: true, limit: Some(2), ..q.clone() }).await.unwrap();
    assert_eq!(offsets(&p), vec![60, 59]);
    let (p, _) =
        h.broker.history(&ch, &HistoryQuery { reverse: true, since: Some(5), limit: None, ..q.clone() }).await.unwrap();
    assert_eq!(offsets(&p), vec![4, 3, 2, 1], "reverse since: before the offset");
    let (p, pos) = h.broker.history(&ch, &HistoryQuery { limit: Some(5), ..q.clone() }).await.unwrap();
    assert_eq!(offsets(&p), vec![1, 2, 3, 4, 5], "oldest first");
    assert_eq!(pos.offset, 60);
}

async fn empty_read_starts_a_stream_whose_epoch_publishes_keep(h: &Harness, meta: Duration) {
    let ch = chan("empty");
    let (p, pos) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert!(p.is_empty());
    assert_eq!(pos.offset, 0);
    assert!(!pos.epoch.is_empty(), "a read gives the stream an epoch");
    let (_, again) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert_eq!(again, pos, "the epoch is stable across reads");
    let r = h.broker.publish(&ch, publ("1"), &opts(10, Duration::from_secs(60), meta)).await.unwrap();
    assert_eq!(r.position, StreamPosition { offset: 1, epoch: pos.epoch }, "a positioned subscriber stays valid");
}

async fn a_plain_read_creates_no_stream(h: &Harness, meta: Duration) {
    let ch = chan("plain");
    let plain = HistoryQuery { ensure_stream: false, ..all(meta) };
    for _ in 0..2 {
        let (p, pos) = h.broker.history(&ch, &plain).await.unwrap();
        assert!(p.is_empty());
        assert_eq!(pos, StreamPosition::default(), "no stream: offset 0, no epoch, nothing created");
    }
    let r = h.broker.publish(&ch, publ("1"), &opts(10, Duration::from_secs(60), meta)).await.unwrap();
    assert_eq!(r.position.offset, 1);
    let (p, pos) = h.broker.history(&ch, &plain).await.unwrap();
    assert_eq!((offsets(&p), pos), (vec![1], r.position), "an existing stream is read as is");
}

async fn publications_without_history_have_no_position(h: &Harness, meta: Duration) {
    let ch = chan("nohist");
    h.broker.subscribe(&ch).await.unwrap();
    let r = h.broker.publish(&ch, publ("1"), &PublishOptions::default()).await.unwrap();
    assert_eq!(r, PublishResult::default());
    let skip = PublishOptions { skip_history: true, ..opts(10, Duration::from_secs(60), meta) };
    let r = h.broker.publish(&ch, publ("2"), &skip).await.unwrap();
    assert_eq!(r.position.offset, 0, "skip_history: not stored");
    let got = h.rec.wait(&ch, 2, WAIT).await;
    assert!(got.iter().all(|d| d.offset == 0 && d.epoch.is_empty()), "{got:?}");
    let (p, pos) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert!(p.is_empty());
    assert_eq!(pos.offset, 0);
    h.broker.unsubscribe(&ch).await.unwrap();
}

async fn idempotent_publish_delivers_once(h: &Harness, meta: Duration) {
    for (case, o) in
        [("idem-hist", opts(10, Duration::from_secs(60), meta)), ("idem-nohist", PublishOptions::default())]
    {
        let ch = chan(case);
        h.broker.subscribe(&ch).await.unwrap();
        let o = PublishOptions { idempotency_key: Some("k1".into()), ..o };
        let r1 = h.broker.publish(&ch, publ("1"), &o).await.unwrap();
        let r2 = h.broker.publish(&ch, publ("1"), &o).await.unwrap();
        assert!(!r1.suppressed && r2.suppressed, "{case}: the second is suppressed");
        assert_eq!(r1.position, r2.position, "{case}: a duplicate answers the first position");
        // The same key on another channel is another publication.
        let other = chan(case);
        let r3 = h.broker.publish(&other, publ("1"), &o).await.unwrap();
        assert!(!r3.suppressed, "{case}: keys are per channel");
        // A marker publication proves delivery order: the duplicate never arrives.
        let o2 = PublishOptions { idempotency_key: None, ..o.clone() };
        h.broker.publish(&ch, publ("2"), &o2).await.unwrap();
        let got = h.rec.wait(&ch, 2, WAIT).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.rec.of(&ch).len(), 2, "{case}: delivered once: {got:?}");
        h.broker.unsubscribe(&ch).await.unwrap();
    }
}

async fn remove_history_keeps_the_position(h: &Harness, meta: Duration) {
    let ch = chan("remove");
    let o = opts(10, Duration::from_secs(60), meta);
    for _ in 0..3 {
        h.broker.publish(&ch, publ("1"), &o).await.unwrap();
    }
    let (_, before) = h.broker.history(&ch, &all(meta)).await.unwrap();
    h.broker.remove_history(&ch).await.unwrap();
    let (p, pos) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert!(p.is_empty(), "items removed");
    assert_eq!(pos, before, "position kept");
    let r = h.broker.publish(&ch, publ("4"), &o).await.unwrap();
    assert_eq!(r.position, StreamPosition { offset: 4, epoch: before.epoch });
    let (p, _) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert_eq!(offsets(&p), vec![4]);
    // Removing a channel that never existed is fine.
    h.broker.remove_history(&chan("remove-none")).await.unwrap();
}

async fn concurrent_publishers_get_unique_contiguous_offsets(h: &Harness, meta: Duration) {
    let ch = chan("concurrent");
    h.broker.subscribe(&ch).await.unwrap();
    let o = opts(1000, Duration::from_secs(60), meta);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let b = h.broker.clone();
        let ch = ch.clone();
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..25 {
                offs.push(b.publish(&ch, publ(&format!("{}", t * 100 + i)), &o).await.unwrap().position.offset);
            }
            offs
        }));
    }
    let mut offs: Vec<u64> = Vec::new();
    for t in tasks {
        offs.extend(t.await.unwrap());
    }
    offs.sort();
    assert_eq!(offs, (1..=100).collect::<Vec<_>>(), "unique and contiguous");
    let got = h.rec.wait(&ch, 100, WAIT).await;
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>(), "delivered in order");
    let (p, _) = h.broker.history(&ch, &all(meta)).await.unwrap();
    let mut hist: HashMap<u64, Bytes> = HashMap::new();
    for x in p {
        hist.insert(x.offset, x.data);
    }
    for d in &got {
        assert_eq!(hist.get(&d.offset), Some(&d.data), "history holds what was delivered at each offset");
    }
    h.broker.unsubscribe(&ch).await.unwrap();
}

async fn delta_publications_carry_their_base(h: &Harness, meta: Duration) {
    let ch = chan("delta");
    h.broker.subscribe(&ch).await.unwrap();
    let o = PublishOptions { delta: true, ..opts(10, Duration::from_secs(60), meta) };
    for i in 0..3 {
        h.broker.publish(&ch, publ(&i.to_string()), &o).await.unwrap();
    }
    let got = h.rec.wait(&ch, 3, WAIT).await;
    assert_eq!(got[1].prev, Some(1));
    assert_eq!(got[2].prev, Some(2));
    h.broker.unsubscribe(&ch).await.unwrap();
}

async fn join_and_leave_are_delivered(h: &Harness) {
    let ch = chan("joinleave");
    h.broker.subscribe(&ch).await.unwrap();
    let info = ClientInfo { user: "u".into(), client: "c1".into(), ..Default::default() };
    h.broker.publish_join(&ch, info.clone()).await.unwrap();
    h.broker.publish_leave(&ch, info).await.unwrap();
    h.rec.wait_event(&ch, "join", "c1", WAIT).await;
    h.rec.wait_event(&ch, "leave", "c1", WAIT).await;
    h.broker.unsubscribe(&ch).await.unwrap();
}

async fn presence_entries_and_stats(h: &Harness) {
    let ch = chan("presence");
    let info = |u: &str, c: &str| ClientInfo {
        user: u.into(),
        client: c.into(),
        conn_info: Bytes::from_static(b"{\"a\":1}"),
        ..Default::default()
    };
    assert_eq!(h.presence.presence_stats(&ch).await.unwrap(), PresenceStats::default());
    h.presence.add_presence(&ch, "c1", info("a", "c1")).await.unwrap();
    h.presence.add_presence(&ch, "c2", info("a", "c2")).await.unwrap();
    h.presence.add_presence(&ch, "c3", info("b", "c3")).await.unwrap();
    h.presence.add_presence(&ch, "c3", info("b", "c3")).await.unwrap(); // refresh
    assert_eq!(h.presence.presence_stats(&ch).await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
    let p = h.presence.presence(&ch).await.unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p["c1"], info("a", "c1"));
    h.presence.remove_presence(&ch, "c1", "a").await.unwrap();
    let p = h.presence.presence(&ch).await.unwrap();
    assert_eq!(p.keys().cloned().collect::<std::collections::BTreeSet<_>>(), ["c2", "c3"].map(String::from).into());
    assert_eq!(h.presence.presence(&chan("presence-other")).await.unwrap().len(), 0, "channels are separate");
}

async fn history_ttl_drops_items_but_keeps_the_position(h: &Harness, meta: Duration) {
    let ch = chan("ttl");
    let o = opts(10, Duration::from_millis(1000), meta);
    h.broker.publish(&ch, publ("1"), &o).await.unwrap();
    h.broker.publish(&ch, publ("2"), &o).await.unwrap();
    let (p, pos) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert_eq!(offsets(&p), vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (p, pos2) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert!(p.is_empty(), "expired items are gone: {p:?}");
    assert_eq!(pos2, pos, "the position stays");
    let r = h.broker.publish(&ch, publ("3"), &o).await.unwrap();
    assert_eq!(r.position, StreamPosition { offset: 3, epoch: pos.epoch });
}

/// A stream unused for the meta TTL is gone: new epoch, offset 0. `meta` is
/// the meta TTL the engine applies (short, e.g. 2 s).
pub async fn meta_ttl_drops_the_stream(h: &Harness, meta: Duration) {
    let ch = chan("meta");
    let o = opts(10, Duration::from_secs(60).min(meta), meta);
    let r = h.broker.publish(&ch, publ("1"), &o).await.unwrap();
    tokio::time::sleep(meta + Duration::from_millis(1500)).await;
    let (p, pos) = h.broker.history(&ch, &all(meta)).await.unwrap();
    assert!(p.is_empty());
    assert_eq!(pos.offset, 0, "a new stream starts at 0");
    assert_ne!(pos.epoch, r.position.epoch, "with a new epoch");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryBroker, MemoryPresence};

    /// The memory engine against the shared suite (the NATS engine runs it in
    /// `gyre-engine-nats`).
    #[tokio::test]
    async fn memory_engine_passes_the_conformance_suite() {
        let broker = Arc::new(MemoryBroker::new());
        let rec = Arc::new(Recorder::default());
        broker.register_handler(rec.clone());
        let h = Harness { broker, presence: Arc::new(MemoryPresence::default()), rec };
        run_all(&h).await;
        meta_ttl_drops_the_stream(&h, Duration::from_secs(2)).await;
    }
}
