//! The memory engine: a single-node broker with history streams, and presence.
//!
//! Streams live in 64 lock shards keyed by channel. `publish` on a history
//! channel assigns the offset and hands the publication to the node while it
//! still holds the channel's shard lock, so local subscribers see offsets in
//! order even with concurrent publishers; channels without history take no
//! lock at all.
//!
//! Expiry: checked on access, and [`Broker::sweep`] (called by the node's
//! maintenance loop every second) drops expired publications, streams whose
//! meta TTL passed and expired idempotency keys. Each shard keeps a min-heap
//! of (deadline, channel), one live entry per stream, so a sweep touches only
//! what is due: 60,000 channels churned through leave nothing behind once
//! their TTLs pass. A read without [`HistoryQuery::ensure_stream`] (the
//! position checks of live subscriptions) creates no stream; subscriptions that
//! track a position and the history command/API set it, and a stream made that
//! way is swept after its meta TTL like any other.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use gyre_proto::protocol::{ClientInfo, Publication};
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

use crate::engine::*;

const SHARDS: usize = 64;
/// Streams one shard's sweep looks at, at most (64 shards: ~65,000 a second).
const SWEEP_BUDGET: usize = 1024;
/// How long an idempotency key suppresses duplicates.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

fn shard_of(channel: &str) -> usize {
    let mut h = DefaultHasher::new();
    channel.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// A random 8-letter epoch, as Centrifugo's memory engine makes.
pub fn new_epoch() -> String {
    const L: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut r = rand::rng();
    (0..8).map(|_| L[r.random_range(0..L.len())] as char).collect()
}

struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<(Arc<Publication>, Instant)>,
    meta_expires: Instant,
    /// Deadline of this stream's live entry in the shard's expiry heap.
    scheduled: Instant,
}

impl Stream {
    fn new(now: Instant, meta_ttl: Duration) -> Self {
        let meta_expires = now + meta_ttl;
        Stream { epoch: new_epoch(), top: 0, items: VecDeque::new(), meta_expires, scheduled: meta_expires }
    }

    /// When the sweep must look at this stream next.
    fn next_deadline(&self) -> Instant {
        self.items.front().map_or(self.meta_expires, |(_, exp)| (*exp).min(self.meta_expires))
    }

    fn expire_items(&mut self, now: Instant) {
        while self.items.front().is_some_and(|(_, exp)| *exp <= now) {
            self.items.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.top, epoch: self.epoch.clone() }
    }
}

#[derive(Default)]
struct Shard {
    streams: HashMap<String, Stream>,
    /// (deadline, channel); an entry whose deadline is not its stream's
    /// `scheduled` is stale and skipped.
    expiry: BinaryHeap<Reverse<(Instant, String)>>,
    idempotency: HashMap<(String, String), (PublishResult, Instant)>,
    idempotency_order: VecDeque<(Instant, String, String)>,
}

/// Gives a map's memory back once it is mostly empty.
fn shrink_sparse<K: Eq + Hash, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() * 4 <= m.capacity() {
        m.shrink_to(m.len() * 2);
    }
}

impl Shard {
    /// The live stream of `channel`, created (new epoch) when missing or
    /// expired; a use extends its meta TTL.
    fn stream(&mut self, channel: &str, now: Instant, meta_ttl: Duration) -> &mut Stream {
        let fresh = match self.streams.get(channel) {
            Some(s) => s.meta_expires <= now,
            None => true,
        };
        if fresh {
            let s = Stream::new(now, meta_ttl);
            self.expiry.push(Reverse((s.scheduled, channel.to_string())));
            self.streams.insert(channel.to_string(), s);
        }
        let s = self.streams.get_mut(channel).expect("inserted above");
        s.meta_expires = s.meta_expires.max(now + meta_ttl);
        s.expire_items(now);
        s
    }

    /// The live stream of `channel` if there is one (a use extends its meta TTL).
    fn existing(&mut self, channel: &str, now: Instant, meta_ttl: Duration) -> Option<&mut Stream> {
        if self.streams.get(channel).is_some_and(|s| s.meta_expires <= now) {
            self.streams.remove(channel);
            return None;
        }
        let s = self.streams.get_mut(channel)?;
        s.meta_expires = s.meta_expires.max(now + meta_ttl);
        s.expire_items(now);
        Some(s)
    }

    /// Makes sure the heap looks at `channel` by its next deadline (after a
    /// publish added the first item, whose TTL may end before the meta TTL).
    fn reschedule(&mut self, channel: &str) {
        let Some(s) = self.streams.get_mut(channel) else { return };
        let next = s.next_deadline();
        if next < s.scheduled {
            s.scheduled = next;
            self.expiry.push(Reverse((next, channel.to_string())));
        }
    }

