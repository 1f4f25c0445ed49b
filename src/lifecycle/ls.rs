//! `ls`: what the cache holds, by repository.

use std::collections::BTreeMap;

use serde::Serialize;

use super::LifecycleError;
use crate::cache::{Cache, Marker, TagPointer};
use crate::store::keys::{self, Parsed};

/// Cached repositories (every one), or one repository's tags and digests.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// Every cached repository (also the one asked for, alone), by upstream and name.
    pub repositories: Vec<RepositorySummary>,
    /// The repository asked for, in detail; `None` when every repository was listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryDetail>,
}

/// One repository in a [`Listing`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySummary {
    pub upstream: String,
    pub repo: String,
    pub tags: u64,
    pub digests: u64,
    /// The sizes of its digests (manifests and blobs; a blob shared with another repository
    /// counts in both).
    pub bytes: u64,
    /// The latest last-pulled time of its tags and digests, Unix milliseconds.
    pub last_pulled: Option<u64>,
}

/// One repository's tags and digests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryDetail {
    pub upstream: String,
    pub repo: String,
    pub tags: Vec<TagEntry>,
    pub digests: Vec<DigestEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEntry {
    pub tag: String,
    pub digest: String,
    /// The manifest's size.
    pub size: u64,
    pub last_pulled: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestEntry {
    pub digest: String,
    /// A manifest's media type; `None` for a blob (config or layer).
    pub media_type: Option<String>,
    pub size: u64,
    pub last_pulled: Option<u64>,
}

/// Lists every cached repository, or one (`[upstream/]repo`, named as a client would pull it).
pub async fn ls(cache: &Cache, repo: Option<&str>) -> Result<Listing, LifecycleError> {
    let wanted = match repo {
        None => None,
        Some(text) => {
            let target = super::reference::resolve_repository(cache, text)?;
            Some((target.alias().to_owned(), target.repo))
        }
    };
    let store = cache.store().as_ref();
    let prefix = match &wanted {
        Some((upstream, repo)) => keys::repository_walk(upstream, repo),
        None => keys::REPOS_WALK.to_owned(),
    };
    let objects = store.walk(&prefix).await?.into_iter().filter(|o| {
        match (&wanted, keys::parse(&o.key).repository()) {
            (Some((u, r)), Some((pu, pr))) => u == pu && r == pr,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    });

    let mut repos: BTreeMap<(String, String), RepositoryDetail> = BTreeMap::new();
    for super::Document { parsed, bytes, .. } in super::read_documents(store, objects).await? {
        let Some((upstream, repo)) = parsed.repository() else {
            continue;
        };
        let entry = repos
            .entry((upstream.to_owned(), repo.to_string()))
            .or_insert_with(|| RepositoryDetail {
                upstream: upstream.to_owned(),
                repo: repo.to_string(),
                ..Default::default()
            });
        match &parsed {
            Parsed::Tag { tag, .. } => {
                if let Ok(p) = serde_json::from_slice::<TagPointer>(&bytes) {
                    entry.tags.push(TagEntry {
                        tag: tag.to_string(),
                        digest: p.digest,
                        size: p.size,
                        last_pulled: p.last_pulled,
                    });
                }
            }
            Parsed::Marker { digest, .. } => {
                if let Ok(m) = serde_json::from_slice::<Marker>(&bytes) {
                    entry.digests.push(DigestEntry {
                        digest: digest.to_string(),
                        media_type: m.media_type,
                        size: m.size,
                        last_pulled: m.last_pulled,
                    });
                }
            }
            _ => {}
        }
    }

    let mut listing = Listing::default();
    for (_, mut detail) in repos {
        detail.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
        detail.digests.sort_by(|a, b| a.digest.cmp(&b.digest));
        let last_pulled = detail
            .tags
            .iter()
            .map(|t| t.last_pulled)
            .chain(detail.digests.iter().map(|d| d.last_pulled))
            .max()
            .flatten();
        listing.repositories.push(RepositorySummary {
            upstream: detail.upstream.clone(),
            repo: detail.repo.clone(),
            tags: detail.tags.len() as u64,
            digests: detail.digests.len() as u64,
            bytes: detail.digests.iter().map(|d| d.size).sum(),
            last_pulled,
        });
        if wanted.is_some() {
            listing.repository = Some(detail);
        }
    }
    if let (Some((upstream, repo)), None) = (&wanted, &listing.repository) {
        listing.repository = Some(RepositoryDetail {
            upstream: upstream.clone(),
            repo: repo.to_string(),
            ..Default::default()
        });
    }
    Ok(listing)
}
