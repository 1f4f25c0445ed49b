//! The S3 store: one object per key in a bucket, under an optional key prefix.
//!
//! - Small objects (tag pointers, markers, manifests) are single `PutObject`/`GetObject` calls.
//! - Keys under `blobs/` are content-addressed and written once: they are sent with
//!   `If-None-Match: *`, and a `412 Precondition Failed` (another writer got there first with the
//!   same bytes) counts as success.
//! - A streamed blob shorter than one part is one `PutObject`; a longer one is a multipart upload
//!   with at most `parts_in_flight` parts uploading at once, so a fill holds about
//!   `part_size × (parts_in_flight + 1)` bytes whatever the blob size. The upload is completed
//!   only when the stream ended without an error (the verifying stream's last item is an `Err` on
//!   a digest or length mismatch); on any failure, and when the fill is dropped half-way, it is
//!   aborted, so nothing is ever visible under the key and no upload is left behind.
//! - Clients read blobs from S3 directly: [`Store::read`] answers a presigned `GET` URL, computed
//!   locally without a request to S3.
//!
//! Every S3 call is logged at `debug` with its operation and key; the SDK retries throttling
//! (503 SlowDown) and transient errors with backoff, and what still fails becomes
//! [`StoreError::Backend`], which clients see as 503.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

mod multipart;

use multipart::{Multipart, PartReader};

use super::{BlobRead, ByteStream, Condition, Key, ObjectInfo, RangeRequest, Store, StoreError};
use crate::aws::AwsSetupError;
use crate::config::{Config, MIB, S3Settings, StoreLocation};

/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// S3's smallest part (all but the last).
const MIN_PART_SIZE: u64 = 5 * MIB;

/// Everything [`S3Store::open`] needs.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for none.
    pub prefix: String,
    pub settings: S3Settings,
    /// Lifetime of presigned blob URLs.
    pub presign_ttl: Duration,
    /// A PEM bundle of extra trusted CA certificates (`AWS_CA_BUNDLE` in [`S3Options::from_config`]).
    pub ca_bundle: Option<PathBuf>,
    /// Fixed credentials instead of the AWS credential chain (tests, embedding).
    pub credentials: Option<Credentials>,
}

impl S3Options {
    /// The options of an `s3://` store, with `AWS_CA_BUNDLE` taken from the process environment;
    /// `None` for another kind of store.
    pub fn from_config(config: &Config) -> Option<S3Options> {
        let StoreLocation::S3 { bucket, prefix } = &config.store else {
            return None;
        };
        Some(S3Options {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            settings: config.s3.clone(),
            presign_ttl: config.presign_ttl,
            ca_bundle: std::env::var_os("AWS_CA_BUNDLE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            credentials: None,
        })
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// `""` or `"<prefix>/"`, prepended to every key.
    key_prefix: String,
    part_size: u64,
    parts_in_flight: usize,
    presign_ttl: Duration,
}

impl S3Store {
    /// Builds the S3 client: region, credentials chain and endpoint from the `[s3]` settings and
    /// the standard AWS sources, the HTTPS client with `AWS_CA_BUNDLE` if given. No network I/O:
    /// credentials are resolved on the first request, the bucket is not checked.
    pub async fn open(options: S3Options) -> Result<S3Store, AwsSetupError> {
        let S3Options {
            bucket,
            prefix,
            settings,
            presign_ttl,
            ca_bundle,
            credentials,
        } = options;

        let sdk = crate::aws::load_sdk_config(
            settings.region.as_deref(),
            ca_bundle.as_deref(),
            credentials,
            settings.max_attempts,
        )
        .await?;

        // The SDK resolves AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / profile settings itself; we
        // look the same keys up only to know whether an override is in effect.
        let env_endpoint = sdk
            .service_config()
            .and_then(|c| {
                let key = aws_types::service_config::ServiceConfigKey::builder()
                    .service_id("S3")
                    .env("AWS_ENDPOINT_URL")
                    .profile("endpoint_url")
                    .build()
                    .ok()?;
                c.load_config(key)
            })
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        let endpoint = settings
            .endpoint
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned());
        let force_path_style = settings
            .force_path_style
            .unwrap_or(endpoint.is_some() || env_endpoint.is_some());

        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(force_path_style)
            // Checksums only where S3 requires them: S3-compatible servers differ in their
            // support of the SDK's default CRC checksums, and every blob is verified by digest.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &endpoint {
            s3 = s3.endpoint_url(e);
        }
        tracing::info!(
            %bucket,
            %prefix,
            region = ?sdk.region(),
            endpoint = ?endpoint.as_ref().or(env_endpoint.as_ref()),
            force_path_style,
            ca_bundle = ?ca_bundle,
            "S3 store configured"
        );
        Ok(S3Store::new(
            Client::from_conf(s3.build()),
            bucket,
            prefix,
            &settings,
            presign_ttl,
        ))
    }

