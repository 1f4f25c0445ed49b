//! Blobs: served from the store when this repository is known to hold them, otherwise filled
//! from the upstream once (concurrent misses share the fill), verified while streaming, and
//! published only when digest and length match.

use super::{Marker, Registry, Target};
use crate::error::{Code, Error, Wanted};
use crate::oci::{Digest, VerifyingStream};
use crate::store::{BlobRead, RangeRequest, keys};

pub type BlobAnswer = BlobRead;

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
            return Ok(read);
        }
        if self.store.head(&key).await?.is_some() {
            self.confirm_with_upstream(target, digest).await?;
        } else {
            self.fill(target, digest).await?;
        }
        self.store.read(&key, range).await?.ok_or_else(|| {
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
            self.confirm_with_upstream(target, digest).await?;
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

    /// The bytes are in the store (for another repository); the upstream confirms this
    /// repository holds them too before they are served under its name.
    async fn confirm_with_upstream(&self, target: &Target, digest: &Digest) -> Result<(), Error> {
        let info = target
            .upstream
            .head_blob(&target.repo, digest)
            .await
            .map_err(|e| Error::from_upstream(e, Wanted::Blob))?;
        let size = match info.size {
            Some(s) => s,
            None => self.store.head(&keys::blob(digest)).await?.unwrap_or(0),
        };
        self.write_marker(target, digest, &Marker::blob(size)).await
    }

    /// Copies a blob from the upstream into the store. Concurrent callers for the same
    /// repository and digest share one upstream GET. The copy runs in its own task: a client
    /// that disconnects does not abort it for the others.
    async fn fill(&self, target: &Target, digest: &Digest) -> Result<u64, Error> {
        let flight_key = format!("{}@{digest}", target.scoped_name());
        let this = self.handle();
        let target = target.clone();
        let digest = digest.clone();
        self.blob_flights
            .run(flight_key, async move {
                let key = keys::blob(&digest);
                // Another flight (another repository) may have finished it meanwhile.
                if let Some(size) = this.store.head(&key).await? {
                    this.confirm_with_upstream(&target, &digest).await?;
                    return Ok(size);
                }
                let body = target
                    .upstream
                    .get_blob(&target.repo, &digest)
                    .await
                    .map_err(|e| Error::from_upstream(e, Wanted::Blob))?;
                let verified = VerifyingStream::new(body.stream, digest.clone(), body.len);
                let size = this
                    .store
                    .put_stream(&key, body.len, Box::pin(verified))
                    .await
                    .map_err(|e| {
                        tracing::warn!(repo = %target.scoped_name(), %digest, error = %e, "blob fill failed");
                        Error::from(e)
                    })?;
                this.write_marker(
                    &target,
                    &digest,
                    &Marker::blob(size),
                )
                .await?;
                tracing::info!(repo = %target.scoped_name(), %digest, size, "blob filled");
                Ok(size)
            })
            .await
    }
}
