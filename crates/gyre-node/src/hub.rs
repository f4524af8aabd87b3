//! The Hub: every connection and subscription of this node, and fan-out.
//!
//! 64 lock shards per map keep writers (subscribe/unsubscribe) from blocking
//! broadcasts to other channels. A broadcast holds one shard's read lock while
//! it pushes pre-encoded bytes into each subscriber's queue; pushing never
//! waits (a full queue marks that client slow and moves on), so the lock is
//! held for memory operations only, never across an `.await` or a socket write.
//!
//! Encoding happens once per publication per wire encoding (JSON reply, JSON
//! bare push, Protobuf), lazily, only for encodings that have subscribers.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gyre_proto::protocol::{ClientInfo, Join, Leave, Publication, Push};
use parking_lot::RwLock;

use crate::push::LazyPush;
use crate::shared::ClientShared;
use crate::small_map::SmallMap;

const SHARDS: usize = 64;

/// How often (in subscribers) a broadcast asks whether its caller fell behind.
const BEHIND_CHECK_EVERY: usize = 64;

fn shard_of(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

type ClientMap = HashMap<Arc<str>, Arc<ClientShared>>;

/// Above this many connections a user's set switches from a vector to a map.
const SMALL_USER_MAX: usize = 16;

/// Gives memory back after churn: a map whose capacity is four times its
/// length or more (and not tiny) is shrunk. Without it a shard that once
/// held 60,000 channels keeps their buckets forever.
fn shrink_sparse<K: Eq + Hash, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() * 4 <= m.capacity() {
        m.shrink_to(m.len() * 2);
    }
}

/// One user's connections. Almost every user has one or two: a vector then
/// ([`SmallMap`]; a `HashMap` per user cost ~180 bytes per connection). A
/// user with many — above all the anonymous user "", which every
/// connection without a user id shares — gets a map, so connect and
/// disconnect stay O(1) instead of a scan of every anonymous connection.
enum UserClients {
    Small(SmallMap<Arc<str>, Arc<ClientShared>>),
    Large(ClientMap),
}

impl Default for UserClients {
    fn default() -> Self {
        UserClients::Small(SmallMap::new())
    }
}

impl UserClients {
    fn len(&self) -> usize {
        match self {
            UserClients::Small(m) => m.len(),
            UserClients::Large(m) => m.len(),
        }
    }