    /// Drops what expired by `now`: publications, streams, idempotency keys.
    /// Looks at no more than [`SWEEP_BUDGET`] streams, so one sweep holds
    /// the shard lock (and the runtime thread it runs on) only briefly; a
    /// larger backlog is worked off over the following sweeps.
    fn sweep(&mut self, now: Instant) {
        let mut budget = SWEEP_BUDGET;
        while let Some(Reverse((at, _))) = self.expiry.peek() {
            if *at > now || budget == 0 {
                break;
            }
            budget -= 1;
            let Reverse((at, channel)) = self.expiry.pop().expect("peeked");
            let Some(s) = self.streams.get_mut(&channel) else { continue };
            if s.scheduled != at {
                continue; // stale: a later entry for this stream exists
            }
            if s.meta_expires <= now {
                self.streams.remove(&channel);
                continue;
            }
            s.expire_items(now);
            if s.items.is_empty() && s.items.capacity() > 0 {
                s.items = VecDeque::new();
            }
            s.scheduled = s.next_deadline();
            self.expiry.push(Reverse((s.scheduled, channel)));
        }
        shrink_sparse(&mut self.streams);
        if self.expiry.capacity() > 64 && self.expiry.len() * 4 <= self.expiry.capacity() {
            self.expiry.shrink_to(self.expiry.len() * 2);
        }
        self.sweep_idempotency(now);
        shrink_sparse(&mut self.idempotency);
        if self.idempotency_order.capacity() > 64
            && self.idempotency_order.len() * 4 <= self.idempotency_order.capacity()
        {
            self.idempotency_order.shrink_to_fit();
        }
    }

    fn sweep_idempotency(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.idempotency_order.front() {
            if *at > now {
                break;
            }
            let (_, ch, key) = self.idempotency_order.pop_front().expect("front exists");
            if self.idempotency.get(&(ch.clone(), key.clone())).is_some_and(|(_, exp)| *exp <= now) {
                self.idempotency.remove(&(ch, key));
            }
        }
    }
}

/// The memory broker.
pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    shards: [Mutex<Shard>; SHARDS],
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBroker")
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker { handler: OnceLock::new(), shards: std::array::from_fn(|_| Mutex::new(Shard::default())) }
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn handler(&self) -> &Arc<dyn BrokerEventHandler> {
        self.handler.get().expect("Broker::register_handler is called by Node::new")
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        let now = Instant::now();
        let needs_lock = opts.with_history() || opts.idempotency_key.is_some();
        if !needs_lock {
            self.handler().handle_publication(channel, Arc::new(publication), "", None);
            return Ok(PublishResult::default());
        }
        let mut shard = self.shards[shard_of(channel)].lock();
        shard.sweep_idempotency(now);
        if let Some(key) = &opts.idempotency_key
            && let Some((res, exp)) = shard.idempotency.get(&(channel.to_string(), key.clone()))
            && *exp > now
        {
            let mut res = res.clone();
            res.suppressed = true;
            return Ok(res);
        }
        let mut result = PublishResult::default();
        let mut epoch = String::new();
        let mut prev = None;
        if opts.with_history() {
            let s = shard.stream(channel, now, opts.history_meta_ttl);
            s.top += 1;
            publication.offset = s.top;
            if opts.delta {
                prev = s.items.back().map(|(p, _)| p.clone()).filter(|p| p.offset + 1 == s.top);
            }
            let publication = Arc::new(publication);
            s.items.push_back((publication.clone(), now + opts.history_ttl));
            while s.items.len() > opts.history_size {
                s.items.pop_front();
            }
            result.position = s.position();
            epoch = s.epoch.clone();
            shard.reschedule(channel);
            // Delivered under the shard lock: offsets reach the hub in order.
            self.handler().handle_publication(channel, publication, &epoch, prev);
        } else {
            self.handler().handle_publication(channel, Arc::new(publication), &epoch, None);
        }
        if let Some(key) = &opts.idempotency_key {
            let exp = now + IDEMPOTENCY_WINDOW;
            shard.idempotency.insert((channel.to_string(), key.clone()), (result.clone(), exp));
            shard.idempotency_order.push_back((exp, channel.to_string(), key.clone()));
        }
        Ok(result)
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.handler().handle_join(channel, info);
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.handler().handle_leave(channel, info);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        q: &HistoryQuery,
    ) -> Result<(Vec<Publication>, StreamPosition), EngineError> {
        let now = Instant::now();
        let mut shard = self.shards[shard_of(channel)].lock();
        let s = if q.ensure_stream {
            shard.stream(channel, now, q.meta_ttl)
        } else {
            match shard.existing(channel, now, q.meta_ttl) {
                Some(s) => s,
                None => return Ok((Vec::new(), StreamPosition::default())),
            }
        };
        let pos = s.position();
        if q.limit == Some(0) {
            return Ok((Vec::new(), pos));
        }
        let limit = q.limit.unwrap_or(usize::MAX);
        let pubs: Vec<Publication> = if q.reverse {
            let before = q.since.unwrap_or(u64::MAX);
            s.items.iter().rev().filter(|(p, _)| p.offset < before).take(limit).map(|(p, _)| (**p).clone()).collect()
        } else {
            let after = q.since.unwrap_or(0);
            s.items.iter().filter(|(p, _)| p.offset > after).take(limit).map(|(p, _)| (**p).clone()).collect()
        };
        Ok((pubs, pos))
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            shard.lock().sweep(now);
        }
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let mut shard = self.shards[shard_of(channel)].lock();
        if let Some(s) = shard.streams.get_mut(channel) {
            s.items.clear();
        }
        Ok(())
    }
}

