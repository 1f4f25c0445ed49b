//! Listings relayed from the upstream: tags (with our own pagination links, and the tags known
//! to the cache when the upstream fails) and referrers (cached for the tag TTL).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Registry, Target};
use crate::error::{Code, Error, Wanted};
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

/// Largest page size passed on; larger requests are clamped.
pub const MAX_PAGE: u32 = 10_000;

/// A referrers answer as cached in the store.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedReferrers {
    checked_at: u64,
    content_type: String,
    body: String,
}

impl Registry {
    pub async fn tags_list(
        &self,
        target: &Target,
        n: Option<u32>,
        last: Option<&Tag>,
        ns: Option<&str>,
    ) -> Result<RelayAnswer, Error> {
        let query = page_query(n, last);
        let result = target
            .upstream
            .tags_list(&target.repo, query.as_deref())
            .await;
        match result {
            Ok(r) => Ok(RelayAnswer {
                content_type: r.content_type.unwrap_or_else(|| "application/json".into()),
                link: r.link.and_then(|l| rewrite_link(&l, target, ns)),
                bytes: r.bytes,
                warning: None,
            }),
            Err(e @ UpstreamError::NotFound { .. }) => {
                Err(Error::from_upstream(e, Wanted::Repository))
            }
            Err(e) => {
                let err = Error::from_upstream(e, Wanted::Repository);
                let names = self
                    .store
                    .list(&keys::tags_prefix(target.alias(), &target.repo))
                    .await?;
                let mut tags: Vec<Tag> = names.iter().filter_map(|n| Tag::parse(n).ok()).collect();
                if tags.is_empty() {
                    return Err(err);
                }
                tags.sort();
                let after: Vec<&Tag> = tags
                    .iter()
                    .filter(|t| last.is_none_or(|l| *t > l))
                    .collect();
                let take = n.map(|n| n as usize).unwrap_or(after.len());
                let page: Vec<&str> = after.iter().take(take).map(|t| t.as_str()).collect();
                let link = (after.len() > take && take > 0).then(|| {
                    let last = Tag::parse(page[page.len() - 1]).ok();
                    link_header(
                        target,
                        &page_query(n, last.as_ref()).unwrap_or_default(),
                        ns,
                    )
                });
                let body = serde_json::json!({ "name": target.client_name.as_str(), "tags": page });
                Ok(RelayAnswer {
                    bytes: Bytes::from(body.to_string()),
                    content_type: "application/json".into(),
                    link,
                    warning: Some(format!(
                        "299 - \"stale: {} unreachable; tags known to the cache\"",
                        target.alias()
                    )),
                })
            }
        }
    }

    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<RelayAnswer, Error> {
        if let Some(t) = artifact_type {
            // Filtered answers are relayed uncached: the filter is the upstream's to apply.
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", t)
                .finish();
            let r = target
                .upstream
                .referrers(&target.repo, digest, Some(&q))
                .await
                .map_err(|e| Error::from_upstream(e, Wanted::Manifest))?;
            return Ok(RelayAnswer {
                content_type: r
                    .content_type
                    .unwrap_or_else(|| crate::oci::media::OCI_INDEX.into()),
                bytes: r.bytes,
                link: None,
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
                link: None,
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
                    };
                    self.write_json(&key, &doc).await?;
                }
                Ok(RelayAnswer {
                    bytes: r.bytes,
                    content_type,
                    link: r.link.and_then(|l| rewrite_link(&l, target, None)),
                    warning: None,
                })
            }
            Err(e @ UpstreamError::NotFound { .. }) => Err(Error::not_found(
                Code::ManifestUnknown,
                format!("{e}; the upstream has no referrers API, use the sha256-<hex> tag schema"),
            )),
            Err(e) => match cached {
                Some(c) => Ok(RelayAnswer {
                    bytes: Bytes::from(c.body),
                    content_type: c.content_type,
                    link: None,
                    warning: Some(format!("299 - \"stale: {} unreachable\"", target.alias())),
                }),
                None => Err(Error::from_upstream(e, Wanted::Manifest)),
            },
        }
    }
}

fn page_query(n: Option<u32>, last: Option<&Tag>) -> Option<String> {
    if n.is_none() && last.is_none() {
        return None;
    }
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(n) = n {
        q.append_pair("n", &n.min(MAX_PAGE).to_string());
    }
    if let Some(l) = last {
        q.append_pair("last", l.as_str());
    }
    Some(q.finish())
}

/// Rewrites an upstream `Link: </v2/library/alpine/tags/list?last=x&n=2>; rel="next"` to our own
/// path for the name the client used, keeping only the pagination parameters.
fn rewrite_link(link: &str, target: &Target, ns: Option<&str>) -> Option<String> {
    let start = link.find('<')? + 1;
    let end = start + link[start..].find('>')?;
    let url = &link[start..end];
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut n = None;
    let mut last = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "n" => n = v.parse::<u32>().ok(),
            "last" => last = Tag::parse(&v).ok(),
            _ => {}
        }
    }
    let q = page_query(n, last.as_ref())?;
    Some(link_header(target, &q, ns))
}

fn link_header(target: &Target, query: &str, ns: Option<&str>) -> String {
    let mut q = query.to_owned();
    if let Some(ns) = ns {
        let extra = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", ns)
            .finish();
        q = if q.is_empty() {
            extra
        } else {
            format!("{q}&{extra}")
        };
    }
    format!("</v2/{}/tags/list?{q}>; rel=\"next\"", target.client_name)
}
