//! The cache's side of the lifecycle, on both stores: last-pulled times written off the request
//! path (at most once an hour per document, never recreating what was removed), memories that
//! heal after another process removed what they remember, `purge` and `prefetch` (in process
//! and through the real binary beside a live server).

use std::time::Duration;

use pullthrough::cache::{Marker, TRUSTED_FOR_MS, TagPointer};
use pullthrough::lifecycle::{LifecycleError, Platforms, prefetch, purge};
use pullthrough::oci::{Digest, RepoName, Tag};
use pullthrough::store::{Key, keys};

use crate::support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fs,
    S3,
}

const BOTH: [Kind; 2] = [Kind::Fs, Kind::S3];

/// A proxy over a fresh store. Over S3, cold blobs are copied then redirected, so that every
/// blob answer is a 307 and a marker exists once its first answer is out.
async fn start(kind: Kind, up: &FakeRegistry) -> Proxy {
    match kind {
        Kind::Fs => Proxy::start(up).await,
        Kind::S3 => Proxy::start_s3_with(up, "stream_misses = false").await,
    }
}

/// A proxy as configured by default: over S3, cold blobs stream from a spill file and are
/// marked only after their upload (what a prefetch must wait for).
async fn start_default(kind: Kind, up: &FakeRegistry) -> Proxy {
    match kind {
        Kind::Fs => Proxy::start(up).await,
        Kind::S3 => Proxy::start_s3(up).await,
    }
}

/// Another instance over the same store, with nothing in memory.
async fn sibling(kind: Kind, proxy: &Proxy, up: &FakeRegistry) -> Proxy {
    match kind {
        Kind::Fs => proxy.sibling(&local_config(&up.url())).await,
        Kind::S3 => {
            proxy
                .sibling_s3(&local_s3_config(&up.url(), proxy.s3(), ""))
                .await
        }
    }
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

fn tag_key(name: &str, tag: &str) -> Key {
    keys::tag("local", &repo(name), &Tag::parse(tag).unwrap())
}

fn marker_key(name: &str, digest: &str) -> Key {
    keys::marker("local", &repo(name), &Digest::parse(digest).unwrap())
}

fn blob_key(digest: &str) -> Key {
    keys::blob(&Digest::parse(digest).unwrap())
}

async fn doc<T: serde::de::DeserializeOwned>(proxy: &Proxy, key: &Key) -> Option<T> {
    let bytes = proxy.cache.store().get(key).await.unwrap()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

async fn exists(proxy: &Proxy, key: &Key) -> bool {
    proxy.cache.store().head(key).await.unwrap().is_some()
}

async fn pointer_pulled(proxy: &Proxy, name: &str, tag: &str) -> Option<u64> {
    doc::<TagPointer>(proxy, &tag_key(name, tag))
        .await
        .expect("pointer")
        .last_pulled
}

async fn marker_pulled(proxy: &Proxy, name: &str, digest: &str) -> Option<u64> {
    doc::<Marker>(proxy, &marker_key(name, digest))
        .await
        .expect("marker")
        .last_pulled
}

/// [`full_pull`], returning the `X-Pullthrough-Store-Calls` of each request (index by tag, amd64
/// by digest, then config and layers).
async fn pull_counting(proxy: &Proxy, name: &str, tag: &str, img: &MultiArch) -> Vec<u32> {
    let mut calls = Vec::new();
    for (reference, expected) in [(tag, &img.index), (img.amd64.digest.as_str(), &img.amd64)] {
        let resp = proxy.manifest(name, reference).await;
        calls.push(store_calls(&resp));
        assert_manifest(resp, expected).await;
    }
    for d in img.amd64.blob_digests() {
        let resp = proxy.get(&format!("/v2/{name}/blobs/{d}"), None).await;
        calls.push(store_calls(&resp));
        if proxy.s3.is_some() {
            follow_redirect(proxy, resp, &d).await;
        } else {
            assert_eq!(resp.status(), 200, "blob {d}");
            assert_eq!(sha256(&resp.bytes().await.unwrap()), d);
        }
    }
    calls
}

fn refs(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_warm_pull_costs_no_store_request_for_its_last_pulled_times() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 501);
        let proxy = start(kind, &up).await;
        pull_counting(&proxy, "team/app", "v1", &img).await;

        // Warm, within the hour: manifests from memory, blobs redirected (S3) or read (fs).
        let warm = pull_counting(&proxy, "team/app", "v1", &img).await;
        let blob_read = u32::from(kind == Kind::Fs);
        assert_eq!(
            warm,
            vec![0, 0, blob_read, blob_read, blob_read],
            "{kind:?}"
        );
        assert_eq!(
            proxy.cache.flush_touches().await,
            0,
            "{kind:?}: nothing due"
        );

        // Past the memory bound but within the hour: the documents are read again, no
        // last-pulled time is due.
        proxy.advance(Duration::from_secs(10 * 60));
        let not_due = pull_counting(&proxy, "team/app", "v1", &img).await;
        assert_eq!(proxy.cache.flush_touches().await, 0, "{kind:?}");
        // An hour later every document's time is due: the same requests cost the same.
        proxy.advance(Duration::from_secs(61 * 60));
        let due = pull_counting(&proxy, "team/app", "v1", &img).await;
        assert_eq!(due, not_due, "{kind:?}: touches added store requests");
        assert!(
            proxy.cache.flush_touches().await >= 4,
            "{kind:?}: the index marker (or pointer), the amd64 marker and the blobs' markers"
        );
    }
}

