//! `prefetch`: warm tags (index → platform manifests → configs and layers, and referrers).

use serde::Serialize;

use super::LifecycleError;
use crate::cache::Cache;

/// Which platforms of an index a prefetch warms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Platforms {
    #[default]
    All,
    /// `os/arch[/variant]` entries.
    Only(Vec<String>),
}

impl std::str::FromStr for Platforms {
    type Err = LifecycleError;

    /// `all`, or a comma-separated list of `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Platforms, LifecycleError> {
        if s == "all" {
            return Ok(Platforms::All);
        }
        Ok(Platforms::Only(s.split(',').map(str::to_owned).collect()))
    }
}

/// What a prefetch warmed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchReport {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// References that failed, with why.
    pub failed: Vec<(String, String)>,
}

/// Prefetches each reference (`[upstream/]repo:tag` or `repo@digest`).
pub async fn prefetch(
    cache: &Cache,
    refs: &[String],
    platforms: &Platforms,
) -> Result<PrefetchReport, LifecycleError> {
    let _ = (cache, refs, platforms);
    Ok(PrefetchReport::default()) // stub: the purge/prefetch helper writes this
}
