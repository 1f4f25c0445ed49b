//! The whole proxy over the S3 store, against an in-process S3-compatible server that checks
//! SigV4 signatures (headers and presigned URLs) and the fake upstream registry: blobs are
//! answered with a 307 to a presigned URL that a client without credentials follows.

use std::time::Duration;

use crate::support::s3::S3Call;
use crate::support::*;
use pullthrough::cache::{ServerLease, Services};
use s3s::S3ErrorCode;

/// Small parts and few in flight, so multipart cases stay small.
const SMALL_PARTS: &str = "part_size = \"8MiB\"\nparts_in_flight = 2";
/// Most tests here are about copy-then-redirect (`[s3] stream_misses = false`: no blob bytes
/// through the proxy). The default, cold blobs streamed from a spill file while they upload, is
/// tested at the end of this file and, on both stores, in blobs.rs.
const REDIRECT: &str = "stream_misses = false";

#[tokio::test]
async fn an_image_pulls_through_with_blobs_redirected_to_presigned_urls() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 31);
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    full_pull(&proxy, "team/app", "v1", &img).await;

    // The arm64 manifest by digest, and a blob HEAD: length and digest without a body.
    let resp = proxy.manifest("team/app", &img.arm64.digest).await;
    assert_eq!(resp.bytes().await.unwrap(), img.arm64.bytes);
    let layer = &img.amd64.blob_digests()[1];
    let head = proxy
        .head(&format!("/v2/team/app/blobs/{layer}"), None)
        .await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "docker-content-digest"), Some(layer.as_str()));

    // Every blob and manifest is in the bucket under its digest.
    let stored = proxy.s3().blob_keys("").await;
    for d in img.amd64.blob_digests().iter().chain([
        &img.index.digest,
        &img.amd64.digest,
        &img.arm64.digest,
    ]) {
        let key = format!("blobs/{}", d.replace(':', "/"));
        assert!(stored.contains(&key), "{key} not in {stored:?}");
    }
    proxy.s3().assert_no_uploads().await;
}

#[tokio::test]
async fn a_warm_blob_is_a_redirect_after_no_store_request_and_no_upstream_request() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(32, 200_000);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    let (_, first) = blob_via_redirect(&proxy, "team/app", &d).await;
    assert_eq!(first, data);

    up.clear_requests();
    proxy.s3().clear_calls();
    let (_, again) = blob_via_redirect(&proxy, "team/app", &d).await;
    assert_eq!(again, data);
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());
    // The marker this process wrote is remembered: no store request at all before the 307,
    // only the client's own GET of the object (a fresh instance reads the marker once).
    let ops: Vec<_> = proxy.s3().calls().into_iter().map(|c| c.op).collect();
    assert_eq!(ops, vec!["GetObject"], "{:?}", proxy.s3().calls());
    assert!(proxy.s3().calls()[0].key.starts_with("blobs/"));
}

