//! Blobs longer than one part, uploaded to S3 in parts: the stream cut into exact parts
//! ([`PartReader`]), at most `parts_in_flight` uploading at once, buffers reused, and the upload
//! completed only after the stream ended cleanly, or aborted (also when dropped half-way).

use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::task::JoinSet;

use aws_sdk_s3::error::DisplayErrorContext;

use super::{MAX_PARTS, S3Store, backend, is_precondition_failed};
use crate::store::{ByteStream, StoreError};

/// Cuts a byte stream into parts of exactly `part_size` bytes. Each part is read into its own
/// buffer allocated at its final size, and a chunk that crosses a part boundary is split (its
/// tail carried over, not copied twice). Growing one buffer past its capacity instead would
/// double it: every 8 MiB part would hold a 16 MiB allocation while in flight.
pub(super) struct PartReader {
    pub(super) body: ByteStream,
    pub(super) carry: Option<Bytes>,
    pub(super) part_size: usize,
}

impl PartReader {
    /// Reads into `buf` until it holds `part_size` bytes (`Ok(false)`) or the stream ends
    /// (`Ok(true)`). A stream error is returned as is.
    pub(super) async fn fill(&mut self, buf: &mut BytesMut) -> Result<bool, StoreError> {
        while buf.len() < self.part_size {
            let chunk = match self.carry.take() {
                Some(c) => c,
                None => match self.body.next().await {
                    None => return Ok(true),
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => return Err(StoreError::Fill(e)),
                },
            };
            let room = self.part_size - buf.len();
            if chunk.len() > room {
                buf.extend_from_slice(&chunk[..room]);
                self.carry = Some(chunk.slice(room..));
            } else {
                buf.extend_from_slice(&chunk);
            }
        }
        Ok(false)
    }
}

/// One multipart upload in progress. Dropped before [`Multipart::complete`] or
/// [`Multipart::abort`] finished (the fill was cancelled), it aborts the upload in a spawned task
/// after the parts in flight have settled, so no part lands after the abort.
pub(super) struct Multipart {
    client: Client,
    bucket: Arc<str>,
    key: Arc<str>,
    upload_id: Arc<str>,
    parts_in_flight: usize,
    tasks: JoinSet<Result<(CompletedPart, Option<BytesMut>), StoreError>>,
    parts: Vec<CompletedPart>,
    /// Buffers of uploaded parts, reused for the next parts: a fill allocates at most
    /// `parts_in_flight + 1` part buffers whatever the blob's size, instead of one per part
    /// (freed on whichever worker finished the upload, where glibc tends to keep them resident).
    spare: Vec<BytesMut>,
    /// Set once the upload is completed or aborted: nothing left for `Drop` to clean up.
    settled: bool,
}

