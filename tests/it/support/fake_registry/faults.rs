//! Fault rules and how each fault rewrites an answer.

use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;

use super::auth::challenge_header;
use super::manifests::sha256_digest;
use super::reply::{Reply, ReplyBody};
use super::routes::parse_route;
use super::{ReqInfo, Shared};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// That status with a JSON OCI error body (401 also carries the challenge).
    Status(u16),
    /// 429 with `Retry-After` and a TOOMANYREQUESTS JSON body.
    TooManyRequests { retry_after: u64 },
    /// Wait this long, then answer normally.
    Stall(Duration),
    /// 404 with an HTML body and `Content-Type: text/html`.
    Html404,
    /// Normal body, but `Docker-Content-Digest` is the digest of something else.
    /// Only applies to 200 responses that carry that header (GET or HEAD).
    WrongDigestHeader,
    /// One byte of the body changed; headers (digest, length) as for the
    /// original. Only applies to 200 GET responses with a non-empty body.
    TamperBody,
    /// Full `Content-Length` declared, only the first half sent, then the
    /// connection is aborted. Only applies to 200 GET responses with a
    /// non-empty body.
    Truncate,
    /// Full headers, the first `at` bytes of the body, then nothing until
    /// [`FakeRegistry::release_held`] is called, then the rest. Only applies
    /// to 200 GET responses with a body longer than `at`.
    Hold { at: usize },
}

/// A fault-injection rule. Rules are checked in the order added; the first
/// rule that matches the request (and whose fault applies to the response)
/// is used.
///
/// Matching: `method` (case-insensitive) and `path_contains` (substring of the
/// raw path). Rules see registry `/v2/...` requests that passed
/// authentication (401 challenges are never faulted) and CDN requests
/// (`/cdn/<digest>`). The token endpoint is only faulted by rules whose
/// `path_contains` mentions "token" (e.g. `.path("/token")`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    pub method: Option<String>,
    pub path_contains: Option<String>,
    pub fault: Fault,
    /// None = forever; Some(n) = the next n matching requests, then expire.
    pub times: Option<usize>,
}

impl FaultRule {
    /// A rule matching every request, forever.
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            method: None,
            path_contains: None,
            fault,
            times: None,
        }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_string());
        self
    }

    pub fn path(mut self, path_contains: &str) -> Self {
        self.path_contains = Some(path_contains.to_string());
        self
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// Finds the first rule matching this request whose fault applies to `normal`, consumes one use
/// of it, and applies it.
pub(super) async fn apply_faults(
    shared: &Shared,
    req: &ReqInfo,
    normal: Reply,
    is_token: bool,
) -> Reply {
    let is_head = req.method == Method::HEAD;
    let fault = {
        let mut st = shared.lock();
        let mut found = None;
        for (i, rule) in st.faults.iter().enumerate() {
            if rule.times == Some(0) {
                continue;
            }
            if let Some(m) = &rule.method
                && !m.eq_ignore_ascii_case(req.method.as_str())
            {
                continue;
            }
            match &rule.path_contains {
                Some(p) if !req.path.contains(p.as_str()) => continue,
                None if is_token => continue,
                Some(p) if is_token && !p.contains("token") => continue,
                _ => {}
            }
            let has_body = normal.status == 200
                && !is_head
                && normal.full_body().is_some_and(|b| !b.is_empty());
            let applies = match rule.fault {
                Fault::WrongDigestHeader => {
                    normal.status == 200 && normal.get_header("docker-content-digest").is_some()
                }
                Fault::TamperBody | Fault::Truncate => has_body,
                Fault::Hold { at } => has_body && normal.full_body().is_some_and(|b| b.len() > at),
                _ => true,
            };
            if applies {
                found = Some(i);
                break;
            }
        }
        found.map(|i| {
            let fault = st.faults[i].fault.clone();
            if let Some(n) = st.faults[i].times.as_mut() {
                *n -= 1;
                if *n == 0 {
                    st.faults.remove(i);
                }
            }
            fault
        })
    };
    let Some(fault) = fault else {
        return normal;
    };
    match fault {
        Fault::Status(code) => {
            let (err, msg) = match code {
                401 => ("UNAUTHORIZED", "authentication required"),
                403 => ("DENIED", "requested access to the resource is denied"),
                404 if req.path.contains("/manifests/") => ("MANIFEST_UNKNOWN", "manifest unknown"),
                404 if req.path.contains("/blobs/") => ("BLOB_UNKNOWN", "blob unknown to registry"),
                404 => ("NAME_UNKNOWN", "repository name not known to registry"),
                405 => ("UNSUPPORTED", "the operation is unsupported"),
                429 => ("TOOMANYREQUESTS", "too many requests"),
                503 => ("UNAVAILABLE", "service unavailable"),
                _ => ("UNKNOWN", "unknown error (injected fault)"),
            };
            let mut reply = Reply::error(code, err, msg);
            if code == 401 {
                let route = parse_route(&req.path);
                if let Some(ch) = challenge_header(shared, &route) {
                    reply = reply.header("www-authenticate", ch);
                }
            }
            reply
        }
        Fault::TooManyRequests { retry_after } => Reply::error(
            429,
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit. (injected fault)",
        )
        .header("retry-after", retry_after.to_string()),
        Fault::Stall(d) => {
            tokio::time::sleep(d).await;
            normal
        }
        Fault::Html404 => {
            let mut r = Reply::new(404)
                .header("content-type", "text/html; charset=utf-8")
                .body(
                    "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n\
                     <center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n\
                     </body>\r\n</html>\r\n",
                );
            r.api_header = false;
            r
        }
        Fault::WrongDigestHeader => {
            let mut r = normal;
            let orig = r
                .get_header("docker-content-digest")
                .unwrap_or("")
                .to_string();
            r.set_header(
                "docker-content-digest",
                sha256_digest(format!("not {orig}").as_bytes()),
            );
            r
        }
        Fault::TamperBody => {
            let mut r = normal;
            if let Some(b) = r.full_body() {
                let mut v = b.to_vec();
                let mid = v.len() / 2;
                v[mid] ^= 0xff;
                r.body = ReplyBody::Full(Bytes::from(v));
            }
            r
        }
        Fault::Hold { at } => {
            let mut r = normal;
            if let Some(b) = r.full_body()
                && b.len() > at
            {
                let (first, rest) = (b.slice(..at), b.slice(at..));
                r.body = ReplyBody::Held {
                    first,
                    rest,
                    open: shared.held.subscribe(),
                };
            }
            r
        }
        Fault::Truncate => {
            let mut r = normal;
            if let Some(b) = r.full_body() {
                let full_len = b.len();
                let sent = b.slice(..full_len / 2);
                r.body = ReplyBody::Truncated { full_len, sent };
            }
            r
        }
    }
}
