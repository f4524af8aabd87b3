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

fn shard_of(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

type ClientMap = HashMap<Arc<str>, Arc<ClientShared>>;
type UserClients = SmallMap<Arc<str>, Arc<ClientShared>>;

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
    /// Registers a connected client.
    pub fn add_client(&self, c: &Arc<ClientShared>) {
        let id = c.id.clone();
        self.conns[shard_of(&id)].write().insert(id.clone(), c.clone());
        let user = c.user();
        self.users[shard_of(&user)].write().entry(user).or_default().insert(id, c.clone());
        self.num_clients.fetch_add(1, Ordering::Relaxed);
    }

    /// Unregisters a client.
    pub fn remove_client(&self, c: &ClientShared) {
        if self.conns[shard_of(&c.id)].write().remove(&c.id).is_none() {
            return;
        }
        let user = c.user();
        let mut users = self.users[shard_of(&user)].write();
        if let Some(m) = users.get_mut(&user) {
            m.remove(&c.id);
            if m.is_empty() {
                users.remove(&user);
            }
        }
        self.num_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections of a user (optionally narrowed to one client id).
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientShared>> {
        self.users[shard_of(user)].read().get(user).map(|m| m.values().cloned().collect()).unwrap_or_default()
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
    pub fn add_sub(&self, channel: &str, c: &Arc<ClientShared>) -> bool {
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
    pub fn remove_sub(&self, channel: &str, client_id: &str) -> bool {
        let mut shard = self.subs[shard_of(channel)].write();
        let Some(m) = shard.get_mut(channel) else {
            return false;
        };
        if m.remove(client_id).is_some() {
            self.num_subs.fetch_sub(1, Ordering::Relaxed);
        }
        if m.is_empty() {
            shard.remove(channel);
            true
        } else {
            false
        }
    }

    /// Fans a publication out to this node's subscribers of `channel`;
    /// returns how many subscribers it was offered to.
    pub fn broadcast_publication(
        &self,
        channel: &str,
        publication: &Arc<Publication>,
        epoch: &str,
        prev: Option<&Arc<Publication>>,
    ) -> usize {
        let shard = self.subs[shard_of(channel)].read();
        let Some(subs) = shard.get(channel) else { return 0 };
        let push = Push { channel: channel.to_string(), r#pub: Some((**publication).clone()), ..Default::default() };
        let mut lazy = LazyPush::with_prev(&push, prev);
        let mut json_ok: Option<bool> = None;
        for c in subs.values() {
            if c.encoding.is_json()
                && !*json_ok.get_or_insert_with(|| gyre_proto::json::is_valid_json(&publication.data))
            {
                // A JSON client cannot carry non-JSON bytes (client-protocol.md §4).
                c.close_with(crate::errors::Disconnect::INAPPROPRIATE_PROTOCOL);
                continue;
            }
            c.deliver_publication(channel, publication, epoch, prev, &mut lazy);
        }
        subs.len()
    }

    /// Fans a join out to subscribers that receive join/leave.
    /// Local subscribers of `channel`.
    pub fn num_channel_subscribers(&self, channel: &str) -> usize {
        self.subs[shard_of(channel)].read().get(channel).map_or(0, HashMap::len)
    }

    pub fn broadcast_join(&self, channel: &str, info: ClientInfo) -> usize {
        let push = Push { channel: channel.to_string(), join: Some(Join { info: Some(info) }), ..Default::default() };
        self.broadcast_join_leave(channel, &push)
    }

    /// Fans a leave out to subscribers that receive join/leave.
    pub fn broadcast_leave(&self, channel: &str, info: ClientInfo) -> usize {
        let push = Push { channel: channel.to_string(), leave: Some(Leave { info: Some(info) }), ..Default::default() };
        self.broadcast_join_leave(channel, &push)
    }

    fn broadcast_join_leave(&self, channel: &str, push: &Push) -> usize {
        let shard = self.subs[shard_of(channel)].read();
        let Some(subs) = shard.get(channel) else { return 0 };
        let mut lazy = LazyPush::new(push);
        subs.values().filter(|c| c.deliver_join_leave(channel, &mut lazy)).count()
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
