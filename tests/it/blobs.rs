//! Blobs through the proxy with the filesystem store: streamed, verified, published whole or not
//! at all, one upstream fetch per digest, scoped per repository. The fan-out tests at the end run
//! on both stores: every request during a fill streams from its spill file at its own pace.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;

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

// ---------------------------------------------------------------------------------------------
// Fan-out fills, on both stores: a fill never waits for its slowest party.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Fs,
    S3,
}

const KINDS: [Kind; 2] = [Kind::Fs, Kind::S3];

/// A proxy of `kind` in front of `up`; over S3 its fills spill into `spill` (the filesystem store
/// spills into its own temporary directory).
async fn proxy_for(kind: Kind, up: &FakeRegistry, spill: &std::path::Path) -> Proxy {
    match kind {
        Kind::Fs => Proxy::start(up).await,
        Kind::S3 => Proxy::start_s3_spilling(up, spill).await,
    }
}

/// Whether `digest` is published in the proxy's store.
async fn published(proxy: &Proxy, kind: Kind, digest: &str) -> bool {
    match kind {
        Kind::Fs => proxy.has_blob(digest),
        Kind::S3 => proxy.s3().has_blob(digest).await,
    }
}

/// A blob GET's whole body; a 307 (a blob stored by now, over S3) is followed.
async fn whole_blob(proxy: &Proxy, path: &str) -> Bytes {
    let resp = proxy.get(path, None).await;
    let resp = if resp.status() == 307 {
        let location = header(&resp, "location").unwrap().to_owned();
        proxy
            .s3()
            .plain_client()
            .get(location)
            .send()
            .await
            .unwrap()
    } else {
        resp
    };
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap()
}

/// Reads a response's body chunk by chunk: the bytes received and whether it ended cleanly.
async fn drain(mut resp: reqwest::Response) -> (usize, bool) {
    let mut got = 0;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// A client that reads 64 KiB of a cold 64 MiB blob and then stops reading holds only its own
/// connection: a second client gets the exact bytes, and the fill (with S3, the upload too)
/// completes while the first one still stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_holds_up_no_one() {
    for kind in KINDS {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let data = blob_bytes(40, 64 * 1024 * 1024);
        let d = up.put_blob("team/app", data.clone());
        let spill = tempfile::tempdir().unwrap();
        let proxy = proxy_for(kind, &up, spill.path()).await;
        let path = format!("/v2/team/app/blobs/{d}");

        let mut stalled = proxy.get(&path, None).await;
        assert_eq!(stalled.status(), 200, "{kind:?}");
        let mut read = 0;
        while read < 64 * 1024 {
            read += stalled.chunk().await.unwrap().expect("bytes").len();
        }
        let second = tokio::time::timeout(Duration::from_secs(30), whole_blob(&proxy, &path))
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: the second client waited for the stalled one"));
        assert_eq!(second.len(), data.len(), "{kind:?}");
        assert_eq!(sha256(&second), d, "{kind:?}");
        eventually(
            "the blob is published while a client stalls",
            Duration::from_secs(30),
            || published(&proxy, kind, &d),
        )
        .await;
        assert_eq!(up.count_authorized("GET", "/blobs/"), 1, "{kind:?}");
        // The stalled client is still connected, and its bytes are still there for it.
        assert!(stalled.chunk().await.unwrap().is_some(), "{kind:?}");
        drop(stalled);
        if kind == Kind::S3 {
            eventually(
                "the spill file goes with its last reader",
                Duration::from_secs(10),
                || async { files_under(spill.path()).is_empty() },
            )
            .await;
        }
    }
}

