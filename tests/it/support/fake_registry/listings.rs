//! `tags/list` and referrers, paged as the options say.

use super::reply::Reply;
use super::routes::parse_query;
use super::{OCI_INDEX, ReqInfo, Shared, TagsPaging};

pub(super) fn tags(shared: &Shared, req: &ReqInfo, repo: &str) -> Reply {
    let all: Vec<String> = {
        let st = shared.lock();
        match st.repos.get(repo) {
            Some(r) => r.tags.keys().cloned().collect(), // BTreeMap: sorted
            None => {
                return Reply::error(404, "NAME_UNKNOWN", "repository name not known to registry");
            }
        }
    };
    let q = parse_query(req.query.as_deref());
    let last = q
        .iter()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.clone())
        .filter(|_| shared.opts.tags_paging != TagsPaging::IgnoreLast);
    let n = q
        .iter()
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let n = match shared.opts.tags_paging {
        TagsPaging::Always(k) => Some(n.unwrap_or(k).min(k)),
        _ => n,
    };
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
        .collect();
    let (page, more) = match n {
        Some(n) if after.len() > n => (after[..n].to_vec(), true),
        _ => (after, false),
    };
    let mut reply = Reply::json(200, &serde_json::json!({ "name": repo, "tags": page }));
    if more && let (Some(n), Some(lt)) = (n, page.last()) {
        reply = reply.header(
            "link",
            format!("</v2/{repo}/tags/list?last={lt}&n={n}>; rel=\"next\""),
        );
    }
    reply
}

pub(super) fn referrers(shared: &Shared, req: &ReqInfo, repo: &str, subject: &str) -> Reply {
    let filter = parse_query(req.query.as_deref())
        .into_iter()
        .find(|(k, _)| k == "artifactType")
        // Media types have no spaces: accept an unencoded '+' too.
        .map(|(_, v)| v.replace(' ', "+"));
    let mut manifests = Vec::new();
    {
        let st = shared.lock();
        if let Some(r) = st.repos.get(repo) {
            for digest in &r.manifest_order {
                let (media_type, bytes) = &r.manifests[digest];
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                    continue;
                };
                if v.pointer("/subject/digest").and_then(|d| d.as_str()) != Some(subject) {
                    continue;
                }
                // OCI: artifactType, else config.mediaType.
                let artifact_type = v
                    .get("artifactType")
                    .or_else(|| v.pointer("/config/mediaType"))
                    .and_then(|a| a.as_str())
                    .map(str::to_string);
                if let Some(f) = &filter
                    && artifact_type.as_deref() != Some(f.as_str())
                {
                    continue;
                }
                let mut d = serde_json::json!({
                    "mediaType": media_type,
                    "digest": digest,
                    "size": bytes.len(),
                });
                if let Some(a) = artifact_type {
                    d["artifactType"] = a.into();
                }
                if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
                    d["annotations"] = a.clone();
                }
                manifests.push(d);
            }
        }
    }
    let mut link = None;
    if let Some(size) = shared.opts.referrers_page_size {
        let q = parse_query(req.query.as_deref());
        let size = q
            .iter()
            .find(|(k, _)| k == "n")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(size)
            .max(1);
        if let Some((_, last)) = q.iter().find(|(k, _)| k == "last") {
            let at = manifests.iter().position(|d| d["digest"] == last.as_str());
            manifests.drain(..at.map_or(0, |i| i + 1));
        }
        if manifests.len() > size {
            manifests.truncate(size);
            let last = manifests[size - 1]["digest"].as_str().unwrap_or_default();
            link = Some(format!(
                "</v2/{repo}/referrers/{subject}?n={size}&last={last}>; rel=\"next\""
            ));
        }
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut reply = Reply::new(200)
        .header("content-type", OCI_INDEX)
        .body(serde_json::to_vec(&body).expect("serialize json"));
    if let Some(l) = link {
        reply = reply.header("link", l);
    }
    if filter.is_some() {
        reply = reply.header("oci-filters-applied", "artifactType");
    }
    reply
}
