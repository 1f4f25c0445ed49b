//! In-process caches: immutable manifests by digest, tag pointers and blob markers.
//!
//! All are optional accelerations: the store is the truth, and a stateless Lambda instance
//! starts with them empty. All are bounded: manifests by bytes, first in first out (documents
//! that never change); tags and markers by count, least recently used first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use super::TagPointer;
use crate::bounded::BoundedMap;
use crate::oci::Digest;

struct Entry {
    bytes: Bytes,
    media_type: String,
    /// `<upstream>/<repo>` names known to hold this digest (their marker exists in the store).
    repos: HashSet<String>,
}

/// Manifests by digest, bounded by total bytes.
pub struct ManifestMemory {
    budget: usize,
    inner: Mutex<ManifestInner>,
}

#[derive(Default)]
struct ManifestInner {
    entries: HashMap<Digest, Entry>,
    order: VecDeque<Digest>,
    used: usize,
}

impl ManifestMemory {
    pub fn new(budget: usize) -> ManifestMemory {
        ManifestMemory {
            budget,
            inner: Mutex::new(ManifestInner::default()),
        }
    }

    /// The manifest, if cached and known to belong to `repo`.
    pub fn get(&self, repo: &str, digest: &Digest) -> Option<(Bytes, String)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = inner.entries.get(digest)?;
        e.repos
            .contains(repo)
            .then(|| (e.bytes.clone(), e.media_type.clone()))
    }

    pub fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = ManifestInner::default();
    }

    pub fn insert(&self, repo: &str, digest: &Digest, bytes: Bytes, media_type: &str) {
        if bytes.len() > self.budget / 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner.entries.get_mut(digest) {
            e.repos.insert(repo.to_owned());
            return;
        }
        while inner.used + bytes.len() > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&old) {
                inner.used -= e.bytes.len();
            }
        }
        inner.used += bytes.len();
        inner.order.push_back(digest.clone());
        inner.entries.insert(
            digest.clone(),
            Entry {
                bytes,
                media_type: media_type.to_owned(),
                repos: HashSet::from([repo.to_owned()]),
            },
        );
    }
}

/// Tag pointers by store key, bounded by count (the least recently used go first: they are
/// cheap to re-read).
pub struct TagMemory(BoundedMap<String, TagPointer>);

const MAX_TAGS: usize = 100_000;

impl Default for TagMemory {
    fn default() -> Self {
        TagMemory(BoundedMap::new(MAX_TAGS))
    }
}

impl TagMemory {
    pub fn get(&self, key: &str) -> Option<TagPointer> {
        self.0.get(key)
    }

    pub fn insert(&self, key: &str, pointer: TagPointer) {
        self.0.insert(key.to_owned(), pointer);
    }

    pub fn clear(&self) {
        self.0.clear();
    }
}

/// Blob markers (`<upstream>/<repo>@<digest>` → size), bounded by count.
pub struct BlobMarkerMemory(BoundedMap<String, u64>);

const MAX_BLOB_MARKERS: usize = 100_000;

impl Default for BlobMarkerMemory {
    fn default() -> Self {
        BlobMarkerMemory(BoundedMap::new(MAX_BLOB_MARKERS))
    }
}

impl BlobMarkerMemory {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.get(key)
    }

    pub fn insert(&self, key: &str, size: u64) {
        self.0.insert(key.to_owned(), size);
    }

    pub fn clear(&self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_scoped_to_repositories_and_bounded() {
        let m = ManifestMemory::new(100);
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        m.insert("up/a", &d1, Bytes::from(vec![1; 20]), "t");
        assert!(m.get("up/a", &d1).is_some());
        assert!(
            m.get("up/b", &d1).is_none(),
            "another repository must not see it"
        );
        m.insert("up/b", &d1, Bytes::from(vec![1; 20]), "t");
        assert!(m.get("up/b", &d1).is_some());
        for i in 0..10u8 {
            m.insert(
                "up/a",
                &Digest::sha256_of(&[i, 9]),
                Bytes::from(vec![i; 20]),
                "t",
            );
        }
        assert!(m.get("up/a", &d1).is_none(), "oldest evicted");
        m.insert("up/a", &d2, Bytes::from(vec![0; 60]), "t");
        assert!(
            m.get("up/a", &d2).is_none(),
            "larger than a quarter of the budget: not kept"
        );
    }
}
