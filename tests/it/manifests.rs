//! Manifests through the proxy: bytes are sacred, tags are pointers with a TTL, errors are OCI JSON.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;

async fn body_of(resp: reqwest::Response) -> Bytes {
    resp.bytes().await.expect("body")
}

#[tokio::test]
async fn oci_index_pulls_through_a_hub_like_upstream() {
    // Known failure 1: a proxy whose upstream Accept lacks the OCI index type gets a 404 from
    // Docker Hub and hands the client an HTML page.
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "grafana/mimir", "latest", 1);
    let proxy = Proxy::start(&up).await;

    let resp = proxy.manifest("grafana/mimir", "latest").await;
    assert_manifest(resp, &img.index).await;

    let manifest_gets: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/manifests/"))
        .collect();
    assert!(!manifest_gets.is_empty());
    for r in manifest_gets {
        let accept = r.accept.unwrap_or_default();
        for t in [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] {
            assert!(
                accept.contains(t),
                "upstream {} lacked {t}: {accept}",
                r.method
            );
        }
        assert!(
            !accept.contains("v1+prettyjws"),
            "schema1 must never be requested"
        );
    }
}

#[tokio::test]
async fn pull_by_tag_then_by_index_digest_and_child_digest() {
    // Known failure 2: the digest the client asks for must be the digest of what was stored.
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "library/alpine", "3.20", 2);
    let proxy = Proxy::start(&up).await;

    let by_tag = proxy.manifest("library/alpine", "3.20").await;
    assert_manifest(by_tag, &img.index).await;

    up.clear_requests();
    let by_index_digest = proxy.manifest("library/alpine", &img.index.digest).await;
    assert_manifest(by_index_digest, &img.index).await;
    assert!(
        up.requests().is_empty(),
        "a cached digest needs no upstream call"
    );

    for child in [&img.amd64, &img.arm64, &img.attestation] {
        let resp = proxy.manifest("library/alpine", &child.digest).await;
        assert_manifest(resp, child).await;
    }
    up.clear_requests();
    let again = proxy.manifest("library/alpine", &img.amd64.digest).await;
    assert_manifest(again, &img.amd64).await;
    assert!(
        up.requests().is_empty(),
        "pull by digest of a cached child needs no upstream call"
    );
}

#[tokio::test]
async fn docker_manifest_list_and_children_keep_their_bytes() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_docker_list(&up, "team/app", "v1", 3);
    let proxy = Proxy::start(&up).await;
    assert_manifest(proxy.manifest("team/app", "v1").await, &img.index).await;
    for child in [&img.amd64, &img.arm64] {
        let path = format!("/v2/team/app/manifests/{}", child.digest);
        assert_manifest(proxy.get(&path, Some(DOCKER_CLIENT_ACCEPT)).await, child).await;
    }
}

#[tokio::test]
async fn warm_pull_within_the_ttl_makes_zero_upstream_requests() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 4);
    let proxy = Proxy::start(&up).await;
    full_pull(&proxy, "team/app", "v1", &img).await;
    up.clear_requests();
    proxy.advance(Duration::from_secs(59));
    full_pull(&proxy, "team/app", "v1", &img).await;
    assert_eq!(
        up.requests().len(),
        0,
        "warm pull asked the upstream: {:?}",
        up.request_lines()
    );
}

