//! `ls`: what the cache holds, by repository.

use serde::Serialize;

use super::LifecycleError;
use crate::cache::Cache;

/// Cached repositories with their tags and digests.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub repositories: Vec<serde_json::Value>,
}

/// Lists every cached repository, or one (`[upstream/]repo`).
pub async fn ls(cache: &Cache, repo: Option<&str>) -> Result<Listing, LifecycleError> {
    let _ = (cache, repo);
    Ok(Listing::default()) // stub: the gc helper writes this
}
