//! `purge`: forget a repository, a tag or a digest so that the next pull refetches it.
//!
//! - `[upstream/]repo`: every tag pointer, marker and cached referrers answer of the repository;
//! - `repo:tag`: the tag's pointer;
//! - `repo@digest`: the digest's marker, its cached referrers answer, and the repository's tag
//!   pointers that name it (a pointer never names a digest without a marker).
//!
//! Pointers go before markers, so an interrupted purge leaves the store in the order pulls
//! write it (object → marker → pointer). Blob objects are never deleted here: another
//! repository may hold the same digest, and only gc knows whether any does; it reclaims the
//! unreferenced ones after its grace period.

use serde::Serialize;

use super::LifecycleError;
use super::reference::{Resolved, Scope, resolve_all};
use crate::cache::{Cache, TagPointer};
use crate::oci::digest::Algorithm;
use crate::oci::{Digest, Tag};
use crate::store::{Key, Store, keys};

/// What a purge removed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    /// The references purged, canonical (`<upstream>/<repo>[:tag|@digest]`).
    pub purged: Vec<String>,
    /// Store keys removed (tag pointers first, then markers and referrers answers).
    pub removed: Vec<String>,
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

/// Purges each reference: `[upstream/]repo`, `repo:tag` or `repo@digest`. Every reference is
/// checked first: one that does not parse or resolve fails the whole purge before anything is
/// removed. Then this process's memory forgets what it held (another process's memory trusts
/// what it remembers for a bounded time, then reads the store again).
pub async fn purge(cache: &Cache, refs: &[String]) -> Result<PurgeReport, LifecycleError> {
    let resolved = resolve_all(cache, refs)?;
    let store = cache.store().as_ref();
    let mut report = PurgeReport::default();
    let result = async {
        for r in &resolved {
            let (pointers, others) = documents(store, r).await?;
            for key in pointers.iter().chain(&others) {
                if store.head(key).await?.is_some() {
                    store.delete(key).await?;
                    report.removed.push(key.to_string());
                }
            }
            report.purged.push(r.canonical());
        }
        Ok::<(), LifecycleError>(())
    }
    .await;
    // Whatever was removed before a failure is forgotten too.
    cache.forget_all();
    result.map(|()| report)
}

/// The documents a reference names: tag pointers, then markers and referrers answers.
async fn documents(
    store: &dyn Store,
    r: &Resolved,
) -> Result<(Vec<Key>, Vec<Key>), LifecycleError> {
    let (alias, repo) = (r.target.alias(), &r.target.repo);
    let mut pointers = Vec::new();
    let mut others = Vec::new();
    match &r.scope {
        Scope::Tag(t) => pointers.push(keys::tag(alias, repo, t)),
        Scope::Digest(d) => {
            for t in tags(store, r).await? {
                let key = keys::tag(alias, repo, &t);
                if let Some(bytes) = store.get(&key).await?
                    && serde_json::from_slice::<TagPointer>(&bytes)
                        .is_ok_and(|p| p.digest == d.to_string())
                {
                    pointers.push(key);
                }
            }
            others.push(keys::marker(alias, repo, d));
            others.push(keys::referrers(alias, repo, d));
        }
        Scope::Repository => {
            pointers.extend(
                tags(store, r)
                    .await?
                    .iter()
                    .map(|t| keys::tag(alias, repo, t)),
            );
            for alg in ALGORITHMS {
                for d in digests(store, &keys::markers_prefix(alias, repo, alg), alg).await? {
                    others.push(keys::marker(alias, repo, &d));
                }
                for d in digests(store, &keys::referrers_prefix(alias, repo, alg), alg).await? {
                    others.push(keys::referrers(alias, repo, &d));
                }
            }
        }
    }
    Ok((pointers, others))
}

/// The repository's tags that have a pointer.
async fn tags(store: &dyn Store, r: &Resolved) -> Result<Vec<Tag>, LifecycleError> {
    let names = store
        .list(&keys::tags_prefix(r.target.alias(), &r.target.repo))
        .await?;
    Ok(names.iter().filter_map(|n| Tag::parse(n).ok()).collect())
}

/// The digests named by the documents directly under `prefix` (names that are not a digest's
/// hex are left alone).
async fn digests(
    store: &dyn Store,
    prefix: &Key,
    alg: Algorithm,
) -> Result<Vec<Digest>, LifecycleError> {
    let names = store.list(prefix).await?;
    Ok(names
        .iter()
        .filter_map(|n| Digest::parse(&format!("{}:{n}", alg.as_str())).ok())
        .collect())
}