#[tokio::test]
async fn after_the_ttl_a_warm_pull_makes_exactly_one_upstream_head() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 5);
    let proxy = Proxy::start(&up).await;
    full_pull(&proxy, "team/app", "v1", &img).await;
    up.clear_requests();
    proxy.advance(Duration::from_secs(61));
    full_pull(&proxy, "team/app", "v1", &img).await;
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{:?}", up.request_lines());
    assert_eq!(reqs[0].method, "HEAD");
    assert_eq!(reqs[0].path, "/v2/team/app/manifests/v1");
    // The HEAD refreshed the pointer: within the new TTL, nothing again.
    up.clear_requests();
    full_pull(&proxy, "team/app", "v1", &img).await;
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_moved_tag_is_followed_after_the_ttl() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let first = push_oci_index(&up, "team/app", "v1", 6);
    let proxy = Proxy::start(&up).await;
    assert_manifest(proxy.manifest("team/app", "v1").await, &first.index).await;
    let second = push_oci_index(&up, "team/app", "v1", 7);
    // Within the TTL the old answer stands.
    assert_manifest(proxy.manifest("team/app", "v1").await, &first.index).await;
    proxy.advance(Duration::from_secs(61));
    up.clear_requests();
    assert_manifest(proxy.manifest("team/app", "v1").await, &second.index).await;
    assert_eq!(up.count("HEAD", "/manifests/v1"), 1);
    assert_eq!(up.count("GET", "/manifests/v1"), 1);
    // The old index is still served by digest.
    let old = proxy.manifest("team/app", &first.index.digest).await;
    assert_manifest(old, &first.index).await;
}

#[tokio::test]
async fn upstream_failure_with_a_cached_tag_serves_it_stale_with_a_warning() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 8);
    let proxy = Proxy::start(&up).await;
    assert_manifest(proxy.manifest("team/app", "v1").await, &img.index).await;
    proxy.advance(Duration::from_secs(120));

    for fault in [
        Fault::Status(500),
        Fault::Status(503),
        Fault::TooManyRequests { retry_after: 30 },
        Fault::Stall(Duration::from_secs(5)),
        Fault::Html404,
    ] {
        let is_404 = matches!(fault, Fault::Html404);
        up.clear_faults();
        up.add_fault(FaultRule::new(fault).path("/manifests/"));
        let resp = proxy.manifest("team/app", "v1").await;
        if is_404 {
            // The upstream says the tag is gone: not an outage, so no stale answer; and its
            // HTML page never reaches the client.
            expect_oci_error(resp, 404, "MANIFEST_UNKNOWN").await;
            continue;
        }
        let warning = header(&resp, "warning").map(str::to_owned);
        assert_manifest(resp, &img.index).await;
        let warning = warning.expect("a stale answer carries a Warning header");
        assert!(
            warning.starts_with("299 - \"stale: local unreachable"),
            "{warning}"
        );
    }

    // The upstream gone entirely (connection refused): still served.
    up.clear_faults();
    up.shutdown();
    let resp = proxy.manifest("team/app", "v1").await;
    assert!(header(&resp, "warning").is_some());
    assert_manifest(resp, &img.index).await;
}

#[tokio::test]
async fn nothing_cached_and_upstream_down_gives_503_json_naming_the_upstream() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    up.shutdown();
    let msg = expect_oci_error(proxy.manifest("team/app", "v1").await, 503, "UNAVAILABLE").await;
    assert!(msg.contains("local"), "{msg}");
}

