//! The admin API under `/_pullthrough/`: the lifecycle operations over HTTP, for deployments
//! without a shell (Lambda behind API Gateway) and for scripts.
//!
//! Mounted only when `PULLTHROUGH_ADMIN_TOKEN` is set; otherwise no route exists and every
//! `/_pullthrough/` path is the router's ordinary 404. Every request must carry
//! `Authorization: Bearer <token>`, checked before anything else (an unknown admin path without
//! the token is a 401, not a 404: the API cannot be explored without it). The token is separate
//! from client authentication: a registry user is not an administrator.
//!
//! - `POST /_pullthrough/purge` `{"refs":["repo:tag",…]}`
//! - `POST /_pullthrough/prefetch` `{"refs":[…],"platforms":"all"}`
//! - `POST /_pullthrough/gc` `{"olderThan":"30d","grace":"1h","maxSize":"200GiB","dryRun":true}`
//! - `GET /_pullthrough/ls[?repo=…]`
//!
//! Each answers 200 with the operation's JSON report. A body that is not JSON, has an unknown
//! field or a value out of range is a 400 naming the problem, before anything is changed; a
//! body over [`MAX_BODY`] is a 413. The operation runs in its own task, so a gc or prefetch goes
//! on to its end when the client disconnects. The request shapes are also those of Lambda's
//! `{"gc": …}` and `{"prefetch": …}` events (`crate::lambda`).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::AppState;
use super::error::{Code, Error};
use crate::config::{AdminToken, GcSettings, GcValueError, gc_grace, gc_max_size, gc_older_than};
use crate::lifecycle::{self, GcOptions, LifecycleError, Platforms};

/// Where the admin API lives.
pub const PREFIX: &str = "/_pullthrough";
/// Largest request body; a larger one is answered 413 without being read to its end.
pub const MAX_BODY: usize = 64 * 1024;
/// Most references in one purge or prefetch.
pub const MAX_REFS: usize = 1000;
/// Longest reference (a 255-byte name, a 128-byte tag or a digest, an upstream alias).
const MAX_REF_LEN: usize = 512;

/// The admin routes, answering with `token` only.
pub(super) fn routes(token: &AdminToken) -> Router<AppState> {
    // The sha256 of the token, never the token: requests are compared against it (below).
    let expected: Arc<[u8; 32]> = Arc::new(Sha256::digest(token.as_bytes()).into());
    let handler = move |State(state): State<AppState>, req: Request| {
        let expected = Arc::clone(&expected);
        async move { admin(state, &expected, req).await }
    };
    Router::new()
        .route(PREFIX, any(handler.clone()))
        .route(&format!("{PREFIX}/{{*rest}}"), any(handler))
}

/// The operations, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Purge,
    Prefetch,
    Gc,
    Ls,
}

impl Operation {
    fn from_path(path: &str) -> Option<Operation> {
        match path.strip_prefix(PREFIX)? {
            "/purge" => Some(Operation::Purge),
            "/prefetch" => Some(Operation::Prefetch),
            "/gc" => Some(Operation::Gc),
            "/ls" => Some(Operation::Ls),
            _ => None,
        }
    }

    /// Whether the operation takes `method` (a listing is a `GET`, and so also a `HEAD`).
    fn takes(self, method: &Method) -> bool {
        match self {
            Operation::Ls => method == Method::GET || method == Method::HEAD,
            _ => method == Method::POST,
        }
    }

    /// The `Allow` header of a 405.
    fn allow(self) -> &'static str {
        match self {
            Operation::Ls => "GET, HEAD",
            _ => "POST",
        }
    }
}

async fn admin(state: AppState, expected: &[u8; 32], req: Request) -> Response {
    if !authorized(req.headers(), expected) {
        return unauthorized();
    }
    let Some(op) = Operation::from_path(req.uri().path()) else {
        return Error::not_found(
            Code::Unsupported,
            "no such admin endpoint; there are POST /_pullthrough/purge, POST /_pullthrough/prefetch, POST /_pullthrough/gc and GET /_pullthrough/ls",
        )
        .into_response();
    };
    if !op.takes(req.method()) {
        let mut resp = Error::method_not_allowed(
            req.method(),
            &format!("{} takes {}", req.uri().path(), op.allow()),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(op.allow()));
        return resp;
    }
    match handle(state, op, req).await {
        Ok(resp) | Err(resp) => resp,
    }
}

