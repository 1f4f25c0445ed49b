//! `prefetch`: warm tags (index → platform manifests, nested indexes too → configs and layers;
//! the referrers of every manifest warmed, with their own configs and layers).
//!
//! Everything goes through the cache exactly as a client's pull would (the manifest endpoint's
//! path, the blob path with its single-flight fills), so a prefetch racing a pull of the same
//! image shares its fills, and what it leaves is what a pull leaves.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::LifecycleError;
use super::reference::{Resolved, Scope, resolve_all};
use crate::cache::{Cache, CacheError, ManifestAnswer};
use crate::oci::media::{self, ClientAccept};
use crate::oci::{Digest, Reference, Tag};

/// The tag of a reference that names none.
const DEFAULT_TAG: &str = "latest";

/// Blobs of one reference copied at once.
const BLOB_CONCURRENCY: usize = 4;

/// Which platforms of an index a prefetch warms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Platforms {
    /// Every child of an index (attestations included).
    #[default]
    All,
    /// `os/arch[/variant]` entries; an entry without a variant matches every variant.
    Only(Vec<String>),
}

impl std::str::FromStr for Platforms {
    type Err = LifecycleError;

    /// `all`, or a comma-separated list of `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Platforms, LifecycleError> {
        let s = s.trim();
        if s == "all" {
            return Ok(Platforms::All);
        }
        let mut out = Vec::new();
        for entry in s.split(',').map(str::trim) {
            let parts: Vec<&str> = entry.split('/').collect();
            let valid = (2..=3).contains(&parts.len())
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                });
            if !valid {
                return Err(LifecycleError::BadOption(format!(
                    "bad platform {:?}: expected `all` or a comma-separated list of os/arch[/variant] (e.g. linux/amd64,linux/arm64/v8)",
                    crate::oci::truncate_for_message(entry)
                )));
            }
            out.push(entry.to_owned());
        }
        Ok(Platforms::Only(out))
    }
}

impl Platforms {
    /// Whether an index child with platform `p` is warmed; each wanted entry it matches is
    /// noted in `matched`.
    fn select(&self, p: Option<&Platform>, matched: &mut BTreeSet<String>) -> bool {
        let Platforms::Only(wanted) = self else {
            return true;
        };
        let Some(p) = p else { return false };
        let mut any = false;
        for w in wanted {
            let mut parts = w.split('/');
            if parts.next() == Some(p.os.as_str())
                && parts.next() == Some(p.architecture.as_str())
                && parts.next().is_none_or(|v| p.variant.as_deref() == Some(v))
            {
                matched.insert(w.clone());
                any = true;
            }
        }
        any
    }
}

/// What a prefetch warmed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchReport {
    /// References warmed completely, canonical (`<upstream>/<repo>:<tag>` or `…@<digest>`).
    pub warmed: Vec<String>,
    /// Manifests (indexes, platform manifests, referrers) now in the cache.
    pub manifests: u64,
    /// Configs and layers now in the cache.
    pub blobs: u64,
    /// Of those, the ones that were not cached for their repository before.
    pub fetched_blobs: u64,
    /// Bytes of the manifests and blobs above.
    pub bytes: u64,
    /// References that failed, with why.
    pub failed: Vec<(String, String)>,
}

/// Prefetches each reference (`[upstream/]repo[:tag]`, default tag `latest`, or `repo@digest`).
/// Every reference is checked first: one that does not parse or resolve fails the whole prefetch
/// before anything is fetched. A reference that fails later is reported in `failed`; the others
/// are still warmed.
pub async fn prefetch(
    cache: &Cache,
    refs: &[String],
    platforms: &Platforms,
) -> Result<PrefetchReport, LifecycleError> {
    let resolved = resolve_all(cache, refs)?;
    let mut report = PrefetchReport::default();
    for r in &resolved {
        let mut counts = PrefetchReport::default();
        match warm(cache, r, platforms, &mut counts).await {
            Ok(()) if r.scope == Scope::Repository => {
                report
                    .warmed
                    .push(format!("{}:{DEFAULT_TAG}", r.canonical()));
            }
            Ok(()) => report.warmed.push(r.canonical()),
            Err(e) => report.failed.push((r.text.clone(), e.to_string())),
        }
        // What was warmed before a failure is in the cache all the same.
        report.manifests += counts.manifests;
        report.blobs += counts.blobs;
        report.fetched_blobs += counts.fetched_blobs;
        report.bytes += counts.bytes;
    }
    Ok(report)
}