#[tokio::test]
async fn upstream_errors_without_a_cache_map_to_oci_errors() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 9);
    let proxy = Proxy::start(&up).await;
    let get = || proxy.manifest("team/app", "v1");

    up.add_fault(FaultRule::new(Fault::Html404).path("/manifests/").times(1));
    expect_oci_error(get().await, 404, "MANIFEST_UNKNOWN").await;

    up.add_fault(
        FaultRule::new(Fault::TooManyRequests { retry_after: 42 })
            .path("/manifests/")
            .times(1),
    );
    let resp = get().await;
    assert_eq!(header(&resp, "retry-after"), Some("42"));
    expect_oci_error(resp, 429, "TOOMANYREQUESTS").await;

    up.add_fault(
        FaultRule::new(Fault::Status(500))
            .path("/manifests/")
            .times(1),
    );
    let msg = expect_oci_error(get().await, 502, "UNAVAILABLE").await;
    assert!(msg.contains("local"), "{msg}");

    up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(5)))
            .path("/manifests/")
            .times(1),
    );
    let msg = expect_oci_error(get().await, 503, "UNAVAILABLE").await;
    assert!(msg.contains("timed out"), "{msg}");

    expect_oci_error(
        proxy.get("/v2/team/nothing/manifests/v1", None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert!(
        proxy.all_files().is_empty(),
        "failures stored something: {:?}",
        proxy.all_files()
    );
    // And the upstream, healthy again, is used.
    assert_eq!(get().await.status(), 200);
}

#[tokio::test]
async fn a_tampered_manifest_gives_502_and_stores_nothing() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 10);
    let proxy = Proxy::start(&up).await;

    up.add_fault(FaultRule::new(Fault::WrongDigestHeader).path("/manifests/"));
    expect_oci_error(proxy.manifest("team/app", "v1").await, 502, "UNAVAILABLE").await;
    up.clear_faults();

    up.add_fault(FaultRule::new(Fault::TamperBody).path("/manifests/"));
    let by_digest = format!("/v2/team/app/manifests/{}", img.amd64.digest);
    let msg = expect_oci_error(
        proxy.get(&by_digest, Some(DOCKER_CLIENT_ACCEPT)).await,
        502,
        "UNAVAILABLE",
    )
    .await;
    assert!(msg.contains("nothing stored"), "{msg}");
    let by_tag = expect_oci_error(proxy.manifest("team/app", "v1").await, 502, "UNAVAILABLE").await;
    assert!(by_tag.contains("hash"), "{by_tag}");

    up.clear_faults();
    up.add_fault(FaultRule::new(Fault::Truncate).path("/manifests/"));
    expect_oci_error(
        proxy.get(&by_digest, Some(DOCKER_CLIENT_ACCEPT)).await,
        502,
        "UNAVAILABLE",
    )
    .await;

    assert!(
        proxy.all_files().is_empty(),
        "stored after a bad answer: {:?}",
        proxy.all_files()
    );
    up.clear_faults();
    assert_manifest(
        proxy.get(&by_digest, Some(DOCKER_CLIENT_ACCEPT)).await,
        &img.amd64,
    )
    .await;
}

#[tokio::test]
async fn every_manifest_head_carries_length_and_digest() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 11);
    let proxy = Proxy::start(&up).await;
    let paths = [
        "/v2/team/app/manifests/v1".to_owned(),
        format!("/v2/team/app/manifests/{}", img.index.digest),
        format!("/v2/team/app/manifests/{}", img.arm64.digest),
    ];
    for (cold_or_warm, _) in [("cold", ()), ("warm", ())] {
        for (p, expected) in paths.iter().zip([&img.index, &img.index, &img.arm64]) {
            let resp = proxy.head(p, Some(DOCKER_CLIENT_ACCEPT)).await;
            assert_eq!(resp.status(), 200, "{cold_or_warm} {p}");
            assert_eq!(
                header(&resp, "content-length"),
                Some(expected.bytes.len().to_string().as_str()),
                "{cold_or_warm} {p}"
            );
            assert_eq!(
                header(&resp, "docker-content-digest"),
                Some(expected.digest.as_str())
            );
            assert_eq!(
                header(&resp, "content-type"),
                Some(expected.media_type.as_str())
            );
            assert!(body_of(resp).await.is_empty());
        }
    }
}

#[tokio::test]
async fn a_client_without_the_list_types_gets_what_docker_hub_would_answer() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let list = push_docker_list(&up, "team/dl", "v1", 12);
    let index = push_oci_index(&up, "team/oci", "v1", 13);
    let proxy = Proxy::start(&up).await;
    // Fill both first with a modern client.
    proxy.manifest("team/dl", "v1").await;
    proxy.manifest("team/oci", "v1").await;

    // A schema2-only client asking for a manifest list gets the linux/amd64 child.
    assert_manifest(
        proxy
            .get("/v2/team/dl/manifests/v1", Some(DOCKER_MANIFEST))
            .await,
        &list.amd64,
    )
    .await;
    // An OCI-manifest-only client asking for an OCI index gets the linux/amd64 child.
    assert_manifest(
        proxy
            .get("/v2/team/oci/manifests/v1", Some(OCI_MANIFEST))
            .await,
        &index.amd64,
    )
    .await;
    // A schema2-only client and an OCI index of OCI manifests: nothing it can take.
    let msg = expect_oci_error(
        proxy
            .get("/v2/team/oci/manifests/v1", Some(DOCKER_MANIFEST))
            .await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert!(msg.contains("OCI index"), "{msg}");
    // Accept absent: the stored document as is.
    assert_manifest(
        proxy.get("/v2/team/oci/manifests/v1", None).await,
        &index.index,
    )
    .await;
}

