//! Blobs: served from the store when this repository is known to hold them, otherwise filled
//! from the upstream once (concurrent misses share the fill), verified while streaming, and
//! published only when digest and length match.
//!
//! **A fill never waits for its slowest party.** In server mode a fill copies the upstream's
//! bytes, hashing them, into a spill file ([`super::spill`]) at the upstream's pace: the
//! filesystem store's own temporary file (adopted as the object when verified), or a file in the
//! bounded spill directory for S3 (uploaded from there once verified). Every
//! request for the blob during the fill, the one that started it and every joiner, with or
//! without a `Range`, streams from that file at its own pace; a stalled client holds only its
//! own connection. A client gets the blob's last byte only once the bytes are verified (and, for
//! the filesystem store, stored and marked); on a mismatch every client is cut off and nothing
//! is published.
//!
//! Not streamed, but copied and then served from the store (a redirect with S3): Lambda mode, S3
//! with `[s3] stream_misses = false`, a blob of unknown length over S3, a full spill directory,
//! and a fill that finds another instance copying the blob (the lease).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;

use super::spill::{Reservation, Spill, SpillError};
use super::{Cache, CacheError, Marker, Target, Wanted};
use crate::metrics::{self, Lookup, LookupKind};
use crate::oci::Digest;
use crate::store::{BlobRead, RangeRequest, keys};
use crate::store::{FillError, VerifyingStream};

/// How a blob GET is answered.
pub enum BlobAnswer {
    /// From the store (a stream or a redirect), or from a fill's spill file with a known length.
    Stored(BlobRead),
    /// From a fill's spill file, the upstream having announced no length.
    Passthrough {
        len: Option<u64>,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    },
}

/// A blob made sure of by [`Cache::warm_blob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warmed {
    pub size: u64,
    /// It was not in the cache for this repository before (copied now, or confirmed with the
    /// upstream when another repository's copy was there).
    pub fetched: bool,
}

/// What the requests of a streamed fill learn once the upstream has answered.
#[derive(Clone)]
pub(super) enum FillStage {
    /// The upstream has not answered yet.
    Pending,
    /// Stream from this spill file.
    Spilled(Arc<Spill>),
    /// Not streamed (stored already, copied by another instance, no room to spill): wait for
    /// the fill's result and read from the store.
    NotStreamed,
}

/// The fill's side of a [`FillStage`]: dropped without a word, it tells the waiting requests
/// that the fill ended (they then take its result).
pub(super) type StageTx = watch::Sender<FillStage>;

/// Where a fill spills.
enum SpillPlace {
    /// The store's own temporary file, adopted as the object when verified (filesystem).
    Adopt(std::path::PathBuf),
    /// A file in the spill directory, uploaded once verified (S3).
    Upload(std::path::PathBuf, Reservation),
}

/// Removes a streamed fill's stage from the cache once the fill's single-flight slot is freed,
/// however the fill ends. Until then a request that joins the fill finds its stage: one arriving
/// after the copy has ended (say, its upload failed) still streams the verified spill file
/// instead of taking the copy's error. A fill started after the slot was freed may have
/// registered its own stage under the same key by then; that one stays.
struct StageEntry {
    cache: Arc<Cache>,
    key: String,
    stage: watch::Receiver<FillStage>,
}

impl Drop for StageEntry {
    fn drop(&mut self) {
        let mut stages = self
            .cache
            .fill_stages
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if stages
            .get(&self.key)
            .is_some_and(|s| s.same_channel(&self.stage))
        {
            stages.remove(&self.key);
        }
    }
}

