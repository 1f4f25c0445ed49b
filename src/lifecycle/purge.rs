//! `purge`: forget a repository, a tag or a digest so that the next pull refetches it.

use serde::Serialize;

use super::LifecycleError;
use crate::cache::Cache;

/// What a purge removed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    pub removed: Vec<String>,
}

/// Purges each reference: `[upstream/]repo`, `repo:tag` or `repo@digest`.
pub async fn purge(cache: &Cache, refs: &[String]) -> Result<PurgeReport, LifecycleError> {
    let _ = (cache, refs);
    Ok(PurgeReport::default()) // stub: the purge/prefetch helper writes this
}
