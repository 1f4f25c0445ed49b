//! Garbage collection, `ls` and the store walk, on both stores: gc keeps everything a live image
//! needs and removes what nobody pulled within the retention, shared blobs stay, fills racing it
//! lose nothing, `--dry-run` changes nothing, an interrupted gc (the real binary, SIGKILLed)
//! leaves a store `verify` accepts, `--max-size` evicts least recently pulled first.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pullthrough::cache::{Cache, Services};
use pullthrough::config::{Config, S3Settings, Settings};
use pullthrough::lifecycle::{GcOptions, GcReport, gc, ls};
use pullthrough::oci::{Digest, RepoName, Tag};
use pullthrough::store::fs::FsStore;
use pullthrough::store::{Store, keys};

use crate::support::*;

const DAY: Duration = Duration::from_secs(86_400);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Fs,
    S3,
}

/// A proxy over a fresh store of `kind` in front of `up`, and its configuration text.
async fn start(kind: Kind, up: &FakeRegistry) -> (Proxy, String) {
    match kind {
        Kind::Fs => {
            let toml = local_config(&up.url());
            (Proxy::with_config(&toml).await, toml)
        }
        Kind::S3 => {
            let server = S3Server::start().await;
            // Cold blobs copied, then redirected: what `full_pull` expects over S3.
            let toml = local_s3_config(&up.url(), &server, "stream_misses = false");
            (Proxy::with_s3_config(&toml, server).await, toml)
        }
    }
}

/// A cache over the proxy's store and on the proxy's clock, as `pullthrough gc` (another
/// process) would open it.
async fn gc_cache(proxy: &Proxy, toml: &str) -> Arc<Cache> {
    let (config, store): (Config, Arc<dyn Store>) = match &proxy.s3 {
        Some(s3) => {
            let (config, store) = s3.configured_store(toml).await;
            (config, Arc::new(store))
        }
        None => {
            let settings = Settings {
                store: Some(proxy.root().to_string_lossy().into_owned()),
                ..Settings::default()
            };
            let config = Config::from_toml(&settings, toml).unwrap();
            let store = pullthrough::open_existing_store(&config).await.unwrap();
            (config, store)
        }
    };
    Cache::with_services(config, store, Arc::clone(&proxy.clock), Services::default()).unwrap()
}

/// A proxy with fresh memory over the same store, its clock moved on by `advanced`.
async fn fresh(proxy: &Proxy, toml: &str, advanced: Duration) -> Proxy {
    let p = match proxy.s3 {
        Some(_) => proxy.sibling_s3(toml).await,
        None => proxy.sibling(toml).await,
    };
    p.advance(advanced);
    p
}