    fn insert(&mut self, id: Arc<str>, c: Arc<ClientShared>) {
        match self {
            UserClients::Small(m) if m.len() >= SMALL_USER_MAX && !m.contains_key(&id) => {
                let mut big: ClientMap = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                big.insert(id, c);
                *self = UserClients::Large(big);
            }
            UserClients::Small(m) => {
                m.insert(id, c);
            }
            UserClients::Large(m) => {
                m.insert(id, c);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        match self {
            UserClients::Small(m) => {
                m.remove(id);
            }
            UserClients::Large(m) => {
                m.remove(id);
                if m.len() <= SMALL_USER_MAX / 2 {
                    let mut small = SmallMap::new();
                    for (k, v) in m.drain() {
                        small.insert(k, v);
                    }
                    *self = UserClients::Small(small);
                } else {
                    shrink_sparse(m);
                }
            }
        }
    }

    fn values(&self) -> Vec<Arc<ClientShared>> {
        match self {
            UserClients::Small(m) => m.values().cloned().collect(),
            UserClients::Large(m) => m.values().cloned().collect(),
        }
    }

    #[cfg(test)]
    fn is_large(&self) -> bool {
        matches!(self, UserClients::Large(_))
    }
}

/// Registry of connections and subscriptions.
pub struct Hub {
    conns: [RwLock<ClientMap>; SHARDS],
    /// A user's connections: usually one or two, so a [`SmallMap`] (a
    /// `HashMap` per user cost ~180 bytes per connection).
    users: [RwLock<HashMap<Arc<str>, UserClients>>; SHARDS],
    subs: [RwLock<HashMap<Arc<str>, ClientMap>>; SHARDS],
    num_clients: AtomicUsize,
    num_subs: AtomicUsize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("clients", &self.num_clients()).finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            conns: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            users: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            subs: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            num_clients: AtomicUsize::new(0),
            num_subs: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    /// Registers a connected client unless its user already has `limit`
    /// connections (0 = no limit); false when refused. Checked and inserted
    /// under the user's shard lock, so two concurrent connects of one user
    /// cannot both pass a limit of one.
    pub(crate) fn add_client(&self, c: &Arc<ClientShared>, limit: usize) -> bool {
        let id = c.id.clone();
        let user = c.user();
        {
            let mut users = self.users[shard_of(&user)].write();
            let set = users.entry(user.clone()).or_default();
            // A refusal needs limit >= 1 connections present: the entry
            // existed before, `or_default` created nothing to clean up.
            if limit > 0 && set.len() >= limit {
                return false;
            }
            set.insert(id.clone(), c.clone());
        }
        self.conns[shard_of(&id)].write().insert(id, c.clone());
        self.num_clients.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Unregisters a client.
    pub(crate) fn remove_client(&self, c: &ClientShared) {
        {
            let mut conns = self.conns[shard_of(&c.id)].write();
            if conns.remove(&c.id).is_none() {
                return;
            }
            shrink_sparse(&mut conns);
        }
        let user = c.user();
        let mut users = self.users[shard_of(&user)].write();
        if let Some(m) = users.get_mut(&user) {
            m.remove(&c.id);
            if m.len() == 0 {
                users.remove(&user);
                shrink_sparse(&mut users);
            }
        }
        self.num_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections of a user (optionally narrowed to one client id).
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientShared>> {
        self.users[shard_of(user)].read().get(user).map(UserClients::values).unwrap_or_default()
    }

    /// One connection by id.
    pub fn client(&self, id: &str) -> Option<Arc<ClientShared>> {
        self.conns[shard_of(id)].read().get(id).cloned()
    }

    /// Every connection (shutdown).
    pub fn all_clients(&self) -> Vec<Arc<ClientShared>> {
        self.conns.iter().flat_map(|s| s.read().values().cloned().collect::<Vec<_>>()).collect()
    }

    /// Adds a subscriber; true when it is the node's first in this channel.
    pub(crate) fn add_sub(&self, channel: &str, c: &Arc<ClientShared>) -> bool {
        let mut shard = self.subs[shard_of(channel)].write();
        let (first, inserted) = match shard.get_mut(channel) {
            Some(m) => (false, m.insert(c.id.clone(), c.clone()).is_none()),
            None => {
                let mut m = HashMap::new();
                m.insert(c.id.clone(), c.clone());
                shard.insert(Arc::from(channel), m);
                (true, true)
            }
        };
        if inserted {
            self.num_subs.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Removes a subscriber; true when the channel has no subscriber left here.
    pub(crate) fn remove_sub(&self, channel: &str, client_id: &str) -> bool {
        let mut shard = self.subs[shard_of(channel)].write();
        let Some(m) = shard.get_mut(channel) else {
            return false;
        };
        if m.remove(client_id).is_some() {
            self.num_subs.fetch_sub(1, Ordering::Relaxed);
        }
        if m.is_empty() {
            shard.remove(channel);
            shrink_sparse(&mut shard);
            true
        } else {
            shrink_sparse(m);
            false
        }
    }

    /// Fans a publication out to this node's subscribers of `channel`;
    /// returns how many subscribers it was offered to.
    ///
    /// `behind` says whether the caller has more events waiting: while it
    /// does not, frames are written through to idle sockets; once it does
    /// (checked every [`BEHIND_CHECK_EVERY`] subscribers), the rest of this
    /// broadcast is queued, so the owners batch their writes and the caller
    /// catches up at the cost of a queue push instead of a syscall each.
    pub(crate) fn broadcast_publication(
        &self,
        channel: &str,
        publication: &Arc<Publication>,
        epoch: &str,
        prev: Option<&Arc<Publication>>,
        behind: &dyn Fn() -> bool,
    ) -> usize {
        let subs = self.subscribers(channel);
        if subs.is_empty() {
            return 0;
        }
        let push = Push { channel: channel.to_string(), r#pub: Some((**publication).clone()), ..Default::default() };
        let mut lazy = LazyPush::with_prev(&push, prev);
        let mut json_ok: Option<bool> = None;
        let mut write_through = !behind();
        for (i, c) in subs.iter().enumerate() {
            if write_through && i % BEHIND_CHECK_EVERY == BEHIND_CHECK_EVERY - 1 {
                write_through = !behind();
            }
            if c.encoding.is_json()
                && !*json_ok.get_or_insert_with(|| gyre_proto::json::is_valid_json(&publication.data))
            {
                // A JSON client cannot carry non-JSON bytes (client-protocol.md §4).
                c.close_with(crate::errors::Disconnect::INAPPROPRIATE_PROTOCOL);
                continue;
            }
            c.deliver_publication(channel, publication, epoch, prev, &mut lazy, write_through);
        }
        subs.len()
    }

    /// The subscribers of `channel` at this moment. Broadcasts deliver from
    /// this copy, not under the shard lock: writing through costs a syscall
    /// per subscriber (~60 ms for 10,000), and holding the lock that long
    /// would block, on a runtime thread, every subscribe and unsubscribe of
    /// every channel in the shard. Safe to copy: a subscriber added after
    /// the copy read its stream position after the publication was stored,
    /// and one removed since skips it in `deliver_publication`.
    fn subscribers(&self, channel: &str) -> Vec<Arc<ClientShared>> {
        self.subs[shard_of(channel)].read().get(channel).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Local subscribers of `channel`.
    pub fn num_channel_subscribers(&self, channel: &str) -> usize {
        self.subs[shard_of(channel)].read().get(channel).map_or(0, HashMap::len)
    }

    /// Fans a join out to subscribers that receive join/leave (`behind`:
    /// as for [`Self::broadcast_publication`]).
    pub(crate) fn broadcast_join(&self, channel: &str, info: ClientInfo, behind: &dyn Fn() -> bool) -> usize {
        let push = Push { channel: channel.to_string(), join: Some(Join { info: Some(info) }), ..Default::default() };
        self.broadcast_join_leave(channel, &push, behind)
    }

    /// Fans a leave out to subscribers that receive join/leave.
    pub(crate) fn broadcast_leave(&self, channel: &str, info: ClientInfo, behind: &dyn Fn() -> bool) -> usize {
        let push = Push { channel: channel.to_string(), leave: Some(Leave { info: Some(info) }), ..Default::default() };
        self.broadcast_join_leave(channel, &push, behind)
    }

    fn broadcast_join_leave(&self, channel: &str, push: &Push, behind: &dyn Fn() -> bool) -> usize {
        let subs = self.subscribers(channel);
        let mut lazy = LazyPush::new(push);
        let mut write_through = !behind();
        let mut n = 0;
        for (i, c) in subs.iter().enumerate() {
            if write_through && i % BEHIND_CHECK_EVERY == BEHIND_CHECK_EVERY - 1 {
                write_through = !behind();
            }
            n += usize::from(c.deliver_join_leave(channel, &mut lazy, write_through));
        }
        n
    }

    /// Channels with at least one subscriber on this node, with counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.subs
            .iter()
            .flat_map(|s| s.read().iter().map(|(k, v)| (k.to_string(), v.len())).collect::<Vec<_>>())
            .collect()
    }

    /// Connected clients.
    pub fn num_clients(&self) -> usize {
        self.num_clients.load(Ordering::Relaxed)
    }

    /// Distinct users.
    pub fn num_users(&self) -> usize {
        self.users.iter().map(|s| s.read().len()).sum()
    }

    /// Channels with subscribers.
    pub fn num_channels(&self) -> usize {
        self.subs.iter().map(|s| s.read().len()).sum()
    }

    /// Subscriptions.
    pub fn num_subs(&self) -> usize {
        self.num_subs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Encoding;
    use crate::shared::TransportInfo;

    fn conn(user: &str) -> Arc<ClientShared> {
        let info = TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false };
        let c = ClientShared::new(Encoding::Json, info, 1 << 16);
        c.set_user(user);
        c
    }

    fn user_set_len(h: &Hub, user: &str) -> Option<(usize, bool)> {
        h.users[shard_of(user)].read().get(user).map(|u| (u.len(), u.is_large()))
    }

    #[test]
    fn user_sets_grow_into_maps_and_shrink_back() {
        let h = Hub::default();
        let conns: Vec<_> = (0..100).map(|_| conn("")).collect();
        for (i, c) in conns.iter().enumerate() {
            assert!(h.add_client(c, 0));
            let (n, large) = user_set_len(&h, "").unwrap();
            assert_eq!((n, large), (i + 1, i + 1 > SMALL_USER_MAX), "after {} connects", i + 1);
        }
        assert_eq!(h.user_clients("").len(), 100);
        for (i, c) in conns.iter().enumerate().rev() {
            h.remove_client(c);
            match user_set_len(&h, "") {
                Some((n, large)) => {
                    assert_eq!(n, i);
                    assert!(large == (i > SMALL_USER_MAX / 2), "{i} left: large={large}");
                }
                None => assert_eq!(i, 0),
            }
        }
        assert_eq!((h.num_clients(), h.num_users()), (0, 0));
    }

    #[test]
    fn connection_limit_is_checked_with_the_insert() {
        let h = Hub::default();
        let (a, b, c) = (conn("u"), conn("u"), conn("v"));
        assert!(h.add_client(&a, 1));
        assert!(!h.add_client(&b, 1), "second connection of u over the limit of 1");
        assert!(h.add_client(&c, 1));
        assert_eq!(h.num_clients(), 2);
        h.remove_client(&a);
        assert!(h.add_client(&b, 1), "room again once the first is gone");
        // A refused connect of a new user leaves no empty entry behind.
        let d = conn("w");
        assert!(h.add_client(&d, 1));
        let e = conn("w");
        assert!(!h.add_client(&e, 1));
        h.remove_client(&e); // never registered: no effect
        assert_eq!(h.user_clients("w").len(), 1);
    }

    #[test]
    fn churned_channel_maps_give_memory_back() {
        let h = Hub::default();
        let c = conn("u");
        for i in 0..20_000 {
            h.add_sub(&format!("ch{i}"), &c);
        }
        let cap = |h: &Hub| h.subs.iter().map(|s| s.read().capacity()).sum::<usize>();
        let full = cap(&h);
        for i in 0..20_000 {
            assert!(h.remove_sub(&format!("ch{i}"), &c.id));
        }
        assert_eq!(h.num_channels(), 0);
        assert!(cap(&h) * 4 < full, "capacity {} of {full} kept after every channel left", cap(&h));
    }

    #[test]
    fn a_broadcast_writes_through_until_its_caller_falls_behind() {
        use crate::push::Framing;
        use crate::shared::{DirectWrite, SubDeliveryOptions};
        use std::sync::atomic::AtomicUsize;

        struct Counting(AtomicUsize);
        impl DirectWrite for Counting {
            fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(buf.len())
            }
        }
        let h = Hub::default();
        let mut conns = Vec::new();
        for _ in 0..200 {
            let info = TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false };
            let socket = Arc::new(Counting(AtomicUsize::new(0)));
            let c = ClientShared::new_direct(Encoding::Json, info, 1 << 20, Framing::WsText, socket.clone());
            c.begin_sub("ch", SubDeliveryOptions::default());
            c.with_subs(|m| m.get_mut("ch").expect("begun").live = true);
            h.add_sub("ch", &c);
            conns.push((c, socket));
        }
        let publication = Arc::new(Publication { data: b"{}".to_vec().into(), ..Default::default() });
        // Asked at the start and every 64 subscribers: behind from the second question on.
        let asked = AtomicUsize::new(0);
        let n = h.broadcast_publication("ch", &publication, "", None, &|| asked.fetch_add(1, Ordering::SeqCst) >= 1);
        assert_eq!(n, 200);
        let written = conns.iter().filter(|(_, s)| s.0.load(Ordering::SeqCst) == 1).count();
        let queued = conns.iter().filter(|(c, _)| c.queued_bytes() > 0).count();
        assert_eq!((written, queued), (63, 137));
    }

    /// A socket write during a broadcast subscribes another connection to
    /// the same channel: with the shard lock held across the delivery (as
    /// before), the write lock would wait for the read lock forever.
    #[test]
    fn a_broadcast_holds_no_channel_lock_while_writing_to_sockets() {
        use crate::push::Framing;
        use crate::shared::{DirectWrite, SubDeliveryOptions};

        struct Subscribing(Arc<Hub>, Arc<ClientShared>);
        impl DirectWrite for Subscribing {
            fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.add_sub("ch", &self.1);
                Ok(buf.len())
            }
        }
        let h = Arc::new(Hub::default());
        let info = TransportInfo { name: "test", unidirectional: false, emulation: false, disconnect_push: false };
        let other = conn("other");
        let c = ClientShared::new_direct(
            Encoding::Json,
            info,
            1 << 20,
            Framing::WsText,
            Arc::new(Subscribing(h.clone(), other)),
        );
        c.begin_sub("ch", SubDeliveryOptions::default());
        c.with_subs(|m| m.get_mut("ch").expect("begun").live = true);
        h.add_sub("ch", &c);
        let publication = Arc::new(Publication { data: b"{}".to_vec().into(), ..Default::default() });
        let (tx, rx) = std::sync::mpsc::channel();
        let h2 = h.clone();
        std::thread::spawn(move || {
            let _ = tx.send(h2.broadcast_publication("ch", &publication, "", None, &|| false));
        });
        let n = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the broadcast finished (no lock held)");
        assert_eq!(n, 1);
        assert_eq!(h.num_channel_subscribers("ch"), 2);
    }
}
