//! The pull-through policy: the only place that decides hit, miss, revalidate or stale.
//!
//! Owns: which upstream a name goes to (and its allow-list), tag freshness and stale-if-error,
//! manifest negotiation and verification, blob fills (single-flight, spill files, leases in the
//! bucket, Lambda's deadline and hand-off), and the in-process memories.
//!
//! Never: HTTP. It is given parsed requests, a [`Store`] and the configured [`Upstream`]s, and
//! answers with documents, blob locations or a [`CacheError`]; the HTTP edge picks statuses and
//! OCI error codes. It imports nothing of the `http` or `lambda` modules, nor axum; routes call
//! it, it never calls routes.

mod blobs;
mod flight;
mod handoff;
mod lease;
mod manifests;
mod memory;
mod relay;
pub mod spill;
mod touch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use blobs::{BlobAnswer, Warmed};
pub use flight::{FaultHook, FlightPoint};
pub use handoff::{FillHandoff, FillJob, FillOutcome, FillPolicy, HandoffError};
pub use lease::ServerLease;
pub use manifests::ManifestAnswer;
pub use memory::TRUSTED_FOR_MS;
pub use relay::RelayAnswer;
pub use touch::{FLUSH_EVERY, TOUCH_EVERY_MS};
// Part of the cache's answers and errors, so the HTTP edge never reaches past the cache into the
// store or the upstream client: blob locations and byte ranges, the store-call counter behind
// `X-Pullthrough-Store-Calls`, and the upstream failures a `CacheError` carries.
pub use crate::store::counted::counting;
pub use crate::store::{BlobRead, ByteRange, RangeRequest};
pub use crate::upstream::UpstreamError;

use crate::config::Config;
mod error;

use crate::oci::{Digest, RepoName};
use crate::secrets::SecretSource;
use crate::store::{Key, Store, StoreError};
use crate::upstream::Upstream;
pub use error::{CacheError, SetupError, Wanted};
use flight::SingleFlight;
use memory::{BlobMarkerMemory, ManifestMemory, TagMemory};

/// What a tag resolves to, as last confirmed with the upstream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TagPointer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// When the upstream last confirmed this digest for the tag, in Unix milliseconds.
    pub checked_at: u64,
    /// The manifest itself when small (see [`INLINE_LIMIT`]), so a tag costs one store read even
    /// on an instance with cold memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// When a client last pulled through this tag, in Unix milliseconds (gc's liveness). Absent
    /// in pointers written before it existed: gc then goes by `checked_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pulled: Option<u64>,
}

/// How long a readiness answer is reused ([`Cache::store_ready`]).
pub const READY_REUSE: Duration = Duration::from_secs(1);

/// Manifests up to this size are copied into tag pointers and markers. Larger ones are read from
/// `blobs/` (a second store read).
pub const INLINE_LIMIT: usize = 64 * 1024;

/// The text to inline for a manifest, if it is small and valid UTF-8 (JSON always is; anything
/// else is simply not inlined, never altered).
fn inline_copy(bytes: &[u8]) -> Option<String> {
    if bytes.len() > INLINE_LIMIT {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// An inlined copy, accepted only if it still is the manifest its digest names.
fn verified_inline(copy: Option<&String>, digest: &Digest) -> Option<Bytes> {
    let copy = copy?;
    crate::oci::schema1::matches(copy.as_bytes(), digest).then(|| Bytes::from(copy.clone()))
}

/// The per-repository marker: this repository is known to hold this digest. For manifests it also
/// records the media type, which the content-addressed object itself does not carry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub size: u64,
    /// A small manifest's bytes, as in [`TagPointer::manifest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// When a client last pulled this digest from this repository, in Unix milliseconds (gc's
    /// liveness). Absent in markers written before it existed: gc then goes by the object's
    /// modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pulled: Option<u64>,
}

impl Marker {
    pub fn blob(size: u64) -> Marker {
        Marker {
            media_type: None,
            size,
            manifest: None,
            last_pulled: None,
        }
    }
}

/// Wall-clock time, with an offset that tests advance to cross a TTL without waiting.
#[derive(Default)]
pub struct Clock {
    offset_ms: AtomicU64,
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock forward (tests).
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// A request's repository, resolved to an upstream.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The repository on the upstream (`library/alpine`).
    pub repo: RepoName,
    /// The name as the client used it (`alpine`, `docker.io/library/alpine`), for links we send.
    pub client_name: RepoName,
}

impl Target {
    pub fn alias(&self) -> &str {
        self.upstream.alias()
    }

    /// `<upstream>/<repo>`: the repository's identity in caches and logs.
    pub fn scoped_name(&self) -> String {
        format!("{}/{}", self.alias(), self.repo)
    }

    /// `<upstream>/<repo>@<digest>`: one digest in this repository, the key of its fill or fetch
    /// flight and of its remembered blob marker.
    pub fn scoped_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.scoped_name())
    }
}

