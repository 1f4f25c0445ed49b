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

use crate::cache::CacheError;
use crate::store::StoreError;

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
