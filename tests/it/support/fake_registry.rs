//! An in-process fake OCI Distribution registry ("upstream") for integration
//! tests: it records every request it receives and can inject faults.
//!
//! Self-contained on purpose: it only uses crates the main crate depends on
//! (axum, tokio, bytes, sha2, hex, serde, serde_json, futures-util, base64).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{ACCEPT, AUTHORIZATION, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// `Docker-Distribution-API-Version` value sent on registry responses.
pub const API_VERSION: &str = "registry/2.0";
/// `service` parameter of the Bearer challenge.
pub const SERVICE: &str = "fake-registry";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const SBOM_ARTIFACT: &str = "application/vnd.example.sbom.v1+json";

/// `"sha256:<hex>"` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest distribution gives a manifest: sha256 of its bytes, except for signed schema1,
/// whose digest is that of its JWS payload (the first `formatLength` bytes of the document
/// followed by `formatTail`, both from the first signature's protected header).
pub fn manifest_digest(media_type: &str, bytes: &[u8]) -> String {
    if media_type == DOCKER_SCHEMA1_SIGNED
        && let Some(payload) = schema1_payload(bytes)
    {
        return sha256_digest(&payload);
    }
    sha256_digest(bytes)
}

fn schema1_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let protected = b64
        .decode(doc["signatures"][0]["protected"].as_str()?)
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&protected).ok()?;
    let length = usize::try_from(header["formatLength"].as_u64()?).ok()?;
    let tail = b64.decode(header["formatTail"].as_str()?).ok()?;
    Some([bytes.get(..length)?, &tail].concat())
}

/// `doc` with its first signature value replaced by one derived from `n`: what distribution
/// does on every GET of a signed schema1 manifest (new bytes, same payload and digest).
pub fn resign_schema1(doc: &[u8], n: u64) -> Bytes {
    let text = String::from_utf8_lossy(doc);
    let Some(start) = text.find("\"signature\": \"").map(|i| i + 14) else {
        return Bytes::copy_from_slice(doc);
    };
    let Some(len) = text[start..].find('"') else {
        return Bytes::copy_from_slice(doc);
    };
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(format!("signature {n}").as_bytes()));
    Bytes::from(format!(
        "{}{signature}{}",
        &text[..start],
        &text[start + len..]
    ))
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// How the fake authenticates `/v2/` requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FakeAuth {
    /// No authentication at all.
    None,
    /// Anonymous token flow: `/v2/` requests need a Bearer token from `/token`.
    #[default]
    Bearer,
    /// Token flow where `/token` itself demands HTTP Basic credentials.
    BearerWithCredentials { username: String, password: String },
    /// `/v2/` requests need HTTP Basic credentials directly.
    Basic { username: String, password: String },
}

#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Default: [`FakeAuth::Bearer`].
    pub auth: FakeAuth,
    /// Default true: like Docker Hub, answer 404 for an index / manifest list
    /// whose media type is not in the request's Accept header(s).
    pub hub_accept_quirk: bool,
    /// Default false: blob GETs answer 307 to a second "CDN" listener.
    pub blob_redirect: bool,
    /// Default false: like distribution, every GET of a signed schema1 manifest carries a fresh
    /// signature (other bytes, same payload and digest).
    pub resign_schema1: bool,
    /// How `tags/list` pages. Default: honours `n` and `last`.
    pub tags_paging: TagsPaging,
    /// Default `None`: referrers answered in one document. `Some(k)`: pages of at most `k`
    /// (or `n`) descriptors, continued with `last=<digest>` named by a `Link` header.
    pub referrers_page_size: Option<usize>,
}

/// How the fake pages `tags/list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TagsPaging {
    /// `n` and `last` as the distribution spec says, with a `Link` when more follow.
    #[default]
    Honour,
    /// Honours `n` (with a `Link`) but ignores `last`, like distribution 2.8 behind the e2e
    /// tests: every page starts at the first tag.
    IgnoreLast,
    /// Pages of at most this many tags even without `n`, continued by `Link` (like registries
    /// with a default page size).
    Always(usize),
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            auth: FakeAuth::Bearer,
            hub_accept_quirk: true,
            blob_redirect: false,
            resign_schema1: false,
            tags_paging: TagsPaging::Honour,
            referrers_page_size: None,
        }
    }
}

/// One request as received (raw path and query, not percent-decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// All Accept header values joined with ", ".
    pub accept: Option<String>,
    pub authorization: Option<String>,
    /// "registry" or "cdn".
    pub host_kind: &'static str,
    /// Status answered (after faults); 0 while the request is still being
    /// handled (e.g. during a `Stall`).
    pub status: u16,
}

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

/// The fake registry. Dropping it shuts it down.
pub struct FakeRegistry {
    shared: Arc<Shared>,
    cdn_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    conns: Vec<Arc<Conns>>,
}

