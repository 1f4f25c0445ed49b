//! The HTTP edge: one `/v2/{*rest}` route, typed requests parsed from the path ([`path`]), thin
//! handlers that call the [`Cache`] and build responses; client authentication of requests and
//! the `/token` endpoint (over [`crate::auth`]); the one mapping of every error to a status and an
//! OCI error code ([`error`]); server mode's connections ([`server`]). No cache policy lives
//! here, and the store and the upstream client are reached only through the cache.

pub mod path;
mod range;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::auth::ClientAuth;
use crate::cache::{BlobAnswer, Cache, RelayAnswer};
pub mod error;

use crate::cache::{BlobRead, counting};
use crate::oci::{ClientAccept, Digest, Tag};
use error::{Code, Error};
use path::Endpoint;

/// Longest query string looked at; longer ones are refused.
const MAX_QUERY_LEN: usize = 4096;

/// What every handler can reach.
#[derive(Clone)]
struct AppState {
    cache: Arc<Cache>,
    /// Client authentication; `None` when off.
    auth: Option<Arc<ClientAuth>>,
}

pub fn router(cache: Arc<Cache>, auth: Option<Arc<ClientAuth>>) -> Router {
    let state = AppState { cache, auth };
    let api = Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    Router::new()
        .merge(api)
        .route("/token", any(token))
        .fallback(|| async {
            Error::not_found(
                Code::Unsupported,
                "not a registry API path; the API lives under /v2/",
            )
        })
        .layer(middleware::from_fn(common_headers))
        .with_state(state)
}

/// With client auth on, lets through only requests with valid Basic credentials or one of our
/// tokens; others get 401 and the challenge that starts the token flow. A request without
/// credentials is answered without looking at the users (so it never causes a secret read); one
/// with credentials while no users can be read gets 503, never a pass.
async fn require_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let client = client_addr(&req);
    let ok = match header {
        None => false,
        Some(header) => {
            let now = state.cache.now_ms();
            let users = match auth.users(now).await {
                Ok(u) => u,
                Err(e) => return Error::from(e).into_response(),
            };
            match basic_credentials(&header) {
                Some((user, password)) => {
                    match auth.check_basic(users, user, password, client, now).await {
                        Ok(ok) => ok,
                        Err(e) => return Error::from(e).into_response(),
                    }
                }
                // A token (cheap to check), or nothing we know.
                None => !is_basic(&header) && users.authenticate(Some(&header), now).is_some(),
            }
        }
    };
    if ok {
        return next.run(req).await;
    }
    let realm = token_realm(req.headers());
    let mut resp = Error::new(
        StatusCode::UNAUTHORIZED,
        Code::Unauthorized,
        "authentication required: log in with the user and password of this proxy",
    )
    .into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("Bearer realm=\"{realm}\",service=\"pullthrough\""))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The client's address, when the server or the Lambda event says it.
fn client_addr(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<crate::auth::ClientAddr>()
        .map(|a| a.0)
}

fn is_basic(authorization: &str) -> bool {
    authorization
        .trim()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
}

/// The user and password of `Authorization: Basic …`.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    if !is_basic(authorization) {
        return None;
    }
    crate::auth::decode_basic(authorization.trim()[6..].trim())
}

/// The absolute URL of our token endpoint as the client reaches us (Host, and
/// X-Forwarded-Proto behind a TLS-terminating proxy).
fn token_realm(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let proto = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{proto}://{host}/token")
}

/// The registry token endpoint: a user's credentials in, a short-lived token out. They come as
/// `Authorization: Basic` (the GET of docker, podman and skopeo), or as the form fields of an
/// OAuth2 password grant (`POST`, `grant_type=password&username=…&password=…`), which
/// containerd tries first when it has credentials.
async fn token(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = &state.auth else {
        return Error::not_found(Code::Unsupported, "client authentication is off").into_response();
    };
    let client = client_addr(&req);
    let (parts, body) = req.into_parts();
    let (method, headers) = (parts.method, parts.headers);
    let body = if method == Method::POST {
        match axum::body::to_bytes(body, MAX_QUERY_LEN).await {
            Ok(b) => b,
            Err(_) => Bytes::new(),
        }
    } else {
        Bytes::new()
    };
    let now = state.cache.now_ms();
    let grant = if method == Method::POST {
        password_grant(&headers, &body)
    } else {
        None
    };
    let credentials = grant.or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(basic_credentials)
    });
    let user = match credentials {
        None => None,
        Some((u, p)) => {
            let users = match auth.users(now).await {
                Ok(users) => users,
                Err(e) => return Error::from(e).into_response(),
            };
            match auth
                .check_basic(Arc::clone(&users), u.clone(), p, client, now)
                .await
            {
                Ok(true) => Some((users, u)),
                Ok(false) => None,
                Err(e) => return Error::from(e).into_response(),
            }
        }
    };
    let Some((users, user)) = user else {
        let mut resp = Error::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthorized,
            "a valid user and password are required for a token",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"pullthrough\""),
        );
        return resp;
    };
    let token = users.issue_token(&user, now);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": crate::auth::TOKEN_LIFETIME_SECS,
    });
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The user and password of an OAuth2 password grant: a form-encoded body with
/// `grant_type=password`, `username` and `password`. Anything else (another grant, another
/// content type, a body over [`MAX_QUERY_LEN`]) is `None`.
fn password_grant(headers: &HeaderMap, body: &[u8]) -> Option<(String, String)> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form || body.len() > MAX_QUERY_LEN {
        return None;
    }
    let (mut grant, mut user, mut password) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "grant_type" => grant = Some(v),
            "username" => user = Some(v),
            "password" => password = Some(v),
            _ => {}
        }
    }
    if grant.as_deref() != Some("password") {
        return None;
    }
    Some((user?.into_owned(), password?.into_owned()))
}

/// Adds `Docker-Distribution-API-Version` and `X-Pullthrough-Store-Calls` to every response and
/// logs each request once.
async fn common_headers(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (mut resp, store_calls) = counting(next.run(req)).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp.headers_mut()
        .insert("x-pullthrough-store-calls", HeaderValue::from(store_calls));
    tracing::info!(
        %method,
        path = %crate::oci::digest::truncate_for_message(&path),
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        store_calls,
        "request"
    );
    resp
}

async fn base(method: Method) -> Response {
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
        Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            format!("{method} is not supported: this is a read-only pull-through cache"),
        ))
    }
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
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
                    .and_then(range::parse_range);
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