/// The fields of a manifest or index a prefetch follows.
#[derive(Default, Deserialize)]
struct Links {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

fn links(m: &ManifestAnswer) -> Links {
    serde_json::from_slice(&m.bytes).unwrap_or_default()
}

fn digest_of(d: &Descriptor) -> Result<Digest, CacheError> {
    Digest::parse(&d.digest).map_err(|e| CacheError::BadUpstream(e.to_string()))
}

async fn warm(
    cache: &Cache,
    r: &Resolved,
    platforms: &Platforms,
    counts: &mut PrefetchReport,
) -> Result<(), CacheError> {
    let target = &r.target;
    // No Accept: every type is acceptable, the stored document is the answer.
    let accept = ClientAccept::parse(std::iter::empty());
    let reference = match &r.scope {
        Scope::Repository => Reference::Tag(
            Tag::parse(DEFAULT_TAG).map_err(|e| CacheError::ManifestUnknown(e.to_string()))?,
        ),
        Scope::Tag(t) => Reference::Tag(t.clone()),
        Scope::Digest(d) => Reference::Digest(d.clone()),
    };
    // Manifests, breadth first: the reference's, the chosen children of every index (nested
    // indexes too), then the referrers of each manifest warmed and theirs in turn. Configs and
    // layers are collected on the way and copied afterwards, each once.
    let mut graph = Graph::default();
    let top = cache.manifest(target, &reference, &accept).await?;
    graph.visit(&top, platforms, counts)?;
    let mut asked_referrers = 0;
    loop {
        while let Some(d) = graph.queue.pop_front() {
            let m = cache
                .manifest(target, &Reference::Digest(d), &accept)
                .await?;
            graph.visit(&m, platforms, counts)?;
        }
        // Referrers (signatures, SBOMs, attestations) of the manifests warmed since the last
        // round. An upstream without the referrers API has none to warm.
        let ask: Vec<Digest> = graph.manifests[asked_referrers..].to_vec();
        asked_referrers = graph.manifests.len();
        for d in &ask {
            let answer = match cache.referrers(target, d, None, None).await {
                Ok(a) => a,
                Err(CacheError::ManifestUnknown(_)) => continue,
                Err(e) => return Err(e),
            };
            let list: Links = serde_json::from_slice(&answer.bytes).unwrap_or_default();
            for referrer in &list.manifests {
                graph.enqueue(digest_of(referrer)?)?;
            }
        }
        if graph.queue.is_empty() {
            break;
        }
    }
    let mut warmed = futures_util::stream::iter(graph.blobs.into_values())
        .map(|d| async move { cache.warm_blob(target, &d).await })
        .buffer_unordered(BLOB_CONCURRENCY);
    let mut first_error = None;
    while let Some(w) = warmed.next().await {
        match w {
            Ok(w) => {
                counts.blobs += 1;
                counts.fetched_blobs += u64::from(w.fetched);
                counts.bytes += w.size;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // A platform asked for that no index offers fails the reference (the others are warmed
    // all the same), as `docker pull --platform` would; a reference that leads to no index has
    // no platforms to choose from.
    if let Platforms::Only(wanted) = platforms
        && graph.indexes > 0
    {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| !graph.matched.contains(*w))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let offered: Vec<&str> = graph.offered.iter().map(String::as_str).collect();
            return Err(CacheError::ManifestUnknown(format!(
                "no manifest for {} in the index (it offers {}); the rest was warmed",
                missing.join(", "),
                if offered.is_empty() {
                    "no platforms".to_owned()
                } else {
                    offered.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// Most manifests one reference may lead to (its children, nested indexes and referrers): an
/// upstream cannot make a prefetch walk without end.
const MAX_MANIFESTS: usize = 1_000;

/// What a prefetch of one reference has found so far.
#[derive(Default)]
struct Graph {
    /// Manifests warmed, in order.
    manifests: Vec<Digest>,
    /// Manifests found and not fetched yet.
    queue: std::collections::VecDeque<Digest>,
    seen: std::collections::HashSet<Digest>,
    /// Configs and layers to copy, by digest.
    blobs: BTreeMap<String, Digest>,
    /// Indexes visited.
    indexes: usize,
    /// The wanted platforms some index child matched.
    matched: BTreeSet<String>,
    /// The platforms the indexes' children name (`os/arch[/variant]`).
    offered: BTreeSet<String>,
}

impl Graph {
    fn enqueue(&mut self, d: Digest) -> Result<(), CacheError> {
        if self.seen.insert(d.clone()) {
            if self.seen.len() > MAX_MANIFESTS {
                return Err(CacheError::BadUpstream(format!(
                    "more than {MAX_MANIFESTS} manifests (children, nested indexes, referrers) from one reference"
                )));
            }
            self.queue.push_back(d);
        }
        Ok(())
    }

    /// Counts a manifest just warmed and follows it: an index's chosen children, an image's
    /// config and layers.
    fn visit(
        &mut self,
        m: &ManifestAnswer,
        platforms: &Platforms,
        counts: &mut PrefetchReport,
    ) -> Result<(), CacheError> {
        self.seen.insert(m.digest.clone());
        self.manifests.push(m.digest.clone());
        counts.manifests += 1;
        counts.bytes += m.bytes.len() as u64;
        let l = links(m);
        if media::is_list(&m.media_type) {
            self.indexes += 1;
            for child in &l.manifests {
                // A nested index is followed whatever its descriptor says: its own children
                // carry the platforms.
                let nested = child.media_type.as_deref().is_some_and(media::is_list);
                if let Some(p) = child.platform.as_ref().filter(|p| p.os != "unknown") {
                    self.offered.insert(p.to_string());
                }
                if nested || platforms.select(child.platform.as_ref(), &mut self.matched) {
                    self.enqueue(digest_of(child)?)?;
                }
            }
        } else {
            for d in l.config.iter().chain(&l.layers) {
                let digest = digest_of(d)?;
                self.blobs.insert(digest.to_string(), digest);
            }
        }
        Ok(())
    }
}