#[tokio::test]
async fn concurrent_cold_tag_requests_share_one_upstream_get() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 14);
    let proxy = std::sync::Arc::new(Proxy::start(&up).await);
    up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_millis(300)))
            .method("GET")
            .path("/manifests/v1")
            .times(1),
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = std::sync::Arc::clone(&proxy);
        tasks.push(tokio::spawn(
            async move { p.manifest("team/app", "v1").await },
        ));
    }
    for t in tasks {
        assert_manifest(t.await.unwrap(), &img.index).await;
    }
    assert_eq!(up.count_authorized("GET", "/manifests/v1"), 1);
}

#[tokio::test]
async fn manifests_over_the_size_limit_are_refused_and_not_stored() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let big = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"x":"{}"}}}}"#,
        "a".repeat(4000)
    );
    let digest = up.put_manifest("team/app", OCI_MANIFEST, Bytes::from(big));
    up.tag("team/app", "big", &digest);
    let proxy = Proxy::with_config(&local_config_with(&up.url(), "max_manifest_size = 2048")).await;
    let msg = expect_oci_error(
        proxy.get("/v2/team/app/manifests/big", None).await,
        502,
        "UNAVAILABLE",
    )
    .await;
    assert!(msg.contains("limit"), "{msg}");
    assert!(proxy.all_files().is_empty());
}

const SIGNED_SCHEMA1_FILE: &str = "tests/fixtures/realworld-manifests/real/ci-v2s1-signed.json";
/// Its digest as containers/image computes it (`TestDigest`): sha256 of the JWS payload.
const SIGNED_SCHEMA1_DIGEST: &str =
    "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000";

#[tokio::test]
async fn a_schema1_only_client_gets_the_upstream_answer_passed_through() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let bytes = Bytes::from(std::fs::read(SIGNED_SCHEMA1_FILE).unwrap());
    let schema1 = DOCKER_SCHEMA1_SIGNED;
    let pushed = push_tagged(&up, "team/old", "v1", schema1, bytes);
    assert_eq!(pushed.digest, SIGNED_SCHEMA1_DIGEST);
    let proxy = Proxy::start(&up).await;
    let resp = proxy.get("/v2/team/old/manifests/v1", Some(schema1)).await;
    assert_manifest(resp, &pushed).await;
    let r = up
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/manifests/"))
        .unwrap();
    assert_eq!(
        r.accept.as_deref(),
        Some(schema1),
        "schema1-only Accept is forwarded as is"
    );
    assert!(
        !proxy.root().join("repos/local/team/old/_tags/v1").exists(),
        "a schema1-only client's answer never moves a tag pointer"
    );
}