/// Checks `Authorization: Bearer <token>` in constant time: the sha256 of what was sent is
/// compared with that of the token byte by byte without an early exit, so neither the time
/// nor the lengths involved say how much of a guess was right.
fn authorized(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(scheme) = value.get(..7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let sent: [u8; 32] = Sha256::digest(&value[7..]).into();
    let difference = sent
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

fn unauthorized() -> Response {
    let mut resp = Error::new(
        StatusCode::UNAUTHORIZED,
        Code::Unauthorized,
        "the admin API needs Authorization: Bearer <PULLTHROUGH_ADMIN_TOKEN>",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"pullthrough admin\""),
    );
    resp
}

async fn handle(state: AppState, op: Operation, req: Request) -> Result<Response, Response> {
    let cache = Arc::clone(&state.cache);
    match op {
        Operation::Ls => {
            let repo = ls_query(req.uri().query()).map_err(bad_request)?;
            tracing::info!(operation = "ls", repo = repo.as_deref(), "admin API");
            Ok(spawn(async move { lifecycle::ls(&cache, repo.as_deref()).await }).await)
        }
        Operation::Purge => {
            let body: PurgeRequest = read_json(req.into_body()).await?;
            check_refs(&body.refs).map_err(bad_request)?;
            tracing::info!(operation = "purge", refs = ?body.refs, "admin API");
            Ok(spawn(async move { lifecycle::purge(&cache, &body.refs).await }).await)
        }
        Operation::Prefetch => {
            let body: PrefetchRequest = read_json(req.into_body()).await?;
            let platforms = body.platforms().map_err(bad_request)?;
            tracing::info!(operation = "prefetch", refs = ?body.refs, "admin API");
            Ok(
                spawn(async move { lifecycle::prefetch(&cache, &body.refs, &platforms).await })
                    .await,
            )
        }
        Operation::Gc => {
            let body: GcRequest = read_json(req.into_body()).await?;
            let options = body
                .options(&state.cache.config().gc)
                .map_err(bad_request)?;
            tracing::info!(operation = "gc", ?options, "admin API");
            Ok(spawn(async move { lifecycle::gc(&cache, &options).await }).await)
        }
    }
}

/// Runs `operation` in its own task (it goes on if the client goes away) and answers its report
/// as JSON.
async fn spawn<T, F>(operation: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: Future<Output = Result<T, LifecycleError>> + Send + 'static,
{
    match tokio::spawn(operation).await {
        Ok(Ok(report)) => match serde_json::to_vec(&report) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Unavailable,
                format!("the report does not serialise: {e}"),
            )
            .into_response(),
        },
        Ok(Err(e)) => lifecycle_error(e).into_response(),
        Err(e) => Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable,
            format!("the operation failed: {e}"),
        )
        .into_response(),
    }
}

/// A lifecycle failure as an answer: what the request got wrong is a 400, the store or an
/// upstream failing is what the same failure is on `/v2/`.
fn lifecycle_error(e: LifecycleError) -> Error {
    match e {
        LifecycleError::BadReference { .. } => Error::bad_request(Code::NameInvalid, e.to_string()),
        LifecycleError::BadOption(_) => Error::bad_request(Code::Unsupported, e.to_string()),
        LifecycleError::Store(_) => Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            e.to_string(),
        ),
        LifecycleError::Cache(e) => Error::from(e),
    }
}

fn bad_request(e: RequestError) -> Response {
    let code = match &e {
        RequestError::BadRef(_) | RequestError::Platforms(LifecycleError::BadReference { .. }) => {
            Code::NameInvalid
        }
        _ => Code::Unsupported,
    };
    Error::bad_request(code, e.to_string()).into_response()
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes (an empty body is `{}`).
async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::Unsupported,
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
            .into_response());
        }
        Err(e) => {
            return Err(Error::bad_request(
                Code::Unsupported,
                format!("reading the request body: {e}"),
            )
            .into_response());
        }
    };
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|e| bad_request(RequestError::Json(e.to_string())))
}

/// `?repo=…` (the only parameter), percent-decoded.
fn ls_query(query: Option<&str>) -> Result<Option<String>, RequestError> {
    let mut repo = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "repo" if repo.is_none() => {
                check_ref(&value)?;
                repo = Some(value.into_owned());
            }
            "repo" => return Err(RequestError::Query("repo is given twice".into())),
            other => {
                return Err(RequestError::Query(format!(
                    "unknown parameter {other:?}; ls takes ?repo=[upstream/]repo"
                )));
            }
        }
    }
    Ok(repo)
}

/// `{"refs":[…]}`: the body of `POST /_pullthrough/purge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub refs: Vec<String>,
}

/// `{"refs":[…],"platforms":"all"}`: the body of `POST /_pullthrough/prefetch` and of Lambda's
/// `{"prefetch": …}` event. `platforms` is `all` (the default) or `os/arch[/variant],…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    pub refs: Vec<String>,
    #[serde(default)]
    pub platforms: Option<String>,
}

impl PrefetchRequest {
    /// Checks the references and parses the platforms.
    pub fn platforms(&self) -> Result<Platforms, RequestError> {
        check_refs(&self.refs)?;
        match &self.platforms {
            None => Ok(Platforms::All),
            Some(p) => p.parse().map_err(RequestError::Platforms),
        }
    }
}

/// `{"olderThan":"30d","grace":"1h","maxSize":"200GiB","dryRun":true}`: the body of
/// `POST /_pullthrough/gc` and of Lambda's `{"gc": …}` event. Every field is optional: a missing
/// one is the configured `[gc]` value (default 30d, 1h, no size bound, not a dry run).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcRequest {
    pub older_than: Option<String>,
    pub grace: Option<String>,
    pub max_size: Option<SizeValue>,
    #[serde(default)]
    pub dry_run: bool,
}

