//! Blobs through the proxy with the filesystem store: streamed, verified, published whole or not
//! at all, one upstream fetch per digest, scoped per repository.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;

#[tokio::test]
async fn blob_get_serves_exact_bytes_and_head_has_length_and_digest() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(1, 100_000);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start(&up).await;
    let path = format!("/v2/team/app/blobs/{d}");

    // HEAD on a miss mirrors the upstream without copying the body.
    let head = proxy.head(&path, None).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), Some("100000"));
    assert_eq!(header(&head, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(up.count("GET", "/blobs/"), 0);
    assert!(!proxy.has_blob(&d));

    let resp = proxy.get(&path, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(header(&resp, "content-length"), Some("100000"));
    assert_eq!(header(&resp, "accept-ranges"), Some("bytes"));
    assert_eq!(resp.bytes().await.unwrap(), data);
    assert!(proxy.has_blob(&d));

    up.clear_requests();
    let warm_head = proxy.head(&path, None).await;
    assert_eq!(header(&warm_head, "content-length"), Some("100000"));
    assert_eq!(
        header(&warm_head, "docker-content-digest"),
        Some(d.as_str())
    );
    let warm = proxy.get(&path, None).await;
    assert_eq!(warm.bytes().await.unwrap(), data);
    assert!(
        up.requests().is_empty(),
        "a cached blob needs no upstream call"
    );
}

#[tokio::test]
async fn range_requests_get_206_and_unsatisfiable_ranges_416() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(2, 1000);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start(&up).await;
    let url = format!("{}/v2/team/app/blobs/{d}", proxy.url);
    let ranged = |r: &'static str| proxy.http.get(&url).header("range", r).send();

    let resp = ranged("bytes=10-19").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), Some("bytes 10-19/1000"));
    assert_eq!(header(&resp, "content-length"), Some("10"));
    assert_eq!(resp.bytes().await.unwrap(), data.slice(10..20));

    let resp = ranged("bytes=-5").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), data.slice(995..));

    let resp = ranged("bytes=990-").await.unwrap();
    assert_eq!(header(&resp, "content-range"), Some("bytes 990-999/1000"));
    assert_eq!(resp.bytes().await.unwrap(), data.slice(990..));

    let resp = ranged("bytes=1000-").await.unwrap();
    assert_eq!(header(&resp, "content-range"), Some("bytes */1000"));
    expect_oci_error(resp, 416, "RANGE_INVALID").await;
}

#[tokio::test]
async fn concurrent_cold_requests_for_one_blob_make_one_upstream_get() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(3, 3 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Arc::new(Proxy::start(&up).await);
    // Hold the first upstream answer back so every request below arrives during the fill.
    up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_millis(300)))
            .method("GET")
            .path("/blobs/")
            .times(1),
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let p = Arc::clone(&proxy);
        let path = format!("/v2/team/app/blobs/{d}");
        tasks.push(tokio::spawn(async move {
            p.get(&path, None).await.bytes().await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), data);
    }
    assert_eq!(
        up.count_authorized("GET", "/blobs/"),
        1,
        "one upstream GET for ten concurrent misses"
    );
}

#[tokio::test]
async fn a_blob_larger_than_64_mib_is_filled_and_served_intact() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(4, 70 * 1024 * 1024 + 123);
    let d = up.put_blob("team/big", data.clone());
    let proxy = Proxy::start(&up).await;
    let resp = proxy.get(&format!("/v2/team/big/blobs/{d}"), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-length"),
        Some((70 * 1024 * 1024 + 123).to_string().as_str())
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256(&body), d);
    proxy.assert_store_consistent();
}