#[tokio::test]
async fn last_pulled_times_are_written_at_most_once_an_hour_and_never_recreate_a_document() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 502);
        let proxy = start(kind, &up).await;
        let t0 = proxy.cache.now_ms();
        full_pull(&proxy, "team/app", "v1", &img).await;
        let layer = img.amd64.blob_digests()[1].clone();
        // Written with the documents by the cold pull.
        assert!(pointer_pulled(&proxy, "team/app", "v1").await >= Some(t0));
        assert!(marker_pulled(&proxy, "team/app", &layer).await >= Some(t0));
        assert!(marker_pulled(&proxy, "team/app", &img.amd64.digest).await >= Some(t0));

        proxy.advance(Duration::from_secs(61 * 60));
        let t1 = proxy.cache.now_ms();
        full_pull(&proxy, "team/app", "v1", &img).await;
        proxy.cache.flush_touches().await;
        // The tag was revalidated (its pointer rewritten on the way); the markers were touched.
        assert!(pointer_pulled(&proxy, "team/app", "v1").await >= Some(t1));
        assert!(marker_pulled(&proxy, "team/app", &layer).await >= Some(t1));
        assert!(marker_pulled(&proxy, "team/app", &img.amd64.digest).await >= Some(t1));
        assert!(marker_pulled(&proxy, "team/app", &img.index.digest).await >= Some(t1));

        // Pulled again within the hour: nothing more is written.
        let before = doc::<Marker>(&proxy, &marker_key("team/app", &layer)).await;
        if kind == Kind::S3 {
            proxy.s3().clear_calls();
        }
        proxy.advance(Duration::from_secs(20 * 60));
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert_eq!(proxy.cache.flush_touches().await, 0, "{kind:?}");
        assert_eq!(
            doc::<Marker>(&proxy, &marker_key("team/app", &layer)).await,
            before
        );
        if kind == Kind::S3 {
            let puts: Vec<_> = proxy
                .s3()
                .calls()
                .into_iter()
                .filter(|c| c.op == "PutObject" && c.key.contains("/_digests/"))
                .collect();
            assert!(puts.is_empty(), "markers written again: {puts:?}");
        }

        // A document removed between a pull and the flush (gc, purge) stays removed.
        proxy.advance(Duration::from_secs(61 * 60));
        let resp = proxy
            .get(&format!("/v2/team/app/blobs/{layer}"), None)
            .await;
        assert!(resp.status().is_success() || resp.status() == 307);
        let key = marker_key("team/app", &layer);
        proxy.cache.store().delete(&key).await.unwrap();
        proxy.cache.flush_touches().await;
        assert!(
            !exists(&proxy, &key).await,
            "{kind:?}: the marker came back"
        );
    }
}

