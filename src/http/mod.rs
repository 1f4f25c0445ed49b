//! The HTTP edge: one `/v2/{*rest}` route, typed requests parsed from the path ([`path`]), thin
//! handlers that call the [`Cache`] and build responses; client authentication of requests and
//! the `/token` endpoint (over [`crate::auth`]); the one mapping of every error to a status and an
//! OCI error code ([`error`]); the admin API under `/_pullthrough/` ([`admin`]); server mode's
//! connections ([`server`]). No cache policy lives
//! here, and the store and the upstream client are reached only through the cache.

pub mod admin;
mod auth;
pub mod error;
mod handlers;
pub mod path;
pub mod range;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::any;

use crate::auth::ClientAuth;
use crate::cache::{Cache, counting};
use auth::{require_auth, token};
use error::{Code, Error};
use handlers::{base, dispatch};

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
    let admin = match &state.cache.config().admin_token {
        Some(t) => admin::routes(t),
        None => Router::new(),
    };
    Router::new()
        .merge(api)
        .merge(admin)
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
        path = %crate::oci::truncate_for_message(&path),
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        store_calls,
        "request"
    );
    resp
}
