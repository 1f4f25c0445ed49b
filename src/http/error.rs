//! The OCI error envelope, and the one mapping of every lower layer's error (cache, auth) to an
//! HTTP status and an OCI error code.
//!
//! Every error a client sees is `{"errors":[{"code":"…","message":"…"}]}` with
//! `Content-Type: application/json`, whatever went wrong and wherever: never an HTML page, also
//! when the upstream sent one. Errors are logged here, once, where they become responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::{AuthError, SECRET_RETRY_SECS};
use crate::cache::UpstreamError;
use crate::cache::{CacheError, Wanted};

/// Error codes of the distribution spec, plus `UNAVAILABLE` (as CNCF distribution uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    Denied,
    Unauthorized,
    Unsupported,
    TooManyRequests,
    Unavailable,
    RangeInvalid,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::Denied => "DENIED",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unavailable => "UNAVAILABLE",
            Code::RangeInvalid => "RANGE_INVALID",
        }
    }
}

/// An error on its way to the client.
#[derive(Clone, Debug)]
pub struct Error {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
    /// For 416: the object's size, sent as `Content-Range: bytes */<size>`.
    pub total_size: Option<u64>,
}

impl Error {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Error {
        Error {
            status,
            code,
            message: message.into(),
            retry_after: None,
            total_size: None,
        }
    }

    pub fn bad_request(code: Code, message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: Code, message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A `405` (`Allow: GET, HEAD` unless the caller sets another) whose message starts with
    /// the method, cut to a bounded length: a method is any token a client cares to send.
    pub fn method_not_allowed(method: &axum::http::Method, why: &str) -> Error {
        let method = crate::oci::truncate_for_message(method.as_str());
        Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            format!("{method} {why}"),
        )
    }
}

/// Maps an upstream failure, given what was asked for.
fn from_upstream(e: &UpstreamError, wanted: Wanted) -> Error {
    let message = e.to_string();
    match e {
        UpstreamError::NotFound { code, .. } => {
            let code = match (code.as_deref(), wanted) {
                (Some("NAME_UNKNOWN"), _) | (_, Wanted::Repository) => Code::NameUnknown,
                (_, Wanted::Manifest) => Code::ManifestUnknown,
                (_, Wanted::Blob) => Code::BlobUnknown,
            };
            Error::not_found(code, message)
        }
        UpstreamError::Denied { .. } => Error::new(StatusCode::FORBIDDEN, Code::Denied, message),
        UpstreamError::TooManyRequests { retry_after, .. } => {
            let mut err = Error::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::TooManyRequests,
                message,
            );
            err.retry_after = Some(retry_after.unwrap_or(60));
            err
        }
        UpstreamError::Unreachable { .. } => {
            Error::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message)
        }
        UpstreamError::BadStatus { .. } | UpstreamError::Invalid { .. } => {
            Error::new(StatusCode::BAD_GATEWAY, Code::Unavailable, message)
        }
    }
}

impl From<CacheError> for Error {
    fn from(e: CacheError) -> Error {
        let message = e.to_string();
        match e {
            CacheError::NameUnknown(_) => Error::not_found(Code::NameUnknown, message),
            CacheError::ManifestUnknown(_) => Error::not_found(Code::ManifestUnknown, message),
            CacheError::NameInvalid(_) => Error::bad_request(Code::NameInvalid, message),
            CacheError::DigestInvalid(_) => Error::bad_request(Code::DigestInvalid, message),
            CacheError::Denied(_) => Error::new(StatusCode::FORBIDDEN, Code::Denied, message),
            CacheError::Upstream { source, wanted } => from_upstream(&source, wanted),
            CacheError::BadUpstream(_) | CacheError::Fill(_) => {
                Error::new(StatusCode::BAD_GATEWAY, Code::Unavailable, message)
            }
            CacheError::Store(_) | CacheError::Unavailable(_) => {
                Error::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message)
            }
            CacheError::Busy { retry_after, .. } => {
                let mut err =
                    Error::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message);
                err.retry_after = Some(retry_after);
                err
            }
            CacheError::Internal(_) => Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Unavailable,
                message,
            ),
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        let (status, code, retry_after) = match &e {
            AuthError::TooManyFailures { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                Code::TooManyRequests,
                *retry_after,
            ),
            AuthError::Busy => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, 1),
            AuthError::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                SECRET_RETRY_SECS,
            ),
        };
        let mut err = Error::new(status, code, e.to_string());
        err.retry_after = Some(retry_after);
        err
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code.as_str(),
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                code = self.code.as_str(),
                "{}",
                self.message
            );
        }
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message }]
        });
        let mut resp = (self.status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(total) = self.total_size
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}"))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FillError, StoreError};

    /// What the cache serves stale is exactly what the edge answers with a 5xx or a 429.
    #[test]
    fn transient_cache_errors_are_the_5xx_and_429_answers() {
        let up = |e: UpstreamError| CacheError::upstream(e, Wanted::Manifest);
        let all = [
            CacheError::NameUnknown("x".into()),
            CacheError::ManifestUnknown("x".into()),
            CacheError::NameInvalid("x".into()),
            CacheError::DigestInvalid("x".into()),
            CacheError::Denied("x".into()),
            up(UpstreamError::NotFound {
                upstream: "u".into(),
                code: None,
                message: None,
            }),
            up(UpstreamError::Denied {
                upstream: "u".into(),
                status: 403,
            }),
            up(UpstreamError::TooManyRequests {
                upstream: "u".into(),
                retry_after: None,
            }),
            up(UpstreamError::Unreachable {
                upstream: "u".into(),
                detail: "d".into(),
            }),
            CacheError::BadUpstream("x".into()),
            CacheError::from(StoreError::Backend {
                key: "k".into(),
                message: "x".into(),
            }),
            CacheError::from(FillError::Source("x".into())),
            CacheError::Busy {
                message: "x".into(),
                retry_after: 1,
            },
            CacheError::Unavailable("x".into()),
            CacheError::Internal("x".into()),
        ];
        for e in all {
            let transient = e.is_transient();
            let answer = Error::from(e.clone());
            assert_eq!(
                transient,
                answer.status.is_server_error() || answer.code == Code::TooManyRequests,
                "{e:?}"
            );
        }
    }
}