/// Every object in the store: (key, size, modified).
async fn walk(cache: &Cache) -> Vec<(String, u64, u64)> {
    let mut all: Vec<_> = cache
        .store()
        .walk("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size, o.modified_ms))
        .collect();
    all.sort();
    all
}

async fn keys_of(cache: &Cache) -> BTreeSet<String> {
    walk(cache).await.into_iter().map(|(k, _, _)| k).collect()
}

fn blob_key(digest: &str) -> String {
    format!("blobs/{}", digest.replace(':', "/"))
}

/// What a full pull of `img` stores under blobs/.
fn pulled_blobs(img: &MultiArch) -> Vec<String> {
    let mut all = vec![img.index.digest.clone(), img.amd64.digest.clone()];
    all.extend(img.amd64.blob_digests());
    all
}

/// `verify` finds nothing wrong: no bad blob, nothing strange, no dangling reference.
async fn assert_verifies(cache: &Cache) {
    let report = pullthrough::store::verify::verify(cache.store().as_ref())
        .await
        .unwrap();
    assert!(
        report.bad.is_empty() && report.strange.is_empty() && report.dangling.is_empty(),
        "{report:?}"
    );
}

async fn run_gc(cache: &Cache, options: GcOptions) -> GcReport {
    gc(cache, &options).await.unwrap()
}

fn removed_keys(report: &GcReport) -> BTreeSet<String> {
    report.removed.iter().map(|r| r.key.clone()).collect()
}

// ---------------------------------------------------------------------------------------------

async fn keeps_a_live_image_and_removes_an_expired_one(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let old = push_oci_index(&up, "team/old", "v1", 1);
    let live = push_oci_index(&up, "team/live", "v1", 2);
    let (proxy, toml) = start(kind, &up).await;
    full_pull(&proxy, "team/old", "v1", &old).await;
    full_pull(&proxy, "team/live", "v1", &live).await;
    // A month on, only team/live's tag is pulled again: its pointer is live, and everything
    // else of the image (markers pulled a month ago) stays only because the tag reaches it.
    proxy.advance(31 * DAY);
    assert_manifest(proxy.manifest("team/live", "v1").await, &live.index).await;

    let cache = gc_cache(&proxy, &toml).await;
    let report = run_gc(&cache, GcOptions::default()).await;
    let left = keys_of(&cache).await;
    for d in pulled_blobs(&old) {
        assert!(
            !left.contains(&blob_key(&d)),
            "{d} of the expired image stayed"
        );
    }
    for d in pulled_blobs(&live) {
        assert!(left.contains(&blob_key(&d)), "{d} of the live image went");
        let marker = format!("repos/local/team/live/_digests/{}", d.replace(':', "/"));
        assert!(left.contains(&marker), "{marker} went");
    }
    assert!(
        !left.iter().any(|k| k.starts_with("repos/local/team/old/")),
        "{left:?}"
    );
    assert_eq!(report.removed_by_kind["tags"], 1);
    assert_eq!(report.removed_by_kind["markers"], 5);
    assert_eq!(report.removed_by_kind["blobs"], 5);
    assert_eq!(report.kept_blobs, 5);
    assert_verifies(&cache).await;

    // A process with cold memory: the live image costs no upstream request, the collected one
    // refills from the upstream.
    let after = fresh(&proxy, &toml, 31 * DAY).await;
    up.clear_requests();
    full_pull(&after, "team/live", "v1", &live).await;
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());
    full_pull(&after, "team/old", "v1", &old).await;
    assert!(up.count("GET", "/blobs/") >= 3, "{:?}", up.request_lines());
    assert_verifies(&cache).await;
}

#[tokio::test]
async fn gc_keeps_a_live_multi_arch_image_and_removes_an_expired_one_fs() {
    keeps_a_live_image_and_removes_an_expired_one(Kind::Fs).await;
}

#[tokio::test]
async fn gc_keeps_a_live_multi_arch_image_and_removes_an_expired_one_s3() {
    keeps_a_live_image_and_removes_an_expired_one(Kind::S3).await;
}

async fn shared_blobs_stay(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    // The same image in two repositories: every blob is shared.
    let a = push_oci_index(&up, "team/a", "v1", 5);
    let b = push_oci_index(&up, "team/b", "v1", 5);
    assert_eq!(a.index.digest, b.index.digest);
    let (proxy, toml) = start(kind, &up).await;
    full_pull(&proxy, "team/a", "v1", &a).await;
    proxy.advance(31 * DAY);
    full_pull(&proxy, "team/b", "v1", &b).await;

    let cache = gc_cache(&proxy, &toml).await;
    let report = run_gc(&cache, GcOptions::default()).await;
    let left = keys_of(&cache).await;
    for d in pulled_blobs(&a) {
        assert!(left.contains(&blob_key(&d)), "shared {d} went");
    }
    assert!(!left.iter().any(|k| k.starts_with("repos/local/team/a/")));
    assert_eq!(report.removed_by_kind.get("blobs"), None, "{report:?}");
    assert_verifies(&cache).await;

    let after = fresh(&proxy, &toml, 31 * DAY).await;
    up.clear_requests();
    full_pull(&after, "team/b", "v1", &b).await;
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());
    // team/a's bytes are still here: the upstream only confirms them, nothing is copied again.
    full_pull(&after, "team/a", "v1", &a).await;
    assert_eq!(up.count("GET", "/blobs/"), 0, "{:?}", up.request_lines());
}

#[tokio::test]
async fn a_blob_shared_by_a_live_and_an_expired_repository_stays_fs() {
    shared_blobs_stay(Kind::Fs).await;
}

#[tokio::test]
async fn a_blob_shared_by_a_live_and_an_expired_repository_stays_s3() {
    shared_blobs_stay(Kind::S3).await;
}