/// A client reading at 256 KiB/s and a fast client on one cold blob: the fast one is done while
/// the slow one has read a fraction (it would need over four minutes for the whole blob).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_slow_a_fast_one() {
    for kind in KINDS {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        // Larger than what loopback socket buffers absorb (several MiB each way).
        let data = blob_bytes(41, 64 * 1024 * 1024);
        let d = up.put_blob("team/app", data.clone());
        let spill = tempfile::tempdir().unwrap();
        let proxy = proxy_for(kind, &up, spill.path()).await;
        let path = format!("/v2/team/app/blobs/{d}");

        let mut slow = proxy.get(&path, None).await;
        assert_eq!(slow.status(), 200, "{kind:?}");
        let slow_read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reader = tokio::spawn({
            let slow_read = Arc::clone(&slow_read);
            async move {
                // Paced at 256 KiB/s: the pause is the pace, not a synchronisation.
                while let Ok(Some(c)) = slow.chunk().await {
                    slow_read.fetch_add(c.len(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs_f64(c.len() as f64 / 262_144.0)).await;
                }
            }
        });
        let fast = tokio::time::timeout(Duration::from_secs(20), whole_blob(&proxy, &path))
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: the fast client went at the slow one's pace"));
        assert_eq!(sha256(&fast), d, "{kind:?}");
        let slow_had = slow_read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            slow_had < data.len() / 2,
            "{kind:?}: the slow client had read {slow_had} bytes when the fast one was done"
        );
        reader.abort();
        assert_eq!(up.count_authorized("GET", "/blobs/"), 1, "{kind:?}");
    }
}

/// Eight concurrent requests during one cold fill, some with a `Range`: all stream from the
/// fill's spill file while the upstream is still sending. With the upstream held halfway, the
/// whole-blob clients already receive bytes and the ranges in the first half are answered in
/// full; once it goes on, everyone gets exact bytes, from one upstream GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_during_a_fill_streams_from_it() {
    for kind in KINDS {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let len = 6 * 1024 * 1024;
        let data = blob_bytes(42, len);
        let d = up.put_blob("team/app", data.clone());
        let spill = tempfile::tempdir().unwrap();
        let proxy = Arc::new(proxy_for(kind, &up, spill.path()).await);
        up.add_fault(
            FaultRule::new(Fault::Hold { at: len / 2 })
                .method("GET")
                .path("/blobs/"),
        );
        let path = format!("/v2/team/app/blobs/{d}");
        let get = |range: Option<String>| {
            let (proxy, path) = (Arc::clone(&proxy), path.clone());
            async move {
                let mut req = proxy.http.get(format!("{}{path}", proxy.url));
                if let Some(r) = range {
                    req = req.header("range", r);
                }
                req.send().await.unwrap()
            }
        };

        // Five whole-blob clients: each receives its first bytes while the upstream holds.
        let mut whole = Vec::new();
        for _ in 0..5 {
            let mut resp = get(None).await;
            assert_eq!(resp.status(), 200, "{kind:?}");
            assert_eq!(
                header(&resp, "content-length"),
                Some(len.to_string().as_str())
            );
            let first = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("{kind:?}: a joiner waited for the whole fill"))
                .unwrap()
                .expect("bytes");
            whole.push((resp, first));
        }
        // Ranges within the written half are answered in full, the upstream still holding.
        for (first, last) in [
            (0usize, 9usize),
            (1000, 200_999),
            (len / 2 - 100, len / 2 - 1),
        ] {
            let resp = get(Some(format!("bytes={first}-{last}"))).await;
            assert_eq!(resp.status(), 206, "{kind:?}");
            assert_eq!(
                header(&resp, "content-range"),
                Some(format!("bytes {first}-{last}/{len}").as_str())
            );
            let body = tokio::time::timeout(Duration::from_secs(20), resp.bytes())
                .await
                .unwrap_or_else(|_| panic!("{kind:?}: a written range waited for the fill"))
                .unwrap();
            assert_eq!(body, data.slice(first..=last), "{kind:?}");
        }
        // A range past the written part is answered once it is written; an unsatisfiable one
        // at once.
        let tail = get(Some("bytes=-1000".into())).await;
        assert_eq!(tail.status(), 206, "{kind:?}");
        let outside = get(Some(format!("bytes={len}-"))).await;
        assert_eq!(outside.status(), 416, "{kind:?}");
        assert!(!published(&proxy, kind, &d).await, "{kind:?}");
        // A HEAD during the fill is answered from it, without asking the upstream.
        let head = proxy.head(&path, None).await;
        assert_eq!(head.status(), 200, "{kind:?}");
        assert_eq!(
            header(&head, "content-length"),
            Some(len.to_string().as_str())
        );
        assert_eq!(header(&head, "docker-content-digest"), Some(d.as_str()));
        assert_eq!(up.count("HEAD", "/blobs/"), 0, "{kind:?}");

        up.release_held();
        assert_eq!(
            tail.bytes().await.unwrap(),
            data.slice(len - 1000..),
            "{kind:?}"
        );
        for (resp, first) in whole {
            let mut body = first.to_vec();
            body.extend_from_slice(&resp.bytes().await.unwrap());
            assert_eq!(sha256(&body), d, "{kind:?}");
        }
        assert_eq!(up.count_authorized("GET", "/blobs/"), 1, "{kind:?}");
        eventually("the blob is published", Duration::from_secs(30), || {
            published(&proxy, kind, &d)
        })
        .await;
    }
}

