//! The handlers of the `/v2/` API: method and query checks, the typed [`Endpoint`] to the cache
//! call, and the response with its headers (digests, content types, ranges, redirects).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{Code, Error};
use super::path::{self, Endpoint};
use super::{AppState, MAX_QUERY_LEN};
use crate::cache::{BlobAnswer, BlobRead, Cache, RelayAnswer};
use crate::oci::{ClientAccept, Digest, Tag};

pub(super) async fn base(method: Method) -> Response {
    if let Err(e) = allow_read(&method) {
        return e.into_response();
    }
    let mut resp = (StatusCode::OK, "{}").into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn allow_read(method: &Method) -> Result<(), Error> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(Error::method_not_allowed(
            method,
            "is not supported: this is a read-only pull-through cache",
        ))
    }
}

pub(super) async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    match handle(&state.cache, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

struct Query {
    ns: Option<String>,
    n: Option<u32>,
    last: Option<String>,
    /// Every parameter but `ns`, re-encoded, for the upstream (referrers: `artifactType` and the
    /// upstream's own paging); `None` when there are none.
    upstream: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Result<Query, Error> {
    let mut q = Query {
        ns: None,
        n: None,
        last: None,
        upstream: None,
    };
    let Some(raw) = raw else { return Ok(q) };
    if raw.len() > MAX_QUERY_LEN {
        return Err(Error::bad_request(
            Code::Unsupported,
            "query string too long",
        ));
    }
    let mut upstream = url::form_urlencoded::Serializer::new(String::new());
    let mut forwarded = false;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if k != "ns" {
            upstream.append_pair(&k, &v);
            forwarded = true;
        }
        match k.as_ref() {
            "ns" => q.ns = Some(v.into_owned()),
            "n" => {
                q.n = Some(v.parse().map_err(|_| {
                    Error::bad_request(Code::Unsupported, format!("n={v:?} is not a page size"))
                })?)
            }
            "last" => q.last = Some(v.into_owned()),
            _ => {}
        }
    }
    q.upstream = forwarded.then(|| upstream.finish());
    Ok(q)
}

async fn handle(cache: &Cache, req: Request) -> Result<Response, Error> {
    let method = req.method().clone();
    allow_read(&method)?;
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let rest = uri.path().strip_prefix("/v2/").unwrap_or("");
    let endpoint = path::parse(rest)?;
    let query = parse_query(uri.query())?;
    let ns = query.ns.as_deref();
    let head = method == Method::HEAD;

    let mut resp = match endpoint {
        Endpoint::Upload => {
            return Err(Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unsupported,
                "push is not supported: this is a read-only pull-through cache",
            ));
        }
        Endpoint::Manifest(name, reference) => {
            let target = cache.resolve(&name, ns)?;
            let accept = ClientAccept::parse(
                headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let a = cache.manifest(&target, &reference, &accept).await?;
            let mut resp = Response::new(if head {
                Body::empty()
            } else {
                Body::from(a.bytes.clone())
            });
            let h = resp.headers_mut();
            set(h, header::CONTENT_TYPE, &a.media_type);
            set(h, header::CONTENT_LENGTH, &a.bytes.len().to_string());
            set_digest(h, &a.digest);
            set(h, header::ETAG, &format!("\"{}\"", a.digest));
            if let Some(w) = &a.warning {
                set(h, header::WARNING, w);
            }
            resp
        }
        Endpoint::Blob(name, digest) => {
            let target = cache.resolve(&name, ns)?;
            if head {
                let size = cache.blob_size(&target, &digest).await?;
                let mut resp = Response::new(Body::empty());
                let h = resp.headers_mut();
                set(h, header::CONTENT_LENGTH, &size.to_string());
                set(h, header::CONTENT_TYPE, "application/octet-stream");
                set(h, header::ACCEPT_RANGES, "bytes");
                set_digest(h, &digest);
                resp
            } else {
                let range = headers
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(super::range::parse_range);
                match cache.blob(&target, &digest, range).await? {
                    BlobAnswer::Stored(read) => blob_response(read, &digest)?,
                    BlobAnswer::Passthrough { len, body } => {
                        let mut resp = Response::new(Body::from_stream(body));
                        let h = resp.headers_mut();
                        set(h, header::CONTENT_TYPE, "application/octet-stream");
                        set(h, header::ACCEPT_RANGES, "bytes");
                        if let Some(len) = len {
                            set(h, header::CONTENT_LENGTH, &len.to_string());
                        }
                        set_digest(h, &digest);
                        resp
                    }
                }
            }
        }
        Endpoint::TagsList(name) => {
            let target = cache.resolve(&name, ns)?;
            let last = match query.last.as_deref() {
                Some(l) => Some(
                    Tag::parse(l)
                        .map_err(|e| Error::bad_request(Code::Unsupported, e.to_string()))?,
                ),
                None => None,
            };
            relay_response(
                cache.tags_list(&target, query.n, last.as_ref(), ns).await?,
                head,
            )
        }
        Endpoint::Referrers(name, digest) => {
            let target = cache.resolve(&name, ns)?;
            relay_response(
                cache
                    .referrers(&target, &digest, query.upstream.as_deref(), ns)
                    .await?,
                head,
            )
        }
    };
    if let Some(ns) = ns
        && let Ok(v) = HeaderValue::from_str(ns)
    {
        resp.headers_mut().insert("oci-namespace", v);
    }
    Ok(resp)
}

fn blob_response(read: BlobRead, digest: &Digest) -> Result<Response, Error> {
    let mut resp = match read {
        BlobRead::Redirect(url) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            set(resp.headers_mut(), header::LOCATION, &url);
            resp
        }
        BlobRead::Unsatisfiable { total } => {
            let mut e = Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::RangeInvalid,
                format!("requested range is outside the blob's {total} bytes"),
            );
            e.total_size = Some(total);
            return Err(e);
        }
        BlobRead::Stream { total, range, body } => {
            let mut resp = Response::new(Body::from_stream(body));
            let h = resp.headers_mut();
            set(h, header::CONTENT_TYPE, "application/octet-stream");
            set(h, header::ACCEPT_RANGES, "bytes");
            match range {
                Some(r) => {
                    set(
                        h,
                        header::CONTENT_LENGTH,
                        &(r.last - r.first + 1).to_string(),
                    );
                    set(
                        h,
                        header::CONTENT_RANGE,
                        &format!("bytes {}-{}/{total}", r.first, r.last),
                    );
                    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                }
                None => set(h, header::CONTENT_LENGTH, &total.to_string()),
            }
            resp
        }
    };
    set_digest(resp.headers_mut(), digest);
    Ok(resp)
}

fn relay_response(a: RelayAnswer, head: bool) -> Response {
    let len = a.bytes.len();
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::from(a.bytes)
    });
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, &a.content_type);
    set(h, header::CONTENT_LENGTH, &len.to_string());
    if let Some(l) = &a.link {
        set(h, header::LINK, l);
    }
    if let Some(w) = &a.warning {
        set(h, header::WARNING, w);
    }
    resp
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn set_digest(h: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
}
