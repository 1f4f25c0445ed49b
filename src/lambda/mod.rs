//! Lambda mode: the same [`axum::Router`] as the server, driven by Lambda events.
//!
//! The binary switches to this mode when `AWS_LAMBDA_RUNTIME_API` is set (see `main.rs`). Two
//! kinds of events reach the function:
//!
//! - **HTTP** events from an API Gateway HTTP API (payload format 2.0) or a Lambda function URL
//!   (the same format). `lambda_http` turns them into `http::Request`s; the stage, if any, is
//!   kept out of the path ([`strip_stage`]); the router answers; the answer is encoded here,
//!   not by `lambda_http`, because its encoder decodes `+json` bodies as text through
//!   `encoding_rs`, which drops a byte-order mark, transcodes a declared charset and replaces
//!   invalid UTF-8, and a manifest's bytes are its identity ([`encode_response`]).
//! - **Fill** events `{"fill": {upstream, repo, digest, lease}}`, sent by this function to itself
//!   (`Invoke`, `InvocationType=Event`) when a blob copy outlives the request's deadline; see
//!   [`crate::cache::FillJob`]; the sending side is [`handoff`].
//! - **Scheduled operations** `{"gc": {"olderThan":"30d","dryRun":false}}` and
//!   `{"prefetch": {"refs":[…],"platforms":"all"}}` (EventBridge schedules of the SAM template,
//!   or `aws lambda invoke`), with the admin API's request shapes; the payload is
//!   `{"gc": report}` or `{"prefetch": report}`. They run up to the function's timeout, not API
//!   Gateway's 30 s.
//!
//! After each invocation, the figures that changed during it are written to stdout as one
//! CloudWatch embedded-metric-format line ([`crate::metrics::emf`]); CloudWatch Logs turns it
//! into metrics of the namespace `Pullthrough`.
//!
//! Everything is built once, at init (by `crate::app`, from the configuration), without network
//! I/O (the S3, Lambda and Secrets Manager clients resolve credentials on first use), and reused
//! by every invocation. This module speaks the Lambda side only: events in, payloads out, the
//! runtime loop; the answers themselves come from the same router as in server mode.

mod encoding;
mod events;
pub mod handoff;

pub use encoding::{RESPONSE_LIMIT, encode_response};
pub use events::strip_stage;

use std::sync::Arc;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use lambda_http::request::LambdaRequest;
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceExt;

use crate::cache::Cache;
use crate::http::error::{Code, Error};
use encoding::encode_error;
use events::{FillEvent, GcEvent, Kind, PrefetchEvent, kind};

/// The runtime loop failed.
#[derive(Debug, thiserror::Error)]
#[error("Lambda runtime: {0}")]
pub struct RuntimeError(String);

/// The function: the router for HTTP events, the cache for fill events.
#[derive(Clone)]
pub struct Function {
    router: axum::Router,
    cache: Arc<Cache>,
}

impl Function {
    pub fn new(router: axum::Router, cache: Arc<Cache>) -> Function {
        Function { router, cache }
    }

    /// Handles one event (its raw JSON) and returns the response payload.
    pub async fn handle(&self, event: &str) -> Result<Value, lambda_runtime::Error> {
        let result = self.answer(event).await;
        // The last-pulled times this invocation noted, written off the request path: the task
        // runs while the runtime posts the answer and waits for the next event (a frozen
        // instance runs no timer, so the cache's own 30 s flush cannot be relied on here).
        let cache = Arc::clone(&self.cache);
        tokio::spawn(async move { cache.flush_touches().await });
        result
    }

    async fn answer(&self, event: &str) -> Result<Value, lambda_runtime::Error> {
        match kind(event) {
            Kind::Fill => self.fill(event).await,
            Kind::Gc => self.gc(event).await,
            Kind::Prefetch => self.prefetch(event).await,
            Kind::Http => {
                let request: LambdaRequest = serde_json::from_str(event).map_err(|e| {
                    format!(
                        "not an API Gateway HTTP API (2.0) or function URL event, nor a fill event, a gc event or a prefetch event: {e}"
                    )
                })?;
                Ok(self.http(request).await)
            }
        }
    }

    /// `{"fill": …}`: finishes a blob copy handed over by a request.
    async fn fill(&self, event: &str) -> Result<Value, lambda_runtime::Error> {
        let FillEvent { fill } =
            serde_json::from_str(event).map_err(|e| format!("malformed fill event: {e}"))?;
        match self.cache.fill_job(&fill).await {
            Ok(outcome) => {
                tracing::info!(digest = %fill.digest, ?outcome, "fill event done");
                Ok(serde_json::json!({ "fill": outcome }))
            }
            // An error makes Lambda retry the event (the lease lets a retry continue).
            Err(e) => Err(format!("fill {} failed: {e}", fill.digest).into()),
        }
    }