#[tokio::test]
async fn tampered_presigned_urls_are_refused_by_s3() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let d1 = up.put_blob("team/app", blob_bytes(33, 5000));
    let d2 = up.put_blob("team/app", blob_bytes(34, 5000));
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    let (location, _) = blob_via_redirect(&proxy, "team/app", &d1).await;
    blob_via_redirect(&proxy, "team/app", &d2).await;
    let client = proxy.s3().plain_client();

    // One character of the signature changed.
    let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut flipped = location.clone().into_bytes();
    flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    // The same signature pointed at another (existing) object.
    let (h1, h2) = (
        d1.strip_prefix("sha256:").unwrap(),
        d2.strip_prefix("sha256:").unwrap(),
    );
    let other_key = location.replace(h1, h2);
    assert_ne!(other_key, location);
    for url in [&flipped, &other_key] {
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{url}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    }
    // The untouched URL still works.
    assert_eq!(client.get(&location).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_fill_that_fails_halfway_leaves_no_blob_and_no_multipart_upload() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(35, 20 * 1024 * 1024);
    let d = up.put_blob("team/big", data.clone());
    let proxy = Proxy::start_s3_with(&up, &format!("{SMALL_PARTS}\n{REDIRECT}")).await;
    let path = format!("/v2/team/big/blobs/{d}");

    for fault in [Fault::Truncate, Fault::TamperBody] {
        up.clear_faults();
        up.add_fault(FaultRule::new(fault.clone()).method("GET").path("/blobs/"));
        proxy.s3().clear_calls();
        let msg = expect_oci_error(proxy.get(&path, None).await, 502, "UNAVAILABLE").await;
        if fault == Fault::TamperBody {
            assert!(msg.contains("digest mismatch"), "{msg}");
        }
        // It did get as far as a multipart upload with a part stored, then aborted it.
        assert_eq!(proxy.s3().count("CreateMultipartUpload"), 1, "{fault:?}");
        assert!(proxy.s3().count("UploadPart") >= 1, "{fault:?}");
        assert_eq!(proxy.s3().count("AbortMultipartUpload"), 1, "{fault:?}");
        assert_eq!(proxy.s3().count("CompleteMultipartUpload"), 0, "{fault:?}");
        assert_eq!(
            proxy.s3().blob_keys("").await,
            Vec::<String>::new(),
            "{fault:?}"
        );
        proxy.s3().assert_no_uploads().await;
    }

    up.clear_faults();
    let (_, body) = blob_via_redirect(&proxy, "team/big", &d).await;
    assert_eq!(body, data);
    proxy.s3().assert_no_uploads().await;
}

#[tokio::test]
async fn a_blob_larger_than_all_parts_in_flight_is_filled_and_served_intact() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    // 8 MiB parts, 2 in flight: 40 MiB is five parts, more than fit in memory at once.
    let data = blob_bytes(36, 40 * 1024 * 1024 + 5);
    let d = up.put_blob("team/big", data.clone());
    let proxy = Proxy::start_s3_with(&up, &format!("{SMALL_PARTS}\n{REDIRECT}")).await;
    let (_, body) = blob_via_redirect(&proxy, "team/big", &d).await;
    assert_eq!(body.len(), data.len());
    assert_eq!(body, data);
    assert_eq!(proxy.s3().count("UploadPart"), 6);
    assert!(proxy.s3().parts_peak() <= 2, "{}", proxy.s3().parts_peak());
    assert_eq!(up.count_authorized("GET", "/blobs/"), 1);
    proxy.s3().assert_no_uploads().await;
}

#[tokio::test]
async fn tag_ttl_behaviour_is_unchanged_over_s3() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 37);
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    full_pull(&proxy, "team/app", "v1", &img).await;

    up.clear_requests();
    proxy.advance(Duration::from_secs(59));
    full_pull(&proxy, "team/app", "v1", &img).await;
    assert!(up.requests().is_empty(), "{:?}", up.request_lines());

    proxy.advance(Duration::from_secs(2));
    full_pull(&proxy, "team/app", "v1", &img).await;
    let reqs = up.request_lines();
    assert_eq!(reqs, vec!["HEAD /v2/team/app/manifests/v1"]);
}

#[tokio::test]
async fn a_store_that_keeps_failing_gives_503_unavailable() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let d = up.put_blob("team/app", blob_bytes(38, 1000));
    let proxy = Proxy::start_s3_with(&up, &format!("max_attempts = 2\n{REDIRECT}")).await;
    proxy
        .s3()
        .add_fault("GetObject", S3ErrorCode::SlowDown, None);
    proxy
        .s3()
        .add_fault("HeadObject", S3ErrorCode::SlowDown, None);
    let msg = expect_oci_error(
        proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await,
        503,
        "UNAVAILABLE",
    )
    .await;
    assert!(msg.contains("SlowDown"), "{msg}");
    // Two attempts of the one request that failed, and the upstream never asked.
    assert_eq!(proxy.s3().count("GetObject"), 2);
    assert_eq!(up.count("GET", "/blobs/"), 0);

    proxy.s3().clear_faults();
    blob_via_redirect(&proxy, "team/app", &d).await;
}

