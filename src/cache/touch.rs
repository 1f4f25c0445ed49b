//! Last-pulled times: what gc's retention goes by, kept off the request path.
//!
//! A pull answered from a tag pointer or a marker (from the store or from memory) only notes
//! `(document, now)` in a bounded pending set, and only when the last-pulled time this process
//! knows for that document is unknown or older than [`TOUCH_EVERY_MS`]: no store request is
//! added to any request. A background task ([`FLUSH_EVERY`]) — or [`Cache::flush_touches`] —
//! writes them: read the document, set `lastPulled`, write it back. A document that is gone
//! (gc or purge removed it) is never recreated. So each document is written at most once an hour
//! per process, however often it is pulled.
//!
//! What a flush writes must not break the store's order (object → marker → pointer): after
//! writing a marker whose blob is gone, or a pointer whose marker is gone (gc removed it between
//! the read and the write), the document is deleted again. Over S3 the write is conditional on
//! the version read (`If-Match`), so a document deleted meanwhile is not written at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Cache, Marker, TagPointer, Target};
use crate::bounded::BoundedMap;
use crate::oci::{Digest, RepoName};
use crate::store::{Condition, Key, keys};

/// A document's last-pulled time is written again only when it is older than this (1 hour).
pub const TOUCH_EVERY_MS: u64 = 60 * 60 * 1000;

/// How often the background task writes the pending last-pulled times.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// Most documents waiting for their last-pulled time to be written; beyond it a pull is not
/// noted (a later pull of the same document notes it again).
const MAX_PENDING: usize = 10_000;

/// Most last-pulled times remembered (a forgotten one costs one more write, an hour apart).
const MAX_KNOWN: usize = 100_000;

/// Documents written at once by a flush.
const FLUSH_CONCURRENCY: usize = 8;

/// The document a pull was answered from.
#[derive(Clone, Debug)]
enum Doc {
    /// A tag pointer of `<upstream>/<repo>`.
    Pointer {
        key: Key,
        upstream: String,
        repo: RepoName,
    },
    /// A marker, and the object it names.
    Marker { key: Key, blob: Key },
}

impl Doc {
    fn key(&self) -> &Key {
        match self {
            Doc::Pointer { key, .. } | Doc::Marker { key, .. } => key,
        }
    }
}

/// The pending last-pulled times and what this process knows of the stored ones.
#[derive(Default)]
pub(super) struct Touches {
    /// Store key → (document, when it was pulled), waiting to be written.
    pending: Mutex<HashMap<String, (Doc, u64)>>,
    /// Store key → the last-pulled time stored (or pending) for it, as far as this process knows.
    known: KnownTimes,
    /// Set once the background flusher runs.
    flusher: AtomicBool,
}

struct KnownTimes(BoundedMap<String, u64>);

impl Default for KnownTimes {
    fn default() -> Self {
        KnownTimes(BoundedMap::new(MAX_KNOWN))
    }
}

impl Touches {
    fn take(&self) -> Vec<(Doc, u64)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.drain().map(|(_, v)| v).collect()
    }
}

impl Cache {
    /// A pull was answered from this tag pointer, whose stored `lastPulled` is `stored` if known.
    pub(super) fn pulled_pointer(&self, target: &Target, key: &Key, stored: Option<u64>) {
        self.pulled(
            Doc::Pointer {
                key: key.clone(),
                upstream: target.alias().to_owned(),
                repo: target.repo.clone(),
            },
            stored,
        );
    }

    /// A pull was answered from the marker of `digest` in this repository (or from what memory
    /// holds because of it), whose stored `lastPulled` is `stored` if known.
    pub(super) fn pulled_marker(&self, target: &Target, digest: &Digest, stored: Option<u64>) {
        self.pulled(
            Doc::Marker {
                key: keys::marker(target.alias(), &target.repo, digest),
                blob: keys::blob(digest),
            },
            stored,
        );
    }

    /// This process wrote (or read) a document whose `lastPulled` is `at`.
    pub(super) fn knows_pulled(&self, key: &Key, at: Option<u64>) {
        if let Some(at) = at {
            let t = &self.touches.known.0;
            if t.get(key.as_str()).is_none_or(|k| k < at) {
                t.insert(key.as_str().to_owned(), at);
            }
        }
    }

