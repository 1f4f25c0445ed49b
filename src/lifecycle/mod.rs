//! The cache's lifecycle: what leaves the store and what is put there ahead of a pull.
//!
//! `gc` (mark and sweep by last-pulled time, and eviction by size), `purge` (forget a
//! repository, a tag or a digest), `prefetch` (warm tags and their platforms), `ls` (what is
//! cached). The command line, the admin API and Lambda events all call these functions with the
//! process's [`Cache`](crate::cache::Cache), so the in-process memories forget what is removed.
//! Knows no HTTP.

pub mod gc;
pub mod ls;
pub mod prefetch;
pub mod purge;
pub mod reference;

pub use gc::{GcOptions, GcReport, MIN_OLDER_THAN, Removed, gc};
pub use ls::{DigestEntry, Listing, RepositoryDetail, RepositorySummary, TagEntry, ls};
pub use prefetch::{Platforms, PrefetchReport, prefetch};
pub use purge::{PurgeReport, purge};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::cache::CacheError;
use crate::store::keys::{self, Parsed};
use crate::store::{Key, ObjectInfo, Store, StoreError};

/// Store requests a lifecycle operation has in flight at once (reads and deletes).
const IN_FLIGHT: usize = 16;

/// A tag pointer or marker as read from the store, with the listing entry it was found by.
struct Document {
    parsed: Parsed,
    key: Key,
    bytes: Bytes,
    object: ObjectInfo,
}

/// Reads every tag pointer and marker among `objects` (other keys are passed over),
/// [`IN_FLIGHT`] at a time, in no particular order. One removed since the listing is left out.
async fn read_documents(
    store: &dyn Store,
    objects: impl IntoIterator<Item = ObjectInfo>,
) -> Result<Vec<Document>, StoreError> {
    let reads = objects.into_iter().filter_map(|object| {
        let parsed = keys::parse(&object.key);
        if !matches!(parsed, Parsed::Tag { .. } | Parsed::Marker { .. }) {
            return None;
        }
        let key = parsed.key()?;
        Some(async move {
            let bytes = store.get(&key).await?;
            Ok::<_, StoreError>(bytes.map(|bytes| Document {
                parsed,
                key,
                bytes,
                object,
            }))
        })
    });
    let read: Vec<_> = futures_util::stream::iter(reads)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    read.into_iter().filter_map(Result::transpose).collect()
}

/// Why a lifecycle operation failed as a whole (a failure of one reference inside a prefetch or
/// purge is reported in its report instead).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A reference that does not parse or names no configured upstream.
    #[error("bad reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    /// An option that does not parse (a platform list, a duration).
    #[error("{0}")]
    BadOption(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}