/// Every upstream fault on content not yet cached is an OCI error for the client and leaves the
/// bucket empty: no object, no multipart upload. Once the upstream is healthy the same pulls
/// work; once it is gone, cold content is 503 naming it and cached content is still served.
#[tokio::test]
async fn upstream_faults_on_cold_content_are_oci_errors_and_leave_the_bucket_empty() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 40);
    let proxy = Proxy::start_s3_with(&up, &format!("{SMALL_PARTS}\n{REDIRECT}")).await;
    let config_blob = img.amd64.blob_digests()[0].clone();
    let blob = format!("/v2/team/app/blobs/{config_blob}");
    let tag = "/v2/team/app/manifests/v1".to_owned();
    let by_digest = format!("/v2/team/app/manifests/{}", img.amd64.digest);

    let cases = [
        (&blob, Fault::Status(500), 502, "UNAVAILABLE"),
        (&blob, Fault::Status(503), 502, "UNAVAILABLE"),
        (
            &blob,
            Fault::TooManyRequests { retry_after: 42 },
            429,
            "TOOMANYREQUESTS",
        ),
        (&blob, Fault::Html404, 404, "BLOB_UNKNOWN"),
        (
            &blob,
            Fault::Stall(Duration::from_secs(5)),
            503,
            "UNAVAILABLE",
        ),
        (&blob, Fault::Truncate, 502, "UNAVAILABLE"),
        (&blob, Fault::TamperBody, 502, "UNAVAILABLE"),
        (&tag, Fault::Status(500), 502, "UNAVAILABLE"),
        (
            &tag,
            Fault::TooManyRequests { retry_after: 42 },
            429,
            "TOOMANYREQUESTS",
        ),
        (&tag, Fault::Html404, 404, "MANIFEST_UNKNOWN"),
        (
            &tag,
            Fault::Stall(Duration::from_secs(5)),
            503,
            "UNAVAILABLE",
        ),
        (&tag, Fault::WrongDigestHeader, 502, "UNAVAILABLE"),
        (&tag, Fault::TamperBody, 502, "UNAVAILABLE"),
        (&by_digest, Fault::TamperBody, 502, "UNAVAILABLE"),
        (&by_digest, Fault::Truncate, 502, "UNAVAILABLE"),
    ];
    for (path, fault, status, code) in cases {
        up.clear_faults();
        up.add_fault(FaultRule::new(fault.clone()).path("/v2/team/app/"));
        let resp = proxy.get(path, Some(DOCKER_CLIENT_ACCEPT)).await;
        if status == 429 {
            assert_eq!(header(&resp, "retry-after"), Some("42"), "{path} {fault:?}");
        }
        assert_eq!(resp.status().as_u16(), status, "{path} {fault:?}");
        expect_oci_error(resp, status, code).await;
        assert_eq!(
            proxy.s3().object_keys("").await,
            Vec::<String>::new(),
            "{path} {fault:?} stored something"
        );
        proxy.s3().assert_no_uploads().await;
    }

    up.clear_faults();
    full_pull(&proxy, "team/app", "v1", &img).await;

    let fresh = up.put_blob("team/app", blob_bytes(41, 1000));
    up.shutdown();
    let msg = expect_oci_error(
        proxy
            .get(&format!("/v2/team/app/blobs/{fresh}"), None)
            .await,
        503,
        "UNAVAILABLE",
    )
    .await;
    assert!(msg.contains("local"), "{msg}");
    proxy.advance(Duration::from_secs(120));
    let resp = proxy.get(&tag, Some(DOCKER_CLIENT_ACCEPT)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        header(&resp, "warning").is_some(),
        "a stale answer carries a Warning"
    );
    assert_eq!(resp.bytes().await.unwrap(), img.index.bytes);
    blob_via_redirect(&proxy, "team/app", &config_blob).await;
}

