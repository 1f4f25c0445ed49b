//! In-process caches: immutable manifests by digest, tag pointers and blob markers.
//!
//! All are optional accelerations: the store is the truth, and a stateless Lambda instance
//! starts with them empty. All are bounded: manifests by bytes, first in first out (documents
//! that never change); tags and markers by count, least recently used first.
//!
//! All are trusted for [`TRUSTED_FOR_MS`] only. Another process (`pullthrough gc` or `purge`
//! beside a live server) may remove what they remember; past that time the store is read again,
//! so a server whose memory names a removed pointer, marker or blob refills it instead of
//! serving (or rewriting) what is gone. A warm pull within that time still costs no store read.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use super::TagPointer;
use crate::bounded::BoundedMap;
use crate::oci::Digest;

/// How long a remembered pointer, marker or manifest answers without a store read (5 minutes):
/// the longest a server keeps answering from what another process removed from the store.
pub const TRUSTED_FOR_MS: u64 = 5 * 60 * 1000;

fn trusted(remembered_at: u64, now: u64) -> bool {
    now.saturating_sub(remembered_at) < TRUSTED_FOR_MS
}

struct Entry {
    bytes: Bytes,
    media_type: String,
    /// `<upstream>/<repo>` names known to hold this digest (their marker exists in the store),
    /// with when that was last seen (Unix ms).
    repos: HashMap<String, u64>,
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

    /// The manifest, if cached and known to belong to `repo` (seen within [`TRUSTED_FOR_MS`]
    /// of `now`).
    pub fn get(&self, repo: &str, digest: &Digest, now: u64) -> Option<(Bytes, String)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = inner.entries.get(digest)?;
        e.repos
            .get(repo)
            .is_some_and(|at| trusted(*at, now))
            .then(|| (e.bytes.clone(), e.media_type.clone()))
    }

    pub fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = ManifestInner::default();
    }

    /// Remembers the manifest as held by `repo`, seen in the store (or written there) at `now`.
    pub fn insert(&self, repo: &str, digest: &Digest, bytes: Bytes, media_type: &str, now: u64) {
        if bytes.len() > self.budget / 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner.entries.get_mut(digest) {
            e.repos.insert(repo.to_owned(), now);
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
                repos: HashMap::from([(repo.to_owned(), now)]),
            },
        );
    }
}

/// Tag pointers by store key, with when each was read or written (Unix ms), bounded by count
/// (the least recently used go first: they are cheap to re-read).
pub struct TagMemory(BoundedMap<String, (TagPointer, u64)>);

const MAX_TAGS: usize = 100_000;

impl Default for TagMemory {
    fn default() -> Self {
        TagMemory(BoundedMap::new(MAX_TAGS))
    }
}

impl TagMemory {
    /// The pointer and when it was seen in the store, if that is within [`TRUSTED_FOR_MS`] of
    /// `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<(TagPointer, u64)> {
        self.0.get(key).filter(|(_, at)| trusted(*at, now))
    }

    /// Remembers a pointer read from or written to the store at `now`.
    pub fn insert(&self, key: &str, pointer: TagPointer, now: u64) {
        self.0.insert(key.to_owned(), (pointer, now));
    }

    pub fn clear(&self) {
        self.0.clear();
    }
}

/// Blob markers (`<upstream>/<repo>@<digest>` → size, and when the marker was read or written),
/// bounded by count.
pub struct BlobMarkerMemory(BoundedMap<String, (u64, u64)>);

const MAX_BLOB_MARKERS: usize = 100_000;

impl Default for BlobMarkerMemory {
    fn default() -> Self {
        BlobMarkerMemory(BoundedMap::new(MAX_BLOB_MARKERS))
    }
}

impl BlobMarkerMemory {
    /// The blob's size, if its marker was seen within [`TRUSTED_FOR_MS`] of `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<u64> {
        self.0
            .get(key)
            .and_then(|(size, at)| trusted(at, now).then_some(size))
    }

    /// Remembers a marker read from or written to the store at `now`.
    pub fn insert(&self, key: &str, size: u64, now: u64) {
        self.0.insert(key.to_owned(), (size, now));
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
        m.insert("up/a", &d1, Bytes::from(vec![1; 20]), "t", 0);
        assert!(m.get("up/a", &d1, 0).is_some());
        assert!(
            m.get("up/b", &d1, 0).is_none(),
            "another repository must not see it"
        );
        m.insert("up/b", &d1, Bytes::from(vec![1; 20]), "t", 0);
        assert!(m.get("up/b", &d1, 0).is_some());
        for i in 0..10u8 {
            m.insert(
                "up/a",
                &Digest::sha256_of(&[i, 9]),
                Bytes::from(vec![i; 20]),
                "t",
                0,
            );
        }
        assert!(m.get("up/a", &d1, 0).is_none(), "oldest evicted");
        m.insert("up/a", &d2, Bytes::from(vec![0; 60]), "t", 0);
        assert!(
            m.get("up/a", &d2, 0).is_none(),
            "larger than a quarter of the budget: not kept"
        );
    }

    #[test]
    fn what_is_remembered_is_trusted_for_a_bounded_time() {
        let m = ManifestMemory::new(100);
        let d = Digest::sha256_of(b"1");
        m.insert("up/a", &d, Bytes::from(vec![1; 20]), "t", 1_000);
        assert!(m.get("up/a", &d, 1_000 + TRUSTED_FOR_MS - 1).is_some());
        assert!(m.get("up/a", &d, 1_000 + TRUSTED_FOR_MS).is_none());
        m.insert(
            "up/a",
            &d,
            Bytes::from(vec![1; 20]),
            "t",
            1_000 + TRUSTED_FOR_MS,
        );
        assert!(
            m.get("up/a", &d, 1_000 + TRUSTED_FOR_MS).is_some(),
            "seen again"
        );

        let markers = BlobMarkerMemory::default();
        markers.insert("up/a@d", 7, 1_000);
        assert_eq!(markers.get("up/a@d", 1_000 + TRUSTED_FOR_MS - 1), Some(7));
        assert_eq!(markers.get("up/a@d", 1_000 + TRUSTED_FOR_MS), None);
    }
}
