//! The registry client: one [`Upstream`] per configured registry.
//!
//! It speaks the pull side of the distribution API: the token flow from `WWW-Authenticate`
//! (Bearer and Basic, anonymous or with configured credentials, tokens cached per scope),
//! redirects followed by hand so `Authorization` never reaches another host, timeouts, and one
//! retry for connection failures. It knows nothing about caching.

pub mod auth;
pub mod guard;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::config::{Config, UpstreamConfig};
use crate::oci::{Digest, RepoName};
use auth::{Challenge, DEFAULT_TOKEN_LIFETIME, TokenCache};

/// What went wrong talking to an upstream. Every variant names the upstream, so the message a
/// client sees says which registry failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{upstream}: not found{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    NotFound {
        upstream: String,
        /// The upstream's own OCI error code, when it sent a JSON error.
        code: Option<String>,
        message: Option<String>,
    },
    #[error("{upstream} denied access (HTTP {status}); the repository may be private or not exist")]
    Denied { upstream: String, status: u16 },
    #[error("{upstream} is rate limiting requests (HTTP 429)")]
    TooManyRequests {
        upstream: String,
        retry_after: Option<u64>,
    },
    #[error("{upstream} unreachable: {detail}")]
    Unreachable { upstream: String, detail: String },
    #[error("{upstream} answered HTTP {status}")]
    BadStatus { upstream: String, status: u16 },
    #[error("{upstream} sent an unusable response: {detail}")]
    Invalid { upstream: String, detail: String },
}

/// A manifest as the upstream sent it.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`, unparsed: it is checked against the bytes.
    pub digest_header: Option<String>,
}

/// What an upstream HEAD said.
#[derive(Debug, Clone)]
pub struct HeadInfo {
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub content_type: Option<String>,
}

/// Where a blob GET was redirected to, when it left the upstream's own origin (a CDN's signed
/// URL), recorded as soon as the redirect is seen, before that host answers.
pub type RedirectSink = std::sync::Arc<std::sync::Mutex<Option<Url>>>;

/// A blob body on its way from the upstream.
pub struct BlobBody {
    pub len: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// A response relayed as is (tags list, referrers), with the headers worth keeping.
pub struct Relayed {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub link: Option<String>,
}

/// Longest redirect chain followed (Docker Hub uses one hop to its CDN).
const MAX_REDIRECTS: usize = 5;
/// Largest tags list or referrers document relayed.
const MAX_RELAYED_BODY: u64 = 4 * 1024 * 1024;
/// Largest token response read.
const MAX_TOKEN_BODY: u64 = 64 * 1024;

pub struct Upstream {
    config: UpstreamConfig,
    /// The configured host is public: then so must be every host it sends us to (see [`guard`]).
    public: bool,
    http: reqwest::Client,
    tokens: TokenCache,
    /// The token realm and service of the last Bearer challenge: with it, a request for a new
    /// repository fetches its token first instead of taking a 401 round trip.
    realm: std::sync::Mutex<Option<(String, Option<String>)>>,
    request_timeout: Duration,
    /// Reads `secret_arn` credentials; the answer is kept for the life of the process.
    secrets: Option<std::sync::Arc<dyn crate::secrets::SecretSource>>,
    secret: tokio::sync::OnceCell<(String, String)>,
}

impl Upstream {
    pub fn new(config: UpstreamConfig, global: &Config) -> Result<Upstream, reqwest::Error> {
        Upstream::with_secrets(config, global, None)
    }

    /// An upstream whose `secret_arn` (if any) is read through `secrets`.
    pub fn with_secrets(
        config: UpstreamConfig,
        global: &Config,
        secrets: Option<std::sync::Arc<dyn crate::secrets::SecretSource>>,
    ) -> Result<Upstream, reqwest::Error> {
        let public = guard::is_public_upstream(&config.url);
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(global.connect_timeout)
            .read_timeout(global.read_timeout)
            .user_agent(concat!("pullthrough/", env!("CARGO_PKG_VERSION")));
        if public {
            builder = builder.dns_resolver(std::sync::Arc::new(guard::PublicOnlyResolver));
        }
        let http = builder.build()?;
        Ok(Upstream {
            public,
            config,
            http,
            tokens: TokenCache::default(),
            realm: std::sync::Mutex::new(None),
            request_timeout: global.request_timeout,
            secrets,
            secret: tokio::sync::OnceCell::new(),
        })
    }

    pub fn alias(&self) -> &str {
        &self.config.alias
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    fn url(&self, path: &str) -> Result<Url, UpstreamError> {
        let base = self.config.url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}")).map_err(|e| self.invalid(format!("bad URL: {e}")))
    }