    fn pulled(&self, doc: Doc, stored: Option<u64>) {
        let now = self.clock.now_ms();
        let key = doc.key().as_str().to_owned();
        let known = self.touches.known.0.get(&key).max(stored);
        if known.is_some_and(|k| now.saturating_sub(k) < TOUCH_EVERY_MS) {
            return;
        }
        {
            let mut pending = self
                .touches
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
                return;
            }
            pending.insert(key.clone(), (doc, now));
        }
        self.touches.known.0.insert(key, now);
        self.start_flusher();
    }

    /// Spawns the background flusher once, on the first touch, when a runtime is there.
    fn start_flusher(&self) {
        if self.touches.flusher.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.touches.flusher.store(false, Ordering::Release);
            return;
        };
        let me: Weak<Cache> = self.me.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // the first tick is immediate
            loop {
                every.tick().await;
                let Some(cache) = me.upgrade() else { break };
                cache.flush_touches().await;
            }
        });
    }

    /// Writes every pending last-pulled time now; returns how many documents were written.
    /// The background task calls it every [`FLUSH_EVERY`]; call it also before a process stops
    /// (graceful shutdown) and, in Lambda mode, at the end of an invocation (a frozen instance
    /// runs no background task). Failures are logged; their documents are noted again by the
    /// next pull.
    pub async fn flush_touches(&self) -> usize {
        let batch = self.touches.take();
        if batch.is_empty() {
            return 0;
        }
        futures_util::stream::iter(batch)
            .map(|(doc, at)| async move { self.flush_one(&doc, at).await })
            .buffer_unordered(FLUSH_CONCURRENCY)
            .filter(|written| std::future::ready(*written))
            .count()
            .await
    }

    async fn flush_one(&self, doc: &Doc, at: u64) -> bool {
        let result = match doc {
            Doc::Pointer {
                key,
                upstream,
                repo,
            } => {
                self.touch_doc::<TagPointer>(key, at, |p| {
                    Digest::parse(&p.digest)
                        .ok()
                        .map(|d| keys::marker(upstream, repo, &d))
                })
                .await
            }
            Doc::Marker { key, blob } => {
                self.touch_doc::<Marker>(key, at, |_| Some(blob.clone()))
                    .await
            }
        };
        match result {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(key = %doc.key(), error = %e, "writing a last-pulled time failed");
                self.touches.known.0.remove(doc.key().as_str());
                false
            }
        }
    }

    /// Sets `lastPulled` of the document at `key` to `at` (never backwards). `needs` names what
    /// the document points at: if that is gone after the write, the document is deleted again.
    async fn touch_doc<T>(
        &self,
        key: &Key,
        at: u64,
        needs: impl Fn(&T) -> Option<Key>,
    ) -> Result<bool, crate::store::StoreError>
    where
        T: DeserializeOwned + Serialize + LastPulled,
    {
        // Over S3 the write is conditional on the version read; a store without conditional
        // writes (the filesystem) answers `get_versioned` with an error at once.
        let (bytes, version) = match self.store.get_versioned(key).await {
            Ok(Some((b, v))) => (b, Some(v)),
            Ok(None) => return Ok(false),
            Err(_) => match self.store.get(key).await? {
                Some(b) => (b, None),
                None => return Ok(false), // gc or purge removed it: never recreate
            },
        };
        let Ok(mut doc) = serde_json::from_slice::<T>(&bytes) else {
            return Ok(false);
        };
        if doc.last_pulled().is_some_and(|p| p >= at) {
            self.knows_pulled(key, doc.last_pulled());
            return Ok(false);
        }
        doc.set_last_pulled(at);
        let body = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        match version {
            Some(v) => {
                if self
                    .store
                    .put_if(key, body, Condition::Matches(v))
                    .await?
                    .is_none()
                {
                    return Ok(false); // changed or deleted meanwhile
                }
            }
            None => self.store.put(key, body, "application/json").await?,
        }
        if let Some(dependency) = needs(&doc)
            && self.store.head(&dependency).await?.is_none()
        {
            tracing::info!(%key, missing = %dependency, "removed meanwhile: the touched document goes too");
            self.store.delete(key).await?;
            return Ok(false);
        }
        Ok(true)
    }
}

/// The documents that carry a last-pulled time.
trait LastPulled {
    fn last_pulled(&self) -> Option<u64>;
    fn set_last_pulled(&mut self, at: u64);
}

impl LastPulled for TagPointer {
    fn last_pulled(&self) -> Option<u64> {
        self.last_pulled
    }
    fn set_last_pulled(&mut self, at: u64) {
        self.last_pulled = Some(at);
    }
}

impl LastPulled for Marker {
    fn last_pulled(&self) -> Option<u64> {
        self.last_pulled
    }
    fn set_last_pulled(&mut self, at: u64) {
        self.last_pulled = Some(at);
    }
}
