//! Answers as the endpoints build them (faults may rewrite them before they are sent), and the
//! held and truncated bodies of [`super::Fault::Hold`] and [`super::Fault::Truncate`].

use std::io;

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{HeaderName, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;

use super::API_VERSION;

pub(super) enum ReplyBody {
    Full(Bytes),
    /// Declares `full_len`, sends `sent`, then errors.
    Truncated {
        full_len: usize,
        sent: Bytes,
    },
    /// Sends `first`, waits until `open` says true, sends `rest`.
    Held {
        first: Bytes,
        rest: Bytes,
        open: tokio::sync::watch::Receiver<bool>,
    },
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: ReplyBody,
    pub(super) api_header: bool,
}

impl Reply {
    pub(super) fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Full(Bytes::new()),
            api_header: true,
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(super) fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = ReplyBody::Full(body.into());
        self
    }

    pub(super) fn json(status: u16, value: &impl Serialize) -> Self {
        Reply::new(status)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(value).expect("serialize json"))
    }

    pub(super) fn error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": null }]
        });
        Reply::json(status, &body)
    }

    pub(super) fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn set_header(&mut self, name: &'static str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name, value));
    }

    pub(super) fn full_body(&self) -> Option<&Bytes> {
        match &self.body {
            ReplyBody::Full(b) => Some(b),
            ReplyBody::Truncated { .. } | ReplyBody::Held { .. } => None,
        }
    }

    pub(super) fn into_response(self, is_head: bool) -> Response {
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        if self.api_header {
            builder = builder.header("docker-distribution-api-version", API_VERSION);
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                builder = builder.header(HeaderName::from_static(name), v);
            }
        }
        let (len, body) = match self.body {
            ReplyBody::Full(b) => (b.len(), Body::from(b)),
            ReplyBody::Truncated { full_len, sent } => (full_len, truncated_body(sent)),
            ReplyBody::Held { first, rest, open } => {
                (first.len() + rest.len(), held_body(first, rest, open))
            }
        };
        let body = if is_head { Body::empty() } else { body };
        builder
            .header("content-length", len)
            .body(body)
            .expect("fake registry: build response")
    }
}

/// A body that yields `first`, waits for `open`, then yields `rest`.
pub(super) fn held_body(
    first: Bytes,
    rest: Bytes,
    open: tokio::sync::watch::Receiver<bool>,
) -> Body {
    let stream = futures_util::stream::unfold(
        (Some(first), Some(rest), open),
        |(first, rest, mut open)| async move {
            if let Some(f) = first {
                return Some((Ok::<_, io::Error>(f), (None, rest, open)));
            }
            let rest = rest?;
            let _ = open.wait_for(|o| *o).await;
            Some((Ok(rest), (None, None, open)))
        },
    );
    Body::from_stream(stream)
}

/// A body that yields `sent`, then fails (so hyper aborts the connection).
/// Between the two it yields to the scheduler a few times: hyper flushes
/// buffered output when the body is pending, so the client receives the
/// response head and (at most) `sent` before the connection is cut, instead
/// of a bare connection reset.
pub(super) fn truncated_body(sent: Bytes) -> Body {
    let stream = futures_util::stream::unfold(Some(sent), |state| async move {
        match state {
            Some(sent) => Some((Ok(sent), None)),
            None => {
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
                Some((Err(io::Error::other("fake registry: truncated body")), None))
            }
        }
    });
    // Only one error is ever polled: hyper stops at the first one.
    Body::from_stream(stream)
}
