//! Blobs: served from the store when this repository is known to hold them, otherwise filled
//! from the upstream once (concurrent misses share the fill), verified while streaming, and
//! published only when digest and length match.
//!
//! With a store that serves bytes itself (the filesystem), the request that starts a fill is
//! answered while the bytes arrive (a tee: each verified chunk goes to the store and to that
//! client), so a multi-GiB layer does not keep its first client waiting in silence; requests that
//! join a fill wait for it and are then served from the store. If the bytes turn out wrong at the
//! end, the streaming client's body is cut off (clients verify digests; the cut makes them retry)
//! and nothing is stored. With a store that redirects (S3), blob bytes never pass through the
//! proxy by default: every request waits for the fill and then gets the redirect. With
//! `[s3] stream_misses` (server mode only) the request that starts a fill is streamed as with
//! the filesystem store, and all others get the redirect.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{mpsc, oneshot};

use super::{Marker, Registry, Target};
use crate::error::{Code, Error, Wanted};
use crate::oci::{Digest, FillError, VerifyingStream};
use crate::store::{BlobRead, RangeRequest, keys};

/// How a blob GET is answered.
pub enum BlobAnswer {
    /// From the store (a stream or a redirect).
    Stored(BlobRead),
    /// Straight from the upstream while it is being stored (the request that started the fill).
    Passthrough {
        len: Option<u64>,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    },
}

/// What the fill task tells the request that started it, once the upstream has answered.
pub(super) enum FillStart {
    Streaming(Option<u64>),
    /// Not streamed: stored already, or copied by another instance; answer from the store.
    AlreadyStored,
}

/// The request that starts a streamed fill: told when the upstream answered, sent every chunk.
pub(super) type Tee = (
    oneshot::Sender<FillStart>,
    mpsc::Sender<std::io::Result<Bytes>>,
);

/// Chunks buffered between the fill and a slow streaming client; the fill then waits for it.
const TEE_BUFFER: usize = 8;

