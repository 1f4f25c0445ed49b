//! The operator's endpoints outside `/v2/`, answered without client authentication (they carry
//! no image data; a deployment that must hide them serves `/metrics` on `metrics_listen` and
//! keeps the others behind its load balancer):
//!
//! - `GET /healthz`: 200 while the process serves requests (a liveness probe);
//! - `GET /readyz`: 200 when the store answered a cheap request within [`READY_TIMEOUT`], else
//!   503 with a JSON body naming the store and the fault (a readiness probe); one check a
//!   second at most, shared by concurrent callers;
//! - `GET /metrics`: the process's figures as Prometheus text ([`crate::metrics`]), here or only
//!   on `metrics_listen` ([`metrics_router`]).
//!
//! Also the route kind of a path ([`route_kind`]): the `endpoint` label of the request figures,
//! which must never be the path itself (one series per image would have no bound).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use super::AppState;
use super::error::{Code, Error};
use super::path::Shape;

/// How long `/readyz` waits for the store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.cache.config().store.to_string();
    let Err(fault) = state.cache.store_ready(READY_TIMEOUT).await else {
        return json(
            StatusCode::OK,
            serde_json::json!({ "status": "ready", "store": store }),
        );
    };
    tracing::warn!(%store, error = %fault, "not ready: the store does not answer");
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "status": "unavailable", "store": store, "error": fault }),
    )
}

pub(super) async fn metrics() -> Response {
    let mut resp = crate::metrics::render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

/// `/metrics` alone, for its own address (`metrics_listen`). Any other path is a 404, and any
/// other method a 405, in OCI JSON like every error the process sends.
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", get_only(metrics))
        .fallback(|| async {
            Error::not_found(Code::Unsupported, "this address serves only GET /metrics")
        })
}

/// A route taking `GET` (and so `HEAD`); any other method gets a 405 in OCI JSON with
/// `Allow: GET, HEAD`, as on the registry API, instead of an empty body.
pub(super) fn get_only<H, T, S>(handler: H) -> MethodRouter<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    get(handler).fallback(|method: Method| async move {
        Error::method_not_allowed(
            &method,
            "is not supported here: this path takes GET or HEAD",
        )
    })
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The kind of route a path names, by the shape the router parses ([`super::path::shape`]),
/// without validating anything: `manifest`, `blob`, `tags`, `referrers`, `upload`, `base`
/// (`/v2/`), `token`, `healthz`, `readyz`, `metrics`, `admin` (`/_pullthrough/`), or `other`.
pub fn route_kind(path: &str) -> &'static str {
    match path {
        "/v2" | "/v2/" => return "base",
        "/token" => return "token",
        "/healthz" => return "healthz",
        "/readyz" => return "readyz",
        "/metrics" => return "metrics",
        _ => {}
    }
    if path.starts_with("/_pullthrough/") {
        return "admin";
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return "other";
    };
    let segs: Vec<&str> = rest.split('/').collect();
    match super::path::shape(&segs) {
        Some(Shape::Upload) => "upload",
        Some(Shape::TagsList) => "tags",
        Some(Shape::Manifest) => "manifest",
        Some(Shape::Blob) => "blob",
        Some(Shape::Referrers) => "referrers",
        None => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::route_kind;

    #[test]
    fn route_kinds_are_few_and_never_paths() {
        for (path, kind) in [
            ("/v2/", "base"),
            ("/v2", "base"),
            ("/v2/library/alpine/manifests/3.20", "manifest"),
            ("/v2/a/b/c/manifests/sha256:abc", "manifest"),
            ("/v2/team/app/blobs/sha256:abc", "blob"),
            ("/v2/team/app/blobs/uploads/", "upload"),
            ("/v2/team/app/blobs/uploads/123", "upload"),
            ("/v2/team/app/tags/list", "tags"),
            ("/v2/team/app/referrers/sha256:abc", "referrers"),
            ("/v2/manifests/x", "other"),
            ("/token", "token"),
            ("/healthz", "healthz"),
            ("/readyz", "readyz"),
            ("/metrics", "metrics"),
            ("/_pullthrough/gc", "admin"),
            ("/favicon.ico", "other"),
            ("/v2/x/y/z", "other"),
        ] {
            assert_eq!(route_kind(path), kind, "{path}");
        }
    }
}