/// Another instance over the same bucket (nothing in its memory) serves what the first one
/// cached with the token endpoint down and no upstream request at all, and after the TTL, with
/// the upstream gone, serves the tag stale from the pointer in S3.
#[tokio::test]
async fn another_instance_serves_the_bucket_without_token_endpoint_or_upstream() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 43);
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    full_pull(&proxy, "team/app", "v1", &img).await;

    up.add_fault(FaultRule::new(Fault::Status(500)).path("/token"));
    up.clear_requests();
    let toml = format!("{}{}", local_config(&up.url()), proxy.s3().config_table(""));
    let other = proxy.sibling_s3(&toml).await;
    full_pull(&other, "team/app", "v1", &img).await;
    assert_eq!(
        up.request_lines(),
        Vec::<String>::new(),
        "a cached pull asked the upstream"
    );

    up.shutdown();
    other.advance(Duration::from_secs(120));
    let resp = other.manifest("team/app", "v1").await;
    assert_eq!(resp.status(), 200);
    let warning = header(&resp, "warning").expect("a stale answer carries a Warning");
    assert!(
        warning.starts_with("299 - \"stale: local unreachable"),
        "{warning}"
    );
    assert_eq!(resp.bytes().await.unwrap(), img.index.bytes);
}

/// S3 throttling and transient errors in the middle of a fill are retried: the client gets the
/// blob, the upstream is asked once, and exactly one whole object ends up in the bucket.
#[tokio::test]
async fn throttling_and_transient_s3_errors_during_fills_are_retried() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 44);
    let data = blob_bytes(45, 20 * 1024 * 1024);
    let big = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start_s3_with(&up, &format!("{SMALL_PARTS}\n{REDIRECT}")).await;
    let s3 = proxy.s3();
    s3.add_fault("UploadPart", S3ErrorCode::SlowDown, Some(2));
    s3.add_fault(
        "CompleteMultipartUpload",
        S3ErrorCode::InternalError,
        Some(1),
    );
    s3.add_fault("PutObject", S3ErrorCode::SlowDown, Some(2));

    let (_, body) = blob_via_redirect(&proxy, "team/app", &big).await;
    assert_eq!(body, data);
    full_pull(&proxy, "team/app", "v1", &img).await;

    let failed = |op: &str| {
        s3.calls()
            .iter()
            .filter(|c| c.op == op && c.error.is_some())
            .count()
    };
    assert_eq!(failed("UploadPart"), 2);
    assert_eq!(failed("CompleteMultipartUpload"), 1);
    assert_eq!(failed("PutObject"), 2);
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{big}")), 1);
    assert!(s3.has_blob(&big).await);
    s3.assert_no_uploads().await;
}

/// A bucket that keeps failing in the middle of a fill: the client gets 503, the upload is
/// aborted, nothing is published; when S3 recovers the same request succeeds.
#[tokio::test]
async fn a_persistent_s3_failure_mid_fill_is_503_and_publishes_nothing() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(46, 20 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy =
        Proxy::start_s3_with(&up, &format!("{SMALL_PARTS}\nmax_attempts = 2\n{REDIRECT}")).await;
    proxy
        .s3()
        .add_fault("UploadPart", S3ErrorCode::InternalError, None);
    expect_oci_error(
        proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await,
        503,
        "UNAVAILABLE",
    )
    .await;
    assert_eq!(proxy.s3().blob_keys("").await, Vec::<String>::new());
    proxy.s3().assert_no_uploads().await;

    proxy.s3().clear_faults();
    let (_, body) = blob_via_redirect(&proxy, "team/app", &d).await;
    assert_eq!(body, data);
}

/// By default (server mode) every request for a cold blob streams it from the fill's spill file
/// while it uploads: the first one and a joiner alike; once published, the blob is a 307. Bad
/// bytes cut the streamed bodies off and publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_cold_clients_stream_and_warm_ones_are_redirected() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(47, 20 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let bad = up.put_blob("team/app", blob_bytes(48, 12 * 1024 * 1024));
    let proxy = Proxy::start_s3_with(&up, SMALL_PARTS).await;
    let path = format!("/v2/team/app/blobs/{d}");
    // The upstream holds the second half back, so the joiner below arrives during the fill.
    up.add_fault(
        FaultRule::new(Fault::Hold { at: data.len() / 2 })
            .method("GET")
            .path(&d),
    );

    let first = proxy.get(&path, None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(header(&first, "docker-content-digest"), Some(d.as_str()));
    let joiner = proxy.get(&path, None).await;
    assert_eq!(joiner.status(), 200, "a joiner streams too");
    up.release_held();
    assert_eq!(first.bytes().await.unwrap(), data);
    assert_eq!(joiner.bytes().await.unwrap(), data);
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 1);
    let deadline = Deadline::after(Duration::from_secs(30));
    while !proxy.s3().has_blob(&d).await {
        deadline.pause("never published").await;
    }
    // Published and marked: a redirect from now on (the marker follows the upload).
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let resp = proxy.get(&path, None).await;
        if resp.status() == 307 {
            follow_redirect(&proxy, resp, &d).await;
            break;
        }
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), data);
        deadline.check("never redirected");
    }

    // Tampered bytes: the streamed body is cut off, nothing is uploaded or published.
    up.add_fault(FaultRule::new(Fault::TamperBody).method("GET").path(&bad));
    let resp = proxy.get(&format!("/v2/team/app/blobs/{bad}"), None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.is_err(),
        "a bad body was delivered whole"
    );
    assert!(!proxy.s3().has_blob(&bad).await);
    proxy.s3().assert_no_uploads().await;
}