#[tokio::test]
async fn bad_blob_bytes_from_upstream_are_never_stored() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(5, 2 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start(&up).await;
    let path = format!("/v2/team/app/blobs/{d}");

    for fault in [Fault::TamperBody, Fault::Truncate] {
        up.clear_faults();
        up.add_fault(FaultRule::new(fault.clone()).method("GET").path("/blobs/"));
        // The request that starts the fill is streamed the bytes as they arrive; when they turn
        // out wrong at the end its body is cut off, so it can never be taken as complete.
        let resp = proxy.get(&path, None).await;
        assert_eq!(resp.status(), 200, "{fault:?}");
        if let Ok(body) = resp.bytes().await {
            panic!(
                "{fault:?}: a bad body was delivered whole ({} bytes)",
                body.len()
            );
        }
        assert!(!proxy.has_blob(&d), "{fault:?}: a bad fill was published");
        assert!(
            proxy.tmp_files().is_empty(),
            "{fault:?}: temporary file left behind"
        );
        assert!(
            proxy.all_files().is_empty(),
            "{fault:?}: stored {:?}",
            proxy.all_files()
        );
    }

    // A second request during a bad fill never gets the bad bytes whole either: it joins the
    // fill and gets its verdict as an OCI error, or (arriving after it) starts its own and is
    // cut off in turn. The first client not reading holds the fill back (bounded buffer).
    let big = blob_bytes(9, 32 * 1024 * 1024);
    let big_digest = up.put_blob("team/app", big);
    let big_path = format!("/v2/team/app/blobs/{big_digest}");
    let first = proxy.get(&big_path, None).await;
    assert_eq!(first.status(), 200);
    let second = tokio::spawn({
        let (http, url) = (proxy.http.clone(), format!("{}{big_path}", proxy.url));
        async move {
            let resp = http.get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.bytes().await.is_ok())
        }
    });
    assert!(
        first.bytes().await.is_err(),
        "the first body must be cut off"
    );
    match second.await.unwrap() {
        (502, true) => {}
        (200, false) => {}
        other => panic!("second request got {other:?}"),
    }
    assert!(!proxy.has_blob(&big_digest));
    assert!(proxy.all_files().is_empty());

    // Errors before any byte are OCI errors for everyone.
    up.clear_faults();
    up.add_fault(
        FaultRule::new(Fault::Status(500))
            .method("GET")
            .path("/blobs/"),
    );
    expect_oci_error(proxy.get(&path, None).await, 502, "UNAVAILABLE").await;

    // The upstream's header is not trusted; the bytes are what is verified.
    up.clear_faults();
    up.add_fault(
        FaultRule::new(Fault::WrongDigestHeader)
            .method("GET")
            .path("/blobs/"),
    );
    assert_eq!(proxy.get(&path, None).await.bytes().await.unwrap(), data);
    assert!(proxy.has_blob(&d));
    proxy.assert_store_consistent();
}

#[tokio::test]
async fn a_stalled_blob_download_fails_cleanly() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let d = up.put_blob("team/app", blob_bytes(6, 1000));
    let proxy = Proxy::start(&up).await;
    up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(10)))
            .method("GET")
            .path("/blobs/"),
    );
    let resp = proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await;
    assert!(resp.status().is_server_error());
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert!(proxy.all_files().is_empty());
}

#[tokio::test]
async fn blob_redirects_are_followed_without_sending_credentials_elsewhere() {
    let up = FakeRegistry::start(FakeOptions {
        blob_redirect: true,
        ..FakeOptions::default()
    })
    .await;
    let data = blob_bytes(7, 50_000);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start(&up).await;
    let resp = proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), data);
    let cdn: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.host_kind == "cdn")
        .collect();
    assert_eq!(cdn.len(), 1);
    assert!(
        cdn[0].authorization.is_none(),
        "Authorization was sent to the CDN host"
    );
    // And the registry itself did get the token.
    assert!(up.requests().iter().any(|r| r.host_kind == "registry"
        && r.path.contains("/blobs/")
        && r.authorization.is_some()));
}

#[tokio::test]
async fn a_blob_cached_for_one_repository_is_not_served_for_another_unconfirmed() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(8, 4096);
    let d = up.put_blob("private/secret", data.clone());
    let proxy = Proxy::start(&up).await;
    let first = proxy
        .get(&format!("/v2/private/secret/blobs/{d}"), None)
        .await;
    assert_eq!(first.bytes().await.unwrap(), data);

    // Another repository that the upstream says does not hold it: refused, though the bytes are here.
    up.clear_requests();
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp = proxy
            .request(method.clone(), &format!("/v2/other/repo/blobs/{d}"), None)
            .await;
        assert_eq!(resp.status(), 404, "{method}");
    }
    assert_eq!(up.count("GET", "/blobs/"), 0);

    // A repository that does hold it upstream: confirmed by one HEAD, served without a copy.
    up.put_blob("other/holder", data.clone());
    up.clear_requests();
    let resp = proxy
        .get(&format!("/v2/other/holder/blobs/{d}"), None)
        .await;
    assert_eq!(resp.bytes().await.unwrap(), data);
    assert_eq!(up.count_authorized("HEAD", "/blobs/"), 1);
    assert_eq!(up.count("GET", "/blobs/"), 0);
}

#[tokio::test]
async fn unknown_blobs_are_404_blob_unknown() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    let d = sha256(b"never pushed");
    expect_oci_error(
        proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let head = proxy.head(&format!("/v2/team/app/blobs/{d}"), None).await;
    assert_eq!(head.status(), 404);
    assert!(proxy.all_files().is_empty());
    let _ = Bytes::new();
}

#[tokio::test]
async fn a_client_leaving_mid_blob_does_not_abort_the_fill() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(10, 16 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::start(&up).await;
    let path = format!("/v2/team/app/blobs/{d}");
    let mut first = proxy.get(&path, None).await;
    assert_eq!(first.status(), 200);
    assert!(first.chunk().await.unwrap().is_some());
    drop(first);
    let again = proxy.get(&path, None).await;
    assert_eq!(again.bytes().await.unwrap(), data);
    assert_eq!(
        up.count_authorized("GET", "/blobs/"),
        1,
        "the fill went on without its client"
    );
    assert!(proxy.has_blob(&d));
}