impl FakeRegistry {
    /// Bind 127.0.0.1:0 (and a second port for the CDN when
    /// `blob_redirect`) and start serving.
    pub async fn start(opts: FakeOptions) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake registry: bind");
        let addr = listener.local_addr().expect("fake registry: local_addr");
        let cdn_listener = if opts.blob_redirect {
            Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("fake registry: bind cdn"),
            )
        } else {
            None
        };
        let cdn_addr = cdn_listener
            .as_ref()
            .map(|l| l.local_addr().expect("fake registry: cdn local_addr"));

        let shared = Arc::new(Shared {
            opts,
            addr,
            cdn_addr,
            token_counter: AtomicU64::new(0),
            state: Mutex::new(RegState::default()),
            held: tokio::sync::watch::channel(false).0,
        });

        let mut tasks = Vec::new();
        let mut conns = Vec::new();
        let mut spawn = |listener: TcpListener, host_kind: &'static str| {
            let c = Arc::new(Conns::default());
            let app = Router::new().fallback(handle).with_state(Ctx {
                shared: shared.clone(),
                host_kind,
            });
            let listener = match dup_listener(listener) {
                (l, Some(dup)) => {
                    c.lock().listener = Some(dup);
                    l
                }
                (l, None) => l,
            };
            let l = KillableListener {
                inner: listener,
                conns: c.clone(),
            };
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }));
            conns.push(c);
        };
        spawn(listener, "registry");
        if let Some(l) = cdn_listener {
            spawn(l, "cdn");
        }

        FakeRegistry {
            shared,
            cdn_addr,
            tasks,
            conns,
        }
    }

    /// Lets every body held by [`Fault::Hold`] (now and later) send its rest.
    pub fn release_held(&self) {
        self.shared.held.send_replace(true);
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    /// "http://127.0.0.1:CDNPORT" when `blob_redirect` is on.
    pub fn cdn_url(&self) -> Option<String> {
        self.cdn_addr.map(|a| format!("http://{a}"))
    }

    /// Store a blob in `repo`; returns "sha256:<hex>".
    pub fn put_blob(&self, repo: &str, bytes: Bytes) -> String {
        let digest = sha256_digest(&bytes);
        let mut st = self.shared.lock();
        st.repos
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(digest.clone(), bytes);
        digest
    }

    /// Remove a blob from `repo` (no-op if absent).
    pub fn delete_blob(&self, repo: &str, digest: &str) {
        let mut st = self.shared.lock();
        if let Some(r) = st.repos.get_mut(repo) {
            r.blobs.remove(digest);
        }
    }

    /// Store a manifest by digest in `repo`; returns its digest.
    pub fn put_manifest(&self, repo: &str, media_type: &str, bytes: Bytes) -> String {
        let digest = manifest_digest(media_type, &bytes);
        let mut st = self.shared.lock();
        let r = st.repos.entry(repo.to_string()).or_default();
        if !r.manifests.contains_key(&digest) {
            r.manifest_order.push(digest.clone());
        }
        r.manifests
            .insert(digest.clone(), (media_type.to_string(), bytes));
        digest
    }

    /// Point `tag` at `digest` (which must be a manifest stored in `repo`).
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        let mut st = self.shared.lock();
        let r = st.repos.entry(repo.to_string()).or_default();
        assert!(
            r.manifests.contains_key(digest),
            "fake registry: tag {repo}:{tag} -> {digest}: no such manifest in {repo}"
        );
        r.tags.insert(tag.to_string(), digest.to_string());
    }

    /// Remove a tag (no-op if absent).
    pub fn untag(&self, repo: &str, tag: &str) {
        let mut st = self.shared.lock();
        if let Some(r) = st.repos.get_mut(repo) {
            r.tags.remove(tag);
        }
    }

    /// Every request received so far, in order (registry, token and CDN).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Requests whose method equals `method` (case-insensitive) and whose
    /// raw path contains `path_contains`. Includes requests answered with an
    /// auth challenge (401); see [`FakeRegistry::count_authorized`].
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.count_where(method, path_contains, |_| true)
    }

    /// Like [`FakeRegistry::count`], but leaves out requests answered 401
    /// (the unauthenticated first try of the token dance, or a 401 fault).
    pub fn count_authorized(&self, method: &str, path_contains: &str) -> usize {
        self.count_where(method, path_contains, |r| r.status != 401)
    }

    fn count_where(
        &self,
        method: &str,
        path_contains: &str,
        f: impl Fn(&Recorded) -> bool,
    ) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|(_, r)| {
                r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains) && f(r)
            })
            .count()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.shared.lock().faults.push(rule);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Stop serving: listeners are closed (new connections are refused) and
    /// already-open connections, including idle keep-alive ones, are shut
    /// down. Idempotent.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        for c in &self.conns {
            c.kill_all();
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------
// Connection tracking, so that shutdown() also kills keep-alive connections
// (axum::serve spawns connection tasks that outlive the accept loop).
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Conns {
    inner: Mutex<ConnsInner>,
}