/// Streaming, a bucket that fails mid-upload does not fail the client: it gets the verified
/// bytes from the spill file; nothing is published, the upload is aborted, and the next request
/// fills the blob again once S3 recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_still_serves_the_streaming_client_and_publishes_nothing() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(49, 20 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start_s3_with(&up, &format!("{SMALL_PARTS}\nmax_attempts = 2")).await;
    proxy
        .s3()
        .add_fault("UploadPart", S3ErrorCode::InternalError, None);
    let path = format!("/v2/team/app/blobs/{d}");
    let resp = proxy.get(&path, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), data);
    // The upload (started once the bytes were verified) fails and is aborted; nothing is
    // published.
    proxy
        .s3()
        .wait_for("the upload aborted", |calls| {
            calls.iter().any(|c| c.op == "AbortMultipartUpload")
        })
        .await;
    // (The test server records the call just before it forgets the upload.)
    let deadline = Deadline::after(Duration::from_secs(10));
    while !proxy.s3().multipart_uploads().await.is_empty() {
        deadline.pause("upload never aborted").await;
    }
    proxy.s3().assert_no_uploads().await;
    assert_eq!(proxy.s3().blob_keys("").await, Vec::<String>::new());

    // Once S3 recovers, a request fills the blob again (one that arrives while the failed
    // fill is still ending streams from its spill file, with the same bytes).
    proxy.s3().clear_faults();
    let deadline = Deadline::after(Duration::from_secs(30));
    while up.count_authorized("GET", &format!("/blobs/{d}")) < 2 {
        deadline.check("never filled again");
        let resp = proxy.get(&path, None).await;
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, data);
    }
    while !proxy.s3().has_blob(&d).await {
        deadline.pause("never published").await;
    }
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 2);
}

/// A request that finds a fill whose upload has just failed, its run ended but still in its
/// single-flight slot, streams the verified bytes from the fill's spill file like the fill's
/// other requests did. It used to find the run without its spill file and take the upload's
/// error, a 503 (a race the test above once lost in CI); the hook holds the ended run in its
/// slot so the instant is reached every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_joining_a_fill_whose_upload_just_failed_streams_its_spill_file() {
    use pullthrough::cache::{FaultHook, FlightPoint};
    use std::sync::atomic::{AtomicBool, Ordering};

    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(53, 20 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let server = S3Server::start().await;
    let toml = local_s3_config(
        &up.url(),
        &server,
        &format!("{SMALL_PARTS}\nmax_attempts = 2"),
    );
    // The first blob run to end is held in its slot until the test lets it go.
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let held = AtomicBool::new(false);
    let hook: FaultHook = std::sync::Arc::new(move |point, kind: &str, _key: &str| {
        if point == FlightPoint::End && kind == "blob" && !held.swap(true, Ordering::SeqCst) {
            let _ = ended_tx.send(());
            tokio::task::block_in_place(|| {
                let _ = released.lock().unwrap().recv();
            });
        }
    });
    let services = Services {
        fault_hook: Some(hook),
        ..Default::default()
    };
    let proxy = Proxy::with_s3_services(&toml, server, services).await;
    proxy
        .s3()
        .add_fault("UploadPart", S3ErrorCode::InternalError, None);
    let path = format!("/v2/team/app/blobs/{d}");
    let first = proxy.get(&path, None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.bytes().await.unwrap(), data);
    ended.recv().await.expect("the fill ends");
    assert!(!proxy.s3().has_blob(&d).await, "a failed upload published");

    // The run has ended (its upload failed) and holds its slot: a request now joins it.
    let joiner = tokio::time::timeout(Duration::from_secs(20), async {
        let resp = proxy.get(&path, None).await;
        let status = resp.status();
        (status, resp.bytes().await.unwrap())
    })
    .await;
    release.send(()).unwrap();
    let (status, body) =
        joiner.expect("the request waited for the ended fill instead of streaming its spill file");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, data);
    assert_eq!(
        up.count_authorized("GET", &format!("/blobs/{d}")),
        1,
        "the joiner fetched the blob again"
    );

    // Once the slot is free, the next request runs a fill of its own, which publishes.
    proxy.s3().clear_faults();
    let resp = proxy.get(&path, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), data);
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 2);
    let deadline = Deadline::after(Duration::from_secs(30));
    while !proxy.s3().has_blob(&d).await {
        deadline.pause("never published").await;
    }
}