    /// A store over a ready client (whose configuration is the caller's business).
    pub fn new(
        client: Client,
        bucket: String,
        prefix: String,
        settings: &S3Settings,
        presign_ttl: Duration,
    ) -> S3Store {
        let prefix = prefix.trim_matches('/');
        S3Store {
            client,
            bucket,
            key_prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            part_size: settings.part_size.max(MIN_PART_SIZE),
            parts_in_flight: settings.parts_in_flight.max(1),
            presign_ttl,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of a store key: `<prefix>/<key>`, or `<key>` without a prefix.
    pub fn object_key(&self, key: &Key) -> String {
        format!("{}{}", self.key_prefix, key.as_str())
    }

    /// The part size used for a blob of `len_hint` bytes: the configured size, grown (in whole
    /// MiB) so that a known length never needs more than 10,000 parts.
    pub fn part_size_for(&self, len_hint: Option<u64>) -> u64 {
        part_size_for(self.part_size, len_hint)
    }

    async fn put_small(
        &self,
        key: &Key,
        object_key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StoreError> {
        let write_once = is_write_once(key);
        tracing::debug!(
            op = "PutObject",
            key = object_key,
            bytes = bytes.len(),
            write_once
        );
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key)
            .content_type(content_type)
            .content_length(bytes.len() as i64)
            .body(S3Body::from(bytes));
        if write_once {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if write_once && is_precondition_failed(&e) => {
                tracing::debug!(key = object_key, "already stored by another writer");
                Ok(())
            }
            Err(e) => Err(backend(object_key, "PutObject", &e)),
        }
    }
}

impl S3Store {
    /// GetObject, with a missing key as `None`; returns the full object key with the output.
    async fn get_object(
        &self,
        key: &Key,
    ) -> Result<Option<(String, aws_sdk_s3::operation::get_object::GetObjectOutput)>, StoreError>
    {
        let k = self.object_key(key);
        tracing::debug!(op = "GetObject", key = %k);
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&k)
            .send()
            .await
        {
            Ok(out) => Ok(Some((k, out))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(backend(&k, "GetObject", &e)),
        }
    }
}

/// The whole body of a GetObject answer for `k`.
async fn collect_body(
    k: &str,
    out: aws_sdk_s3::operation::get_object::GetObjectOutput,
) -> Result<Bytes, StoreError> {
    let body = out.body.collect().await.map_err(|e| StoreError::Backend {
        key: k.to_owned(),
        message: format!(
            "S3 GetObject: reading the body: {}",
            DisplayErrorContext(&e)
        ),
    })?;
    Ok(body.into_bytes())
}

#[async_trait::async_trait]
impl Store for S3Store {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        let Some((k, out)) = self.get_object(key).await? else {
            return Ok(None);
        };
        Ok(Some(collect_body(&k, out).await?))
    }

    async fn put(&self, key: &Key, bytes: Bytes, content_type: &str) -> Result<(), StoreError> {
        let k = self.object_key(key);
        self.put_small(key, &k, bytes, content_type).await
    }

    async fn head(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        let k = self.object_key(key);
        tracing::debug!(op = "HeadObject", key = %k);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&k)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(backend(&k, "HeadObject", &e)),
        }
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        let dir = format!("{}/", self.object_key(prefix));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            tracing::debug!(op = "ListObjectsV2", key = %dir, continuation = token.is_some());
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&dir)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| backend(&dir, "ListObjectsV2", &e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key()?.strip_prefix(dir.as_str()))
                    .filter(|name| !name.is_empty() && !name.contains('/'))
                    .map(str::to_owned),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    async fn put_stream(
        &self,
        key: &Key,
        len_hint: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, StoreError> {
        let k = self.object_key(key);
        let part_size = self.part_size_for(len_hint);
        let part_bytes = usize::try_from(part_size).unwrap_or(usize::MAX);
        // Never reserve more than the blob needs: most blobs are far smaller than one part.
        let first_capacity = len_hint.map_or(part_size, |l| l.min(part_size));
        let mut buf = BytesMut::with_capacity(usize::try_from(first_capacity).unwrap_or(0));
        let mut reader = PartReader {
            body,
            carry: None,
            part_size: part_bytes,
        };

        let ended = reader.fill(&mut buf).await?;
        if ended && buf.len() < part_bytes {
            let len = buf.len() as u64;
            self.put_small(key, &k, buf.freeze(), "application/octet-stream")
                .await?;
            return Ok(len);
        }

        let mut upload = Multipart::create(self, &k).await?;
        let result = upload.run(reader, buf, ended).await;
        match result {
            Ok(written) => match upload.complete(is_write_once(key)).await {
                Ok(()) => Ok(written),
                Err(e) => {
                    upload.abort().await;
                    Err(e)
                }
            },
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    async fn open(
        &self,
        key: &Key,
    ) -> Result<Option<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>>, StoreError>
    {
        let Some((_, out)) = self.get_object(key).await? else {
            return Ok(None);
        };
        let reader = out.body.into_async_read();
        Ok(Some(tokio_util::io::ReaderStream::new(reader).boxed()))
    }

    fn serves_by_redirect(&self) -> bool {
        true
    }

    async fn read(
        &self,
        key: &Key,
        _range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError> {
        // The client sends its Range header to S3 itself. Presigning is local: no S3 request, so
        // an absent object is S3's 404 to the client (callers read only what they know exists).
        let k = self.object_key(key);
        tracing::debug!(op = "presign GetObject", key = %k, ttl_secs = self.presign_ttl.as_secs());
        let config =
            PresigningConfig::expires_in(self.presign_ttl).map_err(|e| StoreError::Backend {
                key: k.clone(),
                message: format!("presign: {e}"),
            })?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&k)
            .presigned(config)
            .await
            .map_err(|e| backend(&k, "presign GetObject", &e))?;
        Ok(Some(BlobRead::Redirect(req.uri().to_owned())))
    }

    async fn read_through(
        &self,
        key: &Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError> {
        let k = self.object_key(key);
        let mut get = self.client.get_object().bucket(&self.bucket).key(&k);
        // Without a range the answer's length is the object's; with one, its size comes first.
        let (total, range) = match range {
            None => (None, None),
            Some(r) => {
                let Some(total) = self.head(key).await? else {
                    return Ok(None);
                };
                match r.resolve(total) {
                    Some(r) => {
                        get = get.range(format!("bytes={}-{}", r.first, r.last));
                        (Some(total), Some(r))
                    }
                    None => return Ok(Some(BlobRead::Unsatisfiable { total })),
                }
            }
        };
        tracing::debug!(op = "GetObject", key = %k, ?range);
        let out = match get.send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(backend(&k, "GetObject", &e)),
        };
        let total = match total {
            Some(t) => t,
            None => out
                .content_length()
                .and_then(|l| u64::try_from(l).ok())
                .ok_or_else(|| StoreError::Backend {
                    key: k.clone(),
                    message: "S3 GetObject answered without a Content-Length".into(),
                })?,
        };
        let body = tokio_util::io::ReaderStream::new(out.body.into_async_read()).boxed();
        Ok(Some(BlobRead::Stream { total, range, body }))
    }

    async fn get_versioned(&self, key: &Key) -> Result<Option<(Bytes, String)>, StoreError> {
        let Some((k, out)) = self.get_object(key).await? else {
            return Ok(None);
        };
        let e_tag = out.e_tag().unwrap_or_default().to_owned();
        Ok(Some((collect_body(&k, out).await?, e_tag)))
    }

    async fn put_if(
        &self,
        key: &Key,
        bytes: Bytes,
        condition: Condition,
    ) -> Result<Option<String>, StoreError> {
        let k = self.object_key(key);
        tracing::debug!(op = "PutObject", key = %k, bytes = bytes.len(), ?condition);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&k)
            .content_type("application/json")
            .content_length(bytes.len() as i64)
            .body(S3Body::from(bytes));
        req = match &condition {
            Condition::Absent => req.if_none_match("*"),
            Condition::Matches(e_tag) => req.if_match(e_tag),
        };
        match req.send().await {
            // S3 always answers a PUT with the new ETag.
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_owned())),
            // 412: the condition failed; 409 ConditionalRequestConflict: another conditional
            // write to the key was in progress. Either way another writer won.
            Err(e) if is_precondition_failed(&e) || is_conditional_conflict(&e) => Ok(None),
            Err(e) => Err(backend(&k, "PutObject", &e)),
        }
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let k = self.object_key(key);
        tracing::debug!(op = "DeleteObject", key = %k);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&k)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| backend(&k, "DeleteObject", &e))
    }

    async fn walk(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.trim_matches('/');
        let dir = if prefix.is_empty() {
            self.key_prefix.clone()
        } else {
            format!("{}{prefix}/", self.key_prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            tracing::debug!(op = "ListObjectsV2", key = %dir, recursive = true, continuation = token.is_some());
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&dir)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| backend(&dir, "ListObjectsV2", &e))?;
            out.extend(page.contents().iter().filter_map(|o| {
                let key = o.key()?.strip_prefix(self.key_prefix.as_str())?;
                let modified_ms = o
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(0);
                Some(ObjectInfo {
                    key: key.to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    modified_ms,
                })
            }));
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }
}

