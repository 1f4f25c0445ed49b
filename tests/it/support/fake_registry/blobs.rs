//! The blob endpoint, and the "CDN" a blob GET can be redirected to.

use axum::http::Method;
use bytes::Bytes;

use super::reply::Reply;
use super::routes::percent_decode;
use super::{ReqInfo, Shared};

pub(super) fn find_blob(shared: &Shared, repo: Option<&str>, digest: &str) -> Option<Bytes> {
    let st = shared.lock();
    match repo {
        Some(repo) => st.repos.get(repo)?.blobs.get(digest).cloned(),
        None => st.repos.values().find_map(|r| r.blobs.get(digest).cloned()),
    }
}

pub(super) fn blob(shared: &Shared, req: &ReqInfo, repo: &str, digest: &str) -> Reply {
    let Some(bytes) = find_blob(shared, Some(repo), digest) else {
        return Reply::error(404, "BLOB_UNKNOWN", "blob unknown to registry");
    };
    if req.method == Method::GET
        && let Some(cdn) = shared.cdn_addr
    {
        return Reply::new(307)
            .header("location", format!("http://{cdn}/cdn/{digest}?sig=xyz"))
            .header("docker-content-digest", digest);
    }
    Reply::new(200)
        .header("content-type", "application/octet-stream")
        .header("docker-content-digest", digest)
        .body(bytes)
}

/// The CDN: no Docker headers, digest-addressed, rejects Authorization.
pub(super) fn cdn(shared: &Shared, req: &ReqInfo) -> Reply {
    let mut reply = if req.authorization.is_some() {
        Reply::new(400)
            .header("content-type", "application/xml")
            .body(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code>\
                 <Message>Only one auth mechanism allowed</Message></Error>",
            )
    } else if req.method != Method::GET && req.method != Method::HEAD {
        Reply::new(405)
    } else {
        match req
            .path
            .strip_prefix("/cdn/")
            .and_then(|d| find_blob(shared, None, &percent_decode(d)))
        {
            Some(bytes) => Reply::new(200)
                .header("content-type", "application/octet-stream")
                .body(bytes),
            None => Reply::new(404)
                .header("content-type", "application/xml")
                .body("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code></Error>"),
        }
    };
    reply.api_header = false;
    reply
}