/// `[s3] stream_hits`: a stored blob is streamed from S3 through the proxy (for clients that
/// cannot reach the bucket), ranges included, instead of redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stream_hits_stored_blobs_are_streamed_not_redirected() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(50, 3 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start_s3_with(&up, "stream_hits = true").await;
    let path = format!("/v2/team/app/blobs/{d}");
    assert_eq!(proxy.get(&path, None).await.bytes().await.unwrap(), data);
    let deadline = Deadline::after(Duration::from_secs(30));
    while proxy.s3().blob_keys("").await.is_empty() {
        deadline.pause("never published").await;
    }
    up.clear_requests();
    for _ in 0..2 {
        let resp = proxy.get(&path, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "content-length"),
            Some(data.len().to_string().as_str())
        );
        assert_eq!(resp.bytes().await.unwrap(), data);
    }
    let resp = proxy
        .http
        .get(format!("{}{path}", proxy.url))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        header(&resp, "content-range"),
        Some(format!("bytes 100-199/{}", data.len()).as_str())
    );
    assert_eq!(resp.bytes().await.unwrap(), data.slice(100..200));
    let resp = proxy
        .http
        .get(format!("{}{path}", proxy.url))
        .header("range", format!("bytes={}-", data.len()))
        .send()
        .await
        .unwrap();
    expect_oci_error(resp, 416, "RANGE_INVALID").await;
    assert_eq!(up.requests().len(), 0, "warm: no upstream request");
}

fn lease_key(digest: &str) -> String {
    format!("leases/blobs/{}", digest.replace(':', "/"))
}

fn blob_key(digest: &str) -> String {
    format!("blobs/{}", digest.replace(':', "/"))
}

/// PutObject calls on `key` that succeeded (`ok`) or were refused.
fn puts(calls: &[S3Call], key: &str, ok: bool) -> usize {
    calls
        .iter()
        .filter(|c| c.op == "PutObject" && c.key == key && c.error.is_none() == ok)
        .count()
}

/// Whether a request found the lease on `digest` held (its create refused) and then looked for
/// the blob: it is waiting for another instance's copy.
fn waiting_for_lease(calls: &[S3Call], digest: &str) -> bool {
    let (lease, blob) = (lease_key(digest), blob_key(digest));
    calls
        .iter()
        .skip_while(|c| !(c.op == "PutObject" && c.key == lease && c.error.is_some()))
        .any(|c| c.op == "HeadObject" && c.key == blob)
}

/// The proxy's config over `s3` with upstream timeouts long enough for a stalled GET, which
/// keeps a fill in progress while the test looks at it.
fn patient_config(up: &FakeRegistry, s3: &S3Server, s3_extra: &str) -> String {
    let config = local_config(&up.url())
        .replace("request_timeout = \"2s\"", "request_timeout = \"30s\"")
        .replace("read_timeout = \"2s\"", "read_timeout = \"30s\"");
    format!("{config}{}", s3.config_table(s3_extra))
}