/// The pull-through cache: what a request for a manifest, a blob, tags or referrers gets, from
/// the store, the in-process memories or the upstream, with fills shared by single-flight and
/// leases. One per process (or Lambda instance), shared by every request.
pub struct Cache {
    config: Config,
    store: Arc<dyn Store>,
    /// Upstreams by alias.
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Every name an upstream answers to (alias and other names) mapped to its alias.
    names: HashMap<String, String>,
    manifests: ManifestMemory,
    tags: TagMemory,
    blob_markers: BlobMarkerMemory,
    /// Last-pulled times waiting to be written, off the request path.
    touches: touch::Touches,
    manifest_flights: SingleFlight<String, ManifestAnswer>,
    blob_flights: SingleFlight<String, u64>,
    clock: Arc<Clock>,
    /// Lambda mode: blob misses are copied against a deadline, under a lease, and handed to an
    /// asynchronous invocation when the deadline passes.
    fill_policy: Option<FillPolicy>,
    /// Server mode over S3: the lease a fill holds so that instances sharing the bucket fetch a
    /// blob once.
    server_lease: ServerLease,
    /// Server mode over S3 with streamed misses: the bounded directory fills spill into.
    spill_dir: Option<Arc<spill::SpillDir>>,
    /// The stage of every streamed blob fill running now, by `repo@digest` (the key of its
    /// flight): the requests that join a fill find its spill file here.
    fill_stages: std::sync::Mutex<HashMap<String, tokio::sync::watch::Receiver<blobs::FillStage>>>,
    /// The last readiness check and when it ended: `/readyz` callers within [`READY_REUSE`] of
    /// it share its answer, and concurrent ones wait for one check, so probing the endpoint
    /// costs at most one store request a second however often it is called.
    readiness: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    /// This cache itself, for work handed to a background task (single-flight fills).
    me: Weak<Cache>,
}

/// Services a registry may use beyond its store: where upstream secrets are read, and (Lambda
/// mode) the policy for blob misses.
#[derive(Clone, Default)]
pub struct Services {
    pub secrets: Option<Arc<dyn SecretSource>>,
    pub fill_policy: Option<FillPolicy>,
    /// Server mode over S3: the validity and renewal interval of a fill's lease, instead of
    /// `[s3] fill_lease` (tests shorten the renewal too).
    pub server_lease: Option<ServerLease>,
    /// Tests only: called with the point reached ([`FlightPoint`]), the flight's kind
    /// (`"manifest"`, `"blob"`) and key as every single-flight run starts and ends, inside its
    /// task, so a test can make one run panic or hold a run that has ended in its slot.
    #[doc(hidden)]
    pub fault_hook: Option<flight::FaultHook>,
}