#[derive(Default)]
struct ConnsInner {
    killed: bool,
    next_id: u64,
    // Duplicated handles of the live sockets; shutting one down shuts the
    // socket down for the connection task too.
    live: HashMap<u64, std::net::TcpStream>,
    // A duplicate of the listening socket (see `dup_listener`).
    listener: Option<std::net::TcpStream>,
}

/// Duplicate the listening socket so that `shutdown()` can stop it from
/// accepting synchronously: on Linux, shutdown(2) on a listening socket makes
/// further connection attempts be refused at once, without waiting for the
/// aborted accept task to drop its listener. std only exposes `shutdown` on
/// `TcpStream`, so the duplicate descriptor is held as one (safe conversion
/// through `OwnedFd`); it is never read or written.
#[cfg(unix)]
fn dup_listener(l: TcpListener) -> (TcpListener, Option<std::net::TcpStream>) {
    let std_l = match l.into_std() {
        Ok(s) => s,
        Err(e) => panic!("fake registry: into_std: {e}"),
    };
    let dup = std_l
        .try_clone()
        .ok()
        .map(|d| std::net::TcpStream::from(std::os::fd::OwnedFd::from(d)));
    let l = TcpListener::from_std(std_l).expect("fake registry: from_std");
    (l, dup)
}

#[cfg(not(unix))]
fn dup_listener(l: TcpListener) -> (TcpListener, Option<std::net::TcpStream>) {
    (l, None)
}

impl Conns {
    fn lock(&self) -> MutexGuard<'_, ConnsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill_all(&self) {
        let mut g = self.lock();
        g.killed = true;
        if let Some(l) = g.listener.take() {
            let _ = l.shutdown(Shutdown::Both);
        }
        for (_, s) in g.live.drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn register(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let dup = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let mut g = self.lock();
        if g.killed {
            let _ = dup.shutdown(Shutdown::Both);
            return Err(io::Error::other("fake registry is shut down"));
        }
        let id = g.next_id;
        g.next_id += 1;
        g.live.insert(id, dup);
        Ok(TrackedStream {
            stream,
            _guard: ConnGuard {
                conns: self.clone(),
                id,
            },
        })
    }
}

struct ConnGuard {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.lock().live.remove(&self.id);
    }
}

struct TrackedStream {
    stream: TcpStream,
    _guard: ConnGuard,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

struct KillableListener {
    inner: TcpListener,
    conns: Arc<Conns>,
}

impl axum::serve::Listener for KillableListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Ok(tracked) = self.conns.register(stream) {
                        return (tracked, addr);
                    }
                }
                // e.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Shared {
    opts: FakeOptions,
    addr: SocketAddr,
    cdn_addr: Option<SocketAddr>,
    token_counter: AtomicU64,
    state: Mutex<RegState>,
    /// Opened (true) by [`FakeRegistry::release_held`]: bodies held by [`Fault::Hold`] go on.
    held: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RegState> {
        // A panicking test thread must not poison the server for others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct RegState {
    repos: BTreeMap<String, Repo>,
    /// token -> repositories it grants pull on.
    tokens: HashMap<String, HashSet<String>>,
    /// (request id, record), in arrival order.
    requests: Vec<(u64, Recorded)>,
    next_request_id: u64,
    faults: Vec<FaultRule>,
}

#[derive(Default)]
struct Repo {
    blobs: HashMap<String, Bytes>,
    manifests: HashMap<String, (String, Bytes)>,
    manifest_order: Vec<String>,
    tags: BTreeMap<String, String>,
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    host_kind: &'static str,
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

enum ReplyBody {
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

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: ReplyBody,
    api_header: bool,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Full(Bytes::new()),
            api_header: true,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = ReplyBody::Full(body.into());
        self
    }