#[tokio::test]
async fn a_touched_marker_whose_blob_is_gone_is_removed_again() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 503);
        let proxy = start(kind, &up).await;
        full_pull(&proxy, "team/app", "v1", &img).await;
        let layer = img.amd64.blob_digests()[1].clone();
        proxy.advance(Duration::from_secs(61 * 60));
        let resp = proxy
            .head(&format!("/v2/team/app/blobs/{layer}"), None)
            .await;
        assert_eq!(resp.status(), 200);
        // gc removed the object meanwhile (its marker, in the store's order, would have gone
        // first; here only the object did).
        proxy.cache.store().delete(&blob_key(&layer)).await.unwrap();
        assert_eq!(proxy.cache.flush_touches().await, 0, "{kind:?}");
        assert!(
            !exists(&proxy, &marker_key("team/app", &layer)).await,
            "{kind:?}: a marker names a missing blob"
        );
    }
}

#[tokio::test]
async fn a_live_server_heals_after_another_process_removed_what_it_remembers() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 504);
        let proxy = start(kind, &up).await;
        full_pull(&proxy, "team/app", "v1", &img).await;

        // As gc would for an expired image: the pointer, then the markers, then the objects.
        let store = proxy.cache.store();
        let mut digests = vec![img.index.digest.clone(), img.amd64.digest.clone()];
        digests.extend(img.amd64.blob_digests());
        store.delete(&tag_key("team/app", "v1")).await.unwrap();
        for d in &digests {
            store.delete(&marker_key("team/app", d)).await.unwrap();
        }
        for d in &digests {
            store.delete(&blob_key(d)).await.unwrap();
        }

        // Past the memory bound (and the tag TTL), the server reads the store again and refills.
        proxy.advance(Duration::from_millis(TRUSTED_FOR_MS + 1_000));
        up.clear_requests();
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert_eq!(up.count_authorized("GET", "/manifests/v1"), 1, "{kind:?}");
        assert!(exists(&proxy, &tag_key("team/app", "v1")).await);
        for d in &digests {
            assert!(
                exists(&proxy, &marker_key("team/app", d)).await,
                "{kind:?}: marker of {d}"
            );
            assert!(exists(&proxy, &blob_key(d)).await, "{kind:?}: blob {d}");
        }
    }
}

#[tokio::test]
async fn a_marker_whose_blob_is_missing_on_the_filesystem_is_refilled_at_once() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 505);
    let proxy = Proxy::start(&up).await;
    full_pull(&proxy, "team/app", "v1", &img).await;
    let layer = img.amd64.blob_digests()[1].clone();
    proxy.cache.store().delete(&blob_key(&layer)).await.unwrap();
    up.clear_requests();
    let resp = proxy
        .get(&format!("/v2/team/app/blobs/{layer}"), None)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sha256(&resp.bytes().await.unwrap()), layer);
    assert_eq!(up.count("GET", &format!("/blobs/{layer}")), 1);
    assert!(proxy.has_blob(&layer));
}

#[tokio::test]
async fn purge_of_a_tag_a_digest_or_a_repository_makes_the_next_pull_go_upstream() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 506);
        let proxy = start(kind, &up).await;
        full_pull(&proxy, "team/app", "v1", &img).await;

        // A tag: its pointer only.
        let report = purge(&proxy.cache, &refs(&["team/app:v1"])).await.unwrap();
        assert_eq!(report.removed, vec![tag_key("team/app", "v1").to_string()]);
        assert_eq!(report.purged, vec!["local/team/app:v1"]);
        up.clear_requests();
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert_eq!(up.count("GET", "/manifests/v1"), 1, "{kind:?}");
        assert_eq!(up.count("GET", "/manifests/sha256:"), 0, "{kind:?}");

        // A digest: its marker (and any pointer naming it).
        let amd64 = format!("team/app@{}", img.amd64.digest);
        let report = purge(&proxy.cache, &refs(&[&amd64])).await.unwrap();
        assert!(
            report
                .removed
                .contains(&marker_key("team/app", &img.amd64.digest).to_string()),
            "{:?}",
            report.removed
        );
        up.clear_requests();
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert_eq!(
            up.count("GET", &format!("/manifests/{}", img.amd64.digest)),
            1,
            "{kind:?}"
        );
        assert_eq!(up.count("GET", "/manifests/v1"), 0, "{kind:?}");

        // The repository: every pointer and marker; the blobs stay for gc.
        let report = purge(&proxy.cache, &refs(&["local/team/app"]))
            .await
            .unwrap();
        assert_eq!(
            report.removed.len(),
            6,
            "a pointer, 5 markers: {:?}",
            report.removed
        );
        let first_marker = report
            .removed
            .iter()
            .position(|k| k.contains("/_digests/"))
            .unwrap();
        assert!(
            report.removed[..first_marker]
                .iter()
                .all(|k| k.contains("/_tags/")),
            "pointers first: {:?}",
            report.removed
        );
        for d in img.amd64.blob_digests() {
            assert!(
                exists(&proxy, &blob_key(&d)).await,
                "{kind:?}: blob {d} deleted"
            );
        }
        up.clear_requests();
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert_eq!(up.count("GET", "/manifests/v1"), 1, "{kind:?}");
        for d in img.amd64.blob_digests() {
            // Bytes still stored for another name are confirmed with a HEAD, not copied again.
            assert_eq!(
                up.count("HEAD", &format!("/blobs/{d}")) + up.count("GET", &format!("/blobs/{d}")),
                1,
                "{kind:?}: {d}"
            );
        }
    }
}

