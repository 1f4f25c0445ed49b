//! Bounded load on loopback (fixed request counts; stops by itself): a warm cache answers every
//! one of 20,000 requests at concurrency 64 correctly, and 100 concurrent cold pulls of one image
//! fetch each blob and manifest from the upstream once. Figures are printed (`--nocapture`) and
//! recorded in bench/RESULTS.md; nothing here is timed.
//!
//! The RSS figures are the whole test process's (every integration test shares it): they are
//! this test's own only when it runs alone,
//! `cargo test --test it load:: -- --nocapture --test-threads=1`. Nothing asserts on them.

use std::sync::Arc;

use crate::support::*;
use futures_util::StreamExt;

/// The test process's resident set (shared with every test running alongside).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The requests of one image pull: (path, expected digest of the body).
fn pull_plan(repo: &str, img: &MultiArch) -> Vec<(String, String)> {
    let mut plan = vec![
        (format!("/v2/{repo}/manifests/v1"), img.index.digest.clone()),
        (
            format!("/v2/{repo}/manifests/{}", img.amd64.digest),
            img.amd64.digest.clone(),
        ),
    ];
    for d in img.amd64.blob_digests() {
        plan.push((format!("/v2/{repo}/blobs/{d}"), d));
    }
    plan
}

/// One request as a client makes it; a 307 (S3 store) is followed to the presigned URL, which
/// must serve the bytes. `http` must not follow redirects itself.
async fn check(http: &reqwest::Client, base: &str, path: &str, expected: &str, head: bool) {
    let url = format!("{base}{path}");
    let req = if head { http.head(url) } else { http.get(url) };
    let resp = req
        .header("accept", DOCKER_CLIENT_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(expected),
        "{path}"
    );
    let resp = if resp.status() == 307 && !head {
        let location = header(&resp, "location").expect("Location").to_owned();
        http.get(location).send().await.unwrap()
    } else {
        resp
    };
    assert_eq!(resp.status(), 200, "{path}");
    let body = resp.bytes().await.unwrap();
    if !head {
        assert_eq!(sha256(&body), expected, "{path}");
    }
}

/// A client for [`check`]: keeps connections, follows nothing by itself.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_answers_20000_requests_at_concurrency_64_correctly() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 300);
    let proxy = Proxy::start(&up).await;
    warm_load(&up, &img, &proxy, "filesystem").await;
}

/// Over S3 every blob GET is a 307 that the client follows to a presigned URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_s3_cache_answers_20000_requests_at_concurrency_64_correctly() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 302);
    let proxy = Proxy::start_s3(&up).await;
    warm_load(&up, &img, &proxy, "S3").await;
}

async fn warm_load(up: &FakeRegistry, img: &MultiArch, proxy: &Proxy, store: &str) {
    let plan = Arc::new(pull_plan("team/app", img));
    for (path, d) in plan.iter() {
        check(&proxy.http, &proxy.url, path, d, false).await;
    }
    up.clear_requests();
    let http = client();
    let before = rss_kib();
    let base = proxy.url.clone();
    let total = 20_000usize;
    futures_util::stream::iter(0..total)
        .map(|i| {
            let (http, base, plan) = (http.clone(), base.clone(), Arc::clone(&plan));
            async move {
                let (path, d) = &plan[i % plan.len()];
                check(&http, &base, path, d, i % 7 == 0).await;
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let after = rss_kib();
    println!(
        "warm load ({store} store): {total} requests at concurrency 64, all correct; test process RSS {before} KiB -> {after} KiB"
    );
    assert!(
        up.requests().is_empty(),
        "a warm request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_cold_pulls_fetch_everything_once() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 301);
    let proxy = Proxy::start(&up).await;
    cold_load(&up, &img, &proxy, "filesystem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_cold_pulls_over_s3_fetch_everything_once() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 303);
    let proxy = Proxy::start_s3(&up).await;
    cold_load(&up, &img, &proxy, "S3").await;
    // Each blob became one object, and no upload was left half done.
    let s3 = proxy.s3();
    for d in img.amd64.blob_digests() {
        let (alg, hex) = d.split_once(':').unwrap();
        assert!(
            s3.blob_keys("")
                .await
                .contains(&format!("blobs/{alg}/{hex}"))
        );
    }
    s3.assert_no_uploads().await;
}

async fn cold_load(up: &FakeRegistry, img: &MultiArch, proxy: &Proxy, store: &str) {
    let plan = Arc::new(pull_plan("team/app", img));
    let http = client();
    let base = proxy.url.clone();
    let pulls: Vec<_> = (0..100)
        .map(|_| {
            let (http, base, plan) = (http.clone(), base.clone(), Arc::clone(&plan));
            tokio::spawn(async move {
                for (path, d) in plan.iter() {
                    check(&http, &base, path, d, false).await;
                }
            })
        })
        .collect();
    for p in pulls {
        p.await.unwrap();
    }
    assert_eq!(up.count_authorized("GET", "/manifests/v1"), 1);
    assert_eq!(
        up.count_authorized("GET", &format!("/manifests/{}", img.amd64.digest)),
        1
    );
    for d in img.amd64.blob_digests() {
        assert_eq!(
            up.count_authorized("GET", &format!("/blobs/{d}")),
            1,
            "blob {d}"
        );
    }
    println!(
        "cold load ({store} store): 100 concurrent pulls, {} upstream requests in all",
        up.requests().len()
    );
    // Requests arriving while a blob's fill publishes it join that fill instead of asking the
    // upstream to confirm the repository holds it.
    assert_eq!(
        up.count("HEAD", "/blobs/"),
        0,
        "a pull asked the upstream about a blob it was filling"
    );
}
