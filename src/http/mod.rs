//! The HTTP edge: one `/v2/{*rest}` route, typed requests parsed from the path ([`path`]), thin
//! handlers that call the [`Cache`] and build responses; client authentication of requests and
//! the `/token` endpoint (over [`crate::auth`]); the one mapping of every error to a status and an
//! OCI error code ([`error`]); server mode's connections ([`server`]); the operator's
//! `/healthz`, `/readyz` and `/metrics` ([`ops`]); the admin API under `/_pullthrough/`
//! ([`admin`]); one log line and the figures of every request. No cache policy lives here, and
//! the store and the upstream client are reached only through the cache.

pub mod admin;
mod auth;
pub mod error;
mod handlers;
pub mod ops;
pub mod path;
pub mod range;
pub mod server;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::any;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::auth::{ClientAddr, ClientAuth};
use crate::cache::{Cache, counting};
use crate::metrics;
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
    // `/metrics` is served here unless it has an address of its own.
    let metrics_here = cache.config().metrics_listen.is_none();
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
    let mut ops = Router::new()
        .route("/healthz", ops::get_only(ops::healthz))
        .route("/readyz", ops::get_only(ops::readyz));
    if metrics_here {
        ops = ops.route("/metrics", ops::get_only(ops::metrics));
    }
    Router::new()
        .merge(api)
        .merge(admin)
        .merge(ops)
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

/// Adds `Docker-Distribution-API-Version` and `X-Pullthrough-Store-Calls` to every response,
/// counts the request in the figures, and logs it once, when its response body has ended (so
/// the line has the bytes sent).
async fn common_headers(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let endpoint = ops::route_kind(req.uri().path());
    let log = RequestLog {
        started,
        method: crate::oci::truncate_for_message(method.as_str()),
        path: crate::oci::truncate_for_message(req.uri().path()),
        query: req.uri().query().map(crate::oci::truncate_for_message),
        client: req.extensions().get::<ClientAddr>().map(|a| a.0),
        status: 0,
        store_calls: 0,
        notes: metrics::request::Notes::default(),
        bytes: 0,
    };
    let ((resp, store_calls), notes) = metrics::request::observe(counting(next.run(req))).await;
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    parts
        .headers
        .insert("x-pullthrough-store-calls", HeaderValue::from(store_calls));
    let status = parts.status.as_u16();
    metrics::request(endpoint, method.as_str(), status, started.elapsed());
    let log = RequestLog {
        status,
        store_calls,
        notes,
        ..log
    };
    Response::from_parts(
        parts,
        Body::new(Logged {
            inner: body,
            log: Some(log),
        }),
    )
}

/// What a request's log line says, gathered as it is answered.
struct RequestLog {
    started: Instant,
    method: String,
    path: String,
    query: Option<String>,
    client: Option<IpAddr>,
    status: u16,
    store_calls: u32,
    notes: metrics::request::Notes,
    /// Response body bytes sent so far.
    bytes: u64,
}

impl RequestLog {
    fn write(&self) {
        metrics::served_bytes(self.bytes);
        let cache = self.notes.cache.map_or("-", metrics::Lookup::as_str);
        tracing::info!(
            method = %self.method,
            path = %self.path,
            // After the status, so that `method=… path=… status=…` reads (and greps) as one.
            status = self.status,
            query = self.query.as_deref().map(tracing::field::display),
            ms = self.started.elapsed().as_millis() as u64,
            bytes = self.bytes,
            upstream = self.notes.upstream.as_deref().map(tracing::field::display),
            %cache,
            store_calls = self.store_calls,
            client = self.client.map(tracing::field::display),
            "request"
        );
    }
}

/// A response body that counts its bytes and writes the request's log line when it ends: at
/// its last frame, on an error, or when it is dropped unfinished (the client went away).
struct Logged {
    inner: Body,
    log: Option<RequestLog>,
}

impl Logged {
    fn finish(&mut self) {
        if let Some(log) = self.log.take() {
            log.write();
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                    log.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}