fn part_size_for(configured: u64, len_hint: Option<u64>) -> u64 {
    let configured = configured.max(MIN_PART_SIZE);
    match len_hint {
        Some(len) if len.div_ceil(configured) > MAX_PARTS => {
            len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB
        }
        _ => configured,
    }
}

/// Content-addressed keys: any two writers write the same bytes, so the first one wins.
fn is_write_once(key: &Key) -> bool {
    key.as_str().starts_with("blobs/")
}

fn is_precondition_failed<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(s) => s.err().code() == Some("PreconditionFailed"),
        _ => false,
    }
}

fn is_conditional_conflict<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(s) => s.err().code() == Some("ConditionalRequestConflict"),
        _ => false,
    }
}

fn backend<E>(
    key: &str,
    op: &str,
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = match e {
        SdkError::ServiceError(s) => format!(
            "S3 {op}: HTTP {} {}: {}",
            s.raw().status().as_u16(),
            s.err().code().unwrap_or("(no code)"),
            s.err().message().unwrap_or("(no message)")
        ),
        other => format!("S3 {op}: {}", DisplayErrorContext(other)),
    };
    StoreError::Backend {
        key: key.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_stay_within_10000_parts() {
        let p = 8 * MIB;
        assert_eq!(part_size_for(p, None), p);
        assert_eq!(part_size_for(p, Some(1)), p);
        assert_eq!(part_size_for(p, Some(p * MAX_PARTS)), p);
        let grown = part_size_for(p, Some(p * MAX_PARTS + 1));
        assert!(grown > p && grown.is_multiple_of(MIB));
        assert!((p * MAX_PARTS + 1).div_ceil(grown) <= MAX_PARTS);
        let five_tib = 5 * 1024 * 1024 * MIB;
        assert!(five_tib.div_ceil(part_size_for(p, Some(five_tib))) <= MAX_PARTS);
        // Below S3's minimum part size is never used.
        assert_eq!(part_size_for(MIB, None), MIN_PART_SIZE);
    }
}