#[tokio::test]
async fn purging_one_repository_leaves_another_sharing_its_blobs_pullable_from_the_cache() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let a = push_oci_index(&up, "team/a", "v1", 507);
        let b = push_oci_index(&up, "team/b", "v1", 507);
        assert_eq!(a.amd64.blob_digests(), b.amd64.blob_digests());
        let proxy = start(kind, &up).await;
        full_pull(&proxy, "team/a", "v1", &a).await;
        full_pull(&proxy, "team/b", "v1", &b).await;

        purge(&proxy.cache, &refs(&["team/a"])).await.unwrap();
        up.clear_requests();
        full_pull(&proxy, "team/b", "v1", &b).await;
        assert!(
            up.requests().is_empty(),
            "{kind:?}: {:?}",
            up.request_lines()
        );
        full_pull(&proxy, "team/a", "v1", &a).await;
        assert!(up.count("GET", "/v2/team/a/manifests/v1") == 1, "{kind:?}");
    }
}

#[tokio::test]
async fn prefetch_of_a_multi_arch_tag_makes_the_following_pull_need_no_upstream_request() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 508);
        let sbom = push_artifact_with_subject(&up, "team/app", &img.amd64, 508);
        let proxy = start_default(kind, &up).await;
        let report = prefetch(&proxy.cache, &refs(&["team/app:v1"]), &Platforms::All)
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.warmed, vec!["local/team/app:v1"]);
        // The index, amd64, arm64, the attestation and the SBOM referring to amd64.
        assert_eq!(report.manifests, 5, "{kind:?}: {report:?}");
        // Config and two layers of each image, config and statement of the attestation, the
        // SBOM's empty config and its document.
        assert_eq!(report.blobs, 10, "{kind:?}: {report:?}");
        assert_eq!(report.fetched_blobs, 10, "{kind:?}: {report:?}");

        // A fresh instance over the same store (nothing in memory) pulls everything from it.
        let fresh = sibling(kind, &proxy, &up).await;
        up.clear_requests();
        full_pull(&fresh, "team/app", "v1", &img).await;
        for m in [&img.arm64, &img.attestation, &sbom] {
            assert_manifest(fresh.manifest("team/app", &m.digest).await, m).await;
        }
        for d in img
            .arm64
            .blob_digests()
            .into_iter()
            .chain(sbom.blob_digests())
        {
            let resp = fresh.get(&format!("/v2/team/app/blobs/{d}"), None).await;
            assert!(resp.status() == 200 || resp.status() == 307, "{d}");
        }
        let referrers = fresh
            .get(
                &format!("/v2/team/app/referrers/{}", img.amd64.digest),
                None,
            )
            .await;
        assert_eq!(referrers.status(), 200);
        assert!(
            up.requests().is_empty(),
            "{kind:?}: {:?}",
            up.request_lines()
        );

        // Again: everything is there already.
        let again = prefetch(&proxy.cache, &refs(&["team/app:v1"]), &Platforms::All)
            .await
            .unwrap();
        assert_eq!((again.blobs, again.fetched_blobs), (10, 0), "{kind:?}");
        assert_eq!(up.count("GET", "/blobs/"), 0, "{kind:?}");
    }
}