    fn invalid(&self, detail: impl Into<String>) -> UpstreamError {
        UpstreamError::Invalid {
            upstream: self.config.alias.clone(),
            detail: detail.into(),
        }
    }

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
        max_size: u64,
    ) -> Result<FetchedManifest, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(Method::GET, &path, repo, accept_header(accept))
            .await?;
        let content_type = header_str(resp.headers(), header::CONTENT_TYPE);
        let digest_header = header_str(resp.headers(), "docker-content-digest");
        let bytes = self.read_limited(resp, max_size, "manifest").await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest_header,
        })
    }

    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<HeadInfo, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(Method::HEAD, &path, repo, accept_header(accept))
            .await?;
        Ok(head_info(resp.headers()))
    }

    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<HeadInfo, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send(Method::HEAD, &path, repo, HeaderMap::new())
            .await?;
        Ok(head_info(resp.headers()))
    }

    /// Starts a blob download. Only the response headers are awaited here; the body streams, with
    /// the client's read timeout between chunks and no overall limit (blobs can be many GiB).
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobBody, UpstreamError> {
        self.get_blob_observed(repo, digest, None).await
    }

    /// [`Upstream::get_blob`], recording in `sink` a redirect to another origin that a client
    /// could follow itself (https, or any scheme for an upstream configured as plain http).
    pub async fn get_blob_observed(
        &self,
        repo: &RepoName,
        digest: &Digest,
        sink: Option<&RedirectSink>,
    ) -> Result<BlobBody, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send_full(Method::GET, &path, repo, HeaderMap::new(), None, sink)
            .await?;
        let len = resp.content_length();
        let upstream = self.config.alias.clone();
        let counted = self.config.alias.clone();
        let stream = resp
            .bytes_stream()
            .inspect_ok(move |chunk| crate::metrics::upstream_bytes(&counted, chunk.len() as u64))
            .map_err(move |e| std::io::Error::other(format!("{upstream}: {e}")))
            .boxed();
        Ok(BlobBody { len, stream })
    }

    pub async fn tags_list(
        &self,
        repo: &RepoName,
        query: Option<&str>,
    ) -> Result<Relayed, UpstreamError> {
        let path = match query {
            Some(q) => format!("/v2/{repo}/tags/list?{q}"),
            None => format!("/v2/{repo}/tags/list"),
        };
        self.relay(&path, repo).await
    }

    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<Relayed, UpstreamError> {
        let path = match query {
            Some(q) => format!("/v2/{repo}/referrers/{digest}?{q}"),
            None => format!("/v2/{repo}/referrers/{digest}"),
        };
        self.relay(&path, repo).await
    }

    async fn relay(&self, path: &str, repo: &RepoName) -> Result<Relayed, UpstreamError> {
        let resp = self.send(Method::GET, path, repo, HeaderMap::new()).await?;
        let content_type = header_str(resp.headers(), header::CONTENT_TYPE);
        let link = header_str(resp.headers(), header::LINK);
        let bytes = self
            .read_limited(resp, MAX_RELAYED_BODY, "response")
            .await?;
        Ok(Relayed {
            bytes,
            content_type,
            link,
        })
    }

    async fn read_limited(
        &self,
        resp: reqwest::Response,
        max: u64,
        what: &str,
    ) -> Result<Bytes, UpstreamError> {
        if resp.content_length().is_some_and(|l| l > max) {
            return Err(self.invalid(format!("{what} larger than the {max}-byte limit")));
        }
        let declared = resp.content_length();
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                if e.is_timeout() {
                    self.transport_error(e)
                } else {
                    self.invalid(format!("{what} body cut off: {e}"))
                }
            })?;
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(self.invalid(format!("{what} larger than the {max}-byte limit")));
            }
            body.extend_from_slice(&chunk);
        }
        crate::metrics::upstream_bytes(&self.config.alias, body.len() as u64);
        if let Some(d) = declared
            && d != body.len() as u64
        {
            return Err(self.invalid(format!("{what} truncated: {} of {d} bytes", body.len())));
        }
        Ok(body.freeze())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.send_full(
            method,
            path,
            repo,
            headers,
            Some(self.request_timeout),
            None,
        )
        .await
    }

    /// Sends a request with authentication, answering one auth challenge, following redirects,
    /// and mapping non-2xx statuses to [`UpstreamError`].
    async fn send_full(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        headers: HeaderMap,
        timeout: Option<Duration>,
        sink: Option<&RedirectSink>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(path)?;
        let scope = format!("repository:{repo}:pull");
        let mut auth = self.cached_auth(&scope).await?;
        let known_realm = self.realm.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if auth.is_none()
            && let Some((realm, service)) = known_realm
            && let Ok((token, lifetime)) =
                self.fetch_token(&realm, service.as_deref(), &scope).await
        {
            self.tokens.put(&scope, token.clone(), lifetime);
            auth = Some(format!("Bearer {token}"));
        }
        let mut resp = self
            .send_once(&method, &url, &headers, auth, timeout, sink)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_challenge);
            let auth = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: challenge_scope,
                }) => {
                    *self.realm.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((realm.clone(), service.clone()));
                    let scope_to_ask = challenge_scope.unwrap_or_else(|| scope.clone());
                    let token = self
                        .fetch_token(&realm, service.as_deref(), &scope_to_ask)
                        .await?;
                    self.tokens.put(&scope, token.0.clone(), token.1);
                    Some(format!("Bearer {}", token.0))
                }
                Some(Challenge::Basic) => self.basic_auth().await?,
                None => None,
            };
            let Some(auth) = auth else {
                return Err(UpstreamError::Denied {
                    upstream: self.config.alias.clone(),
                    status: 401,
                });
            };
            resp = self
                .send_once(&method, &url, &headers, Some(auth), timeout, sink)
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                self.tokens.forget(&scope);
            }
        }
        self.check_status(resp).await
    }

    async fn cached_auth(&self, scope: &str) -> Result<Option<String>, UpstreamError> {
        if let Some(t) = self.tokens.get(scope) {
            return Ok(Some(format!("Bearer {t}")));
        }
        if self.tokens.get(BASIC_MARKER).is_some() {
            return self.basic_auth().await;
        }
        Ok(None)
    }

    /// The configured credentials: from the file or environment, or read once from the
    /// upstream's `secret_arn` and kept. A failed read is not kept: the next request tries again.
    pub async fn credentials(&self) -> Result<Option<(String, String)>, UpstreamError> {
        if let (Some(u), Some(p)) = (&self.config.username, &self.config.password) {
            return Ok(Some((u.clone(), p.clone())));
        }
        let Some(arn) = &self.config.secret_arn else {
            return Ok(None);
        };
        let Some(secrets) = &self.secrets else {
            return Err(self.invalid(format!(
                "credentials are in secret {arn}, but no secret reader is configured"
            )));
        };
        let pair = self
            .secret
            .get_or_try_init(|| async {
                let pair = secrets.basic_credentials(arn).await;
                match &pair {
                    Ok(_) => tracing::info!(upstream = %self.config.alias, secret = %arn, "upstream credentials read from Secrets Manager"),
                    Err(e) => tracing::warn!(upstream = %self.config.alias, error = %e, "cannot read upstream credentials"),
                }
                pair
            })
            .await
            .map_err(|e| UpstreamError::Unreachable {
                upstream: self.config.alias.clone(),
                detail: format!("cannot read its credentials: {e}"),
            })?;
        Ok(Some(pair.clone()))
    }

    async fn basic_auth(&self) -> Result<Option<String>, UpstreamError> {
        use base64::Engine as _;
        let Some((u, p)) = self.credentials().await? else {
            return Ok(None);
        };
        // Remember that this upstream takes Basic, so later requests skip the 401 round trip.
        self.tokens
            .put(BASIC_MARKER, String::new(), Duration::from_secs(3600));
        let raw = format!("{u}:{p}");
        Ok(Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )))
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), UpstreamError> {
        let mut url =
            Url::parse(realm).map_err(|e| self.invalid(format!("token realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.invalid(format!("token realm {realm:?} is not http(s)")));
        }
        if self.public {
            guard::check_url(&url).map_err(|e| self.invalid(format!("token realm: {e}")))?;
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone()).timeout(self.request_timeout);
        // Credentials go to the realm only over https, or when the upstream itself is plain http
        // (a test or LAN registry explicitly marked insecure).
        if (url.scheme() == "https" || self.config.url.scheme() == "http")
            && let Some((u, p)) = self.credentials().await?
        {
            req = req.basic_auth(u, Some(p));
        }
        let resp = self
            .send_counted("GET", req)
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Denied {
                upstream: self.config.alias.clone(),
                status: status.as_u16(),
            });
        }
        let resp = self.check_status(resp).await?;
        let body = self
            .read_limited(resp, MAX_TOKEN_BODY, "token response")
            .await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.invalid(format!("token response is not JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty() && HeaderValue::from_str(&format!("Bearer {t}")).is_ok())
            .ok_or_else(|| self.invalid("token response without a usable token"))?;
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok((token, lifetime))
    }

    /// One request, following redirects. `Authorization` is sent only to the upstream's own
    /// origin: a redirect to a CDN gets none. A connection failure is retried once.
    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<String>,
        timeout: Option<Duration>,
        sink: Option<&RedirectSink>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = url.origin() == self.config.url.origin();
            let resp = self
                .send_retrying(
                    method,
                    &url,
                    headers,
                    auth.as_deref().filter(|_| same_origin),
                    timeout,
                )
                .await?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(location) = header_str(resp.headers(), header::LOCATION) else {
                return Ok(resp);
            };
            let next = url
                .join(&location)
                .map_err(|e| self.invalid(format!("bad redirect location {location:?}: {e}")))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(self.invalid(format!(
                    "redirect to unsupported scheme {:?}",
                    next.scheme()
                )));
            }
            if url.scheme() == "https" && next.scheme() == "http" {
                return Err(self.invalid("redirect from https to plain http refused"));
            }
            if self.public {
                guard::check_url(&next).map_err(|e| self.invalid(e.to_string()))?;
            }
            if let Some(sink) = sink
                && next.origin() != self.config.url.origin()
                && (next.scheme() == "https" || self.config.url.scheme() == "http")
            {
                *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(next.clone());
            }
            url = next;
        }
        Err(self.invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Sends `req`, counting it in the figures (`pullthrough_upstream_requests_total`: its
    /// status, or `error` for a transport failure).
    async fn send_counted(
        &self,
        method: &str,
        req: reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let sent = req.send().await;
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        crate::metrics::upstream_request(&self.config.alias, method, status);
        sent
    }

    async fn send_retrying(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match self.send_counted(method.as_str(), req).await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() && attempt == 0 && guard::refusal(&e).is_none() => {
                    attempt += 1;
                    tracing::debug!(upstream = %self.config.alias, error = %e, "connect failed, retrying once");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(self.transport_error(e)),
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> UpstreamError {
        // A host name of a redirect or token realm that resolves only to internal addresses:
        // refused like an internal IP literal, not a (transient) connection failure.
        if let Some(refused) = guard::refusal(&e) {
            return self.invalid(refused.to_string());
        }
        let detail = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "connection failed".to_owned()
        } else {
            format!("{e}")
        };
        UpstreamError::Unreachable {
            upstream: self.config.alias.clone(),
            detail,
        }
    }

    async fn check_status(
        &self,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, UpstreamError> {
        let status = resp.status();
        let upstream = self.config.alias.clone();
        if status.is_success() {
            return Ok(resp);
        }
        Err(match status {
            StatusCode::NOT_FOUND => {
                // The body is read only to learn the upstream's OCI code (MANIFEST_UNKNOWN,
                // NAME_UNKNOWN...). It may be an HTML page; then it is ignored.
                let body = self.read_limited(resp, 16 * 1024, "error").await.ok();
                let first = body.and_then(|b| oci_error(&b));
                UpstreamError::NotFound {
                    upstream,
                    code: first.as_ref().map(|e| e.0.clone()),
                    message: first.map(|e| e.1),
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UpstreamError::Denied {
                upstream,
                status: status.as_u16(),
            },
            StatusCode::TOO_MANY_REQUESTS => UpstreamError::TooManyRequests {
                upstream,
                retry_after: header_str(resp.headers(), header::RETRY_AFTER)
                    .and_then(|v| v.trim().parse().ok()),
            },
            _ => UpstreamError::BadStatus {
                upstream,
                status: status.as_u16(),
            },
        })
    }
}

/// Key under which the token cache remembers that an upstream wants Basic credentials.
const BASIC_MARKER: &str = "\u{0}basic";

/// The first `(code, message)` of an OCI error body, if the body is one.
fn oci_error(body: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        code: String,
        #[serde(default)]
        message: String,
    }
    let e: Envelope = serde_json::from_slice(body).ok()?;
    let first = e.errors.into_iter().next()?;
    let printable = |s: &str| s.len() <= 256 && s.chars().all(|c| !c.is_control());
    (printable(&first.code) && printable(&first.message)).then_some((first.code, first.message))
}

fn accept_header(accept: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::ACCEPT, v);
    }
    h
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_owned())
}

fn head_info(h: &HeaderMap) -> HeadInfo {
    HeadInfo {
        digest: header_str(h, "docker-content-digest").and_then(|d| Digest::parse(d.trim()).ok()),
        size: header_str(h, header::CONTENT_LENGTH).and_then(|l| l.trim().parse().ok()),
        content_type: header_str(h, header::CONTENT_TYPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolving_to_internal_addresses_is_refused_not_unreachable() {
        let global = Config::load(&crate::config::Settings::default()).unwrap();
        let docker = global.upstream("docker.io").unwrap().clone();
        let up = Upstream::new(docker, &global).unwrap();
        assert!(up.public);
        let err = up.http.get("http://localhost:9/").send().await.unwrap_err();
        match up.transport_error(err) {
            UpstreamError::Invalid { detail, .. } => assert!(
                detail.contains("localhost: it resolves only to internal addresses"),
                "{detail}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