fn stall_blob_gets(up: &FakeRegistry) {
    up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(3)))
            .method("GET")
            .path("/blobs/")
            .times(1),
    );
}

fn spawn_get(proxy: &Proxy, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let (http, url) = (proxy.http.clone(), format!("{}{path}", proxy.url));
    tokio::spawn(async move { http.get(url).send().await.unwrap() })
}

async fn put_object(s3: &S3Server, key: &str, body: Vec<u8>) {
    s3.admin
        .put_object()
        .bucket(&s3.bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

/// A lease as another instance writes it.
async fn put_lease(s3: &S3Server, digest: &str, expires_at: u64, repo: &str) {
    let lease = serde_json::json!({
        "owner": "another-instance", "expiresAt": expires_at, "upstream": "local", "repo": repo
    });
    put_object(s3, &lease_key(digest), lease.to_string().into_bytes()).await;
}

async fn lease_expiry(s3: &S3Server, digest: &str) -> u64 {
    let got = s3
        .admin
        .get_object()
        .bucket(&s3.bucket)
        .key(lease_key(digest))
        .send()
        .await
        .expect("the lease is in the bucket");
    let bytes = got.body.collect().await.unwrap().into_bytes();
    let lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    lease["expiresAt"].as_u64().expect("expiresAt")
}

/// Two instances over one bucket miss the same blob at once: the first takes the fill lease and
/// fetches; the second finds the lease held, fetches nothing, waits for the blob and redirects
/// to it. The second streams misses (`stream_misses`), yet is redirected: it did not fill.
#[tokio::test]
async fn two_instances_missing_one_blob_fetch_it_from_the_upstream_once() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let d = up.put_blob("team/app", blob_bytes(50, 300_000));
    let server = S3Server::start().await;
    let a = Proxy::with_s3_config(&patient_config(&up, &server, REDIRECT), server).await;
    let b = a
        .sibling_s3(&patient_config(&up, a.s3(), "stream_misses = true"))
        .await;
    stall_blob_gets(&up);
    let path = format!("/v2/team/app/blobs/{d}");

    let first = spawn_get(&a, &path);
    a.s3()
        .wait_for("the first instance's lease", |c| {
            puts(c, &lease_key(&d), true) == 1
        })
        .await;
    let second = spawn_get(&b, &path);
    a.s3()
        .wait_for("the second instance to wait", |c| waiting_for_lease(c, &d))
        .await;
    follow_redirect(&a, first.await.unwrap(), &d).await;
    follow_redirect(&b, second.await.unwrap(), &d).await;

    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 1);
    // The marker written for the same repository sufficed: no confirmation either.
    assert_eq!(up.count("HEAD", &format!("/blobs/{d}")), 0);
    assert_eq!(a.s3().object_keys("leases/").await, Vec::<String>::new());
    a.s3().assert_no_uploads().await;
}

/// A lease left by an instance that died (expired) is taken over at once, with `If-Match`.
#[tokio::test]
async fn an_expired_fill_lease_is_taken_over_at_once() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(51, 100_000);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    put_lease(proxy.s3(), &d, proxy.clock.now_ms() - 1000, "team/app").await;
    proxy.s3().clear_calls();

    let (_, body) = blob_via_redirect(&proxy, "team/app", &d).await;
    assert_eq!(body, data);
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 1);
    let calls = proxy.s3().calls();
    // The create refused, the takeover accepted; no renewal for so short a copy.
    assert_eq!(puts(&calls, &lease_key(&d), false), 1, "{calls:?}");
    assert_eq!(puts(&calls, &lease_key(&d), true), 1, "{calls:?}");
    assert_eq!(
        proxy.s3().object_keys("leases/").await,
        Vec::<String>::new()
    );
    proxy.s3().assert_no_uploads().await;
}