/// Tampered upstream bytes: every client streaming the fill is cut off before the end, nothing
/// is published, and no spill file, temporary file or multipart upload is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_fill_cuts_every_client_off_and_leaves_nothing() {
    for kind in KINDS {
        let up = FakeRegistry::start(FakeOptions::default()).await;
        let len = 4 * 1024 * 1024;
        let d = up.put_blob("team/app", blob_bytes(43, len));
        let spill = tempfile::tempdir().unwrap();
        let proxy = Arc::new(proxy_for(kind, &up, spill.path()).await);
        up.add_fault(
            FaultRule::new(Fault::TamperBody)
                .method("GET")
                .path("/blobs/"),
        );
        let path = format!("/v2/team/app/blobs/{d}");
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (proxy, path) = (Arc::clone(&proxy), path.clone());
            clients.push(tokio::spawn(async move {
                let resp = proxy.get(&path, None).await;
                let status = resp.status().as_u16();
                let (got, clean) = drain(resp).await;
                (status, got, clean)
            }));
        }
        for c in clients {
            let (status, got, clean) = c.await.unwrap();
            // Streamed (not made to wait for the verdict), and cut off before the end.
            assert_eq!(status, 200, "{kind:?}");
            assert!(
                !clean && got < len,
                "{kind:?}: a client got {got} bytes and a clean end of a tampered blob"
            );
        }
        assert!(!published(&proxy, kind, &d).await, "{kind:?}");
        match kind {
            Kind::Fs => assert_eq!(proxy.tmp_files(), Vec::<std::path::PathBuf>::new()),
            Kind::S3 => {
                assert_eq!(files_under(spill.path()), Vec::<std::path::PathBuf>::new());
                assert_eq!(proxy.s3().multipart_uploads().await, vec![]);
                assert_eq!(proxy.s3().object_keys("").await, Vec::<String>::new());
            }
        }
        // The next request starts a clean fill.
        up.clear_faults();
        assert_eq!(sha256(&whole_blob(&proxy, &path).await), d, "{kind:?}");
    }
}

/// A spill directory without room for the blob: the fill is not streamed but copied into S3,
/// and its client gets the redirect once it is stored; the log says why. (The real binary, for
/// its log.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spill_directory_falls_back_to_copy_then_redirect() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(44, 4 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill");
    let config = config_file(
        dir.path(),
        &format!(
            "{}{}",
            local_s3_config(&up.url(), &s3, ""),
            spill_table(&spill, "max_size = \"1MiB\"\n")
        ),
    );
    let (mut server, log) =
        ServerProcess::start_logged(&s3::binary_args(&config), &s3::AWS_ENV).await;
    let resp = no_redirects()
        .get(format!("{}/v2/team/app/blobs/{d}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307, "copied, then redirected");
    let location = header(&resp, "location").unwrap().to_owned();
    let body = s3.plain_client().get(location).send().await.unwrap();
    assert_eq!(body.bytes().await.unwrap(), data);
    assert!(files_under(&spill).is_empty());
    server.kill();
    let log = log.join().unwrap();
    assert!(
        log.contains("spill directory full") && log.contains(&d),
        "no log line says why the blob was not streamed:\n{log}"
    );
}

/// A spill directory that cannot be created (here: below a regular file) does not stop the
/// server: cold blobs over S3 are copied, then redirected, as with a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_spill_directory_falls_back_to_copy_then_redirect() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(45, 2 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let proxy = Proxy::start_s3_spilling(&up, &file.join("spill")).await;
    let resp = proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await;
    assert_eq!(resp.status(), 307, "copied, then redirected");
    let location = header(&resp, "location").unwrap().to_owned();
    let body = proxy
        .s3()
        .plain_client()
        .get(location)
        .send()
        .await
        .unwrap();
    assert_eq!(body.bytes().await.unwrap(), data);
}
