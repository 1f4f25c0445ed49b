//! `gc`: mark and sweep by last-pulled time, then eviction by size.
//!
//! Roots are the tag pointers and markers pulled within the retention (`lastPulled`; documents
//! written before it existed go by a pointer's `checkedAt`, a marker's modification time). From
//! each live root, everything reachable through manifests (an index's children, a manifest's
//! config and layers, a referrer's `subject`) is live in that root's repository, so its marker
//! stays even if the marker itself was not pulled lately. A blob stays while it is live in any
//! repository (blobs are shared by digest).
//!
//! The sweep deletes in the reverse of the write order (object → marker → pointer): expired
//! pointers, then markers no live root reaches, then cached referrers answers whose subject is
//! not live, then blobs. Whatever point it is interrupted at, no pointer names a digest without
//! a marker and no marker names a missing object. Racing a live server:
//! - markers are deleted only after the pointers are listed again (a pointer written meanwhile
//!   keeps its digest's marker);
//! - blobs are deleted only after the markers are listed again (a marker written meanwhile keeps
//!   its blob), and never when written within the grace period (a fill that wrote its object
//!   and not yet its marker);
//! - a marker written in the short window between that listing and the blob's deletion would
//!   name a deleted blob: a last listing finds such markers and removes them with the pointers
//!   naming them, pointers first, so the store ends consistent and the next pull refills.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::{IN_FLIGHT, LifecycleError};
use crate::cache::{Cache, Marker, TagPointer};
use crate::oci::{Digest, RepoName};
use crate::store::keys::{self, Parsed};
use crate::store::{Key, ObjectInfo, Store};

/// Last-pulled times are written at most once an hour: a shorter retention would remove what is
/// being pulled.
pub const MIN_OLDER_THAN: Duration = *crate::config::GC_OLDER_THAN.start();

/// What `gc` keeps and how it sweeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOptions {
    /// Roots (tag pointers, markers) pulled within this time are live.
    pub older_than: Duration,
    /// Unreferenced blobs younger than this stay (a fill or manifest racing the sweep).
    pub grace: Duration,
    /// After the sweep, evict least recently pulled roots until the blobs fit.
    pub max_size: Option<u64>,
    /// Report what would go; change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            older_than: Duration::from_secs(30 * 86_400),
            grace: Duration::from_secs(3_600),
            max_size: None,
            dry_run: false,
        }
    }
}

impl GcOptions {
    /// Refuses a retention under [`MIN_OLDER_THAN`], whoever asks (the command line, the admin
    /// API and Lambda events check their text against the configuration's ranges first).
    fn check(&self) -> Result<(), LifecycleError> {
        if self.older_than < MIN_OLDER_THAN {
            return Err(LifecycleError::BadOption(format!(
                "--older-than {}s is under the minimum of 2h: last-pulled times are written at most once an hour, so a shorter retention would remove images in use",
                self.older_than.as_secs()
            )));
        }
        Ok(())
    }
}

/// What a gc found and removed (or, with `dry_run`, would remove).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dry_run: bool,
    /// Keys removed (or to be removed) in the order of the sweep, with their sizes in bytes.
    pub removed: Vec<Removed>,
    pub removed_objects: u64,
    pub removed_bytes: u64,
    /// Objects removed, by kind: `tags`, `markers`, `referrers`, `blobs`.
    pub removed_by_kind: BTreeMap<&'static str, u64>,
    /// Objects left in the store (every kind, leases and unknown keys included).
    pub kept_objects: u64,
    pub kept_bytes: u64,
    pub kept_blobs: u64,
    pub kept_blob_bytes: u64,
    /// Live roots given up by `--max-size` (least recently pulled first).
    pub evicted_roots: u64,
}

/// One removed object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub key: String,
    pub bytes: u64,
}