async fn racing_fills_lose_nothing(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let new = push_oci_index(&up, "team/new", "v1", 8);
    let (proxy, toml) = start(kind, &up).await;
    let cache = gc_cache(&proxy, &toml).await;
    // Things to collect (pulled in 1970), whose blobs were written just now.
    write_expired(cache.store().as_ref(), 200).await;
    // A fill that has written its object and not yet its marker.
    let bytes = blob_bytes(9, 4096);
    let orphan = keys::blob(&Digest::sha256_of(&bytes));
    cache
        .store()
        .put(&orphan, bytes, "application/octet-stream")
        .await
        .unwrap();

    // gc runs while a client pulls an image never cached before: the pull's objects and the
    // unmarked blobs are younger than the grace period, or marked by the time blobs go.
    let (report, ()) = tokio::join!(
        run_gc(&cache, GcOptions::default()),
        full_pull(&proxy, "team/new", "v1", &new)
    );
    assert_eq!(report.removed_by_kind["tags"], 200, "{report:?}");
    assert_eq!(report.removed_by_kind.get("blobs"), None, "{report:?}");
    let left = keys_of(&cache).await;
    assert!(left.contains(orphan.as_str()));
    for d in pulled_blobs(&new) {
        assert!(left.contains(&blob_key(&d)), "{d} of the racing pull went");
    }
    assert_verifies(&cache).await;
    let after = fresh(&proxy, &toml, Duration::ZERO).await;
    up.clear_requests();
    full_pull(&after, "team/new", "v1", &new).await;
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());

    // Past the grace period, what no marker names goes; the pulled image stays.
    proxy.advance(Duration::from_secs(2 * 3600));
    let report = run_gc(&cache, GcOptions::default()).await;
    assert_eq!(report.removed_by_kind["blobs"], 201, "{report:?}");
    assert!(removed_keys(&report).contains(orphan.as_str()));
    let left = keys_of(&cache).await;
    for d in pulled_blobs(&new) {
        assert!(left.contains(&blob_key(&d)), "{d} went");
    }
    assert_verifies(&cache).await;
}

#[tokio::test]
async fn gc_racing_a_fill_loses_nothing_fs() {
    racing_fills_lose_nothing(Kind::Fs).await;
}

#[tokio::test]
async fn gc_racing_a_fill_loses_nothing_s3() {
    racing_fills_lose_nothing(Kind::S3).await;
}

async fn dry_run_changes_nothing(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let old = push_oci_index(&up, "team/old", "v1", 11);
    let shared = push_oci_index(&up, "team/shared", "v1", 11);
    let live = push_oci_index(&up, "team/live", "v1", 12);
    let (proxy, toml) = start(kind, &up).await;
    full_pull(&proxy, "team/old", "v1", &old).await;
    proxy.advance(31 * DAY);
    full_pull(&proxy, "team/live", "v1", &live).await;
    full_pull(&proxy, "team/shared", "v1", &shared).await;
    let cache = gc_cache(&proxy, &toml).await;

    let before = walk(&cache).await;
    let dry = run_gc(
        &cache,
        GcOptions {
            dry_run: true,
            ..GcOptions::default()
        },
    )
    .await;
    assert!(dry.dry_run);
    assert_eq!(walk(&cache).await, before, "a dry run changed the store");
    assert!(!dry.removed.is_empty());
    assert_eq!(
        dry.removed_bytes,
        dry.removed.iter().map(|r| r.bytes).sum::<u64>()
    );

    let real = run_gc(&cache, GcOptions::default()).await;
    assert_eq!(removed_keys(&real), removed_keys(&dry));
    assert_eq!(real.removed, dry.removed);
    let after: BTreeSet<String> = keys_of(&cache).await;
    let expected: BTreeSet<String> = before
        .into_iter()
        .map(|(k, _, _)| k)
        .filter(|k| !removed_keys(&dry).contains(k))
        .collect();
    assert_eq!(after, expected);
    assert_verifies(&cache).await;
}

#[tokio::test]
async fn dry_run_changes_nothing_and_lists_what_a_real_run_removes_fs() {
    dry_run_changes_nothing(Kind::Fs).await;
}