impl Registry {
    /// How the client gets the blob's bytes (a redirect or a stream), filling it first if needed.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobAnswer, Error> {
        let key = keys::blob(digest);
        // A marker is written only after its object, so with a marker one store request suffices.
        if self.read_marker(target, digest).await?.is_some()
            && let Some(read) = self.store.read(&key, range).await?
        {
            return Ok(BlobAnswer::Stored(read));
        }
        if self.store.head(&key).await?.is_some() {
            self.confirm_shared(target, digest).await?;
        } else if let Some(policy) = &self.fill_policy
            && self.store.serves_by_redirect()
        {
            return self.fill_within_deadline(target, digest, policy).await;
        } else if range.is_none()
            && (!self.store.serves_by_redirect() || self.config.s3.stream_misses)
        {
            if let Some(answer) = self.fill_streaming(target, digest).await? {
                return Ok(answer);
            }
        } else {
            self.fill(target, digest).await?;
        }
        self.stored(&key, range, digest).await
    }

    pub(super) async fn stored(
        &self,
        key: &crate::store::Key,
        range: Option<RangeRequest>,
        digest: &Digest,
    ) -> Result<BlobAnswer, Error> {
        self.store
            .read(key, range)
            .await?
            .map(BlobAnswer::Stored)
            .ok_or_else(|| {
                Error::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    Code::Unavailable,
                    format!("{digest} vanished from the store right after it was written"),
                )
            })
    }

    /// The blob's size for a HEAD, without copying a miss: a miss is answered from an upstream
    /// HEAD.
    pub async fn blob_size(&self, target: &Target, digest: &Digest) -> Result<u64, Error> {
        if let Some(m) = self.read_marker(target, digest).await? {
            return Ok(m.size);
        }
        if let Some(size) = self.store.head(&keys::blob(digest)).await? {
            self.confirm_shared(target, digest).await?;
            return Ok(size);
        }
        let info = target
            .upstream
            .head_blob(&target.repo, digest)
            .await
            .map_err(|e| Error::from_upstream(e, Wanted::Blob))?;
        info.size.ok_or_else(|| {
            Error::new(
                axum::http::StatusCode::BAD_GATEWAY,
                Code::Unavailable,
                format!(
                    "{} answered HEAD for {digest} without a Content-Length",
                    target.alias()
                ),
            )
        })
    }

    /// The bytes are in the store but this repository has no marker for them: either a fill for
    /// this repository is just writing it (join that fill), or they were stored for another
    /// repository and the upstream must confirm this one holds them too. Concurrent requests
    /// share one confirmation (one upstream HEAD), keyed like the fill.
    async fn confirm_shared(&self, target: &Target, digest: &Digest) -> Result<u64, Error> {
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
    ) -> Result<u64, Error> {
        if let Some(m) = self.read_marker(target, digest).await? {
            return Ok(m.size);
        }
        let info = target
            .upstream
            .head_blob(&target.repo, digest)
            .await
            .map_err(|e| Error::from_upstream(e, Wanted::Blob))?;
        let size = match info.size {
            Some(s) => s,
            None => self.store.head(&keys::blob(digest)).await?.unwrap_or(0),
        };
        self.write_marker(target, digest, &Marker::blob(size))
            .await?;
        Ok(size)
    }

    /// Copies a blob from the upstream into the store. Concurrent callers for the same
    /// repository and digest share one upstream GET. The copy runs in its own task: a client
    /// that disconnects does not abort it for the others.
    async fn fill(&self, target: &Target, digest: &Digest) -> Result<u64, Error> {
        let (_, shared) = self.start_fill(target, digest, None);
        shared.await
    }

    /// Starts or joins a fill. The request that starts it gets the bytes as they arrive
    /// (`Some`); one that joins waits for the fill to finish (`None`: read from the store).
    async fn fill_streaming(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<Option<BlobAnswer>, Error> {
        let (start_tx, start_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(TEE_BUFFER);
        let (leader, shared) = self.start_fill(target, digest, Some((start_tx, chunk_tx)));
        if !leader {
            shared.await?;
            return Ok(None);
        }
        match start_rx.await {
            Ok(FillStart::Streaming(len)) => {
                let body = tokio_stream_from(chunk_rx);
                Ok(Some(BlobAnswer::Passthrough { len, body }))
            }
            // Stored by another repository's fill meanwhile, being copied by another instance
            // (its lease is held: this fill waits for it), or the fill failed before a byte
            // arrived: the shared result says which.
            Ok(FillStart::AlreadyStored) | Err(_) => {
                shared.await?;
                Ok(None)
            }
        }
    }

    /// Copies a blob from the upstream into the store. Concurrent callers for the same
    /// repository and digest share one upstream GET. The copy runs in its own task: a client
    /// that disconnects does not abort it for the others. With `tee`, the starter is told when
    /// the upstream answered and is sent every verified chunk as it is stored.
    fn start_fill(
        &self,
        target: &Target,
        digest: &Digest,
        tee: Option<Tee>,
    ) -> (bool, super::flight::SharedResult<u64>) {
        let flight_key = target.scoped_digest(digest);
        let this = self.handle();
        let target = target.clone();
        let digest = digest.clone();
        self.blob_flights.start(flight_key, move || async move {
            if this.leases_server_fills() {
                this.leased_copy(&target, &digest, tee).await
            } else {
                this.copy_blob(&target, &digest, tee, None).await
            }
        })
    }

    /// The copy itself: upstream GET, verified while streamed into the store, then the marker.
    /// With `tee`, the starter is told when the upstream answered and gets every verified chunk;
    /// with `redirects`, a redirect of the upstream GET to another origin is recorded there.
    pub(super) async fn copy_blob(
        &self,
        target: &Target,
        digest: &Digest,
        tee: Option<Tee>,
        redirects: Option<&crate::upstream::RedirectSink>,
    ) -> Result<u64, Error> {
        let (start_tx, chunk_tx) = match tee {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let key = keys::blob(digest);
        // Another flight (another repository) may have finished it meanwhile.
        if self.store.head(&key).await?.is_some() {
            if let Some(s) = start_tx {
                let _ = s.send(FillStart::AlreadyStored);
            }
            return self.confirm_with_upstream(target, digest).await;
        }
        let body = target
            .upstream
            .get_blob_observed(&target.repo, digest, redirects)
            .await
            .map_err(|e| Error::from_upstream(e, Wanted::Blob))?;
        if let Some(s) = start_tx {
            let _ = s.send(FillStart::Streaming(body.len));
        }
        let verified = VerifyingStream::new(body.stream, digest.clone(), body.len);
        let held = Arc::new(Mutex::new(None));
        let stream = tee_to(verified, chunk_tx.clone(), Arc::clone(&held));
        let stored = async {
            let size = self.store.put_stream(&key, body.len, stream).await?;
            self.write_marker(target, digest, &Marker::blob(size))
                .await?;
            Ok::<u64, Error>(size)
        }
        .await;
        // The streaming client's last chunk goes out only now: a client that received the
        // whole body can count on the cache holding it.
        if let Some(tx) = chunk_tx {
            let last = held.lock().unwrap_or_else(|p| p.into_inner()).take();
            let _ = match (&stored, last) {
                (Ok(_), Some(last)) => tx.send(Ok(last)).await,
                (Ok(_), None) => Ok(()),
                (Err(e), _) => tx.send(Err(std::io::Error::other(e.message.clone()))).await,
            };
        }
        let size = stored.inspect_err(|e| {
            tracing::warn!(repo = %target.scoped_name(), %digest, error = %e.message, "blob fill failed");
        })?;
        tracing::info!(repo = %target.scoped_name(), %digest, size, "blob filled");
        Ok(size)
    }
}

/// Passes a verified stream on to the store, copying each chunk to `tee` (if any) one chunk
/// late: the newest chunk waits in `held`, so the final one is never sent here. The fill sends it
/// once the blob is verified and stored, or sends an error instead. A tee whose client went away
/// is dropped and the copy goes on at full speed.
fn tee_to<S>(
    verified: S,
    tee: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    held: Arc<Mutex<Option<Bytes>>>,
) -> crate::store::ByteStream
where
    S: futures_util::Stream<Item = Result<Bytes, FillError>> + Send + Unpin + 'static,
{
    if tee.is_none() {
        return verified.boxed();
    }
    futures_util::stream::unfold((verified, tee), move |(mut s, mut tee)| {
        let held = Arc::clone(&held);
        async move {
            let item = s.next().await?;
            let to_send = match &item {
                Ok(chunk) => held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(chunk.clone())
                    .map(Ok),
                // The fill sends the error itself once the store has cleaned up (temporary file
                // removed, multipart upload aborted): a client that sees the error and retries
                // finds nothing half done.
                Err(_) => {
                    held.lock().unwrap_or_else(|p| p.into_inner()).take();
                    None
                }
            };
            if let (Some(t), Some(msg)) = (&tee, to_send)
                && t.send(msg).await.is_err()
            {
                tee = None;
            }
            Some((item, (s, tee)))
        }
    })
    .boxed()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
