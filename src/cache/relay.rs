//! Listings relayed from the upstream: tags (with our own pagination links, and the tags known
//! to the cache when the upstream fails) and referrers (cached for the tag TTL).

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Cache, Target};
use super::{CacheError, Wanted};
use crate::oci::{Digest, Tag};
use crate::store::keys;
use crate::upstream::UpstreamError;

#[derive(Debug)]
pub struct RelayAnswer {
    pub bytes: Bytes,
    pub content_type: String,
    pub link: Option<String>,
    pub warning: Option<String>,
}

/// Most upstream `tags/list` pages followed for one list.
const MAX_TAG_PAGES: usize = 1_000;
/// Most tags collected for one list.
const MAX_TAGS: usize = 100_000;

/// A referrers answer as cached in the store.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedReferrers {
    checked_at: u64,
    content_type: String,
    body: String,
    /// The upstream's `Link` to its next page, as it sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
}

impl Cache {
    /// The repository's tags, sorted and paginated here (`last`, then `n`, with a `Link` to our
    /// own path when more follow): many upstreams ignore `last` or page on their own, so the
    /// whole list is fetched and the client's page cut from it. When the upstream fails, the
    /// tags the cache knows, by the same rules.
    pub async fn tags_list(
        &self,
        target: &Target,
        n: Option<u32>,
        last: Option<&Tag>,
        ns: Option<&str>,
    ) -> Result<RelayAnswer, CacheError> {
        let (tags, warning) = match self.upstream_tags(target).await {
            Ok(tags) => (tags, None),
            Err(e @ UpstreamError::NotFound { .. }) => {
                return Err(CacheError::upstream(e, Wanted::Repository));
            }
            Err(e) => {
                let err = CacheError::upstream(e, Wanted::Repository);
                let names = self
                    .store
                    .list(&keys::tags_prefix(target.alias(), &target.repo))
                    .await?;
                let tags: BTreeSet<Tag> = names.iter().filter_map(|n| Tag::parse(n).ok()).collect();
                if tags.is_empty() {
                    return Err(err);
                }
                let warning = format!(
                    "299 - \"stale: {} unreachable; tags known to the cache\"",
                    target.alias()
                );
                (tags, Some(warning))
            }
        };
        let after: Vec<&str> = tags
            .iter()
            .filter(|t| last.is_none_or(|l| *t > l))
            .map(Tag::as_str)
            .collect();
        let take = n.map_or(after.len(), |n| (n as usize).min(after.len()));
        let page = &after[..take];
        let link = (take > 0 && take < after.len()).then(|| {
            let last = page[take - 1];
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            q.append_pair("last", last);
            next_link(
                &format!("/v2/{}/tags/list", target.client_name),
                &q.finish(),
                ns,
            )
        });
        let body = serde_json::json!({ "name": target.client_name.as_str(), "tags": page });
        Ok(RelayAnswer {
            bytes: Bytes::from(body.to_string()),
            content_type: "application/json".into(),
            link,
            warning,
        })
    }

