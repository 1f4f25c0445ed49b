//! The store: content-addressed blobs and small pointer documents, behind one trait.
//!
//! Implementations: [`fs::FsStore`] (the embedded default) and [`s3::S3Store`] (a bucket, blobs
//! served by presigned URL). Keys come only from [`keys`]. Blobs are written through a
//! [`VerifyingStream`]; [`verify`] re-checks a whole store. Interprets no document and decides
//! nothing about caching.
//! Invariant of every implementation: bytes appear under a key only complete — a streamed write
//! that ends in an error leaves nothing visible.

pub mod counted;
pub mod fs;
pub mod keys;
pub mod s3;
pub mod verify;
mod verifying;

pub use verifying::{FillError, VerifyingStream};

use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use keys::Key;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes being written were refused (digest or length mismatch, source failed).
    #[error(transparent)]
    Fill(#[from] FillError),
    /// A remote store failed, after its own retries (S3 unreachable, throttling that did not
    /// let up, access denied, no such bucket).
    #[error("store request on {key} failed: {message}")]
    Backend { key: String, message: String },
}

/// A single byte range `first..=last` within an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

/// How a client gets a blob's bytes.
pub enum BlobRead {
    /// Send the client elsewhere (a presigned URL).
    Redirect(String),
    /// Stream the bytes; `range` is set when a range was asked for and satisfiable.
    Stream {
        total: u64,
        range: Option<ByteRange>,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    },
    /// A range was asked for that lies outside the object.
    Unsatisfiable { total: u64 },
}

pub type ByteStream = BoxStream<'static, Result<Bytes, FillError>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a small object whole (tag pointer, marker, manifest). `None` when absent.
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, StoreError>;

    /// Writes a small object atomically, replacing any previous one.
    async fn put(&self, key: &Key, bytes: Bytes, content_type: &str) -> Result<(), StoreError>;

    /// The size of an object, or `None` when absent.
    async fn head(&self, key: &Key) -> Result<Option<u64>, StoreError>;

    /// Names of the objects directly under `prefix` (one level, no recursion), unordered.
    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError>;

    /// Streams bytes into `key`. The object becomes visible only if the stream ends without an
    /// error; any `Err` aborts the write and leaves nothing behind. Returns the bytes written.
    async fn put_stream(
        &self,
        key: &Key,
        len_hint: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, StoreError>;

    /// The object's bytes as a stream, or `None` when absent (for `verify`; clients use
    /// [`Store::read`]).
    async fn open(
        &self,
        key: &Key,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>, StoreError>;

    /// A fresh path where a blob fill may spill its bytes so that [`Store::adopt`] can make that
    /// very file the object (the filesystem store's temporary directory); `None` when the store
    /// keeps its objects elsewhere and spilled bytes are uploaded with [`Store::put_stream`].
    fn spill_path(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Publishes the complete, verified file at `path` (from [`Store::spill_path`]) as `key`:
    /// flushed to stable storage, then moved into place atomically.
    async fn adopt(&self, key: &Key, path: &std::path::Path) -> Result<(), StoreError> {
        let _ = path;
        Err(StoreError::Backend {
            key: key.to_string(),
            message: "this store cannot adopt a local file".into(),
        })
    }

    /// Like [`Store::read`], but always a stream of the bytes, never a redirect (for clients that
    /// cannot reach the store themselves). Stores that stream anyway use `read`.
    async fn read_through(
        &self,
        key: &Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError> {
        self.read(key, range).await
    }

    /// True when [`Store::read`] answers with redirects (the client fetches the bytes from the
    /// store itself), so blob bytes should not pass through the proxy, not even on a miss.
    fn serves_by_redirect(&self) -> bool {
        false
    }

    /// How a client reads `key`, or `None` when absent.
    async fn read(
        &self,
        key: &Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError>;

    /// Reads a small object with its version tag (an S3 ETag), for a later
    /// [`Store::put_if`] with [`Condition::Matches`]. Stores without conditional writes say so.
    async fn get_versioned(&self, key: &Key) -> Result<Option<(Bytes, String)>, StoreError> {
        Err(unsupported(key))
    }

    /// Writes a small object only if `condition` holds, atomically: the new version tag when it
    /// did, `Ok(None)` when it did not (the object exists, or changed since it was read). The fill
    /// leases of Lambda mode rest on this (S3 `If-None-Match: *` and `If-Match`).
    async fn put_if(
        &self,
        key: &Key,
        bytes: Bytes,
        condition: Condition,
    ) -> Result<Option<String>, StoreError> {
        let _ = (bytes, condition);
        Err(unsupported(key))
    }

    /// Deletes an object; deleting an absent one is not an error.
    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        Err(unsupported(key))
    }

    /// Every object whose key starts with the components `prefix` (`"blobs"`, `"repos/docker.io"`;
    /// `""` for the whole store), recursively, unordered: gc, `ls` and `verify` see the store
    /// through this. Keys are whole store keys (no S3 key prefix); temporary files are not
    /// objects. An object removed while the walk runs may or may not be listed.
    async fn walk(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Err(StoreError::Backend {
            key: prefix.to_owned(),
            message: "this store cannot list its objects".into(),
        })
    }
}

/// One object found by [`Store::walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The store key (parse it with [`keys::parse`]).
    pub key: String,
    pub size: u64,
    /// When the object was last written, in Unix milliseconds.
    pub modified_ms: u64,
}

/// The precondition of [`Store::put_if`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Only if no object exists under the key.
    Absent,
    /// Only if the object still has this version tag (from [`Store::get_versioned`]).
    Matches(String),
}

fn unsupported(key: &Key) -> StoreError {
    StoreError::Backend {
        key: key.to_string(),
        message: "this store has no conditional writes (Lambda mode needs the S3 store)".into(),
    }
}

/// A client's `Range: bytes=` request, before it is checked against the object size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=first-` or `bytes=first-last`
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// The satisfiable range within an object of `total` bytes, or `None` when unsatisfiable.
    pub fn resolve(self, total: u64) -> Option<ByteRange> {
        match self {
            RangeRequest::From { first, last } => {
                if first >= total {
                    return None;
                }
                let last = last.unwrap_or(u64::MAX).min(total - 1);
                Some(ByteRange { first, last })
            }
            RangeRequest::Suffix(n) => {
                if n == 0 || total == 0 {
                    return None;
                }
                Some(ByteRange {
                    first: total.saturating_sub(n),
                    last: total - 1,
                })
            }
        }
    }
}

/// `<pid>-<random>`: names this process's temporary and spill files. The pid tells a start-up
/// clean-up whether their owner still runs; the random part keeps two processes with the same
/// pid (two containers sharing a volume, both pid 1) from ever writing the same file.
pub fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        use std::hash::BuildHasher;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let random = std::collections::hash_map::RandomState::new().hash_one(nanos);
        format!("{}-{random:016x}", std::process::id())
    })
}