    fn json(status: u16, value: &impl Serialize) -> Self {
        Reply::new(status)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(value).expect("serialize json"))
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": null }]
        });
        Reply::json(status, &body)
    }

    fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_header(&mut self, name: &'static str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name, value));
    }

    fn full_body(&self) -> Option<&Bytes> {
        match &self.body {
            ReplyBody::Full(b) => Some(b),
            ReplyBody::Truncated { .. } | ReplyBody::Held { .. } => None,
        }
    }

    fn into_response(self, is_head: bool) -> Response {
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
fn held_body(first: Bytes, rest: Bytes, open: tokio::sync::watch::Receiver<bool>) -> Body {
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
fn truncated_body(sent: Bytes) -> Body {
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

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

struct ReqInfo {
    method: Method,
    path: String,
    query: Option<String>,
    accepts: Vec<String>,
    accept_present: bool,
    authorization: Option<String>,
}

async fn handle(State(ctx): State<Ctx>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let accept_values: Vec<String> = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let id = {
        let mut st = ctx.shared.lock();
        let id = st.next_request_id;
        st.next_request_id += 1;
        let rec = Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            accept: if accept_values.is_empty() {
                None
            } else {
                Some(accept_values.join(", "))
            },
            authorization: authorization.clone(),
            host_kind: ctx.host_kind,
            status: 0,
        };
        st.requests.push((id, rec));
        id
    };

    let accepts = accept_values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|item| {
            item.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|s| !s.is_empty())
        .collect();
    let info = ReqInfo {
        method,
        path,
        query,
        accepts,
        accept_present: !accept_values.is_empty(),
        authorization,
    };
    let is_head = info.method == Method::HEAD;
    let reply = respond(&ctx, &info).await;
    {
        // Ids increase along the log; it may have been cleared meanwhile.
        let mut st = ctx.shared.lock();
        if let Ok(i) = st.requests.binary_search_by_key(&id, |(i, _)| *i) {
            st.requests[i].1.status = reply.status;
        }
    }
    reply.into_response(is_head)
}

async fn respond(ctx: &Ctx, req: &ReqInfo) -> Reply {
    let shared = &ctx.shared;
    if ctx.host_kind == "cdn" {
        let normal = cdn(shared, req);
        return apply_faults(shared, req, normal, false).await;
    }
    if req.path == "/token" {
        let normal = token(shared, req);
        return apply_faults(shared, req, normal, true).await;
    }
    if req.path == "/v2" || req.path.starts_with("/v2/") {
        let route = parse_route(&req.path);
        if let Some(challenge) = check_auth(shared, req, &route) {
            return challenge;
        }
        let normal = registry(shared, req, &route);
        return apply_faults(shared, req, normal, false).await;
    }
    Reply::error(404, "NOT_FOUND", "not found")
}

/// Find the first rule matching this request whose fault applies to
/// `normal`, consume one use of it, and apply it.
async fn apply_faults(shared: &Shared, req: &ReqInfo, normal: Reply, is_token: bool) -> Reply {
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

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

enum Route {
    Base,
    Manifest { repo: String, reference: String },
    Blob { repo: String, digest: String },
    Tags { repo: String },
    Referrers { repo: String, digest: String },
    Unknown,
}

impl Route {
    fn repo(&self) -> Option<&str> {
        match self {
            Route::Manifest { repo, .. }
            | Route::Blob { repo, .. }
            | Route::Tags { repo }
            | Route::Referrers { repo, .. } => Some(repo),
            Route::Base | Route::Unknown => None,
        }
    }
}

/// Parse a `/v2/...` path from the right (repository names contain slashes).
fn parse_route(path: &str) -> Route {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Route::Base,
        Some(r) => match r.strip_prefix('/') {
            Some(r) => r,
            None => return Route::Unknown,
        },
        None => return Route::Unknown,
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[..n - 2].iter().all(|s| !s.is_empty()) {
        let repo = segs[..n - 2].join("/");
        let last = segs[n - 1];
        match (segs[n - 2], last) {
            ("tags", "list") => return Route::Tags { repo },
            (_, "") => {}
            ("manifests", r) => {
                return Route::Manifest {
                    repo,
                    reference: percent_decode(r),
                };
            }
            ("blobs", d) => {
                return Route::Blob {
                    repo,
                    digest: percent_decode(d),
                };
            }
            ("referrers", d) => {
                return Route::Referrers {
                    repo,
                    digest: percent_decode(d),
                };
            }
            _ => {}
        }
    }
    Route::Unknown
}

fn challenge_header(shared: &Shared, route: &Route) -> Option<String> {
    match &shared.opts.auth {
        FakeAuth::None => None,
        FakeAuth::Basic { .. } => Some(format!("Basic realm=\"{SERVICE}\"")),
        FakeAuth::Bearer | FakeAuth::BearerWithCredentials { .. } => {
            let realm = format!("http://{}/token", shared.addr);
            Some(match route.repo() {
                Some(repo) => format!(
                    "Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"repository:{repo}:pull\""
                ),
                None => format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\""),
            })
        }
    }
}

fn basic_matches(authorization: Option<&str>, username: &str, password: &str) -> bool {
    let Some((scheme, cred)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else {
        return false;
    };
    decoded == format!("{username}:{password}").as_bytes()
}

/// None if the request may proceed, else the 401 reply.
fn check_auth(shared: &Shared, req: &ReqInfo, route: &Route) -> Option<Reply> {
    let ok = match &shared.opts.auth {
        FakeAuth::None => true,
        FakeAuth::Basic { username, password } => {
            basic_matches(req.authorization.as_deref(), username, password)
        }
        FakeAuth::Bearer | FakeAuth::BearerWithCredentials { .. } => {
            match req
                .authorization
                .as_deref()
                .and_then(|a| a.trim().split_once(' '))
            {
                Some((scheme, tok)) if scheme.eq_ignore_ascii_case("bearer") => {
                    let st = shared.lock();
                    match (st.tokens.get(tok.trim()), route.repo()) {
                        (Some(_), None) => true,
                        (Some(repos), Some(repo)) => repos.contains(repo),
                        (None, _) => false,
                    }
                }
                _ => false,
            }
        }
    };
    if ok {
        return None;
    }
    let mut reply = Reply::error(401, "UNAUTHORIZED", "authentication required");
    if let Some(ch) = challenge_header(shared, route) {
        reply = reply.header("www-authenticate", ch);
    }
    Some(reply)
}

fn token(shared: &Shared, req: &ReqInfo) -> Reply {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Reply::error(405, "UNSUPPORTED", "token endpoint only supports GET");
    }
    if let FakeAuth::BearerWithCredentials { username, password } = &shared.opts.auth
        && !basic_matches(req.authorization.as_deref(), username, password)
    {
        return Reply::error(401, "UNAUTHORIZED", "incorrect username or password")
            .header("www-authenticate", format!("Basic realm=\"{SERVICE}\""));
    }
    let mut repos = HashSet::new();
    for (k, v) in parse_query(req.query.as_deref()) {
        if k != "scope" {
            continue;
        }
        for scope in v.split(' ') {
            if let Some(rest) = scope.strip_prefix("repository:")
                && let Some((name, actions)) = rest.rsplit_once(':')
                && actions.split(',').any(|a| a == "pull" || a == "*")
            {
                repos.insert(name.to_string());
            }
        }
    }
    let n = shared.token_counter.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(n.to_le_bytes());
    h.update(now.as_nanos().to_le_bytes());
    h.update(shared.addr.port().to_le_bytes());
    let tok = format!("fake-{n}-{}", &hex::encode(h.finalize())[..24]);
    shared.lock().tokens.insert(tok.clone(), repos);
    Reply::json(
        200,
        &serde_json::json!({
            "token": tok,
            "access_token": tok,
            "expires_in": 300,
            "issued_at": rfc3339(now.as_secs()),
        }),
    )
}

// ---------------------------------------------------------------------------
// Registry endpoints
// ---------------------------------------------------------------------------

fn registry(shared: &Shared, req: &ReqInfo, route: &Route) -> Reply {
    let readonly = req.method == Method::GET || req.method == Method::HEAD;
    if !readonly {
        return Reply::error(405, "UNSUPPORTED", "the operation is unsupported");
    }
    match route {
        Route::Base => Reply::json(200, &serde_json::json!({})),
        Route::Manifest { repo, reference } => manifest(shared, req, repo, reference),
        Route::Blob { repo, digest } => blob(shared, req, repo, digest),
        Route::Tags { repo } => tags(shared, req, repo),
        Route::Referrers { repo, digest } => referrers(shared, req, repo, digest),
        Route::Unknown => Reply::error(404, "NOT_FOUND", "not found"),
    }
}

fn manifest(shared: &Shared, req: &ReqInfo, repo: &str, reference: &str) -> Reply {
    let found = {
        let st = shared.lock();
        st.repos.get(repo).and_then(|r| {
            let digest = if reference.contains(':') {
                reference.to_string()
            } else {
                r.tags.get(reference)?.clone()
            };
            let (mt, bytes) = r.manifests.get(&digest)?;
            Some((digest, mt.clone(), bytes.clone()))
        })
    };
    let Some((digest, media_type, bytes)) = found else {
        return Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    if shared.opts.hub_accept_quirk && req.accept_present {
        let accepted = req.accepts.iter().any(|a| a == &media_type);
        if !accepted && media_type == OCI_INDEX {
            return Reply::error(
                404,
                "MANIFEST_UNKNOWN",
                "OCI index found, but accept header does not support OCI indexes",
            );
        }
        if !accepted && media_type == DOCKER_LIST {
            return Reply::error(
                404,
                "MANIFEST_UNKNOWN",
                "manifest list found, but accept header does not support manifest lists",
            );
        }
    }
    let bytes = if shared.opts.resign_schema1 && media_type == DOCKER_SCHEMA1_SIGNED {
        resign_schema1(&bytes, shared.token_counter.fetch_add(1, Ordering::Relaxed))
    } else {
        bytes
    };
    Reply::new(200)
        .header("content-type", media_type)
        .header("docker-content-digest", digest)
        .body(bytes)
}

fn find_blob(shared: &Shared, repo: Option<&str>, digest: &str) -> Option<Bytes> {
    let st = shared.lock();
    match repo {
        Some(repo) => st.repos.get(repo)?.blobs.get(digest).cloned(),
        None => st.repos.values().find_map(|r| r.blobs.get(digest).cloned()),
    }
}

fn blob(shared: &Shared, req: &ReqInfo, repo: &str, digest: &str) -> Reply {
    let Some(bytes) = find_blob(shared, Some(repo), digest) else {
        return Reply::error(404, "BLOB_UNKNOWN", "blob unknown to registry");
    };
    if req.method == Method::GET
        && let Some(cdn) = shared.cdn_addr
    {
        return Reply::new(307)
            .header("location", format!("http://{cdn}/cdn/{digest}?sig=xyz"))
            .header("docker-content-digest", digest);
    }
    Reply::new(200)
        .header("content-type", "application/octet-stream")
        .header("docker-content-digest", digest)
        .body(bytes)
}

/// The CDN: no Docker headers, digest-addressed, rejects Authorization.
fn cdn(shared: &Shared, req: &ReqInfo) -> Reply {
    let mut reply = if req.authorization.is_some() {
        Reply::new(400)
            .header("content-type", "application/xml")
            .body(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code>\
                 <Message>Only one auth mechanism allowed</Message></Error>",
            )
    } else if req.method != Method::GET && req.method != Method::HEAD {
        Reply::new(405)
    } else {
        match req
            .path
            .strip_prefix("/cdn/")
            .and_then(|d| find_blob(shared, None, &percent_decode(d)))
        {
            Some(bytes) => Reply::new(200)
                .header("content-type", "application/octet-stream")
                .body(bytes),
            None => Reply::new(404)
                .header("content-type", "application/xml")
                .body("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code></Error>"),
        }
    };
    reply.api_header = false;
    reply
}

fn tags(shared: &Shared, req: &ReqInfo, repo: &str) -> Reply {
    let all: Vec<String> = {
        let st = shared.lock();
        match st.repos.get(repo) {
            Some(r) => r.tags.keys().cloned().collect(), // BTreeMap: sorted
            None => {
                return Reply::error(404, "NAME_UNKNOWN", "repository name not known to registry");
            }
        }
    };
    let q = parse_query(req.query.as_deref());
    let last = q
        .iter()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.clone())
        .filter(|_| shared.opts.tags_paging != TagsPaging::IgnoreLast);
    let n = q
        .iter()
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let n = match shared.opts.tags_paging {
        TagsPaging::Always(k) => Some(n.unwrap_or(k).min(k)),
        _ => n,
    };
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
        .collect();
    let (page, more) = match n {
        Some(n) if after.len() > n => (after[..n].to_vec(), true),
        _ => (after, false),
    };
    let mut reply = Reply::json(200, &serde_json::json!({ "name": repo, "tags": page }));
    if more && let (Some(n), Some(lt)) = (n, page.last()) {
        reply = reply.header(
            "link",
            format!("</v2/{repo}/tags/list?last={lt}&n={n}>; rel=\"next\""),
        );
    }
    reply
}

fn referrers(shared: &Shared, req: &ReqInfo, repo: &str, subject: &str) -> Reply {
    let filter = parse_query(req.query.as_deref())
        .into_iter()
        .find(|(k, _)| k == "artifactType")
        // Media types have no spaces: accept an unencoded '+' too.
        .map(|(_, v)| v.replace(' ', "+"));
    let mut manifests = Vec::new();
    {
        let st = shared.lock();
        if let Some(r) = st.repos.get(repo) {
            for digest in &r.manifest_order {
                let (media_type, bytes) = &r.manifests[digest];
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                    continue;
                };
                if v.pointer("/subject/digest").and_then(|d| d.as_str()) != Some(subject) {
                    continue;
                }
                // OCI: artifactType, else config.mediaType.
                let artifact_type = v
                    .get("artifactType")
                    .or_else(|| v.pointer("/config/mediaType"))
                    .and_then(|a| a.as_str())
                    .map(str::to_string);
                if let Some(f) = &filter
                    && artifact_type.as_deref() != Some(f.as_str())
                {
                    continue;
                }
                let mut d = serde_json::json!({
                    "mediaType": media_type,
                    "digest": digest,
                    "size": bytes.len(),
                });
                if let Some(a) = artifact_type {
                    d["artifactType"] = a.into();
                }
                if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
                    d["annotations"] = a.clone();
                }
                manifests.push(d);
            }
        }
    }
    let mut link = None;
    if let Some(size) = shared.opts.referrers_page_size {
        let q = parse_query(req.query.as_deref());
        let size = q
            .iter()
            .find(|(k, _)| k == "n")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(size)
            .max(1);
        if let Some((_, last)) = q.iter().find(|(k, _)| k == "last") {
            let at = manifests.iter().position(|d| d["digest"] == last.as_str());
            manifests.drain(..at.map_or(0, |i| i + 1));
        }
        if manifests.len() > size {
            manifests.truncate(size);
            let last = manifests[size - 1]["digest"].as_str().unwrap_or_default();
            link = Some(format!(
                "</v2/{repo}/referrers/{subject}?n={size}&last={last}>; rel=\"next\""
            ));
        }
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut reply = Reply::new(200)
        .header("content-type", OCI_INDEX)
        .body(serde_json::to_vec(&body).expect("serialize json"));
    if let Some(l) = link {
        reply = reply.header("link", l);
    }
    if filter.is_some() {
        reply = reply.header("oci-filters-applied", "artifactType");
    }
    reply
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ".
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derive an independent seed from `seed` and a label.
fn sub_seed(seed: u64, label: u64) -> u64 {
    splitmix64(seed ^ splitmix64(label))
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for tens of
/// MiB even in debug builds.
pub fn blob_bytes(seed: u64, len: usize) -> Bytes {
    let mut state = splitmix64(seed) | 1;
    let mut out = vec![0u8; len];
    let mut chunks = out.chunks_exact_mut(8);
    for chunk in &mut chunks {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&v[..n]);
    }
    Bytes::from(out)
}

/// A manifest (or index) as pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Pushed {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// For an image manifest: the config digest followed by the layer
    /// digests. Empty for an index.
    pub fn blob_digests(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.bytes).unwrap_or_default();
        let mut out = Vec::new();
        if let Some(d) = v.pointer("/config/digest").and_then(|d| d.as_str()) {
            out.push(d.to_string());
        }
        if let Some(layers) = v.get("layers").and_then(|l| l.as_array()) {
            out.extend(
                layers
                    .iter()
                    .filter_map(|l| l.get("digest").and_then(|d| d.as_str()).map(str::to_string)),
            );
        }
        out
    }

    /// For an index / manifest list: the child manifest digests.
    pub fn child_digests(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.bytes).unwrap_or_default();
        v.get("manifests")
            .and_then(|m| m.as_array())
            .map(|m| {
                m.iter()
                    .filter_map(|d| d.get("digest").and_then(|d| d.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, &self.digest, self.size())
    }
}

/// An OCI index (or Docker manifest list) and its children.
#[derive(Clone, Debug)]
pub struct MultiArch {
    pub index: Pushed,
    pub amd64: Pushed,
    pub arm64: Pushed,
    pub attestation: Pushed,
}

/// A Docker schema2 manifest list and its children.
#[derive(Clone, Debug)]
pub struct DockerList {
    pub index: Pushed,
    pub amd64: Pushed,
    pub arm64: Pushed,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn new(media_type: &str, digest: &str, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Clone)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

impl Platform {
    fn for_arch(arch: &str) -> Self {
        Platform {
            architecture: arch.to_string(),
            os: if arch == "unknown" {
                "unknown"
            } else {
                "linux"
            }
            .to_string(),
            variant: (arch == "arm64").then(|| "v8".to_string()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: u32,
    media_type: String,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    config: ContainerConfig,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cmd: Vec<String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn push_json(reg: &FakeRegistry, repo: &str, media_type: &str, value: &impl Serialize) -> Pushed {
    let bytes = Bytes::from(serde_json::to_vec_pretty(value).expect("serialize manifest"));
    let digest = reg.put_manifest(repo, media_type, bytes.clone());
    Pushed {
        digest,
        media_type: media_type.to_string(),
        bytes,
    }
}

fn push_image(
    reg: &FakeRegistry,
    repo: &str,
    arch: &str,
    layers: usize,
    seed: u64,
    docker: bool,
) -> Pushed {
    let (manifest_mt, config_mt, layer_mt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let s = sub_seed(seed, 0x1000 + i as u64);
        let len = 1024 + (s % 3072) as usize;
        let bytes = blob_bytes(s, len);
        diff_ids.push(sha256_digest(&[b"diff:".as_slice(), &bytes].concat()));
        let size = bytes.len() as u64;
        let digest = reg.put_blob(repo, bytes);
        layer_descs.push(Descriptor::new(layer_mt, &digest, size));
    }
    let platform = Platform::for_arch(arch);
    let config = ImageConfig {
        architecture: platform.architecture,
        os: platform.os,
        variant: platform.variant,
        config: ContainerConfig {
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                format!("FAKE_SEED={seed}"),
            ],
            cmd: vec!["/bin/sh".to_string()],
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids,
        },
    };
    let config_bytes = Bytes::from(serde_json::to_vec(&config).expect("serialize config"));
    let config_size = config_bytes.len() as u64;
    let config_digest = reg.put_blob(repo, config_bytes);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: manifest_mt.to_string(),
        artifact_type: None,
        config: Descriptor::new(config_mt, &config_digest, config_size),
        layers: layer_descs,
        subject: None,
        annotations: BTreeMap::new(),
    };
    push_json(reg, repo, manifest_mt, &manifest)
}

/// An OCI image (config + `layers` small gzip-typed layers + manifest), all
/// pushed to `repo`, untagged. Returns the manifest.
pub fn push_oci_image(
    reg: &FakeRegistry,
    repo: &str,
    arch: &str,
    layers: usize,
    seed: u64,
) -> Pushed {
    push_image(reg, repo, arch, layers, seed, false)
}

/// Same as [`push_oci_image`] with Docker schema2 media types.
pub fn push_docker_image(
    reg: &FakeRegistry,
    repo: &str,
    arch: &str,
    layers: usize,
    seed: u64,
) -> Pushed {
    push_image(reg, repo, arch, layers, seed, true)
}

/// An OCI index with linux/amd64, linux/arm64/v8 and a BuildKit attestation
/// manifest for amd64, tagged `tag`.
pub fn push_oci_index(reg: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> MultiArch {
    let amd64 = push_oci_image(reg, repo, "amd64", 2, sub_seed(seed, 1));
    let arm64 = push_oci_image(reg, repo, "arm64", 2, sub_seed(seed, 2));

    // BuildKit-style attestation manifest.
    let statement = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{ "name": "pkg:docker/fake", "digest": { "sha256": amd64.digest.trim_start_matches("sha256:") } }],
        "predicate": { "buildType": "https://mobyproject.org/buildkit@v1", "seed": seed },
    }))
    .expect("serialize statement");
    let statement_size = statement.len() as u64;
    let statement_digest = reg.put_blob(repo, Bytes::from(statement));
    let att_config = ImageConfig {
        architecture: "unknown".to_string(),
        os: "unknown".to_string(),
        variant: None,
        config: ContainerConfig {
            env: Vec::new(),
            cmd: Vec::new(),
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![statement_digest.clone()],
        },
    };
    let att_config_bytes = Bytes::from(serde_json::to_vec(&att_config).expect("serialize"));
    let att_config_size = att_config_bytes.len() as u64;
    let att_config_digest = reg.put_blob(repo, att_config_bytes);
    let mut layer = Descriptor::new(IN_TOTO, &statement_digest, statement_size);
    layer.annotations.insert(
        "in-toto.io/predicate-type".to_string(),
        "https://slsa.dev/provenance/v0.2".to_string(),
    );
    let attestation = push_json(
        reg,
        repo,
        OCI_MANIFEST,
        &ImageManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_string(),
            artifact_type: None,
            config: Descriptor::new(OCI_CONFIG, &att_config_digest, att_config_size),
            layers: vec![layer],
            subject: None,
            annotations: BTreeMap::new(),
        },
    );

    let mut d_amd64 = amd64.descriptor();
    d_amd64.platform = Some(Platform::for_arch("amd64"));
    let mut d_arm64 = arm64.descriptor();
    d_arm64.platform = Some(Platform::for_arch("arm64"));
    let mut d_att = attestation.descriptor();
    d_att.platform = Some(Platform::for_arch("unknown"));
    d_att.annotations.insert(
        "vnd.docker.reference.type".to_string(),
        "attestation-manifest".to_string(),
    );
    d_att.annotations.insert(
        "vnd.docker.reference.digest".to_string(),
        amd64.digest.clone(),
    );
    let index = push_json(
        reg,
        repo,
        OCI_INDEX,
        &ImageIndex {
            schema_version: 2,
            media_type: OCI_INDEX.to_string(),
            manifests: vec![d_amd64, d_arm64, d_att],
        },
    );
    reg.tag(repo, tag, &index.digest);
    MultiArch {
        index,
        amd64,
        arm64,
        attestation,
    }
}

/// A Docker schema2 manifest list (linux/amd64 + linux/arm64/v8), tagged `tag`.
pub fn push_docker_list(reg: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> DockerList {
    let amd64 = push_docker_image(reg, repo, "amd64", 2, sub_seed(seed, 1));
    let arm64 = push_docker_image(reg, repo, "arm64", 2, sub_seed(seed, 2));
    let mut d_amd64 = amd64.descriptor();
    d_amd64.platform = Some(Platform::for_arch("amd64"));
    let mut d_arm64 = arm64.descriptor();
    d_arm64.platform = Some(Platform::for_arch("arm64"));
    let index = push_json(
        reg,
        repo,
        DOCKER_LIST,
        &ImageIndex {
            schema_version: 2,
            media_type: DOCKER_LIST.to_string(),
            manifests: vec![d_amd64, d_arm64],
        },
    );
    reg.tag(repo, tag, &index.digest);
    DockerList {
        index,
        amd64,
        arm64,
    }
}

/// An OCI artifact manifest (artifactType [`SBOM_ARTIFACT`], empty config,
/// one layer) whose `subject` is `subject`. Untagged.
pub fn push_artifact_with_subject(
    reg: &FakeRegistry,
    repo: &str,
    subject: &Pushed,
    seed: u64,
) -> Pushed {
    let empty_digest = reg.put_blob(repo, Bytes::from_static(b"{}"));
    let sbom = serde_json::to_vec(&serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "name": format!("sbom-{seed}"),
        "subject": subject.digest,
    }))
    .expect("serialize sbom");
    let sbom_size = sbom.len() as u64;
    let sbom_digest = reg.put_blob(repo, Bytes::from(sbom));
    let mut annotations = BTreeMap::new();
    annotations.insert("org.example.seed".to_string(), seed.to_string());
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        "2024-01-01T00:00:00Z".to_string(),
    );
    push_json(
        reg,
        repo,
        OCI_MANIFEST,
        &ImageManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_string(),
            artifact_type: Some(SBOM_ARTIFACT.to_string()),
            config: Descriptor::new(OCI_EMPTY, &empty_digest, 2),
            layers: vec![Descriptor::new(
                "application/spdx+json",
                &sbom_digest,
                sbom_size,
            )],
            subject: Some(subject.descriptor()),
            annotations,
        },
    )
}