impl Cache {
    pub fn with_services(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<Clock>,
        services: Services,
    ) -> Result<Arc<Cache>, SetupError> {
        let mut upstreams = HashMap::new();
        let mut names = HashMap::new();
        for u in &config.upstreams {
            if u.secret_arn.is_some() && services.secrets.is_none() {
                return Err(SetupError::NoSecretsClient {
                    alias: u.alias.clone(),
                });
            }
            let client = Upstream::with_secrets(u.clone(), &config, services.secrets.clone())
                .map_err(|e| SetupError::HttpClient {
                    alias: u.alias.clone(),
                    detail: e.to_string(),
                })?;
            upstreams.insert(u.alias.clone(), Arc::new(client));
            for n in std::iter::once(&u.alias).chain(&u.other_names) {
                names.insert(n.clone(), u.alias.clone());
            }
        }
        // Fills over S3 in server mode spill to local disk (a filesystem store spills into its
        // own temporary directory; Lambda mode never streams blobs).
        let spill_dir = if services.fill_policy.is_none()
            && store.serves_by_redirect()
            && config.s3.stream_misses
        {
            // A directory that cannot be used (a read-only file system, say) does not stop the
            // server: its cold blobs are copied, then redirected, as with a full one.
            match spill::SpillDir::open(&config.spill.dir, config.spill.max_bytes) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    tracing::warn!(
                        spill_dir = %config.spill.dir.display(), error = %e,
                        "spill directory unusable: cold blobs are copied to the store, then redirected; set [spill] dir"
                    );
                    None
                }
            }
        } else {
            None
        };
        let server_lease = services
            .server_lease
            .unwrap_or_else(|| ServerLease::from_ttl(config.s3.fill_lease));
        Ok(Arc::new_cyclic(|me| Cache {
            me: me.clone(),
            spill_dir,
            fill_stages: Default::default(),
            readiness: Default::default(),
            manifests: ManifestMemory::new(config.memory_cache_bytes),
            config,
            store,
            upstreams,
            names,
            tags: TagMemory::default(),
            blob_markers: BlobMarkerMemory::default(),
            touches: Default::default(),
            manifest_flights: SingleFlight::new("manifest", services.fault_hook.clone()),
            blob_flights: SingleFlight::new("blob", services.fault_hook),
            clock,
            fill_policy: services.fill_policy,
            server_lease,
        }))
    }

    fn handle(&self) -> Arc<Cache> {
        self.me
            .upgrade()
            .expect("a Cache method runs only while the Cache is alive")
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store this cache keeps its bytes and documents in (for the lifecycle commands).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Forgets everything this process remembers of the store (manifests, tag pointers, blob
    /// markers): after a gc or purge removed objects, the next requests read the store again and
    /// refill what is gone.
    pub fn forget_all(&self) {
        self.manifests.clear();
        self.tags.clear();
        self.blob_markers.clear();
    }

    /// Whether the store answers a cheap request (a HEAD of a fixed key, and on the filesystem
    /// store its temporary directory) within `timeout`; the answer is shared by concurrent
    /// callers and reused for [`READY_REUSE`] (the unauthenticated `/readyz` must not let a
    /// client turn requests into store requests).
    pub async fn store_ready(&self, timeout: Duration) -> Result<(), String> {
        let mut last = self.readiness.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < READY_REUSE
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(timeout, self.check_store()).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        };
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }

    async fn check_store(&self) -> Result<(), String> {
        // The empty blob's digest: a valid key on every store, usually absent.
        let probe = Digest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .map_err(|e| e.to_string())?;
        self.store
            .head(&crate::store::keys::blob(&probe))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(dir) = self.store.spill_path().as_deref().and_then(|p| p.parent()) {
            tokio::fs::metadata(dir)
                .await
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// The cache's clock, in Unix milliseconds (tests move it forward).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Picks the upstream for a request: `?ns=` first, then a path prefix naming a configured
    /// upstream, then the default. Applies Docker Hub's `library/` rule.
    pub fn resolve(&self, name: &RepoName, ns: Option<&str>) -> Result<Target, CacheError> {
        let (alias, repo) = if let Some(ns) = ns {
            let alias = self.names.get(ns).ok_or_else(|| {
                CacheError::NameUnknown(format!(
                    "no upstream named {:?} is configured (from ?ns=)",
                    truncate(ns)
                ))
            })?;
            (alias.clone(), name.clone())
        } else if let (Some(alias), Some(rest)) = (
            self.names.get(name.first_component()),
            name.strip_first_component(),
        ) {
            (alias.clone(), rest)
        } else if name.component_count() > 1 && looks_like_host(name.first_component()) {
            return Err(CacheError::NameUnknown(format!(
                "no upstream named {:?} is configured; configured: {}",
                name.first_component(),
                self.configured_aliases()
            )));
        } else {
            (self.config.default_upstream.clone(), name.clone())
        };
        let upstream = self.upstreams.get(&alias).cloned().ok_or_else(|| {
            CacheError::NameUnknown(format!("upstream {alias} is not configured"))
        })?;
        let repo = if upstream.config().library_prefix && repo.component_count() == 1 {
            repo.with_library_prefix()
        } else {
            repo
        };
        if !crate::config::allowed(&upstream.config().allow, repo.as_str()) {
            return Err(CacheError::Denied(format!(
                "repository {repo} is not in the allow-list of upstream {}",
                upstream.alias()
            )));
        }
        crate::metrics::request::note_upstream(upstream.alias());
        Ok(Target {
            upstream,
            repo,
            client_name: name.clone(),
        })
    }

    fn configured_aliases(&self) -> String {
        let mut a: Vec<&str> = self.upstreams.keys().map(|s| s.as_str()).collect();
        a.sort();
        a.join(", ")
    }

    fn tag_ttl(&self, target: &Target) -> Duration {
        target
            .upstream
            .config()
            .tag_ttl
            .unwrap_or(self.config.tag_ttl)
    }

    async fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &Key,
    ) -> Result<Option<T>, CacheError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => Ok(Some(v)),
                Err(e) => {
                    // A damaged pointer is treated as absent and rewritten by the next fill.
                    tracing::warn!(%key, error = %e, "unreadable store document ignored");
                    Ok(None)
                }
            },
        }
    }

    async fn write_json<T: Serialize>(&self, key: &Key, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.store.put(key, bytes.into(), "application/json").await
    }

    /// A repository's marker for a digest, noted as pulled. Blob markers never change once
    /// written, so they are also kept in memory (for [`TRUSTED_FOR_MS`]): a warm blob then costs
    /// no store request before its redirect.
    async fn read_marker(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<Option<Marker>, CacheError> {
        let remembered = target.scoped_digest(digest);
        let now = self.clock.now_ms();
        if let Some(size) = self.blob_markers.get(&remembered, now) {
            self.pulled_marker(target, digest, None);
            return Ok(Some(Marker::blob(size)));
        }
        let key = crate::store::keys::marker(target.alias(), &target.repo, digest);
        let marker: Option<Marker> = self.read_json(&key).await?;
        if let Some(m) = &marker {
            self.knows_pulled(&key, m.last_pulled);
            self.pulled_marker(target, digest, m.last_pulled);
            if m.media_type.is_none() {
                self.blob_markers.insert(&remembered, m.size, now);
            }
        }
        Ok(marker)
    }

    /// Writes a marker and remembers it. A marker is written when a client pulls its digest, so
    /// its `last_pulled` is now.
    async fn write_marker(
        &self,
        target: &Target,
        digest: &Digest,
        marker: Marker,
    ) -> Result<(), CacheError> {
        let key = crate::store::keys::marker(target.alias(), &target.repo, digest);
        let now = self.clock.now_ms();
        let marker = Marker {
            last_pulled: Some(now),
            ..marker
        };
        self.write_json(&key, &marker).await?;
        self.knows_pulled(&key, marker.last_pulled);
        if marker.media_type.is_none() {
            self.blob_markers
                .insert(&target.scoped_digest(digest), marker.size, now);
        }
        Ok(())
    }

    /// Writes a tag pointer and remembers it. A pointer is written when a client pulls its tag
    /// (fetched or revalidated at `now`), so its `last_pulled` is `now`.
    async fn write_pointer(
        &self,
        key: &Key,
        pointer: TagPointer,
        now: u64,
    ) -> Result<(), CacheError> {
        let pointer = TagPointer {
            last_pulled: Some(now),
            ..pointer
        };
        self.write_json(key, &pointer).await?;
        self.knows_pulled(key, pointer.last_pulled);
        self.tags.insert(key.as_str(), pointer, now);
        Ok(())
    }
}

fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component == "localhost"
}

fn truncate(s: &str) -> String {
    crate::oci::truncate_for_message(s)
}