    /// `{"gc": …}`: one gc with the event's options over the configured `[gc]` ones. An error
    /// fails the invocation (it shows in the function's `Errors` metric).
    async fn gc(&self, event: &str) -> Result<Value, lambda_runtime::Error> {
        let GcEvent { gc } =
            serde_json::from_str(event).map_err(|e| format!("malformed gc event: {e}"))?;
        let options = gc
            .options(&self.cache.config().gc)
            .map_err(|e| format!("gc event: {e}"))?;
        tracing::info!(?options, "gc event");
        let report = crate::lifecycle::gc(&self.cache, &options)
            .await
            .map_err(|e| format!("gc failed: {e}"))?;
        let report = serde_json::to_value(&report)?;
        tracing::info!(report = %report, "gc event done");
        Ok(serde_json::json!({ "gc": report }))
    }

    /// `{"prefetch": …}`: warms the event's references. The report names the references that
    /// failed; only a failure of the whole operation fails the invocation.
    async fn prefetch(&self, event: &str) -> Result<Value, lambda_runtime::Error> {
        let PrefetchEvent { prefetch } =
            serde_json::from_str(event).map_err(|e| format!("malformed prefetch event: {e}"))?;
        let platforms = prefetch
            .platforms()
            .map_err(|e| format!("prefetch event: {e}"))?;
        tracing::info!(refs = ?prefetch.refs, "prefetch event");
        let report = crate::lifecycle::prefetch(&self.cache, &prefetch.refs, &platforms)
            .await
            .map_err(|e| format!("prefetch failed: {e}"))?;
        let report = serde_json::to_value(&report)?;
        tracing::info!(report = %report, "prefetch event done");
        Ok(serde_json::json!({ "prefetch": report }))
    }

    /// An HTTP event through the router, answered in the payload format 2.0 response shape
    /// (API Gateway HTTP API and function URLs).
    pub async fn http(&self, request: LambdaRequest) -> Value {
        let (stage, source_ip) = match &request {
            LambdaRequest::ApiGatewayV2(r) => (
                r.request_context.stage.clone(),
                r.request_context.http.source_ip.clone(),
            ),
            _ => (None, None),
        };
        let request: lambda_http::Request = request.into();
        let (mut parts, body) = request.into_parts();
        // The client's address as API Gateway / the function URL saw it: failed logins are
        // limited per address here as in server mode.
        if let Some(ip) = source_ip.and_then(|ip| ip.parse().ok()) {
            parts.extensions.insert(crate::auth::ClientAddr(ip));
        }
        if let Some(path) = strip_stage(parts.uri.path(), stage.as_deref()) {
            let mut uri = http::uri::Parts::from(parts.uri.clone());
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            if let Ok(pq) = pq.parse() {
                uri.path_and_query = Some(pq);
                if let Ok(u) = http::Uri::from_parts(uri) {
                    parts.uri = u;
                }
            }
        }
        let body = match body {
            lambda_http::Body::Text(t) => Bytes::from(t),
            lambda_http::Body::Binary(b) => Bytes::from(b),
            _ => Bytes::new(),
        };
        let request = http::Request::from_parts(parts, AxumBody::from(body));
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return encode_error(Error::new(
                    http::StatusCode::BAD_GATEWAY,
                    Code::Unavailable,
                    format!("reading the response body: {e}"),
                ))
                .await;
            }
        };
        match encode_response(parts.status, &parts.headers, &bytes) {
            Some(v) => v,
            None => {
                encode_error(Error::new(
                    http::StatusCode::BAD_GATEWAY,
                    Code::Unavailable,
                    format!(
                        "the response ({} bytes) does not fit Lambda's 6 MB response payload limit",
                        bytes.len()
                    ),
                ))
                .await
            }
        }
    }
}

/// Runs `function` against the Lambda runtime API until the runtime stops it.
pub async fn run(function: Function) -> Result<(), RuntimeError> {
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Box<RawValue>>| {
            let function = function.clone();
            async move {
                let answer = function.handle(event.payload.get()).await;
                // Written before the answer is posted, so the line belongs to this invocation.
                if let Some(line) = crate::metrics::emf::since_last() {
                    println!("{line}");
                }
                answer
            }
        },
    ))
    .await
    .map_err(|e| RuntimeError(e.to_string()))
}

/// `POST /2018-06-01/runtime/init/error` (best effort: the exit status tells Lambda anyway).
pub async fn report_init_error(message: &str) {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let body = serde_json::json!({
        "errorMessage": message,
        "errorType": "Runtime.InitError",
    });
    let sent = reqwest::Client::new()
        .post(format!("http://{api}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not report the init error to the runtime API");
    }
}