/// Tags `team/app:nested`: an index whose one child is `img`'s index (as some build tools
/// publish), its descriptor naming no platform.
fn push_nested_index(up: &FakeRegistry, img: &MultiArch) {
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": img.index.digest,
            "size": img.index.size(),
        }],
    });
    push_tagged(
        up,
        "team/app",
        "nested",
        "application/vnd.oci.image.index.v1+json",
        bytes::Bytes::from(serde_json::to_vec(&outer).unwrap()),
    );
}

/// An index whose child is itself an index (as some build tools publish) is followed to its
/// images; a pull through the outer tag then needs no upstream request.
#[tokio::test]
async fn prefetch_follows_an_index_nested_in_an_index() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 509);
        push_nested_index(&up, &img);
        let proxy = start_default(kind, &up).await;
        let report = prefetch(&proxy.cache, &refs(&["team/app:nested"]), &Platforms::All)
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        // The outer index, the inner one, amd64, arm64 and the attestation.
        assert_eq!(report.manifests, 5, "{kind:?}: {report:?}");
        assert_eq!(report.blobs, 8, "{kind:?}: {report:?}");

        // The inner index, its images and their blobs, by digest, from the store alone.
        let fresh = sibling(kind, &proxy, &up).await;
        up.clear_requests();
        for m in [&img.index, &img.amd64, &img.arm64, &img.attestation] {
            assert_manifest(fresh.manifest("team/app", &m.digest).await, m).await;
        }
        for d in img
            .amd64
            .blob_digests()
            .into_iter()
            .chain(img.arm64.blob_digests())
        {
            let resp = fresh.get(&format!("/v2/team/app/blobs/{d}"), None).await;
            assert!(resp.status() == 200 || resp.status() == 307, "{d}");
        }
        assert!(
            up.requests().is_empty(),
            "{kind:?}: {:?}",
            up.request_lines()
        );
    }
}

#[tokio::test]
async fn prefetch_of_one_platform_warms_only_that_platform() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 509);
        let proxy = start_default(kind, &up).await;
        let platforms: Platforms = "linux/amd64".parse().unwrap();
        let report = prefetch(&proxy.cache, &refs(&["team/app:v1"]), &platforms)
            .await
            .unwrap();
        assert_eq!(
            (report.manifests, report.blobs),
            (2, 3),
            "{kind:?}: {report:?}"
        );
        for d in img.arm64.blob_digests() {
            assert!(
                !exists(&proxy, &blob_key(&d)).await,
                "{kind:?}: arm64 blob {d}"
            );
        }
        up.clear_requests();
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert!(
            up.requests().is_empty(),
            "{kind:?}: {:?}",
            up.request_lines()
        );
        assert_manifest(
            proxy.manifest("team/app", &img.arm64.digest).await,
            &img.arm64,
        )
        .await;
        assert_eq!(
            up.count("GET", &format!("/manifests/{}", img.arm64.digest)),
            1
        );

        // With a variant: linux/arm64/v8 is the arm64 child.
        let platforms: Platforms = "linux/arm64/v8".parse().unwrap();
        let report = prefetch(&proxy.cache, &refs(&["team/app:v1"]), &platforms)
            .await
            .unwrap();
        assert_eq!(
            (report.manifests, report.blobs),
            (2, 3),
            "{kind:?}: {report:?}"
        );
        for d in img.arm64.blob_digests() {
            assert!(
                exists(&proxy, &blob_key(&d)).await,
                "{kind:?}: arm64 blob {d}"
            );
        }
    }
}