impl Cache {
    /// How the client gets the blob's bytes (a redirect or a stream), filling it first if needed.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobAnswer, CacheError> {
        let key = keys::blob(digest);
        // A marker is written only after its object, so with a marker one store request suffices.
        if self.read_marker(target, digest).await?.is_some()
            && let Some(read) = self.read_stored(&key, range).await?
        {
            metrics::cache_lookup(LookupKind::Blob, Lookup::Hit);
            return Ok(BlobAnswer::Stored(read));
        }
        metrics::cache_lookup(LookupKind::Blob, Lookup::Miss);
        if self.store.head(&key).await?.is_some() {
            self.confirm_shared(target, digest).await?;
        } else if let Some(policy) = &self.fill_policy
            && self.store.serves_by_redirect()
        {
            return self.fill_within_deadline(target, digest, policy).await;
        } else if self.streams_misses() {
            if let Some(answer) = self.fill_streaming(target, digest, range).await? {
                return Ok(answer);
            }
        } else {
            self.fill(target, digest).await?;
        }
        self.stored(&key, range, digest).await
    }

    /// Makes sure the blob is stored and marked for this repository, as a pull would leave it
    /// (for `prefetch`). A blob already there costs two store requests (marker, object) and no
    /// transfer; a miss goes through [`Cache::blob`] like a client's GET, its streamed answer
    /// read to the end.
    pub async fn warm_blob(&self, target: &Target, digest: &Digest) -> Result<Warmed, CacheError> {
        let key = keys::blob(digest);
        if self.read_marker(target, digest).await?.is_some()
            && let Some(size) = self.store.head(&key).await?
        {
            return Ok(Warmed {
                size,
                fetched: false,
            });
        }
        let body = match self.blob(target, digest, None).await? {
            BlobAnswer::Stored(BlobRead::Stream { body, .. }) => Some(body),
            BlobAnswer::Passthrough { body, .. } => Some(body),
            BlobAnswer::Stored(BlobRead::Redirect(_) | BlobRead::Unsatisfiable { .. }) => None,
        };
        if let Some(mut body) = body {
            while let Some(chunk) = body.next().await {
                chunk.map_err(|e| {
                    CacheError::Unavailable(format!("the fill of {digest} failed: {e}"))
                })?;
            }
        }
        // Over S3 the upload and the marker follow the last byte the readers get, and a
        // redirect is presigned without looking: join the fill still publishing, or copy what
        // is missing after all.
        let size = match (
            self.read_marker(target, digest).await?,
            self.store.head(&key).await?,
        ) {
            (Some(_), Some(size)) => size,
            _ => self.fill(target, digest).await?,
        };
        Ok(Warmed {
            size,
            fetched: true,
        })
    }

    /// Whether requests for a blob being filled stream it from the fill's spill file: always
    /// with a store that streams (filesystem); over S3 in server mode unless
    /// `[s3] stream_misses = false`.
    fn streams_misses(&self) -> bool {
        !self.store.serves_by_redirect()
            || (self.fill_policy.is_none() && self.config.s3.stream_misses)
    }

    /// A stored blob: redirected to the store (S3), or with `[s3] stream_hits` in server mode,
    /// streamed from it.
    async fn read_stored(
        &self,
        key: &crate::store::Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, CacheError> {
        let read = if self.fill_policy.is_none() && self.config.s3.stream_hits {
            self.store.read_through(key, range).await?
        } else {
            self.store.read(key, range).await?
        };
        Ok(read)
    }

    pub(super) async fn stored(
        &self,
        key: &crate::store::Key,
        range: Option<RangeRequest>,
        digest: &Digest,
    ) -> Result<BlobAnswer, CacheError> {
        self.read_stored(key, range)
            .await?
            .map(BlobAnswer::Stored)
            .ok_or_else(|| {
                CacheError::Unavailable(format!(
                    "{digest} vanished from the store right after it was written"
                ))
            })
    }

    /// The blob's size for a HEAD, without copying a miss: a blob being filled for this
    /// repository is answered with the length its upstream GET announced, another miss from an
    /// upstream HEAD.
    pub async fn blob_size(&self, target: &Target, digest: &Digest) -> Result<u64, CacheError> {
        if let Some(m) = self.read_marker(target, digest).await? {
            metrics::cache_lookup(LookupKind::Blob, Lookup::Hit);
            return Ok(m.size);
        }
        metrics::cache_lookup(LookupKind::Blob, Lookup::Miss);
        if let Some(size) = self.store.head(&keys::blob(digest)).await? {
            self.confirm_shared(target, digest).await?;
            return Ok(size);
        }
        if let Some(size) = self.filling_len(target, digest) {
            return Ok(size);
        }
        let info = target
            .upstream
            .head_blob(&target.repo, digest)
            .await
            .map_err(|e| CacheError::upstream(e, Wanted::Blob))?;
        info.size.ok_or_else(|| {
            CacheError::BadUpstream(format!(
                "{} answered HEAD for {digest} without a Content-Length",
                target.alias()
            ))
        })
    }

    /// The announced length of a streamed fill of this blob for this repository, once its
    /// upstream GET has answered with one (the upstream has just said it holds the blob).
    fn filling_len(&self, target: &Target, digest: &Digest) -> Option<u64> {
        let stages = self.fill_stages.lock().unwrap_or_else(|p| p.into_inner());
        let stage = stages.get(&target.scoped_digest(digest))?.borrow();
        match &*stage {
            FillStage::Spilled(spill) => spill.announced_len(),
            FillStage::Pending | FillStage::NotStreamed => None,
        }
    }

    /// The bytes are in the store but this repository has no marker for them: either a fill for
    /// this repository is just writing it (join that fill), or they were stored for another
    /// repository and the upstream must confirm this one holds them too. Concurrent requests
    /// share one confirmation (one upstream HEAD), keyed like the fill.
    async fn confirm_shared(&self, target: &Target, digest: &Digest) -> Result<u64, CacheError> {
        let flight_key = target.scoped_digest(digest);
        let this = self.handle();
        let (target, digest) = (target.clone(), digest.clone());
        let (_, shared) = self.blob_flights.start(flight_key, move || async move {
            this.confirm_with_upstream(&target, &digest).await
        });
        shared.await
    }

    /// The bytes are in the store (for another repository); the upstream confirms this
    /// repository holds them too before they are served under its name. Returns the size.
    /// A marker found first (a fill for this repository wrote it since the caller looked) makes
    /// the upstream request unnecessary.
    pub(super) async fn confirm_with_upstream(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<u64, CacheError> {
        if let Some(m) = self.read_marker(target, digest).await? {
            return Ok(m.size);
        }
        let info = target
            .upstream
            .head_blob(&target.repo, digest)
            .await
            .map_err(|e| CacheError::upstream(e, Wanted::Blob))?;
        let size = match info.size {
            Some(s) => s,
            None => self.store.head(&keys::blob(digest)).await?.unwrap_or(0),
        };
        self.write_marker(target, digest, Marker::blob(size))
            .await?;
        Ok(size)
    }

    /// Copies a blob from the upstream into the store. Concurrent callers for the same
    /// repository and digest share one upstream GET. The copy runs in its own task: a client
    /// that disconnects does not abort it for the others.
    async fn fill(&self, target: &Target, digest: &Digest) -> Result<u64, CacheError> {
        let (_, shared) = self.start_fill(target, digest, false);
        shared.await
    }

    /// Starts or joins a streamed fill and answers from its spill file once the upstream has
    /// answered; `None` when the fill is not streamed (the caller reads the store then).
    async fn fill_streaming(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobAnswer>, CacheError> {
        let (_, shared) = self.start_fill(target, digest, true);
        let stage = self
            .fill_stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target.scoped_digest(digest))
            .cloned();
        let spill = match stage {
            // A fill that is not streamed (a HEAD confirmation, a copy for Lambda) or one that
            // just ended.
            None => None,
            Some(mut stage) => match stage.wait_for(|s| !matches!(s, FillStage::Pending)).await {
                Ok(s) => match &*s {
                    FillStage::Spilled(spill) => Some(Arc::clone(spill)),
                    _ => None,
                },
                // The fill ended before the upstream answered: its result says how.
                Err(_) => None,
            },
        };
        if let Some(spill) = spill {
            match (spill.announced_len(), range) {
                (Some(total), None) => {
                    return Ok(Some(BlobAnswer::Stored(BlobRead::Stream {
                        total,
                        range: None,
                        body: spill.reader(None),
                    })));
                }
                (Some(total), Some(r)) => {
                    let read = match r.resolve(total) {
                        None => BlobRead::Unsatisfiable { total },
                        Some(r) => BlobRead::Stream {
                            total,
                            range: Some(r),
                            body: spill.reader(Some((r.first, r.last))),
                        },
                    };
                    return Ok(Some(BlobAnswer::Stored(read)));
                }
                (None, None) => {
                    return Ok(Some(BlobAnswer::Passthrough {
                        len: None,
                        body: spill.reader(None),
                    }));
                }
                // A range of a blob of unknown length is answered once it is stored.
                (None, Some(_)) => {}
            }
        }
        shared.await?;
        Ok(None)
    }

    /// Starts a fill unless one for this repository and digest runs. The copy runs in its own
    /// task: a client that disconnects does not abort it for the others. A `streamed` fill
    /// publishes its stage (and so its spill file) for the requests that join it.
    fn start_fill(
        &self,
        target: &Target,
        digest: &Digest,
        streamed: bool,
    ) -> (bool, super::flight::SharedResult<u64>) {
        let flight_key = target.scoped_digest(digest);
        let this = self.handle();
        let target = target.clone();
        let digest = digest.clone();
        self.blob_flights
            .start_holding(flight_key.clone(), move || {
                // Registered before the flight is visible to others, so a joiner finds it. The
                // entry is held by the flight's slot and goes only after it, however the run ends.
                let (stage, entry) = if streamed {
                    let (tx, rx) = watch::channel(FillStage::Pending);
                    this.fill_stages
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(flight_key.clone(), rx.clone());
                    let entry = StageEntry {
                        cache: Arc::clone(&this),
                        key: flight_key,
                        stage: rx,
                    };
                    (Some(tx), Some(entry))
                } else {
                    (None, None)
                };
                let work = async move {
                    if this.leases_server_fills() {
                        this.leased_copy(&target, &digest, stage).await
                    } else {
                        this.copy_blob(&target, &digest, stage, None).await
                    }
                };
                (work, entry)
            })
    }

    /// The copy itself: upstream GET, verified while written into the store, then the marker.
    /// With `stage`, the bytes go through a spill file that the fill's requests stream from
    /// (when there is room); with `redirects`, a redirect of the upstream GET to another origin
    /// is recorded there.
    pub(super) async fn copy_blob(
        &self,
        target: &Target,
        digest: &Digest,
        stage: Option<StageTx>,
        redirects: Option<&crate::upstream::RedirectSink>,
    ) -> Result<u64, CacheError> {
        let key = keys::blob(digest);
        // Another flight (another repository) may have finished it meanwhile.
        if self.store.head(&key).await?.is_some() {
            if let Some(s) = stage {
                s.send_replace(FillStage::NotStreamed);
            }
            return self.confirm_with_upstream(target, digest).await;
        }
        let mut fill = metrics::Fill::start();
        let body = target
            .upstream
            .get_blob_observed(&target.repo, digest, redirects)
            .await
            .map_err(|e| CacheError::upstream(e, Wanted::Blob))
            .inspect_err(|_| fill.failed())?;
        let len = body.len;
        // A transfer that fails mid-body is a fill refused for its source.
        let source =
            futures_util::TryStreamExt::map_err(body.stream, |e| FillError::Source(e.to_string()));
        let verified = VerifyingStream::new(source, digest.clone(), len);
        let place = stage
            .as_ref()
            .and_then(|_| self.spill_place(target, digest, len));
        let stored = match (stage, place) {
            (Some(stage), Some(place)) => {
                self.fill_through_spill(target, digest, len, verified, stage, place)
                    .await
            }
            (stage, _) => {
                if let Some(s) = stage {
                    s.send_replace(FillStage::NotStreamed);
                }
                self.put_and_mark(target, digest, len, verified.boxed())
                    .await
            }
        };
        fill.finish(stored.is_ok());
        let size = stored.inspect_err(|e| {
            tracing::warn!(repo = %target.scoped_name(), %digest, error = %e, "blob fill failed");
        })?;
        tracing::info!(repo = %target.scoped_name(), %digest, size, "blob filled");
        Ok(size)
    }

    /// Where a streamed fill spills: the store's own temporary file if it can adopt one, else a
    /// file in the spill directory when the blob's announced length fits; `None` (copy, then
    /// serve from the store) otherwise.
    fn spill_place(
        &self,
        target: &Target,
        digest: &Digest,
        len: Option<u64>,
    ) -> Option<SpillPlace> {
        if let Some(path) = self.store.spill_path() {
            return Some(SpillPlace::Adopt(path));
        }
        let dir = self.spill_dir.as_ref()?;
        let Some(len) = len else {
            tracing::info!(repo = %target.scoped_name(), %digest, "the upstream sent no length: the blob is copied, then redirected");
            return None;
        };
        match dir.reserve(len) {
            Some((path, reservation)) => Some(SpillPlace::Upload(path, reservation)),
            None => {
                tracing::warn!(
                    repo = %target.scoped_name(), %digest, size = len, spill_dir = %dir.path().display(),
                    used = dir.used(), "spill directory full: the blob is copied to the store, then redirected"
                );
                None
            }
        }
    }

    /// The fill through a spill file: written at the upstream's pace while every request of the
    /// fill streams from it. Filesystem: the file is adopted as the object, marked, and only then
    /// do readers get its last byte. S3: readers get the last byte as soon as the bytes are
    /// verified; then the file is uploaded, and the marker follows the completed upload.
    async fn fill_through_spill<S>(
        &self,
        target: &Target,
        digest: &Digest,
        len: Option<u64>,
        verified: S,
        stage: StageTx,
        place: SpillPlace,
    ) -> Result<u64, CacheError>
    where
        S: futures_util::Stream<Item = Result<Bytes, FillError>> + Send + Unpin + 'static,
    {
        let key = keys::blob(digest);
        let (path, reservation, adopt) = match place {
            SpillPlace::Adopt(path) => (path, None, true),
            SpillPlace::Upload(path, r) => (path, Some(r), false),
        };
        let spill = match Spill::create(path, len, reservation).await {
            Ok(spill) => spill,
            Err(e) => {
                tracing::warn!(repo = %target.scoped_name(), %digest, error = %e, "cannot create a spill file: the blob is copied, then served from the store");
                stage.send_replace(FillStage::NotStreamed);
                return self
                    .put_and_mark(target, digest, len, verified.boxed())
                    .await;
            }
        };
        stage.send_replace(FillStage::Spilled(Arc::clone(&spill)));
        // However this fill stops, its readers learn it (a verdict below makes this a no-op).
        let _verdict = VerdictGuard(Arc::clone(&spill));
        if adopt {
            let result = async {
                let size = spill.write_from(verified).await.map_err(spill_error)?;
                self.store.adopt(&key, spill.path()).await?;
                self.write_marker(target, digest, Marker::blob(size))
                    .await?;
                Ok::<u64, CacheError>(size)
            }
            .await;
            match &result {
                Ok(_) => spill.complete(),
                Err(e) => spill.fail(&e.to_string()),
            }
            return result;
        }
        // S3: the upload starts once the bytes are verified, from the complete spill file. The
        // clients meanwhile get the machine to themselves (on a small one, an upload running
        // alongside slows every client down), bad bytes never reach S3, and nothing needs
        // aborting when they are bad; later requests stream from the file until the blob is
        // published.
        let size = match spill.write_from(verified).await.map_err(spill_error) {
            Ok(size) => size,
            Err(e) => {
                spill.fail(&e.to_string());
                return Err(e);
            }
        };
        spill.complete();
        let body = spill
            .reader(None)
            .map(|r| r.map_err(|e| FillError::Source(e.to_string())))
            .boxed();
        // The clients have their verified bytes whatever happens to the upload now.
        self.put_and_mark(target, digest, len, body).await?;
        Ok(size)
    }

    /// Streams `body` into the blob's key, then writes this repository's marker (in that order:
    /// a marker never names a missing object). Returns the bytes stored.
    async fn put_and_mark(
        &self,
        target: &Target,
        digest: &Digest,
        len: Option<u64>,
        body: crate::store::ByteStream,
    ) -> Result<u64, CacheError> {
        let size = self
            .store
            .put_stream(&keys::blob(digest), len, body)
            .await?;
        self.write_marker(target, digest, Marker::blob(size))
            .await?;
        Ok(size)
    }
}

/// Fails a spill left without a verdict when dropped (the fill was cancelled or panicked).
struct VerdictGuard(Arc<Spill>);

impl Drop for VerdictGuard {
    fn drop(&mut self) {
        self.0
            .fail_unless_ended("the blob fill stopped before its end");
    }
}

fn spill_error(e: SpillError<FillError>) -> CacheError {
    match e {
        SpillError::Source(e) => CacheError::from(e),
        SpillError::Disk(e) => {
            CacheError::Unavailable(format!("writing the blob's spill file failed: {e}"))
        }
    }
}