/// Runs one gc over the cache's store (its clock is "now"). Safe beside a live server and safe
/// to interrupt; after a real run the cache's memories forget everything.
pub async fn gc(cache: &Cache, options: &GcOptions) -> Result<GcReport, LifecycleError> {
    options.check()?;
    let store = cache.store().as_ref();
    let now = cache.now_ms();
    let mut world = World::read(store, cache.config().max_manifest_size).await?;
    let plan = world.plan(store, options, now).await?;
    let mut report = GcReport {
        dry_run: options.dry_run,
        evicted_roots: plan.evicted_roots,
        ..GcReport::default()
    };
    let mut removed: HashSet<String> = HashSet::new();
    if options.dry_run {
        for (kind, items) in [
            ("tags", &plan.pointers),
            ("markers", &plan.markers),
            ("referrers", &plan.referrers),
            ("blobs", &plan.blobs),
        ] {
            for (key, bytes) in items {
                note(&mut report, &mut removed, kind, key, *bytes);
            }
        }
    } else {
        sweep(store, &mut world, plan, &mut report, &mut removed).await?;
        cache.forget_all();
    }
    for o in &world.objects {
        if !removed.contains(&o.key) {
            report.kept_objects += 1;
            report.kept_bytes += o.size;
            if matches!(keys::parse(&o.key), Parsed::Blob(_)) {
                report.kept_blobs += 1;
                report.kept_blob_bytes += o.size;
            }
        }
    }
    Ok(report)
}

fn note(
    report: &mut GcReport,
    removed: &mut HashSet<String>,
    kind: &'static str,
    key: &Key,
    bytes: u64,
) {
    if removed.insert(key.to_string()) {
        report.removed.push(Removed {
            key: key.to_string(),
            bytes,
        });
        report.removed_objects += 1;
        report.removed_bytes += bytes;
        *report.removed_by_kind.entry(kind).or_default() += 1;
    }
}

/// The real sweep, phase by phase in the reverse of the write order, each phase finished before
/// the next starts.
async fn sweep(
    store: &dyn Store,
    world: &mut World,
    plan: Plan,
    report: &mut GcReport,
    removed: &mut HashSet<String>,
) -> Result<(), LifecycleError> {
    delete_all(store, &plan.pointers).await?;
    for (key, bytes) in &plan.pointers {
        note(report, removed, "tags", key, *bytes);
    }

    // Pointers written since the first listing keep what they reach.
    let fresh = read_documents(store, &store.walk(keys::REPOS_WALK).await?).await?;
    let fresh_roots: Vec<Root> = fresh.pointers.iter().filter_map(|p| p.root()).collect();
    world.absorb(&fresh);
    world.load_manifests(store, &fresh_roots).await?;
    let protected = world.reach(&fresh_roots);
    let markers: Vec<(Key, u64)> = plan
        .markers
        .into_iter()
        .filter(|(key, _)| match keys::parse(key.as_str()) {
            Parsed::Marker {
                upstream,
                repo,
                digest,
            } => !world
                .repo_index(&upstream, &repo)
                .is_some_and(|r| protected.contains(&(r, digest))),
            _ => true,
        })
        .collect();
    delete_all(store, &markers).await?;
    for (key, bytes) in &markers {
        note(report, removed, "markers", key, *bytes);
    }

    delete_all(store, &plan.referrers).await?;
    for (key, bytes) in &plan.referrers {
        note(report, removed, "referrers", key, *bytes);
    }

    // Markers written since the first listing keep their blobs.
    let named: HashSet<Digest> = named_by_markers(&store.walk(keys::REPOS_WALK).await?);
    let blobs: Vec<(Key, u64)> = plan
        .blobs
        .into_iter()
        .filter(|(key, _)| match keys::parse(key.as_str()) {
            Parsed::Blob(d) => !named.contains(&d),
            _ => false,
        })
        .collect();
    delete_all(store, &blobs).await?;
    for (key, bytes) in &blobs {
        note(report, removed, "blobs", key, *bytes);
    }

    // A marker written between that listing and its blob's deletion now dangles: remove it,
    // after the pointers naming its digest.
    let deleted: HashSet<Digest> = blobs
        .iter()
        .filter_map(|(k, _)| match keys::parse(k.as_str()) {
            Parsed::Blob(d) => Some(d),
            _ => None,
        })
        .collect();
    let last = store.walk(keys::REPOS_WALK).await?;
    let mut dangling: Vec<(Key, u64)> = Vec::new();
    let mut dangling_pairs: HashSet<(String, RepoName, Digest)> = HashSet::new();
    for o in &last {
        if let Parsed::Marker {
            upstream,
            repo,
            digest,
        } = keys::parse(&o.key)
            && deleted.contains(&digest)
            && store.head(&keys::blob(&digest)).await?.is_none()
            && let Some(key) = keys::parse(&o.key).key()
        {
            dangling.push((key, o.size));
            dangling_pairs.insert((upstream, repo, digest));
        }
    }
    if !dangling.is_empty() {
        let docs = read_documents(store, &last).await?;
        let pointers: Vec<(Key, u64)> = docs
            .pointers
            .iter()
            .filter(|p| {
                p.digest.as_ref().is_some_and(|d| {
                    dangling_pairs.contains(&(p.upstream.clone(), p.repo.clone(), d.clone()))
                })
            })
            .map(|p| (p.key.clone(), p.size))
            .collect();
        delete_all(store, &pointers).await?;
        for (key, bytes) in &pointers {
            note(report, removed, "tags", key, *bytes);
        }
        delete_all(store, &dangling).await?;
        for (key, bytes) in &dangling {
            note(report, removed, "markers", key, *bytes);
        }
    }
    Ok(())
}