/// A platform asked for that the index does not offer fails its reference, naming what the
/// index offers, as `docker pull --platform` would; the platforms that are there are warmed all
/// the same. An index nested in an index is followed to the platforms it holds.
#[tokio::test]
async fn prefetch_of_a_platform_the_index_lacks_fails_naming_what_it_offers() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 511);
    push_nested_index(&up, &img);
    let proxy = start_default(Kind::Fs, &up).await;

    let platforms: Platforms = "linux/s390x".parse().unwrap();
    let report = prefetch(&proxy.cache, &refs(&["team/app:v1"]), &platforms)
        .await
        .unwrap();
    assert!(report.warmed.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let (reference, why) = &report.failed[0];
    assert_eq!(reference, "team/app:v1");
    assert!(why.contains("no manifest for linux/s390x"), "{why}");
    assert!(why.contains("linux/amd64, linux/arm64/v8"), "{why}");
    assert!(
        !why.contains("unknown"),
        "an attestation is no platform: {why}"
    );
    assert_eq!((report.manifests, report.blobs), (1, 0), "{report:?}");

    // One there, one not: the reference fails, and what is there is warmed.
    let platforms: Platforms = "linux/amd64,linux/s390x".parse().unwrap();
    let report = prefetch(&proxy.cache, &refs(&["team/app:v1"]), &platforms)
        .await
        .unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].1.contains("linux/s390x"), "{report:?}");
    assert_eq!((report.manifests, report.blobs), (2, 3), "{report:?}");
    for d in img.amd64.blob_digests() {
        assert!(exists(&proxy, &blob_key(&d)).await, "amd64 blob {d}");
    }

    // Through a nested index, the inner index's children carry the platforms.
    let platforms: Platforms = "linux/arm64".parse().unwrap();
    let report = prefetch(&proxy.cache, &refs(&["team/app:nested"]), &platforms)
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!((report.manifests, report.blobs), (3, 3), "{report:?}");
    for d in img.arm64.blob_digests() {
        assert!(exists(&proxy, &blob_key(&d)).await, "arm64 blob {d}");
    }
}

#[tokio::test]
async fn bad_references_and_platforms_change_nothing() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 510);
        let proxy = start(kind, &up).await;
        full_pull(&proxy, "team/app", "v1", &img).await;
        up.clear_requests();

        for bad in [
            "Team/App",
            "team/app:bad tag",
            "team/app@sha256:abc",
            "elsewhere.example/team/app",
            "",
        ] {
            let err = purge(&proxy.cache, &refs(&["team/app:v1", bad]))
                .await
                .unwrap_err();
            assert!(
                matches!(err, LifecycleError::BadReference { .. }),
                "{bad:?}: {err}"
            );
            let err = prefetch(
                &proxy.cache,
                &refs(&["team/other:v1", bad]),
                &Platforms::All,
            )
            .await
            .unwrap_err();
            assert!(
                matches!(err, LifecycleError::BadReference { .. }),
                "{bad:?}"
            );
        }
        assert!(exists(&proxy, &tag_key("team/app", "v1")).await, "{kind:?}");
        assert!(
            !exists(&proxy, &tag_key("team/other", "v1")).await,
            "{kind:?}"
        );
        assert!(up.requests().is_empty(), "{:?}", up.request_lines());

        for bad in [
            "",
            "linux",
            "linux/",
            "Linux/amd64",
            "all,linux/amd64",
            "a/b/c/d",
        ] {
            let err = bad.parse::<Platforms>().unwrap_err();
            assert!(matches!(err, LifecycleError::BadOption(_)), "{bad:?}");
        }
        assert_eq!(
            "linux/amd64, linux/arm64/v8".parse::<Platforms>().unwrap(),
            Platforms::Only(vec!["linux/amd64".into(), "linux/arm64/v8".into()])
        );
    }
}