#[tokio::test]
async fn dry_run_changes_nothing_and_lists_what_a_real_run_removes_s3() {
    dry_run_changes_nothing(Kind::S3).await;
}

async fn max_size_evicts_least_recently_pulled(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let imgs: Vec<MultiArch> = (0..3)
        .map(|i| push_oci_index(&up, &format!("team/app{i}"), "v1", 20 + i))
        .collect();
    let (proxy, toml) = start(kind, &up).await;
    for (i, img) in imgs.iter().enumerate() {
        full_pull(&proxy, &format!("team/app{i}"), "v1", img).await;
        proxy.advance(DAY);
    }
    let cache = gc_cache(&proxy, &toml).await;
    let sizes: std::collections::HashMap<String, u64> = walk(&cache)
        .await
        .into_iter()
        .map(|(k, size, _)| (k, size))
        .collect();
    let bytes =
        |img: &MultiArch| -> u64 { pulled_blobs(img).iter().map(|d| sizes[&blob_key(d)]).sum() };
    let report = run_gc(
        &cache,
        GcOptions {
            max_size: Some(bytes(&imgs[1]) + bytes(&imgs[2])),
            ..GcOptions::default()
        },
    )
    .await;
    assert!(report.evicted_roots > 0, "{report:?}");
    assert_eq!(report.kept_blob_bytes, bytes(&imgs[1]) + bytes(&imgs[2]));
    let left = keys_of(&cache).await;
    for d in pulled_blobs(&imgs[0]) {
        assert!(
            !left.contains(&blob_key(&d)),
            "the oldest image's {d} stayed"
        );
    }
    for img in &imgs[1..] {
        for d in pulled_blobs(img) {
            assert!(left.contains(&blob_key(&d)), "a newer image's {d} went");
        }
    }
    assert_verifies(&cache).await;
}

#[tokio::test]
async fn max_size_evicts_the_least_recently_pulled_first_fs() {
    max_size_evicts_least_recently_pulled(Kind::Fs).await;
}

#[tokio::test]
async fn max_size_evicts_the_least_recently_pulled_first_s3() {
    max_size_evicts_least_recently_pulled(Kind::S3).await;
}

async fn ls_shows_what_a_pull_cached(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 30);
    let (proxy, toml) = start(kind, &up).await;
    full_pull(&proxy, "team/app", "v1", &img).await;
    let cache = gc_cache(&proxy, &toml).await;

    let all = ls(&cache, None).await.unwrap();
    assert_eq!(all.repositories.len(), 1, "{all:?}");
    let repo = &all.repositories[0];
    assert_eq!(
        (repo.upstream.as_str(), repo.repo.as_str()),
        ("local", "team/app")
    );
    assert_eq!((repo.tags, repo.digests), (1, 5));
    assert_eq!(
        repo.bytes,
        img.index.size()
            + img.amd64.size()
            + walk(&cache)
                .await
                .iter()
                .filter(|(k, _, _)| img.amd64.blob_digests().iter().any(|d| *k == blob_key(d)))
                .map(|(_, s, _)| s)
                .sum::<u64>()
    );
    assert!(repo.last_pulled.is_some());
    assert!(all.repository.is_none());

    let one = ls(&cache, Some("team/app")).await.unwrap();
    let detail = one.repository.expect("the repository's detail");
    assert_eq!(detail.tags.len(), 1);
    assert_eq!(detail.tags[0].tag, "v1");
    assert_eq!(detail.tags[0].digest, img.index.digest);
    assert_eq!(detail.tags[0].size, img.index.size());
    let by_digest = |d: &str| detail.digests.iter().find(|e| e.digest == d).unwrap();
    assert_eq!(
        by_digest(&img.amd64.digest).media_type.as_deref(),
        Some(img.amd64.media_type.as_str())
    );
    assert_eq!(by_digest(&img.amd64.blob_digests()[1]).media_type, None);
    // A name the way a client pulls it; an uncached one lists empty.
    let none = ls(&cache, Some("team/nothing")).await.unwrap();
    assert!(none.repository.unwrap().tags.is_empty());
    assert!(ls(&cache, Some("Not/A/Name")).await.is_err());
}

#[tokio::test]
async fn ls_shows_what_a_pull_cached_fs() {
    ls_shows_what_a_pull_cached(Kind::Fs).await;
}