/// The memory presence manager.
pub struct MemoryPresence {
    shards: [Mutex<HashMap<String, HashMap<String, ClientInfo>>>; SHARDS],
}

impl Default for MemoryPresence {
    fn default() -> Self {
        MemoryPresence { shards: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }
}

impl std::fmt::Debug for MemoryPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryPresence")
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        Ok(self.shards[shard_of(channel)].lock().get(channel).cloned().unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let shard = self.shards[shard_of(channel)].lock();
        let Some(m) = shard.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let users: std::collections::HashSet<&str> = m.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: m.len() as u32, num_users: users.len() as u32 })
    }

    async fn add_presence(&self, channel: &str, client_id: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.shards[shard_of(channel)]
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(client_id.to_string(), info);
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client_id: &str, _user: &str) -> Result<(), EngineError> {
        let mut shard = self.shards[shard_of(channel)].lock();
        if let Some(m) = shard.get_mut(channel) {
            m.remove(client_id);
            if m.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec(Mutex<Vec<(String, u64)>>);
    impl BrokerEventHandler for Rec {
        fn handle_publication(&self, ch: &str, p: Arc<Publication>, _e: &str, _prev: Option<Arc<Publication>>) {
            self.0.lock().push((ch.to_string(), p.offset));
        }
        fn handle_join(&self, _: &str, _: ClientInfo) {}
        fn handle_leave(&self, _: &str, _: ClientInfo) {}
    }

    fn opts() -> PublishOptions {
        PublishOptions {
            history_size: 3,
            history_ttl: Duration::from_secs(10),
            history_meta_ttl: Duration::from_secs(100),
            ..Default::default()
        }
    }

    fn publ(d: &'static str) -> Publication {
        Publication { data: bytes::Bytes::from_static(d.as_bytes()), ..Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn stream_offsets_size_ttl_and_meta_ttl() {
        let b = MemoryBroker::new();
        let rec = Arc::new(Rec::default());
        b.register_handler(rec.clone());
        for _ in 0..5 {
            b.publish("c", publ("1"), &opts()).await.unwrap();
        }
        let q =
            HistoryQuery { limit: None, meta_ttl: Duration::from_secs(100), ensure_stream: true, ..Default::default() };
        let (pubs, pos) = b.history("c", &q).await.unwrap();
        assert_eq!(pubs.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(pos.offset, 5);
        assert_eq!(rec.0.lock().len(), 5);
        // since / reverse / limit
        let (p, _) = b.history("c", &HistoryQuery { since: Some(3), ..q.clone() }).await.unwrap();
        assert_eq!(p.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![4, 5]);
        let (p, _) = b.history("c", &HistoryQuery { reverse: true, limit: Some(2), ..q.clone() }).await.unwrap();
        assert_eq!(p.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![5, 4]);
        // history_ttl drops items, keeps position
        tokio::time::advance(Duration::from_secs(11)).await;
        let (p, pos2) = b.history("c", &q).await.unwrap();
        assert!(p.is_empty());
        assert_eq!(pos2, pos);
        // meta ttl drops the stream: new epoch, offset 0
        tokio::time::advance(Duration::from_secs(101)).await;
        let (_, pos3) = b.history("c", &q).await.unwrap();
        assert_eq!(pos3.offset, 0);
        assert_ne!(pos3.epoch, pos.epoch);
    }

    fn streams(b: &MemoryBroker) -> usize {
        b.shards.iter().map(|s| s.lock().streams.len()).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_expired_streams_items_and_keys() {
        let b = MemoryBroker::new();
        b.register_handler(Arc::new(Rec::default()));
        let o = PublishOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(2),
            history_meta_ttl: Duration::from_secs(4),
            idempotency_key: None,
            ..Default::default()
        };
        for i in 0..5000 {
            let o = PublishOptions { idempotency_key: (i % 2 == 0).then(|| format!("k{i}")), ..o.clone() };
            b.publish(&format!("ch{i}"), publ("1"), &o).await.unwrap();
        }
        assert_eq!(streams(&b), 5000);
        let items = |b: &MemoryBroker| {
            b.shards.iter().map(|s| s.lock().streams.values().map(|s| s.items.len()).sum::<usize>()).sum::<usize>()
        };
        tokio::time::advance(Duration::from_secs(3)).await;
        b.sweep();
        assert_eq!((streams(&b), items(&b)), (5000, 0), "items past history_ttl dropped, streams kept");
        tokio::time::advance(Duration::from_secs(2)).await;
        b.sweep();
        assert_eq!(streams(&b), 0, "streams past history_meta_ttl dropped");
        let heap: usize = b.shards.iter().map(|s| s.lock().expiry.len()).sum();
        assert_eq!(heap, 0);
        tokio::time::advance(IDEMPOTENCY_WINDOW).await;
        b.sweep();
        let keys: usize = b.shards.iter().map(|s| s.lock().idempotency.len()).sum();
        assert_eq!(keys, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_stream_survives_the_sweep() {
        let b = MemoryBroker::new();
        b.register_handler(Arc::new(Rec::default()));
        let o = PublishOptions { history_meta_ttl: Duration::from_secs(4), ..opts() };
        b.publish("c", publ("1"), &o).await.unwrap();
        let q = HistoryQuery { meta_ttl: Duration::from_secs(4), ..Default::default() };
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(3)).await;
            b.history("c", &q).await.unwrap(); // a read keeps it alive
            b.sweep();
        }
        assert_eq!(streams(&b), 1);
        assert_eq!(b.history("c", &q).await.unwrap().1.offset, 1);
    }

    #[tokio::test]
    async fn a_plain_read_creates_no_stream() {
        let b = MemoryBroker::new();
        b.register_handler(Arc::new(Rec::default()));
        let q = HistoryQuery { meta_ttl: Duration::from_secs(100), ..Default::default() };
        for i in 0..100 {
            let (p, pos) = b.history(&format!("r{i}"), &q).await.unwrap();
            assert!(p.is_empty() && pos == StreamPosition::default());
        }
        assert_eq!(streams(&b), 0);
        let (_, pos) = b.history("r1", &HistoryQuery { ensure_stream: true, ..q.clone() }).await.unwrap();
        assert!(!pos.epoch.is_empty());
        assert_eq!(b.history("r1", &q).await.unwrap().1, pos, "the created stream is then read, not recreated");
    }

    #[tokio::test(start_paused = true)]
    async fn idempotent_publish_delivers_once() {
        let b = MemoryBroker::new();
        let rec = Arc::new(Rec::default());
        b.register_handler(rec.clone());
        let o = PublishOptions { idempotency_key: Some("k".into()), ..opts() };
        let r1 = b.publish("c", publ("1"), &o).await.unwrap();
        let r2 = b.publish("c", publ("1"), &o).await.unwrap();
        assert!(!r1.suppressed && r2.suppressed);
        assert_eq!(r1.position, r2.position);
        assert_eq!(rec.0.lock().len(), 1);
        tokio::time::advance(IDEMPOTENCY_WINDOW + Duration::from_secs(1)).await;
        let r3 = b.publish("c", publ("1"), &o).await.unwrap();
        assert!(!r3.suppressed);
    }

    #[tokio::test]
    async fn presence_stats_count_users() {
        let p = MemoryPresence::default();
        let info = |u: &str, c: &str| ClientInfo { user: u.into(), client: c.into(), ..Default::default() };
        p.add_presence("c", "1", info("a", "1")).await.unwrap();
        p.add_presence("c", "2", info("a", "2")).await.unwrap();
        p.add_presence("c", "3", info("b", "3")).await.unwrap();
        assert_eq!(p.presence_stats("c").await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
        p.remove_presence("c", "1", "a").await.unwrap();
        assert_eq!(p.presence("c").await.unwrap().len(), 2);
    }
}
