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
//!   [`crate::cache::FillJob`].
//!
//! Everything is built once, at init, without network I/O (the S3, Lambda and Secrets Manager
//! clients resolve credentials on first use), and reused by every invocation.

use std::sync::Arc;

use axum::body::Body as AxumBody;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use lambda_http::request::LambdaRequest;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceExt;

use crate::cache::{Clock, FillJob, FillPolicy, Registry, Services};
use crate::config::{Config, StoreLocation};
use crate::http::error::{Code, Error};

/// Lambda's limit on a synchronous invocation's response payload (6 MB), which the encoded
/// response (JSON, body as text or base64) must fit in.
pub const RESPONSE_LIMIT: usize = 6 * 1024 * 1024;

/// The function: the router for HTTP events, the registry for fill events.
#[derive(Clone)]
pub struct Function {
    router: axum::Router,
    registry: Arc<Registry>,
}

/// `{"fill": …}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FillEvent {
    fill: FillJob,
}

impl Function {
    pub fn new(router: axum::Router, registry: Arc<Registry>) -> Function {
        Function { router, registry }
    }

    /// Builds the function from the configuration, as at a cold start: the S3 store, the AWS
    /// clients and the router. `function_name` is whom fill events are sent to
    /// (`AWS_LAMBDA_FUNCTION_NAME`). No network I/O.
    pub async fn init(config: Config, function_name: String) -> Result<Function, String> {
        if !matches!(config.store, StoreLocation::S3 { .. }) {
            return Err(
                "Lambda mode needs an S3 store (PULLTHROUGH_STORE=s3://bucket/prefix): an instance's disk does not outlive it"
                    .into(),
            );
        }
        let store = crate::open_store(&config)
            .await
            .map_err(|e| e.to_string())?;
        let sdk = crate::aws_sdk_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let secrets = crate::aws::SecretsManager::new(&sdk);
        let invoker = crate::aws::LambdaInvoker::new(&sdk, function_name);
        let services = Services {
            secrets: Some(Arc::new(secrets)),
            fill_policy: Some(FillPolicy::new(config.fill_deadline, Arc::new(invoker))),
            ..Services::default()
        };
        let (router, registry) = crate::build(config, store, Arc::new(Clock::default()), services)
            .map_err(|e| e.to_string())?;
        Ok(Function::new(router, registry))
    }

    /// Handles one event (its raw JSON) and returns the response payload.
    pub async fn handle(&self, event: &str) -> Result<Value, lambda_runtime::Error> {
        if is_fill_event(event) {
            let FillEvent { fill } =
                serde_json::from_str(event).map_err(|e| format!("malformed fill event: {e}"))?;
            return match self.registry.fill_job(&fill).await {
                Ok(outcome) => {
                    tracing::info!(digest = %fill.digest, ?outcome, "fill event done");
                    Ok(serde_json::json!({ "fill": outcome }))
                }
                // An error makes Lambda retry the event (the lease lets a retry continue).
                Err(e) => Err(format!("fill {} failed: {e}", fill.digest).into()),
            };
        }
        let request: LambdaRequest = serde_json::from_str(event).map_err(|e| {
            format!(
                "not an API Gateway HTTP API (2.0) or function URL event, nor a fill event: {e}"
            )
        })?;
        Ok(self.http(request).await)
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

fn is_fill_event(event: &str) -> bool {
    // Only the top-level keys matter: an HTTP event never has a `fill` key.
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        fill: Option<&'a RawValue>,
    }
    serde_json::from_str::<Probe>(event).is_ok_and(|p| p.fill.is_some())
}

async fn encode_error(e: Error) -> Value {
    use axum::response::IntoResponse;
    let (parts, body) = e.into_response().into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    encode_response(parts.status, &parts.headers, &bytes).unwrap_or(Value::Null)
}

/// The path without the API Gateway stage, when the event's path carries one. With the
/// `$default` stage (what `infra/template.yaml` deploys) and function URLs there is none. A
/// named stage appears as `/<stage>/v2/...` in an HTTP API's `rawPath`, and `lambda_http` adds
/// it to paths that lack it unless `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set; either way
/// only `/v2/...` reaches the router.
pub fn strip_stage(path: &str, stage: Option<&str>) -> Option<String> {
    let stage = stage.filter(|s| !s.is_empty() && *s != "$default")?;
    let rest = path.strip_prefix('/')?.strip_prefix(stage)?;
    (rest == "/v2" || rest.starts_with("/v2/")).then(|| rest.to_owned())
}

/// The payload format 2.0 response: status, headers (repeated values joined with `,`), and the
/// body as text when that is exact and no larger, else base64. Text is used only for valid
/// UTF-8 without a byte-order mark, whose JSON string escape API Gateway decodes back to the
/// same bytes; anything else (binary, a BOM, invalid UTF-8) goes base64 with
/// `isBase64Encoded: true`. `None` when the result would exceed [`RESPONSE_LIMIT`].
pub fn encode_response(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Option<Value> {
    let mut out = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            out.insert(name.as_str().to_owned(), Value::String(values.join(",")));
        }
    }
    let (text, base64) = body_encoding(body);
    let mut response = serde_json::json!({
        "statusCode": status.as_u16(),
        "headers": out,
        "cookies": [],
        "isBase64Encoded": base64.is_some(),
    });
    if let Some(t) = text {
        response["body"] = Value::String(t);
    } else if let Some(b) = base64 {
        response["body"] = Value::String(b);
    }
    let size = serde_json::to_vec(&response).map_or(usize::MAX, |v| v.len());
    (size <= RESPONSE_LIMIT).then_some(response)
}