#[tokio::test]
async fn ls_shows_what_a_pull_cached_s3() {
    ls_shows_what_a_pull_cached(Kind::S3).await;
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// Writes `n` expired chains (blob, marker, tag pointer, all last pulled in 1970) into `store`,
/// object → marker → pointer as the cache does.
async fn write_expired(store: &dyn Store, n: usize) {
    futures_util::stream::iter((0..n).map(|i| async move {
        let bytes = Bytes::from(format!("expired object {i}"));
        let digest = Digest::sha256_of(&bytes);
        let repo = RepoName::parse(&format!("junk/r{}", i % 10)).unwrap();
        let size = bytes.len() as u64;
        store
            .put(&keys::blob(&digest), bytes, "application/octet-stream")
            .await
            .unwrap();
        let marker = serde_json::json!({ "size": size, "lastPulled": 0 });
        store
            .put(
                &keys::marker("local", &repo, &digest),
                serde_json::to_vec(&marker).unwrap().into(),
                "application/json",
            )
            .await
            .unwrap();
        let pointer = serde_json::json!({
            "digest": digest.to_string(), "mediaType": OCI_MANIFEST, "size": size,
            "checkedAt": 0, "lastPulled": 0,
        });
        let tag = Tag::parse(&format!("t{i}")).unwrap();
        store
            .put(
                &keys::tag("local", &repo, &tag),
                serde_json::to_vec(&pointer).unwrap().into(),
                "application/json",
            )
            .await
            .unwrap();
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
}

/// Runs `pullthrough gc --grace 0s <args>` and SIGKILLs it once it logs the removal of a key
/// containing `at`. Returns whether it was killed (false: it finished first).
fn gc_killed_at(args: &[&str], env: &[(&str, &str)], at: &str) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullthrough"))
        .args(["gc", "--grace", "0s"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pullthrough gc");
    let stdout = child.stdout.take().expect("stdout");
    let mut killed = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("gc: removing") && line.contains(at) {
            let _ = child.kill(); // SIGKILL
            killed = true;
            break;
        }
    }
    let _ = child.wait();
    killed
}

async fn interrupted_gc_leaves_a_consistent_store(kind: Kind) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let live = push_oci_index(&up, "team/live", "v1", 40);
    let (proxy, toml) = start(kind, &up).await;
    full_pull(&proxy, "team/live", "v1", &live).await;
    let cache = gc_cache(&proxy, &toml).await;
    // Enough that deleting them takes a while (S3 here is slower to fill: fewer).
    let count = match kind {
        Kind::Fs => 1500,
        Kind::S3 => 600,
    };
    write_expired(cache.store().as_ref(), count).await;
    let before = keys_of(&cache).await.len();

    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &toml);
    let store_arg = proxy.root().to_string_lossy().into_owned();
    let (args, env): (Vec<&str>, Vec<(&str, &str)>) = match kind {
        Kind::Fs => (
            vec![
                "--store",
                store_arg.as_str(),
                "--config",
                config.to_str().unwrap(),
            ],
            vec![],
        ),
        Kind::S3 => (
            crate::support::s3::binary_args(&config).to_vec(),
            crate::support::s3::AWS_ENV.to_vec(),
        ),
    };
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The binary runs off this runtime's threads: the S3 server is served by them.
    let binary = |cmd: &'static str, extra: Option<&'static str>| {
        let (args, env) = (args.clone(), env.clone());
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = std::iter::once(cmd)
                .chain(args.iter().map(String::as_str))
                .collect();
            match extra {
                Some(at) => (gc_killed_at(&args[1..], &env, at), None),
                None => (true, Some(run(&args, &env))),
            }
        })
    };
    let verify = || async {
        let (_, ran) = binary("verify", None).await.unwrap();
        let ran = ran.unwrap();
        assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
        assert!(ran.stdout.contains(" 0 bad, 0 strange"), "{}", ran.stdout);
    };
    let junk = |keys: &BTreeSet<String>, kind: &str| {
        keys.iter()
            .filter(|k| k.contains(kind) && !k.contains("team/live"))
            .filter(|k| !pulled_blobs(&live).iter().any(|d| **k == blob_key(d)))
            .count()
    };

    // Killed among the markers (pointers gone, markers half), then among the blobs.
    for at in ["/_digests/", "blobs/"] {
        let (killed, _) = binary("gc", Some(at)).await.unwrap();
        assert!(killed, "gc finished before {at}");
        let left = keys_of(&cache).await;
        assert!(left.len() < before, "nothing was removed before {at}");
        assert!(
            junk(
                &left,
                if at == "blobs/" {
                    "blobs/"
                } else {
                    "/_digests/"
                }
            ) > 0,
            "gc was not interrupted midway through {at}"
        );
        verify().await;
    }
    // The live image pulls from the store alone (by digest: this test may outlast the tag's
    // TTL, after which a tag is revalidated with one upstream HEAD), and a whole gc ends the job.
    let after = fresh(&proxy, &toml, Duration::ZERO).await;
    up.clear_requests();
    full_pull(&after, "team/live", &live.index.digest, &live).await;
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());
    let (_, ran) = binary("gc", None).await.unwrap();
    let ran = ran.unwrap();
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("gc: removed"), "{}", ran.stdout);
    verify().await;
    let left = keys_of(&cache).await;
    assert!(!left.iter().any(|k| k.contains("/junk/")), "{left:?}");
    for d in pulled_blobs(&live) {
        assert!(left.contains(&blob_key(&d)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_gc_leaves_a_store_verify_accepts_fs() {
    interrupted_gc_leaves_a_consistent_store(Kind::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_gc_leaves_a_store_verify_accepts_s3() {
    interrupted_gc_leaves_a_consistent_store(Kind::S3).await;
}

#[test]
fn gc_refuses_a_retention_under_two_hours_and_dry_runs_print_would_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    std::fs::create_dir_all(&store).unwrap();
    let store = store.to_str().unwrap();
    let ran = run(&["gc", "--older-than", "1h", "--store", store], &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("2h"), "{}", ran.stderr);
    let ran = run(&["gc", "--max-size", "lots", "--store", store], &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);

    // One orphan blob, old enough: a dry run names it and leaves it.
    let blob = dir.path().join("data/blobs/sha256");
    std::fs::create_dir_all(&blob).unwrap();
    let digest = sha256(b"orphan");
    let path = blob.join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, b"orphan").unwrap();
    let ran = run(&["gc", "--grace", "0s", "--dry-run", "--store", store], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains(&format!("would remove {}", blob_key(&digest))),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("gc: would remove 1 objects"),
        "{}",
        ran.stdout
    );
    assert!(path.exists());
    let ran = run(&["gc", "--grace", "0s", "--store", store], &[]);
    assert!(
        ran.stdout.contains("removed blobs/sha256/"),
        "{}",
        ran.stdout
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn ls_prints_a_table_of_repositories_and_of_one_repository() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 31);
    let (proxy, toml) = start(Kind::Fs, &up).await;
    full_pull(&proxy, "team/app", "v1", &img).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &toml);
    let store = proxy.root().to_string_lossy().into_owned();
    let args = [
        "--store",
        store.as_str(),
        "--config",
        config.to_str().unwrap(),
    ];
    let ran = run(&[&["ls"][..], &args[..]].concat(), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.starts_with("REPOSITORY"), "{}", ran.stdout);
    assert!(ran.stdout.contains("local/team/app"), "{}", ran.stdout);
    let ran = run(&[&["ls", "team/app"][..], &args[..]].concat(), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains(&img.index.digest), "{}", ran.stdout);
    assert!(ran.stdout.contains("v1 "), "{}", ran.stdout);
    assert!(ran.stdout.contains(&img.amd64.media_type), "{}", ran.stdout);
    // A name no pull could resolve is bad input (exit 2), named, like purge's and prefetch's.
    for (repo, says) in [
        ("registry.example.com/team/app", "no upstream named"),
        ("Bad/Name", "bad reference \"Bad/Name\""),
    ] {
        let ran = run(&[&["ls", repo][..], &args[..]].concat(), &[]);
        assert_eq!(ran.code, Some(2), "{repo}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{repo}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("bad reference"),
            "{repo}: {}",
            ran.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The walk, on both stores
// ---------------------------------------------------------------------------------------------

async fn walk_lists_every_object(store: &dyn Store) {
    let d = Digest::sha256_of(b"walked");
    let repo = RepoName::parse("team/app").unwrap();
    let tag = keys::tag("local", &repo, &Tag::parse("v1").unwrap());
    let marker = keys::marker("local", &repo, &d);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (key, len) in [(&keys::blob(&d), 6), (&tag, 3), (&marker, 2)] {
        store
            .put(key, Bytes::from(vec![b'x'; len]), "application/json")
            .await
            .unwrap();
    }
    let mut all = store.walk("").await.unwrap();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let got: Vec<(&str, u64)> = all.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let blob = keys::blob(&d);
    let mut want = vec![(blob.as_str(), 6), (tag.as_str(), 3), (marker.as_str(), 2)];
    want.sort();
    assert_eq!(got, want);
    for o in &all {
        // S3 keeps whole seconds.
        assert!(o.modified_ms + 2_000 >= start, "{o:?}");
        assert!(o.modified_ms <= start + 60_000, "{o:?}");
    }
    let repos = store.walk(keys::REPOS_WALK).await.unwrap();
    assert_eq!(repos.len(), 2);
    let one = store
        .walk(&keys::repository_walk("local", &repo))
        .await
        .unwrap();
    assert_eq!(one.len(), 2);
    assert!(store.walk("nothing/here").await.unwrap().is_empty());
    store.delete(&tag).await.unwrap();
    store.delete(&tag).await.unwrap(); // absent: not an error
    assert_eq!(store.walk(keys::REPOS_WALK).await.unwrap().len(), 1);
}

#[tokio::test]
async fn walk_lists_every_object_and_skips_temporary_files_fs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    std::fs::write(dir.path().join(".tmp/123-abc-0"), b"half").unwrap();
    walk_lists_every_object(&store).await;
}

#[tokio::test]
async fn walk_lists_every_object_under_a_prefix_and_across_pages_s3() {
    let server = S3Server::start().await;
    let store = server.store("pre", S3Settings::default()).await;
    walk_lists_every_object(&store).await;
    // More objects than one ListObjectsV2 page (1,000).
    futures_util::stream::iter((0..1005).map(|i| {
        let store = &store;
        async move {
            let d = Digest::sha256_of(format!("page {i}").as_bytes());
            store
                .put(
                    &keys::blob(&d),
                    Bytes::from_static(b"p"),
                    "application/json",
                )
                .await
                .unwrap();
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
    let all = store.walk(keys::BLOBS_WALK).await.unwrap();
    assert_eq!(all.len(), 1006);
    assert!(all.iter().all(|o| o.key.starts_with("blobs/sha256/")));
    assert!(server.count("ListObjectsV2") >= 2);
}

#[test]
fn verify_reports_a_pointer_without_marker_and_a_marker_without_blob() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(b"gone");
    let write = |key: &pullthrough::store::Key, text: String| {
        let path = root.join(key.as_str());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let pointer =
        format!(r#"{{"digest":"{digest}","mediaType":"{OCI_MANIFEST}","size":4,"checkedAt":0}}"#);
    write(
        &keys::tag("local", &repo, &Tag::parse("v1").unwrap()),
        pointer,
    );
    let store = root.to_str().unwrap();
    let ran = run(&["verify", "--store", store], &[]);
    assert_eq!(ran.code, Some(1), "{}", ran.stdout);
    assert!(
        ran.stdout.contains(
            "DANGLING repos/local/team/app/_tags/v1: names repos/local/team/app/_digests/sha256/"
        ),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("1 references: 1 bad"), "{}", ran.stdout);

    write(
        &keys::marker("local", &repo, &digest),
        r#"{"size":4}"#.to_owned(),
    );
    let ran = run(&["verify", "--store", store], &[]);
    assert_eq!(ran.code, Some(1), "{}", ran.stdout);
    assert!(
        ran.stdout.contains(&format!(
            "DANGLING repos/local/team/app/_digests/sha256/{}: names {}",
            digest.hex(),
            keys::blob(&digest)
        )),
        "{}",
        ran.stdout
    );
    write(&keys::blob(&digest), "gone".to_owned());
    let ran = run(&["verify", "--store", store], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("2 references: 0 bad, 0 strange"),
        "{}",
        ran.stdout
    );
}
