//! One bounded map for the process's small memories: verified passwords, upstream tokens, tag
//! pointers and blob markers.
//!
//! Owns the bound and the eviction (least recently used first, so a busy entry is never the one
//! dropped), behind a mutex that a panicking holder cannot poison for everyone else. It never
//! decides what is worth keeping: callers store what they like and check their own expiry times.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

/// A map of at most `capacity` entries; inserting into a full map evicts the least recently used.
pub struct BoundedMap<K: Hash + Eq, V> {
    inner: Mutex<LruCache<K, V>>,
}

impl<K: Hash + Eq, V: Clone> BoundedMap<K, V> {
    /// A map of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> BoundedMap<K, V> {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        BoundedMap {
            inner: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the value, marking it recently used.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().get(key).cloned()
    }

    pub fn insert(&self, key: K, value: V) {
        self.lock().put(key, value);
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().pop(key);
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_evicts_the_least_recently_used_entry() {
        let m = BoundedMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        assert_eq!(m.get("a"), Some(1)); // "b" is now the least recently used
        m.insert("c", 3);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("b"), None);
        assert_eq!(m.get("a"), Some(1));
        assert_eq!(m.get("c"), Some(3));
        m.remove("a");
        assert_eq!(m.get("a"), None);
    }
}