/// Deletes every key, [`IN_FLIGHT`] at a time; the first failure fails the phase (after the
/// deletes already started have ended), so a later phase never runs on a half-done one.
async fn delete_all(store: &dyn Store, items: &[(Key, u64)]) -> Result<(), LifecycleError> {
    // Owned keys: a closure over borrowed items makes the future too general to be spawned.
    let keys: Vec<Key> = items.iter().map(|(key, _)| key.clone()).collect();
    let results: Vec<_> = futures_util::stream::iter(keys.into_iter().map(|key| async move {
        tracing::info!(%key, "gc: removing");
        store.delete(&key).await
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

fn named_by_markers(objects: &[ObjectInfo]) -> HashSet<Digest> {
    objects
        .iter()
        .filter_map(|o| match keys::parse(&o.key) {
            Parsed::Marker { digest, .. } => Some(digest),
            _ => None,
        })
        .collect()
}

/// A tag pointer as read.
struct PointerDoc {
    key: Key,
    upstream: String,
    repo: RepoName,
    /// `None` when the pointer does not parse (it is then judged by its modification time).
    digest: Option<Digest>,
    last_pulled: u64,
    inline: Option<String>,
    size: u64,
}

impl PointerDoc {
    fn root(&self) -> Option<Root> {
        Some(Root {
            key: self.key.clone(),
            upstream: self.upstream.clone(),
            repo: self.repo.clone(),
            digest: self.digest.clone()?,
            manifest: true,
            last_pulled: self.last_pulled,
        })
    }
}

/// A marker as read.
struct MarkerDoc {
    key: Key,
    upstream: String,
    repo: RepoName,
    digest: Digest,
    last_pulled: u64,
    /// It has a media type: the digest is a manifest.
    manifest: bool,
    inline: Option<String>,
    size: u64,
}

#[derive(Default)]
struct Documents {
    pointers: Vec<PointerDoc>,
    markers: Vec<MarkerDoc>,
}

/// Reads every pointer and marker among `objects`, [`IN_FLIGHT`] at a time. One removed since
/// the listing is skipped; one that does not parse counts as pulled when it was last written.
async fn read_documents(
    store: &dyn Store,
    objects: &[ObjectInfo],
) -> Result<Documents, LifecycleError> {
    let mut docs = Documents::default();
    for super::Document {
        parsed,
        key,
        bytes,
        object: o,
    } in super::read_documents(store, objects.iter().cloned()).await?
    {
        match parsed {
            Parsed::Tag { upstream, repo, .. } => {
                let p: Option<TagPointer> = serde_json::from_slice(&bytes).ok();
                docs.pointers.push(PointerDoc {
                    key,
                    upstream,
                    repo,
                    digest: p.as_ref().and_then(|p| Digest::parse(&p.digest).ok()),
                    last_pulled: p
                        .as_ref()
                        .map_or(o.modified_ms, |p| p.last_pulled.unwrap_or(p.checked_at)),
                    inline: p.and_then(|p| p.manifest),
                    size: o.size,
                });
            }
            Parsed::Marker {
                upstream,
                repo,
                digest,
            } => {
                let m: Option<Marker> = serde_json::from_slice(&bytes).ok();
                docs.markers.push(MarkerDoc {
                    key,
                    upstream,
                    repo,
                    digest,
                    last_pulled: m
                        .as_ref()
                        .and_then(|m| m.last_pulled)
                        .unwrap_or(o.modified_ms),
                    manifest: m.as_ref().is_some_and(|m| m.media_type.is_some()),
                    inline: m.and_then(|m| m.manifest),
                    size: o.size,
                });
            }
            _ => {}
        }
    }
    docs.pointers
        .sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    docs.markers
        .sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    Ok(docs)
}

/// A tag pointer or marker: what makes content live.
#[derive(Clone)]
struct Root {
    key: Key,
    upstream: String,
    repo: RepoName,
    digest: Digest,
    /// A pointer, or a marker with a media type: follow its children.
    manifest: bool,
    last_pulled: u64,
}

/// A child of a manifest: its digest, and whether it is a manifest itself (an index's entry, a
/// subject) rather than a config or layer.
#[derive(Clone)]
struct Child {
    digest: Digest,
    manifest: bool,
}

/// A repository's position in [`World::repos`].
type RepoIdx = usize;

/// The store as gc sees it: every object, the documents, and the manifests read so far.
struct World {
    objects: Vec<ObjectInfo>,
    docs: Documents,
    blobs: HashMap<Digest, ObjectInfo>,
    referrers: Vec<(Key, String, RepoName, Digest, u64)>,
    repos: Vec<(String, RepoName)>,
    repo_ids: HashMap<(String, RepoName), RepoIdx>,
    /// Digests with a media-typed marker in a repository.
    manifest_markers: HashSet<(RepoIdx, Digest)>,
    /// Inline manifest copies by digest (checked against the digest when used).
    inline: HashMap<Digest, String>,
    /// Children of the manifests read; empty for one that is absent or not a manifest.
    children: HashMap<Digest, Vec<Child>>,
    max_manifest_size: u64,
}

/// What a sweep removes (a dry run reports exactly this), each list in key order.
struct Plan {
    pointers: Vec<(Key, u64)>,
    markers: Vec<(Key, u64)>,
    referrers: Vec<(Key, u64)>,
    blobs: Vec<(Key, u64)>,
    evicted_roots: u64,
}

impl World {
    async fn read(store: &dyn Store, max_manifest_size: u64) -> Result<World, LifecycleError> {
        let objects = store.walk("").await?;
        let docs = read_documents(store, &objects).await?;
        let mut world = World {
            blobs: HashMap::new(),
            referrers: Vec::new(),
            docs: Documents::default(),
            repos: Vec::new(),
            repo_ids: HashMap::new(),
            manifest_markers: HashSet::new(),
            inline: HashMap::new(),
            children: HashMap::new(),
            max_manifest_size,
            objects: Vec::new(),
        };
        for o in &objects {
            match keys::parse(&o.key) {
                Parsed::Blob(d) => {
                    world.blobs.insert(d, o.clone());
                }
                Parsed::Referrers {
                    upstream,
                    repo,
                    digest,
                } => {
                    let key = keys::referrers(&upstream, &repo, &digest);
                    world.repo(&upstream, &repo);
                    world.referrers.push((key, upstream, repo, digest, o.size));
                }
                _ => {}
            }
        }
        world
            .referrers
            .sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        world.absorb(&docs);
        world.docs = docs;
        world.objects = objects;
        Ok(world)
    }

    /// Learns the repositories, manifest markers and inline copies of `docs`.
    fn absorb(&mut self, docs: &Documents) {
        for p in &docs.pointers {
            self.repo(&p.upstream, &p.repo);
            if let (Some(d), Some(m)) = (&p.digest, &p.inline) {
                self.inline.entry(d.clone()).or_insert_with(|| m.clone());
            }
        }
        for m in &docs.markers {
            let r = self.repo(&m.upstream, &m.repo);
            if m.manifest {
                self.manifest_markers.insert((r, m.digest.clone()));
            }
            if let Some(text) = &m.inline {
                self.inline
                    .entry(m.digest.clone())
                    .or_insert_with(|| text.clone());
            }
        }
    }

    fn repo(&mut self, upstream: &str, repo: &RepoName) -> RepoIdx {
        let id = (upstream.to_owned(), repo.clone());
        if let Some(&i) = self.repo_ids.get(&id) {
            return i;
        }
        self.repos.push(id.clone());
        self.repo_ids.insert(id, self.repos.len() - 1);
        self.repos.len() - 1
    }

    fn repo_index(&self, upstream: &str, repo: &RepoName) -> Option<RepoIdx> {
        self.repo_ids
            .get(&(upstream.to_owned(), repo.clone()))
            .copied()
    }

    fn roots(&self) -> Vec<Root> {
        let pointers = self.docs.pointers.iter().filter_map(|p| p.root());
        let markers = self.docs.markers.iter().map(|m| Root {
            key: m.key.clone(),
            upstream: m.upstream.clone(),
            repo: m.repo.clone(),
            digest: m.digest.clone(),
            manifest: m.manifest,
            last_pulled: m.last_pulled,
        });
        pointers.chain(markers).collect()
    }

    /// Whether `digest`, reached in repository `r` (through an edge saying `manifest` or not),
    /// is a manifest whose children to follow.
    fn is_manifest(&self, r: RepoIdx, digest: &Digest, manifest: bool) -> bool {
        manifest || self.manifest_markers.contains(&(r, digest.clone()))
    }

    /// Reads every manifest reachable from `roots` that is not read yet, wave by wave, at most
    /// [`IN_FLIGHT`] at once. A manifest that is missing is simply not followed.
    async fn load_manifests(
        &mut self,
        store: &dyn Store,
        roots: &[Root],
    ) -> Result<(), LifecycleError> {
        let mut seen: HashSet<(RepoIdx, Digest)> = HashSet::new();
        let mut frontier: Vec<(RepoIdx, Digest, bool)> = Vec::new();
        for root in roots {
            let r = self.repo(&root.upstream, &root.repo);
            if seen.insert((r, root.digest.clone())) {
                frontier.push((r, root.digest.clone(), root.manifest));
            }
        }
        while !frontier.is_empty() {
            let mut need: Vec<Digest> = frontier
                .iter()
                .filter(|(r, d, m)| self.is_manifest(*r, d, *m) && !self.children.contains_key(d))
                .map(|(_, d, _)| d.clone())
                .collect();
            need.sort();
            need.dedup();
            let this = &*self;
            let read: Vec<_> = futures_util::stream::iter(need.into_iter().map(|d| async move {
                let children = this.read_manifest(store, &d).await?;
                Ok::<_, LifecycleError>((d, children))
            }))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
            for r in read {
                let (d, children) = r?;
                self.children.insert(d, children);
            }
            let mut next = Vec::new();
            for (r, d, m) in frontier {
                if !self.is_manifest(r, &d, m) {
                    continue;
                }
                for c in self.children.get(&d).into_iter().flatten() {
                    if seen.insert((r, c.digest.clone())) {
                        next.push((r, c.digest.clone(), c.manifest));
                    }
                }
            }
            frontier = next;
        }
        Ok(())
    }

    /// A manifest's children: from an inline copy that still hashes to the digest, else from
    /// `blobs/` if it is there and no larger than a manifest may be.
    async fn read_manifest(
        &self,
        store: &dyn Store,
        digest: &Digest,
    ) -> Result<Vec<Child>, LifecycleError> {
        if let Some(text) = self.inline.get(digest)
            && crate::oci::schema1::matches(text.as_bytes(), digest)
        {
            return Ok(children(text.as_bytes()));
        }
        match self.blobs.get(digest) {
            Some(o) if o.size <= self.max_manifest_size => {}
            _ => return Ok(Vec::new()),
        }
        Ok(store
            .get(&keys::blob(digest))
            .await?
            .map(|b| children(&b))
            .unwrap_or_default())
    }

    /// Every (repository, digest) reachable from `roots` through the manifests read.
    fn reach(&self, roots: &[Root]) -> HashSet<(RepoIdx, Digest)> {
        let mut live = HashSet::new();
        for root in roots {
            self.reach_one(root, &mut live);
        }
        live
    }

    /// Adds what `root` reaches to `live`; returns the digests it added.
    fn reach_one(&self, root: &Root, live: &mut HashSet<(RepoIdx, Digest)>) -> Vec<Digest> {
        let mut added = Vec::new();
        let Some(r) = self.repo_index(&root.upstream, &root.repo) else {
            return added;
        };
        let mut stack = vec![(root.digest.clone(), root.manifest)];
        while let Some((d, m)) = stack.pop() {
            if !live.insert((r, d.clone())) {
                continue;
            }
            added.push(d.clone());
            if self.is_manifest(r, &d, m) {
                for c in self.children.get(&d).into_iter().flatten() {
                    stack.push((c.digest.clone(), c.manifest));
                }
            }
        }
        added
    }

    /// Decides what goes: the retention, then `--max-size`, then what nothing live reaches.
    async fn plan(
        &mut self,
        store: &dyn Store,
        options: &GcOptions,
        now: u64,
    ) -> Result<Plan, LifecycleError> {
        let retention = options.older_than.as_millis() as u64;
        let grace = options.grace.as_millis() as u64;
        let (mut live, _expired): (Vec<Root>, Vec<Root>) = self
            .roots()
            .into_iter()
            .partition(|r| now.saturating_sub(r.last_pulled) < retention);
        self.load_manifests(store, &live).await?;

        let mut evicted_roots = 0;
        if let Some(max) = options.max_size {
            // Newest first: keep the longest run of most recently pulled roots that fits.
            live.sort_by(|a, b| {
                b.last_pulled
                    .cmp(&a.last_pulled)
                    .then_with(|| a.key.as_str().cmp(b.key.as_str()))
            });
            let mut reached = HashSet::new();
            let mut counted: HashSet<Digest> = HashSet::new();
            let mut bytes = 0u64;
            let mut fits = live.len();
            for (i, root) in live.iter().enumerate() {
                for d in self.reach_one(root, &mut reached) {
                    if let Some(o) = self.blobs.get(&d)
                        && counted.insert(d)
                    {
                        bytes += o.size;
                    }
                }
                if bytes > max {
                    fits = i;
                    break;
                }
            }
            evicted_roots = (live.len() - fits) as u64;
            live.truncate(fits);
        }

        let live_pairs = self.reach(&live);
        let live_keys: HashSet<&str> = live.iter().map(|r| r.key.as_str()).collect();
        let live_blobs: HashSet<&Digest> = live_pairs.iter().map(|(_, d)| d).collect();
        let is_live = |upstream: &str, repo: &RepoName, d: &Digest| {
            self.repo_index(upstream, repo)
                .is_some_and(|r| live_pairs.contains(&(r, d.clone())))
        };

        let pointers = self
            .docs
            .pointers
            .iter()
            .filter(|p| !live_keys.contains(p.key.as_str()))
            .map(|p| (p.key.clone(), p.size))
            .collect();
        let markers = self
            .docs
            .markers
            .iter()
            .filter(|m| !is_live(&m.upstream, &m.repo, &m.digest))
            .map(|m| (m.key.clone(), m.size))
            .collect();
        let referrers = self
            .referrers
            .iter()
            .filter(|(_, u, r, d, _)| !is_live(u, r, d))
            .map(|(k, _, _, _, size)| (k.clone(), *size))
            .collect();
        let mut blobs: Vec<(Key, u64)> = self
            .blobs
            .iter()
            .filter(|(d, o)| !live_blobs.contains(d) && now.saturating_sub(o.modified_ms) >= grace)
            .map(|(d, o)| (keys::blob(d), o.size))
            .collect();
        blobs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(Plan {
            pointers,
            markers,
            referrers,
            blobs,
            evicted_roots,
        })
    }
}

/// The digests a manifest refers to: an index's `manifests` and a `subject` (manifests), a
/// `config`, `layers`, an artifact's `blobs`, a schema1 manifest's `fsLayers` (blobs).
fn children(bytes: &[u8]) -> Vec<Child> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut add = |value: Option<&serde_json::Value>, field: &str, manifest: bool| {
        if let Some(d) = value
            .and_then(|x| x.get(field))
            .and_then(|d| d.as_str())
            .and_then(|d| Digest::parse(d).ok())
        {
            out.push(Child {
                digest: d,
                manifest,
            });
        }
    };
    for (list, field, manifest) in [
        ("manifests", "digest", true),
        ("layers", "digest", false),
        ("blobs", "digest", false),
        ("fsLayers", "blobSum", false),
    ] {
        for item in v.get(list).and_then(|l| l.as_array()).into_iter().flatten() {
            add(Some(item), field, manifest);
        }
    }
    add(v.get("config"), "digest", false);
    add(v.get("subject"), "digest", true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_an_index_a_manifest_and_a_referrer() {
        let d = |s: &[u8]| Digest::sha256_of(s);
        let index = serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"digest": d(b"a").to_string()}, {"digest": "not-a-digest"}],
        });
        let manifest = serde_json::json!({
            "config": {"digest": d(b"c").to_string()},
            "layers": [{"digest": d(b"l1").to_string()}, {"digest": d(b"l2").to_string()}],
            "subject": {"digest": d(b"s").to_string()},
        });
        let got = |v: &serde_json::Value| -> Vec<(Digest, bool)> {
            children(&serde_json::to_vec(v).unwrap())
                .into_iter()
                .map(|c| (c.digest, c.manifest))
                .collect()
        };
        assert_eq!(got(&index), vec![(d(b"a"), true)]);
        assert_eq!(
            got(&manifest),
            vec![
                (d(b"l1"), false),
                (d(b"l2"), false),
                (d(b"c"), false),
                (d(b"s"), true)
            ]
        );
        assert!(children(b"not json").is_empty());
    }

    #[test]
    fn a_retention_under_two_hours_is_refused() {
        assert!(GcOptions::default().check().is_ok());
        let short = GcOptions {
            older_than: Duration::from_secs(3_600),
            ..GcOptions::default()
        };
        let err = short.check().unwrap_err();
        assert!(err.to_string().contains("2h"), "{err}");
    }
}