#[tokio::test]
async fn a_signed_schema1_manifest_is_known_by_its_payload_digest_though_resigned_on_every_get() {
    // Like distribution: every GET carries a fresh signature, the payload and digest stay.
    let up = FakeRegistry::start(FakeOptions {
        resign_schema1: true,
        ..FakeOptions::default()
    })
    .await;
    let original = Bytes::from(std::fs::read(SIGNED_SCHEMA1_FILE).unwrap());
    for repo in ["team/old", "team/other"] {
        let digest = up.put_manifest(repo, DOCKER_SCHEMA1_SIGNED, original.clone());
        assert_eq!(digest, SIGNED_SCHEMA1_DIGEST);
        up.tag(repo, "v1", &digest);
    }
    let proxy = Proxy::start(&up).await;
    let by_digest = format!("/v2/team/old/manifests/{SIGNED_SCHEMA1_DIGEST}");
    let check = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-type"), Some(DOCKER_SCHEMA1_SIGNED));
        assert_eq!(
            header(&resp, "docker-content-digest"),
            Some(SIGNED_SCHEMA1_DIGEST)
        );
        let body = body_of(resp).await;
        assert_ne!(sha256(&body), SIGNED_SCHEMA1_DIGEST);
        assert_eq!(
            manifest_digest(DOCKER_SCHEMA1_SIGNED, &body),
            SIGNED_SCHEMA1_DIGEST
        );
        body
    };

    // A schema1-only client (old docker, skopeo): by tag, then by the digest it was told.
    let schema1 = Some(DOCKER_SCHEMA1_SIGNED);
    let first = check(proxy.get("/v2/team/old/manifests/v1", schema1).await).await;
    assert_ne!(first, original, "the fake re-signs");
    up.clear_requests();
    let again = check(proxy.get(&by_digest, schema1).await).await;
    assert_eq!(again, first, "by digest: the stored document");
    let head = proxy.head(&by_digest, schema1).await;
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(SIGNED_SCHEMA1_DIGEST)
    );
    assert!(up.requests().is_empty(), "by digest, from the cache");

    // A modern client gets the same document by tag; the pointer holds within the TTL.
    check(proxy.manifest("team/old", "v1").await).await;
    up.clear_requests();
    check(proxy.manifest("team/old", "v1").await).await;
    assert!(up.requests().is_empty(), "a warm schema1 tag asks nothing");

    // A fresh instance: the marker's inline copy is accepted by its payload digest.
    let cold = proxy.sibling(&local_config(&up.url())).await;
    let resp = cold.get(&by_digest, schema1).await;
    assert_eq!(store_calls(&resp), 1);
    check(resp).await;
    assert!(up.requests().is_empty());

    // Another repository, by digest first: fetched upstream (new signature) and verified by
    // its payload.
    let other = format!("/v2/team/other/manifests/{SIGNED_SCHEMA1_DIGEST}");
    check(proxy.get(&other, schema1).await).await;
    assert_eq!(up.count_authorized("GET", "/v2/team/other/manifests/"), 1);
    proxy.assert_store_consistent();

    // The upstream's Docker-Content-Digest is checked against the payload too.
    let third = FakeRegistry::start(FakeOptions {
        resign_schema1: true,
        ..FakeOptions::default()
    })
    .await;
    let d = third.put_manifest("team/old", DOCKER_SCHEMA1_SIGNED, original.clone());
    third.tag("team/old", "v1", &d);
    third.add_fault(FaultRule::new(Fault::WrongDigestHeader));
    let proxy = Proxy::start(&third).await;
    expect_oci_error(
        proxy.get("/v2/team/old/manifests/v1", schema1).await,
        502,
        "UNAVAILABLE",
    )
    .await;
    assert!(proxy.all_files().is_empty());
}

#[tokio::test]
async fn real_world_manifests_come_back_byte_for_byte() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let expected: Vec<_> = realworld_manifests()
        .into_iter()
        .map(|(tag, media_type, bytes)| {
            let p = push_tagged(&up, "fixtures/real", &tag, &media_type, bytes);
            (tag, p)
        })
        .collect();
    let proxy = Proxy::start(&up).await;
    for (tag, p) in &expected {
        let accept = format!("{DOCKER_CLIENT_ACCEPT}, {}", p.media_type);
        let by_tag = proxy
            .get(&format!("/v2/fixtures/real/manifests/{tag}"), Some(&accept))
            .await;
        assert_manifest(by_tag, p).await;
        let by_digest = proxy
            .get(
                &format!("/v2/fixtures/real/manifests/{}", p.digest),
                Some(&accept),
            )
            .await;
        assert_manifest(by_digest, p).await;
        let head = proxy
            .head(&format!("/v2/fixtures/real/manifests/{tag}"), Some(&accept))
            .await;
        assert_eq!(
            header(&head, "content-length"),
            Some(p.bytes.len().to_string().as_str())
        );
    }
    proxy.assert_store_consistent();
}