/// `(Some(text), None)` or `(None, Some(base64))`; both `None` for an empty body.
fn body_encoding(body: &[u8]) -> (Option<String>, Option<String>) {
    if body.is_empty() {
        return (None, None);
    }
    let b64_len = body.len().div_ceil(3) * 4;
    if let Ok(text) = std::str::from_utf8(body)
        && !text.starts_with('\u{feff}')
    {
        // The JSON escape of the text is what travels; choose it only if not larger.
        let escaped = serde_json::to_string(text)
            .map(|s| s.len())
            .unwrap_or(usize::MAX);
        if escaped <= b64_len + 2 {
            return (Some(text.to_owned()), None);
        }
    }
    (
        None,
        Some(base64::engine::general_purpose::STANDARD.encode(body)),
    )
}

/// Runs the function against the Lambda runtime API until the runtime stops it. A failed
/// initialisation (configuration, store) is reported to the runtime API's `init/error` before
/// the process exits, so Lambda shows the message.
pub async fn run(settings: &crate::config::Settings) -> Result<(), String> {
    let function = match init_from_env(settings).await {
        Ok(f) => f,
        Err(e) => {
            report_init_error(&e).await;
            return Err(e);
        }
    };
    tracing::info!("pullthrough Lambda function initialised");
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Box<RawValue>>| {
            let function = function.clone();
            async move { function.handle(event.payload.get()).await }
        },
    ))
    .await
    .map_err(|e| format!("Lambda runtime: {e}"))
}

async fn init_from_env(settings: &crate::config::Settings) -> Result<Function, String> {
    let config = Config::load(settings).map_err(|e| e.to_string())?;
    let function_name = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .map_err(|_| "AWS_LAMBDA_FUNCTION_NAME is not set (Lambda sets it)".to_owned())?;
    Function::init(config, function_name).await
}

/// `POST /2018-06-01/runtime/init/error` (best effort: the exit status tells Lambda anyway).
async fn report_init_error(message: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_stripped_only_before_v2() {
        assert_eq!(strip_stage("/v2/x", None), None);
        assert_eq!(strip_stage("/v2/x", Some("$default")), None);
        assert_eq!(
            strip_stage("/prod/v2/library/alpine/manifests/3", Some("prod")).as_deref(),
            Some("/v2/library/alpine/manifests/3")
        );
        assert_eq!(
            strip_stage("/prod/v2", Some("prod")).as_deref(),
            Some("/v2")
        );
        assert_eq!(strip_stage("/v2/prod/x", Some("prod")), None);
        assert_eq!(strip_stage("/production/v2/x", Some("prod")), None);
    }

    #[test]
    fn bodies_are_text_only_when_exact() {
        let (t, b) = body_encoding(b"{\"a\":1}");
        assert_eq!(t.as_deref(), Some("{\"a\":1}"));
        assert!(b.is_none());
        // A byte-order mark, invalid UTF-8, binary: base64.
        for odd in [
            &b"\xef\xbb\xbf{\"a\":1}"[..],
            &b"{\"a\":\"\xff\"}"[..],
            &[0u8, 1, 2, 3][..],
        ] {
            let (t, b) = body_encoding(odd);
            assert!(t.is_none());
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.unwrap())
                .unwrap();
            assert_eq!(decoded, odd);
        }
        // Text whose JSON escape is larger than base64 goes base64.
        let quotes = vec![b'"'; 3000];
        assert!(body_encoding(&quotes).0.is_none());
    }

    #[test]
    fn the_payload_limit_is_enforced() {
        let big = vec![b'a'; RESPONSE_LIMIT];
        assert!(encode_response(http::StatusCode::OK, &http::HeaderMap::new(), &big).is_none());
        let ok = vec![b'a'; 4 * 1024 * 1024];
        assert!(encode_response(http::StatusCode::OK, &http::HeaderMap::new(), &ok).is_some());
    }
}