/// A size as text (`"200GiB"`) or a number of bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl GcRequest {
    /// The options of this gc over the configured ones, checked as the configuration is.
    pub fn options(&self, configured: &GcSettings) -> Result<GcOptions, RequestError> {
        let field = |field: &'static str| move |source| RequestError::Gc { field, source };
        let older_than = match &self.older_than {
            Some(t) => gc_older_than(t).map_err(field("olderThan"))?,
            None => configured.older_than,
        };
        let grace = match &self.grace {
            Some(t) => gc_grace(t).map_err(field("grace"))?,
            None => configured.grace,
        };
        let max_size = match &self.max_size {
            Some(SizeValue::Text(t)) => Some(gc_max_size(t).map_err(field("maxSize"))?),
            Some(SizeValue::Bytes(n)) => {
                Some(gc_max_size(&n.to_string()).map_err(field("maxSize"))?)
            }
            None => configured.max_size,
        };
        Ok(GcOptions {
            older_than,
            grace,
            max_size,
            dry_run: self.dry_run,
        })
    }
}

/// What is wrong with an admin request (or a Lambda event of the same shape).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("bad JSON body: {0}")]
    Json(String),
    #[error("{0}")]
    Query(String),
    #[error("{field}: {source}")]
    Gc {
        field: &'static str,
        source: GcValueError,
    },
    #[error("refs: give at least one reference")]
    NoRefs,
    #[error("refs: at most {MAX_REFS} references at once")]
    TooManyRefs,
    #[error("refs: {0:?} is not a reference ([upstream/]repo, repo:tag or repo@digest)")]
    BadRef(String),
    #[error("platforms: {0}")]
    Platforms(LifecycleError),
}

/// Bounds the references before the lifecycle parses them (which refuses the rest of what is
/// not a reference): a few, each short, without spaces or control characters.
pub fn check_refs(refs: &[String]) -> Result<(), RequestError> {
    if refs.is_empty() {
        return Err(RequestError::NoRefs);
    }
    if refs.len() > MAX_REFS {
        return Err(RequestError::TooManyRefs);
    }
    refs.iter().try_for_each(|r| check_ref(r))
}

fn check_ref(r: &str) -> Result<(), RequestError> {
    if r.is_empty() || r.len() > MAX_REF_LEN || !r.bytes().all(|b| b.is_ascii_graphic()) {
        let shown: String = r.chars().take(80).collect();
        return Err(RequestError::BadRef(shown));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = "0123456789abcdef0123456789abcdef";
        let expected = digest(token);
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            authorized(&h, &expected)
        };
        assert!(with(&format!("Bearer {token}")));
        assert!(with(&format!("bearer {token}")));
        assert!(!with(&format!("Bearer {token}x")));
        assert!(!with(&format!("Bearer {}", &token[1..])));
        assert!(!with(&format!("Basic {token}")));
        assert!(!with("Bearer"));
        assert!(!with(""));
        assert!(!authorized(&HeaderMap::new(), &expected));
    }

    #[test]
    fn gc_requests_fall_back_to_the_configuration_and_are_checked() {
        let configured = GcSettings {
            max_size: Some(1 << 30),
            ..GcSettings::default()
        };
        let o = GcRequest::default().options(&configured).unwrap();
        assert_eq!(o.older_than, configured.older_than);
        assert_eq!(o.max_size, Some(1 << 30));
        assert!(!o.dry_run);
        let r: GcRequest = serde_json::from_str(
            r#"{"olderThan":"7d","grace":"2h","maxSize":"2GiB","dryRun":true}"#,
        )
        .unwrap();
        let o = r.options(&configured).unwrap();
        assert_eq!(o.older_than.as_secs(), 7 * 86_400);
        assert_eq!(o.grace.as_secs(), 7200);
        assert_eq!(o.max_size, Some(2 << 30));
        assert!(o.dry_run);
        let r: GcRequest = serde_json::from_str(r#"{"olderThan":"1m"}"#).unwrap();
        let e = r.options(&configured).unwrap_err().to_string();
        assert!(e.starts_with("olderThan:"), "{e}");
        assert!(serde_json::from_str::<GcRequest>(r#"{"older_than":"7d"}"#).is_err());
    }

    #[test]
    fn references_are_bounded() {
        assert!(check_refs(&[]).is_err());
        assert!(check_refs(&["library/alpine:3".into()]).is_ok());
        assert!(check_refs(&["has space".into()]).is_err());
        assert!(check_refs(&["x".repeat(600)]).is_err());
        assert!(check_refs(&vec!["a".to_owned(); MAX_REFS + 1]).is_err());
        assert_eq!(
            ls_query(Some("repo=library%2Falpine")).unwrap().as_deref(),
            Some("library/alpine")
        );
        assert!(ls_query(Some("tag=x")).is_err());
        assert_eq!(ls_query(None).unwrap(), None);
    }
}