    /// The upstream's whole tag list, following its own `Link` pages, bounded by
    /// [`MAX_TAG_PAGES`] and [`MAX_TAGS`] (what lies beyond is left out, with a log line). Stops
    /// when a page brings no tag not seen before (an upstream that ignores `last`).
    async fn upstream_tags(&self, target: &Target) -> Result<BTreeSet<Tag>, UpstreamError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut tags = BTreeSet::new();
        let mut query: Option<String> = None;
        for pages in 1.. {
            let r = target
                .upstream
                .tags_list(&target.repo, query.as_deref())
                .await?;
            let page: Page =
                serde_json::from_slice(&r.bytes).map_err(|e| UpstreamError::Invalid {
                    upstream: target.alias().to_owned(),
                    detail: format!("tags list is not JSON of the form {{\"tags\":[…]}}: {e}"),
                })?;
            let before = tags.len();
            tags.extend(
                page.tags
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|t| Tag::parse(t).ok()),
            );
            let Some(next) = r
                .link
                .as_deref()
                .and_then(|l| link_query(l, &["n", "last"]))
            else {
                break;
            };
            if tags.len() == before || query.as_ref() == Some(&next) {
                break; // no progress: the upstream ignores `last`
            }
            if pages >= MAX_TAG_PAGES || tags.len() >= MAX_TAGS {
                tracing::warn!(
                    repo = %target.scoped_name(),
                    pages,
                    tags = tags.len(),
                    "tags list cut short: the upstream has more pages than are followed"
                );
                break;
            }
            query = Some(next);
        }
        Ok(tags)
    }

    /// Referrers of `digest`. Without a query: cached for the tag TTL, the cached answer served
    /// stale when the upstream fails. With one (`artifactType`, or the upstream's own page
    /// parameters from a `Link` we passed on): relayed uncached, the filter and the paging are
    /// the upstream's. `Link`s point at our own referrers path.
    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        query: Option<&str>,
        ns: Option<&str>,
    ) -> Result<RelayAnswer, CacheError> {
        let path = format!("/v2/{}/referrers/{digest}", target.client_name);
        let relink = |link: Option<String>| {
            link.and_then(|l| link_query(&l, &[]))
                .map(|q| next_link(&path, &q, ns))
        };
        if let Some(q) = query {
            let r = target
                .upstream
                .referrers(&target.repo, digest, Some(q))
                .await
                .map_err(|e| CacheError::upstream(e, Wanted::Manifest))?;
            return Ok(RelayAnswer {
                content_type: r
                    .content_type
                    .unwrap_or_else(|| crate::oci::media::OCI_INDEX.into()),
                bytes: r.bytes,
                link: relink(r.link),
                warning: None,
            });
        }
        let key = keys::referrers(target.alias(), &target.repo, digest);
        let cached: Option<CachedReferrers> = self.read_json(&key).await?;
        let now = self.clock.now_ms();
        if let Some(c) = &cached
            && u128::from(now.saturating_sub(c.checked_at)) < self.tag_ttl(target).as_millis()
        {
            return Ok(RelayAnswer {
                bytes: Bytes::from(c.body.clone()),
                content_type: c.content_type.clone(),
                link: relink(c.link.clone()),
                warning: None,
            });
        }
        match target.upstream.referrers(&target.repo, digest, None).await {
            Ok(r) => {
                let content_type = r
                    .content_type
                    .unwrap_or_else(|| crate::oci::media::OCI_INDEX.into());
                if let Ok(body) = std::str::from_utf8(&r.bytes) {
                    let doc = CachedReferrers {
                        checked_at: now,
                        content_type: content_type.clone(),
                        body: body.to_owned(),
                        link: r.link.clone(),
                    };
                    self.write_json(&key, &doc).await?;
                }
                Ok(RelayAnswer {
                    bytes: r.bytes,
                    content_type,
                    link: relink(r.link),
                    warning: None,
                })
            }
            Err(e @ UpstreamError::NotFound { .. }) => Err(CacheError::ManifestUnknown(format!(
                "{e}; the upstream has no referrers API, use the sha256-<hex> tag schema"
            ))),
            Err(e) => match cached {
                Some(c) => Ok(RelayAnswer {
                    bytes: Bytes::from(c.body),
                    content_type: c.content_type,
                    link: relink(c.link),
                    warning: Some(format!("299 - \"stale: {} unreachable\"", target.alias())),
                }),
                None => Err(CacheError::upstream(e, Wanted::Manifest)),
            },
        }
    }
}

/// The query of an upstream `Link: <url>; rel="next"`, as pairs re-encoded by us, without `ns`
/// (ours to add) and, when `keep` is not empty, only those parameters. `None` without a query.
fn link_query(link: &str, keep: &[&str]) -> Option<String> {
    let start = link.find('<')? + 1;
    let end = start + link[start..].find('>')?;
    let (_, query) = link[start..end].split_once('?')?;
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k != "ns" && (keep.is_empty() || keep.contains(&k.as_ref())) {
            q.append_pair(&k, &v);
            any = true;
        }
    }
    any.then(|| q.finish())
}

/// `Link: <path?query[&ns=…]>; rel="next"`; `query` is already encoded.
fn next_link(path: &str, query: &str, ns: Option<&str>) -> String {
    let mut q = query.to_owned();
    if let Some(ns) = ns {
        let ns = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", ns)
            .finish();
        q = format!("{q}&{ns}");
    }
    format!("<{path}?{q}>; rel=\"next\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_queries_are_re_encoded_and_filtered() {
        let l = r#"</v2/a/tags/list?last=x%2By&n=2&ns=evil&other=1>; rel="next""#;
        assert_eq!(
            link_query(l, &["n", "last"]).as_deref(),
            Some("last=x%2By&n=2")
        );
        assert_eq!(
            link_query(l, &[]).as_deref(),
            Some("last=x%2By&n=2&other=1")
        );
        assert_eq!(link_query("</v2/a/tags/list>; rel=\"next\"", &[]), None);
        assert_eq!(link_query("garbage", &[]), None);
        assert_eq!(
            next_link(
                "/v2/a/referrers/d",
                "last=sha256%3Aab&n=2",
                Some("docker.io")
            ),
            "</v2/a/referrers/d?last=sha256%3Aab&n=2&ns=docker.io>; rel=\"next\""
        );
    }
}