/// A live lease of another instance makes a miss wait without fetching; once the lease has
/// expired (that instance died), the waiting request takes it over and fills.
#[tokio::test]
async fn a_live_lease_is_waited_for_and_taken_over_once_it_expires() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(52, 100_000);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    put_lease(proxy.s3(), &d, proxy.clock.now_ms() + 60_000, "team/app").await;

    let waiter = spawn_get(&proxy, &format!("/v2/team/app/blobs/{d}"));
    proxy
        .s3()
        .wait_for("the request to wait", |c| waiting_for_lease(c, &d))
        .await;
    assert!(!waiter.is_finished());
    assert_eq!(up.count("GET", "/blobs/"), 0);

    proxy.advance(Duration::from_secs(61));
    let (_, body) = follow_redirect(&proxy, waiter.await.unwrap(), &d).await;
    assert_eq!(body, data);
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 1);
    assert_eq!(
        proxy.s3().object_keys("leases/").await,
        Vec::<String>::new()
    );
    proxy.s3().assert_no_uploads().await;
}

/// While another instance holds the lease, a miss waits for that instance's copy and serves it:
/// copied for the same repository (blob, marker, lease released) with no upstream request at
/// all; copied for another repository with an upstream HEAD confirming this one holds it.
#[tokio::test]
async fn a_blob_copied_by_the_lease_holder_is_served_without_fetching_it() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start_s3_with(&up, REDIRECT).await;
    let s3 = proxy.s3();
    for (seed, holder_repo) in [(53, "team/app"), (54, "team/other")] {
        let data = blob_bytes(seed, 100_000);
        let d = up.put_blob("team/app", data.clone());
        put_lease(s3, &d, proxy.clock.now_ms() + 60_000, holder_repo).await;
        let waiter = spawn_get(&proxy, &format!("/v2/team/app/blobs/{d}"));
        s3.wait_for("the request to wait", |c| waiting_for_lease(c, &d))
            .await;

        // The other instance's copy lands.
        put_object(s3, &blob_key(&d), data.to_vec()).await;
        if holder_repo == "team/app" {
            let marker = format!("repos/local/team/app/_digests/{}", d.replace(':', "/"));
            let doc = serde_json::json!({ "size": data.len() });
            put_object(s3, &marker, doc.to_string().into_bytes()).await;
            s3.admin
                .delete_object()
                .bucket(&s3.bucket)
                .key(lease_key(&d))
                .send()
                .await
                .unwrap();
        }
        let (_, body) = follow_redirect(&proxy, waiter.await.unwrap(), &d).await;
        assert_eq!(body, data);
        assert_eq!(up.count("GET", &format!("/blobs/{d}")), 0, "{holder_repo}");
        let heads = usize::from(holder_repo != "team/app");
        assert_eq!(
            up.count_authorized("HEAD", &format!("/blobs/{d}")),
            heads,
            "{holder_repo}"
        );
    }
    s3.assert_no_uploads().await;
}

/// A fill that runs longer than the renewal interval renews its lease: the expiry moves forward
/// while the copy runs, and the lease is released at the end.
#[tokio::test]
async fn a_long_fill_keeps_renewing_its_lease() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(55, 100_000);
    let d = up.put_blob("team/app", data.clone());
    let server = S3Server::start().await;
    let services = Services {
        server_lease: Some(ServerLease {
            ttl: Duration::from_secs(5),
            renew_every: Duration::from_millis(100),
        }),
        ..Services::default()
    };
    let proxy =
        Proxy::with_s3_services(&patient_config(&up, &server, REDIRECT), server, services).await;
    stall_blob_gets(&up);
    let key = lease_key(&d);

    let request = spawn_get(&proxy, &format!("/v2/team/app/blobs/{d}"));
    proxy
        .s3()
        .wait_for("the lease", |c| puts(c, &key, true) == 1)
        .await;
    let created = lease_expiry(proxy.s3(), &d).await;
    proxy
        .s3()
        .wait_for("two renewals", |c| puts(c, &key, true) >= 3)
        .await;
    let renewed = lease_expiry(proxy.s3(), &d).await;
    assert!(renewed > created, "{renewed} <= {created}");
    assert!(!request.is_finished());

    let (_, body) = follow_redirect(&proxy, request.await.unwrap(), &d).await;
    assert_eq!(body, data);
    assert_eq!(up.count_authorized("GET", &format!("/blobs/{d}")), 1);
    assert_eq!(
        proxy.s3().object_keys("leases/").await,
        Vec::<String>::new()
    );
    proxy.s3().assert_no_uploads().await;
}