#[tokio::test]
async fn warm_requests_stay_within_their_store_budgets() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 15);
    let proxy = Proxy::start(&up).await;
    full_pull(&proxy, "team/app", "v1", &img).await;
    let tag = "/v2/team/app/manifests/v1";
    let by_digest = format!("/v2/team/app/manifests/{}", img.amd64.digest);
    let blob = format!("/v2/team/app/blobs/{}", img.amd64.blob_digests()[0]);

    // Same process: tag pointers and immutable manifests come from memory.
    let resp = proxy.get(tag, Some(DOCKER_CLIENT_ACCEPT)).await;
    assert_eq!(store_calls(&resp), 0);
    let resp = proxy.get(&by_digest, Some(DOCKER_CLIENT_ACCEPT)).await;
    assert_eq!(store_calls(&resp), 0);

    // A fresh process over the same store (a restart, another Lambda instance): one read each.
    let cold = proxy.sibling(&local_config(&up.url())).await;
    up.clear_requests();
    let resp = cold.get(tag, Some(DOCKER_CLIENT_ACCEPT)).await;
    assert_eq!(store_calls(&resp), 1, "warm tag on a cold instance");
    assert_manifest(resp, &img.index).await;
    let resp = cold.get(&by_digest, Some(DOCKER_CLIENT_ACCEPT)).await;
    assert_eq!(store_calls(&resp), 1, "warm digest on a cold instance");
    assert_manifest(resp, &img.amd64).await;
    let resp = cold.get(&by_digest, Some(DOCKER_CLIENT_ACCEPT)).await;
    assert_eq!(store_calls(&resp), 0, "then from memory");
    // A blob: the marker, then the file itself (S3 replaces the second with a local presign).
    let resp = cold.get(&blob, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(store_calls(&resp), 2);
    // Blob markers never change: once read, the marker is remembered.
    let resp = cold.head(&blob, None).await;
    assert_eq!(store_calls(&resp), 0);
    let resp = cold.get(&blob, None).await;
    assert_eq!(store_calls(&resp), 1, "only the file itself");
    let other_blob = format!("/v2/team/app/blobs/{}", img.amd64.blob_digests()[1]);
    let resp = cold.head(&other_blob, None).await;
    assert_eq!(
        store_calls(&resp),
        1,
        "a blob HEAD on a cold instance reads its marker"
    );
    assert!(
        up.requests().is_empty(),
        "the cold instance asked the upstream"
    );
}

/// A hook that panics the first time a single-flight run of `kind` starts for a key containing
/// `key_part`, and counts the runs it saw.
fn panic_once(
    kind: &'static str,
    key_part: &'static str,
) -> (
    pullthrough::cache::FaultHook,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&runs);
    let hook: pullthrough::cache::FaultHook =
        std::sync::Arc::new(move |point, k: &str, key: &str| {
            if point == pullthrough::cache::FlightPoint::Start
                && k == kind
                && key.contains(key_part)
                && seen.fetch_add(1, Ordering::SeqCst) == 0
            {
                panic!("injected panic in a {kind} flight for {key}");
            }
        });
    (hook, runs)
}