impl Multipart {
    pub(super) async fn create(store: &S3Store, key: &str) -> Result<Multipart, StoreError> {
        tracing::debug!(op = "CreateMultipartUpload", key);
        let out = store
            .client
            .create_multipart_upload()
            .bucket(&store.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(|e| backend(key, "CreateMultipartUpload", &e))?;
        let upload_id = out.upload_id().ok_or_else(|| StoreError::Backend {
            key: key.to_owned(),
            message: "S3 CreateMultipartUpload answered without an upload id".into(),
        })?;
        Ok(Multipart {
            client: store.client.clone(),
            bucket: store.bucket.as_str().into(),
            key: key.into(),
            upload_id: upload_id.into(),
            parts_in_flight: store.parts_in_flight,
            tasks: JoinSet::new(),
            parts: Vec::new(),
            spare: Vec::new(),
            settled: false,
        })
    }

    /// Uploads `buf` and the rest of `body` as parts of `part_size` bytes (the last one shorter),
    /// at most `parts_in_flight` at once. Returns the bytes uploaded once every part is stored.
    pub(super) async fn run(
        &mut self,
        mut reader: PartReader,
        mut buf: BytesMut,
        mut ended: bool,
    ) -> Result<u64, StoreError> {
        let part_size = reader.part_size;
        let mut written = 0u64;
        let mut part_number = 0u64;
        loop {
            if buf.len() == part_size || (ended && !buf.is_empty()) {
                let part = std::mem::take(&mut buf).freeze();
                part_number += 1;
                if part_number > MAX_PARTS {
                    return Err(StoreError::Backend {
                        key: self.key.to_string(),
                        message: format!(
                            "blob larger than {MAX_PARTS} parts of {part_size} bytes; raise [s3] part_size"
                        ),
                    });
                }
                while self.tasks.len() >= self.parts_in_flight {
                    self.join_one().await?;
                }
                written += part.len() as u64;
                self.spawn_part(part_number as i32, part);
            }
            if ended {
                break;
            }
            // Surface a failed part early rather than after reading the whole stream.
            while let Some(done) = self.tasks.try_join_next() {
                self.settle_part(done)?;
            }
            if buf.capacity() == 0 {
                buf = match self.spare.pop() {
                    Some(mut b) if b.capacity() >= part_size => {
                        b.clear();
                        b
                    }
                    _ => BytesMut::with_capacity(part_size),
                };
            }
            ended = reader.fill(&mut buf).await?;
        }
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        Ok(written)
    }

    fn spawn_part(&mut self, part_number: i32, data: Bytes) {
        let client = self.client.clone();
        let (bucket, key, upload_id) = (
            Arc::clone(&self.bucket),
            Arc::clone(&self.key),
            Arc::clone(&self.upload_id),
        );
        self.tasks.spawn(async move {
            tracing::debug!(op = "UploadPart", key = %key, part = part_number, bytes = data.len());
            let out = client
                .upload_part()
                .bucket(&*bucket)
                .key(&*key)
                .upload_id(&*upload_id)
                .part_number(part_number)
                .content_length(data.len() as i64)
                .body(S3Body::from(data.clone()))
                .send()
                .await
                .map_err(|e| backend(&key, "UploadPart", &e))?;
            let e_tag = out.e_tag().ok_or_else(|| StoreError::Backend {
                key: key.to_string(),
                message: format!("S3 UploadPart {part_number} answered without an ETag"),
            })?;
            let part = CompletedPart::builder()
                .part_number(part_number)
                .e_tag(e_tag)
                .build();
            // The SDK has let go of its copy of the body: the buffer can be reused.
            Ok((part, data.try_into_mut().ok()))
        });
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        if let Some(done) = self.tasks.join_next().await {
            self.settle_part(done)?;
        }
        Ok(())
    }

    fn settle_part(&mut self, done: Joined) -> Result<(), StoreError> {
        let (part, buf) = flatten(done, &self.key)?;
        self.parts.push(part);
        self.spare.extend(buf);
        Ok(())
    }

    /// Publishes the object. With `write_once`, a 412 (the key exists: same digest, same bytes)
    /// is success, and this upload is aborted instead.
    pub(super) async fn complete(&mut self, write_once: bool) -> Result<(), StoreError> {
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        tracing::debug!(op = "CompleteMultipartUpload", key = %self.key, parts = parts.len(), write_once);
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&*self.bucket)
            .key(&*self.key)
            .upload_id(&*self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if write_once {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => {
                self.settled = true;
                Ok(())
            }
            Err(e) if write_once && is_precondition_failed(&e) => {
                tracing::debug!(key = %self.key, "already stored by another writer");
                self.abort().await;
                Ok(())
            }
            Err(e) => Err(backend(&self.key, "CompleteMultipartUpload", &e)),
        }
    }

    /// Waits for the parts in flight, then aborts the upload (best effort: a failure is logged,
    /// and the bucket's lifecycle rule for incomplete uploads is the backstop).
    pub(super) async fn abort(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        abort_upload(&self.client, &self.bucket, &self.key, &self.upload_id).await;
        self.settled = true;
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, upload_id = %self.upload_id, "multipart upload abandoned without a runtime to abort it");
            return;
        };
        let mut tasks = std::mem::take(&mut self.tasks);
        let client = self.client.clone();
        let (bucket, key, upload_id) = (
            Arc::clone(&self.bucket),
            Arc::clone(&self.key),
            Arc::clone(&self.upload_id),
        );
        runtime.spawn(async move {
            while tasks.join_next().await.is_some() {}
            abort_upload(&client, &bucket, &key, &upload_id).await;
        });
    }
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    tracing::debug!(op = "AbortMultipartUpload", key, upload_id);
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(key, upload_id, error = %DisplayErrorContext(&e), "could not abort a multipart upload");
    }
}

/// What a part upload task ends with: the part, and its buffer when it can be reused.
type Joined = Result<Result<(CompletedPart, Option<BytesMut>), StoreError>, tokio::task::JoinError>;

fn flatten(joined: Joined, key: &str) -> Result<(CompletedPart, Option<BytesMut>), StoreError> {
    joined.map_err(|e| StoreError::Backend {
        key: key.to_owned(),
        message: format!("part upload task failed: {e}"),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks that straddle part boundaries are split: every part but the last is exactly
    /// `part_size` bytes in a buffer allocated at that size (never grown, so never doubled), and
    /// the parts put back together are the stream.
    #[tokio::test]
    async fn parts_are_cut_exactly_and_never_outgrow_their_buffer() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, crate::store::FillError>> = data
            .chunks(777)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut reader = PartReader {
            body: futures_util::stream::iter(chunks).boxed(),
            carry: None,
            part_size: 1000,
        };
        let mut joined = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let mut buf = BytesMut::with_capacity(1000);
            let ended = reader.fill(&mut buf).await.unwrap();
            assert_eq!(buf.capacity(), 1000, "a part buffer grew");
            if !buf.is_empty() {
                sizes.push(buf.len());
                joined.extend_from_slice(&buf);
            }
            if ended {
                break;
            }
        }
        assert_eq!(sizes, vec![1000; 10]);
        assert_eq!(joined, data);
    }
}
