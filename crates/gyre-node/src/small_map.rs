//! A map from channel names to per-subscription state, stored as a vector.
//!
//! Why not a `HashMap`: every connection keeps two of these (the client's
//! channel contexts and the delivery state the hub consults), and almost
//! every connection has one to a handful of subscriptions. A `HashMap` with
//! one entry already allocates four buckets (about 400 bytes per map here),
//! which made these maps the largest item of an idle connection after its
//! task. This one allocates room for exactly one entry first and then
//! doubles; a lookup compares names linearly, which for the few entries a
//! connection has costs less than hashing the name. `client.channel_limit`
//! (128 by default) bounds the worst case.

use std::borrow::Borrow;

/// A vector-backed map with string-like keys; see the module docs for why.
#[derive(Debug, Clone)]
pub struct SmallMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap { entries: Vec::new() }
    }
}

impl<K: Borrow<str>, V> SmallMap<K, V> {
    /// An empty map (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn index(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k.borrow() == key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index(key).is_some()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.index(key).map(|i| &self.entries[i].1)
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.index(key).map(|i| &mut self.entries[i].1)
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.index(key.borrow()) {
            return Some(std::mem::replace(&mut self.entries[i].1, value));
        }
        if self.entries.len() == self.entries.capacity() {
            // 1, 2, 4, ...: `Vec` itself would start at four entries.
            self.entries.reserve_exact(self.entries.len().max(1));
        }
        self.entries.push((key, value));
        None
    }

    /// Removes `key`; returns its value. Order of the others is not kept.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.index(key)?;
        let (_, v) = self.entries.swap_remove(i);
        if self.entries.is_empty() {
            // A connection that unsubscribed from everything holds nothing.
            self.entries = Vec::new();
        }
        Some(v)
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// All keys.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// All values.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Room reserved, in entries (for tests of the growth policy).
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

impl<'a, K: Borrow<str>, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn behaves_like_a_map() {
        let mut m: SmallMap<Arc<str>, u32> = SmallMap::new();
        let mut reference: HashMap<String, u32> = HashMap::new();
        // A deterministic mix of inserts, replacements and removals.
        for i in 0..500u32 {
            let key = format!("ch{}", (i * 7) % 23);
            if i % 5 == 4 {
                assert_eq!(m.remove(&key), reference.remove(&key), "remove {key}");
            } else {
                assert_eq!(m.insert(Arc::from(key.as_str()), i), reference.insert(key.clone(), i), "insert {key}");
            }
            assert_eq!(m.len(), reference.len());
            for (k, v) in &reference {
                assert_eq!(m.get(k), Some(v));
            }
            assert!(m.iter().all(|(k, v)| reference.get(&**k) == Some(v)));
        }
        assert!(!m.contains_key("missing"));
        assert_eq!(m.get_mut("missing"), None);
    }

    #[test]
    fn one_entry_holds_room_for_one() {
        let mut m: SmallMap<String, [u8; 64]> = SmallMap::new();
        assert_eq!(m.capacity(), 0, "an empty map allocates nothing");
        m.insert("a".into(), [0; 64]);
        assert_eq!(m.capacity(), 1);
        m.insert("b".into(), [0; 64]);
        m.insert("c".into(), [0; 64]);
        assert_eq!(m.capacity(), 4, "then doubles");
        m.remove("a");
        m.remove("b");
        m.remove("c");
        assert_eq!(m.capacity(), 0, "empty again: storage freed");
    }
}
