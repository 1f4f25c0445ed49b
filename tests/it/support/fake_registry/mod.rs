//! An in-process fake OCI Distribution registry ("upstream") for integration tests: it records
//! every request it receives and can inject faults.
//!
//! Self-contained on purpose: it only uses crates the main crate depends on (axum, tokio, bytes,
//! sha2, hex, serde, serde_json, futures-util, base64), none of the rest of the harness.
//!
//! - this file: options, the recorded requests, [`FakeRegistry`] (start, content, faults,
//!   shutdown), its shared state and the request dispatch;
//! - [`manifests`]: manifest digests (signed schema1 included) and the manifest endpoint;
//! - [`blobs`]: the blob endpoint and the "CDN" it can redirect to;
//! - [`listings`]: `tags/list` and referrers, with their paging;
//! - [`auth`]: the Bearer / Basic challenges and the token endpoint;
//! - [`faults`]: fault rules and how each fault rewrites an answer;
//! - [`reply`]: answers as built before faults, and the held and truncated bodies;
//! - [`routes`]: `/v2/` path parsing, percent-decoding and query strings;
//! - [`conns`]: connection tracking, so that a shutdown also cuts keep-alive connections;
//! - [`images`]: deterministic test content (blobs, images, indexes, artifacts) pushed into it.

mod auth;
mod blobs;
mod conns;
mod faults;
mod images;
mod listings;
mod manifests;
mod reply;
mod routes;

pub use faults::{Fault, FaultRule};
pub use images::*;
pub use manifests::{manifest_digest, sha256_digest};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::header::{ACCEPT, AUTHORIZATION};
use axum::response::Response;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use auth::{check_auth, token};
use blobs::{blob, cdn};
use conns::{Conns, KillableListener, dup_listener};
use faults::apply_faults;
use listings::{referrers, tags};
use manifests::manifest;
use reply::Reply;
use routes::{Route, parse_route};

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

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// How the fake authenticates `/v2/` requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FakeAuth {
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

    /// Every request received so far, in order (registry, token and CDN).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Every request received so far as `"METHOD path"`, for assertion messages.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
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

// ---------------------------------------------------------------------------
// The registry API, dispatched to the endpoints' modules
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