#[tokio::test]
async fn a_panic_in_a_manifest_fetch_or_blob_fill_frees_its_single_flight_slot() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 16);
    let layer = img.amd64.blob_digests()[1].clone();
    for (kind, key_part, path, accept) in [
        (
            "manifest",
            ":v1",
            "/v2/team/app/manifests/v1".to_owned(),
            Some(DOCKER_CLIENT_ACCEPT),
        ),
        (
            "blob",
            "@sha256:",
            format!("/v2/team/app/blobs/{layer}"),
            None,
        ),
    ] {
        let (hook, runs) = panic_once(kind, key_part);
        let services = pullthrough::cache::Services {
            fault_hook: Some(hook),
            ..Default::default()
        };
        let proxy = Proxy::with_services(&local_config(&up.url()), services).await;
        let first = proxy.get(&path, accept).await;
        expect_oci_error(first, 500, "UNAVAILABLE").await;
        // The key is not left blocked: the next request runs the work afresh and succeeds.
        let next = tokio::time::timeout(Duration::from_secs(10), proxy.get(&path, accept))
            .await
            .expect("the request after the panic answers");
        assert_eq!(next.status(), 200, "{kind}: {path}");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2, "{kind}");
        let body = body_of(next).await;
        if kind == "blob" {
            assert_eq!(sha256(&body), layer);
        } else {
            assert_eq!(body, img.index.bytes);
        }
    }
}

#[tokio::test]
async fn a_layer_digest_on_the_manifests_endpoint_is_manifest_unknown_without_reading_the_layer() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let layer = blob_bytes(17, 8 << 20);
    let digest = up.put_blob("team/app", layer);
    let small = up.put_blob(
        "team/app",
        Bytes::from_static(b"{\"architecture\":\"amd64\"}"),
    );
    for s3 in [false, true] {
        let proxy = if s3 {
            Proxy::start_s3(&up).await
        } else {
            Proxy::start(&up).await
        };
        let client = reqwest::Client::new(); // follows the S3 redirect
        for d in [&digest, &small] {
            let resp = client
                .get(format!("{}/v2/team/app/blobs/{d}", proxy.url))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(sha256(&resp.bytes().await.unwrap()), *d);
        }
        // Over S3 the marker follows the upload, after the client has its bytes: wait for it
        // (a blob HEAD answered from the remembered marker costs no store call).
        let deadline = Deadline::after(Duration::from_secs(30));
        for d in [&digest, &small] {
            while store_calls(&proxy.head(&format!("/v2/team/app/blobs/{d}"), None).await) != 0 {
                deadline.pause("never marked").await;
            }
        }
        let path = format!("/v2/team/app/manifests/{digest}");
        let cold = if s3 {
            proxy
                .sibling_s3(&format!(
                    "{}{}",
                    local_config(&up.url()),
                    proxy.s3().config_table("")
                ))
                .await
        } else {
            proxy.sibling(&local_config(&up.url())).await
        };
        up.clear_requests();
        if let Some(s) = &proxy.s3 {
            s.clear_calls();
        }
        // Memory-cached marker (the process that filled it), then a process that reads it once.
        for (p, marker_reads) in [(&proxy, [0, 0]), (&cold, [1, 0])] {
            for (method, reads) in [reqwest::Method::HEAD, reqwest::Method::GET]
                .into_iter()
                .zip(marker_reads)
            {
                let resp = p
                    .request(method.clone(), &path, Some(DOCKER_CLIENT_ACCEPT))
                    .await;
                assert_eq!(store_calls(&resp), reads, "{method} s3={s3}");
                if method == reqwest::Method::GET {
                    expect_oci_error(resp, 404, "MANIFEST_UNKNOWN").await;
                } else {
                    assert_eq!(resp.status(), 404);
                }
            }
        }
        assert!(
            up.requests().is_empty(),
            "too large to be a manifest: decided here"
        );
        if let Some(s) = &proxy.s3 {
            let hex = digest.trim_start_matches("sha256:");
            let reads: Vec<_> = s
                .calls()
                .into_iter()
                .filter(|c| c.key.contains(hex) && c.key.contains("blobs/"))
                .collect();
            assert!(reads.is_empty(), "the layer object was touched: {reads:?}");
        }
        // A blob small enough to be a manifest: the upstream decides (it has no such manifest),
        // and the stored object is not read either.
        let resp = cold.manifest("team/app", &small).await;
        assert!(store_calls(&resp) <= 1, "s3={s3}");
        expect_oci_error(resp, 404, "MANIFEST_UNKNOWN").await;
        assert_eq!(
            up.count_authorized("GET", &format!("/manifests/{small}")),
            1
        );
    }
}