/// `pullthrough prefetch` and `purge` as an operator runs them, beside a live server over the
/// same store (filesystem, then S3).
#[tokio::test]
async fn purge_and_prefetch_from_the_command_line_beside_a_live_server() {
    for kind in BOTH {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let img = push_oci_index(&up, "team/app", "v1", 511);
        let dir = tempfile::tempdir().unwrap();
        let (proxy, args, env): (Proxy, Vec<String>, Vec<(&str, &str)>) = match kind {
            Kind::Fs => {
                let proxy = Proxy::start(&up).await;
                let config = config_file(dir.path(), &local_config(&up.url()));
                let args = vec![
                    "--store".into(),
                    proxy.root().to_string_lossy().into_owned(),
                    "--config".into(),
                    config.to_string_lossy().into_owned(),
                ];
                (proxy, args, vec![])
            }
            Kind::S3 => {
                let server = s3::S3Server::start().await;
                let toml = local_s3_config(&up.url(), &server, "");
                let config = config_file(dir.path(), &toml);
                let args = s3::binary_args(&config).map(str::to_owned).to_vec();
                let proxy = Proxy::with_s3_config(&toml, server).await;
                (proxy, args, s3::AWS_ENV.to_vec())
            }
        };
        let cli = |command: &[&str]| {
            let mut all: Vec<String> = command.iter().map(|s| s.to_string()).collect();
            all.extend(args.iter().cloned());
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            tokio::task::spawn_blocking(move || {
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run(&all, &env)
            })
        };

        let out = cli(&["prefetch", "team/app:v1", "--platform", "linux/amd64"])
            .await
            .unwrap();
        assert_eq!(out.code, Some(0), "{kind:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("warmed local/team/app:v1"),
            "{}",
            out.stdout
        );
        // The live server, which never saw the image, pulls it from the store alone.
        up.clear_requests();
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert!(
            up.requests().is_empty(),
            "{kind:?}: {:?}",
            up.request_lines()
        );

        let out = cli(&["purge", "team/app:v1"]).await.unwrap();
        assert_eq!(out.code, Some(0), "{kind:?}: {}{}", out.stdout, out.stderr);
        let pointer = tag_key("team/app", "v1").to_string();
        assert!(
            out.stdout.contains(&format!("removed {pointer}")),
            "{}",
            out.stdout
        );
        // The server trusts its memory for a bounded time, then goes upstream for the tag.
        proxy.advance(Duration::from_millis(TRUSTED_FOR_MS + 1_000));
        full_pull(&proxy, "team/app", "v1", &img).await;
        assert_eq!(up.count_authorized("GET", "/manifests/v1"), 1, "{kind:?}");

        // A reference the upstream does not have: reported, exit status 1.
        let out = cli(&["prefetch", "team/app:v1", "team/app:missing"])
            .await
            .unwrap();
        assert_eq!(out.code, Some(1), "{kind:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("FAILED team/app:missing"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("warmed local/team/app:v1"),
            "{}",
            out.stdout
        );

        // Bad input: nothing done, a message naming it.
        let out = cli(&["prefetch", "team/app:v1", "--platform", "linux"])
            .await
            .unwrap();
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(
            out.stderr.contains("bad platform \"linux\""),
            "{}",
            out.stderr
        );
        let out = cli(&["purge", "team/app:v1", "Bad/Name"]).await.unwrap();
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(
            out.stderr.contains("bad reference \"Bad/Name\""),
            "{}",
            out.stderr
        );
        assert!(exists(&proxy, &tag_key("team/app", "v1")).await);
    }
}

/// Over S3 a cold blob's readers get its last byte before the upload and the marker: a
/// `pullthrough prefetch` that exits must have waited for them, or its work is lost.
#[tokio::test]
async fn a_prefetch_over_s3_exits_only_once_its_uploads_are_published() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let layer = blob_bytes(512, 24 << 20);
    let layer_digest = up.put_blob("team/big", layer.clone());
    let config = bytes::Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
    let config_digest = up.put_blob("team/big", config.clone());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer.len()}],
    });
    let image = push_tagged(
        &up,
        "team/big",
        "v1",
        OCI_MANIFEST,
        serde_json::to_vec(&manifest).unwrap().into(),
    );
    let server = s3::S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = local_s3_config(&up.url(), &server, "");
    let config_path = config_file(dir.path(), &toml);
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["prefetch", "team/big:v1"];
        args.extend(s3::binary_args(&config_path));
        run(&args, &s3::AWS_ENV)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("1 manifests, 2 blobs (2 fetched now)"),
        "{}",
        out.stdout
    );
    assert!(
        server.has_blob(&layer_digest).await,
        "the layer was not uploaded"
    );
    let proxy = Proxy::with_s3_config(&toml, server).await;
    up.clear_requests();
    assert_manifest(proxy.manifest("team/big", "v1").await, &image).await;
    for d in [&config_digest, &layer_digest] {
        blob_via_redirect(&proxy, "team/big", d).await;
    }
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());
}

#[tokio::test]
async fn prefetch_of_a_repository_warms_its_latest_tag() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "latest", 513);
    let proxy = Proxy::start(&up).await;
    let report = prefetch(&proxy.cache, &refs(&["local/team/app"]), &Platforms::All)
        .await
        .unwrap();
    assert_eq!(report.warmed, vec!["local/team/app:latest"]);
    up.clear_requests();
    full_pull(&proxy, "team/app", "latest", &img).await;
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());
}
