//! What can go wrong answering from the cache, in the cache's own words.
//!
//! The cache never picks an HTTP status: the HTTP edge (`crate::http::error`) maps each kind to a
//! status and an OCI error code, once. Errors are cheap to clone, because a single-flight run
//! hands its outcome to every request that joined it.

use std::sync::Arc;

use crate::store::{FillError, StoreError};
use crate::upstream::UpstreamError;

/// What was being looked for, so that an upstream's "not found" becomes the right kind of
/// unknown (manifest, blob or repository).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    Manifest,
    Blob,
    Repository,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// No upstream by that name is configured.
    #[error("{0}")]
    NameUnknown(String),
    /// A manifest that is not there or not acceptable to the client.
    #[error("{0}")]
    ManifestUnknown(String),
    /// A repository name that is not one (an asynchronous fill's event).
    #[error("{0}")]
    NameInvalid(String),
    /// A digest that is not one (an asynchronous fill's event).
    #[error("{0}")]
    DigestInvalid(String),
    /// The repository is outside its upstream's allow-list.
    #[error("{0}")]
    Denied(String),
    /// The upstream failed, or has no such thing.
    #[error("{source}")]
    Upstream {
        source: Arc<UpstreamError>,
        wanted: Wanted,
    },
    /// The upstream answered, but with something the cache cannot use; nothing was stored.
    #[error("{0}")]
    BadUpstream(String),
    /// The store failed.
    #[error("cache store unavailable: {0}")]
    Store(Arc<StoreError>),
    /// A blob's bytes were refused (wrong digest or length, or cut off); nothing was stored.
    #[error("upstream blob rejected, nothing stored: {0}")]
    Fill(Arc<FillError>),
    /// Another party holds the work; try again after `retry_after` seconds.
    #[error("{message}")]
    Busy { message: String, retry_after: u64 },
    /// A local resource (the spill disk, the store right after a write) failed.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: a background task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CacheError {
    pub fn upstream(e: UpstreamError, wanted: Wanted) -> CacheError {
        CacheError::Upstream {
            source: Arc::new(e),
            wanted,
        }
    }

    /// A failure that may pass (the upstream, the store or a resource is down or busy), as
    /// opposed to an answer (not found, denied, invalid): only these are served stale.
    pub fn is_transient(&self) -> bool {
        match self {
            CacheError::NameUnknown(_)
            | CacheError::ManifestUnknown(_)
            | CacheError::NameInvalid(_)
            | CacheError::DigestInvalid(_)
            | CacheError::Denied(_) => false,
            CacheError::Upstream { source, .. } => !matches!(
                **source,
                UpstreamError::NotFound { .. } | UpstreamError::Denied { .. }
            ),
            CacheError::BadUpstream(_)
            | CacheError::Store(_)
            | CacheError::Fill(_)
            | CacheError::Busy { .. }
            | CacheError::Unavailable(_)
            | CacheError::Internal(_) => true,
        }
    }
}

impl From<StoreError> for CacheError {
    fn from(e: StoreError) -> CacheError {
        match e {
            StoreError::Fill(f) => CacheError::Fill(Arc::new(f)),
            e => CacheError::Store(Arc::new(e)),
        }
    }
}

impl From<FillError> for CacheError {
    fn from(e: FillError) -> CacheError {
        CacheError::Fill(Arc::new(e))
    }
}

/// A cache that cannot be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream {alias} has a secret_arn but no Secrets Manager client was configured")]
    NoSecretsClient { alias: String },
    #[error("cannot build HTTP client for {alias}: {detail}")]
    HttpClient { alias: String, detail: String },
}
