//! Routing (`?ns=`, path prefixes, the default upstream, Docker Hub's `library/`), hostile paths,
//! read-only methods, tags lists and referrers.

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a request with the path exactly as given (HTTP clients normalise `..` and `%2e%2e`
/// away; an attacker's client does not). Returns status and body.
async fn raw_get(proxy: &Proxy, path: &str) -> (u16, String) {
    let addr = proxy.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn two_upstreams(default_url: &str, other_url: &str, other_extra: &str) -> String {
    format!(
        r#"default_upstream = "local"
request_timeout = "2s"

[[upstream]]
alias = "local"
url = "{default_url}"
insecure = true

[[upstream]]
alias = "other.example"
url = "{other_url}"
insecure = true
other_names = ["mirror.other.example"]
{other_extra}
"#
    )
}

#[tokio::test]
async fn base_endpoint_answers_json() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    for p in ["/v2/", "/v2"] {
        let resp = proxy.get(p, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(resp.text().await.unwrap(), "{}");
    }
    expect_oci_error(proxy.get("/nothing/here", None).await, 404, "UNSUPPORTED").await;
}

#[tokio::test]
async fn upstream_is_chosen_by_ns_then_path_prefix_then_default() {
    let default = FakeRegistry::start(FakeOptions::default()).await;
    let other = FakeRegistry::start(FakeOptions::default()).await;
    let on_default = push_oci_index(&default, "team/app", "v1", 20);
    let on_other = push_oci_index(&other, "team/app", "v1", 21);
    let proxy = Proxy::with_config(&two_upstreams(&default.url(), &other.url(), "")).await;
    let accept = Some(DOCKER_CLIENT_ACCEPT);

    let d = |resp: &reqwest::Response| header(resp, "docker-content-digest").map(str::to_owned);
    let resp = proxy.get("/v2/team/app/manifests/v1", accept).await;
    assert_eq!(d(&resp), Some(on_default.index.digest.clone()));
    let resp = proxy
        .get("/v2/other.example/team/app/manifests/v1", accept)
        .await;
    assert_eq!(d(&resp), Some(on_other.index.digest.clone()));
    let resp = proxy
        .get("/v2/mirror.other.example/team/app/manifests/v1", accept)
        .await;
    assert_eq!(d(&resp), Some(on_other.index.digest.clone()));
    // containerd as a mirror: the repository path plus ?ns=<registry>, echoed back.
    let resp = proxy
        .get("/v2/team/app/manifests/v1?ns=other.example", accept)
        .await;
    assert_eq!(header(&resp, "oci-namespace"), Some("other.example"));
    assert_eq!(d(&resp), Some(on_other.index.digest.clone()));

    // Cache keys use the canonical alias, whatever name the client used.
    assert!(
        proxy
            .root()
            .join("repos/other.example/team/app/_tags/v1")
            .exists()
    );
    assert!(!proxy.root().join("repos/mirror.other.example").exists());

    // Hosts that are not configured are refused before any upstream call.
    default.clear_requests();
    other.clear_requests();
    let msg = expect_oci_error(
        proxy
            .get("/v2/team/app/manifests/v1?ns=evil.example", accept)
            .await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    assert!(msg.contains("evil.example"), "{msg}");
    let msg = expect_oci_error(
        proxy
            .get("/v2/evil.example/team/app/manifests/v1", accept)
            .await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    assert!(msg.contains("evil.example"), "{msg}");
    assert!(default.requests().is_empty() && other.requests().is_empty());
}

#[tokio::test]
async fn docker_hub_style_names_get_the_library_prefix() {
    let default = FakeRegistry::start(FakeOptions::default()).await;
    let hub = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&hub, "library/alpine", "3.20", 22);
    let proxy = Proxy::with_config(&two_upstreams(
        &default.url(),
        &hub.url(),
        "library_prefix = true",
    ))
    .await;
    for path in [
        "/v2/other.example/alpine/manifests/3.20",
        "/v2/other.example/library/alpine/manifests/3.20",
        "/v2/alpine/manifests/3.20?ns=other.example",
    ] {
        let resp = proxy.get(path, Some(DOCKER_CLIENT_ACCEPT)).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            header(&resp, "docker-content-digest"),
            Some(img.index.digest.as_str())
        );
    }
    assert!(
        proxy
            .root()
            .join("repos/other.example/library/alpine/_tags/3.20")
            .exists()
    );
    assert_eq!(
        hub.count_authorized("GET", "/manifests/3.20"),
        1,
        "one cache entry for every spelling"
    );
}

#[tokio::test]
async fn hostile_paths_get_400_and_touch_nothing() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    let digest = sha256(b"x");
    let cases = [
        ("/v2/../../etc/manifests/latest", "NAME_INVALID"),
        ("/v2/a/../../../etc/manifests/latest", "NAME_INVALID"),
        ("/v2/%2e%2e/%2e%2e/etc/manifests/latest", "NAME_INVALID"),
        ("/v2/a%2fb/manifests/latest", "NAME_INVALID"),
        ("/v2//etc/passwd/manifests/latest", "NAME_INVALID"),
        ("/v2/Team/App/manifests/latest", "NAME_INVALID"),
        ("/v2/team/app/manifests/..", "NAME_INVALID"),
        ("/v2/team/app/manifests/%2e%2e", "NAME_INVALID"),
        ("/v2/team/app/manifests/sha256:../../x", "NAME_INVALID"),
        ("/v2/team/app/manifests/sha256:..", "DIGEST_INVALID"),
        ("/v2/team/app/blobs/sha256:1234", "DIGEST_INVALID"),
        ("/v2/team/app/blobs/..%2f..%2fetc", "NAME_INVALID"),
        ("/v2/team/app/referrers/latest", "DIGEST_INVALID"),
    ];
    for (path, code) in cases {
        let (status, body) = raw_get(&proxy, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
        assert_eq!(v["errors"][0]["code"], code, "{path}");
    }
    let long_name = format!("/v2/{}/manifests/latest", "a".repeat(300));
    assert_eq!(raw_get(&proxy, &long_name).await.0, 400);
    let _ = digest;
    assert!(
        up.requests().is_empty(),
        "an invalid request reached the upstream"
    );
    assert!(
        proxy.all_files().is_empty(),
        "an invalid request wrote {:?}",
        proxy.all_files()
    );
    let parent = proxy.root().parent().unwrap();
    assert!(!parent.join("etc").exists());
}

#[tokio::test]
async fn push_methods_get_405_unsupported() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    let d = sha256(b"x");
    for (method, path) in [
        (
            reqwest::Method::POST,
            "/v2/team/app/blobs/uploads/".to_owned(),
        ),
        (reqwest::Method::PUT, "/v2/team/app/manifests/v1".to_owned()),
        (
            reqwest::Method::PATCH,
            "/v2/team/app/blobs/uploads/abc".to_owned(),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/team/app/manifests/{d}"),
        ),
        (reqwest::Method::DELETE, format!("/v2/team/app/blobs/{d}")),
        (
            reqwest::Method::GET,
            "/v2/team/app/blobs/uploads/abc".to_owned(),
        ),
        (reqwest::Method::POST, "/v2/".to_owned()),
    ] {
        let resp = proxy.request(method.clone(), &path, None).await;
        assert_eq!(header(&resp, "allow"), Some("GET, HEAD"), "{method} {path}");
        expect_oci_error(resp, 405, "UNSUPPORTED").await;
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn tags_list_is_proxied_with_our_own_pagination_links_and_cached_tags_on_failure() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    for (i, t) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let img = push_oci_image(&up, "team/app", "amd64", 1, 30 + i as u64);
        up.tag("team/app", t, &img.digest);
    }
    let proxy = Proxy::start(&up).await;
    let resp = proxy.get("/v2/team/app/tags/list?n=2", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "link"),
        Some("</v2/team/app/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let resp = proxy.get("/v2/team/app/tags/list?n=2&last=b", None).await;
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "d"]));
    // The path-prefix spelling gets links in that spelling.
    let resp = proxy.get("/v2/local/team/app/tags/list?n=2", None).await;
    assert_eq!(
        header(&resp, "link"),
        Some("</v2/local/team/app/tags/list?n=2&last=b>; rel=\"next\"")
    );

    // Pull two tags, then lose the upstream: the tags the cache knows are listed.
    for t in ["c", "a"] {
        assert_eq!(
            proxy
                .get(&format!("/v2/team/app/manifests/{t}"), None)
                .await
                .status(),
            200
        );
    }
    up.add_fault(FaultRule::new(Fault::Status(503)).path("/tags/list"));
    let resp = proxy.get("/v2/team/app/tags/list", None).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "warning").unwrap().contains("stale"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "team/app", "tags": ["a", "c"]})
    );
    // With nothing known, the failure itself.
    expect_oci_error(
        proxy.get("/v2/team/none/tags/list", None).await,
        502,
        "UNAVAILABLE",
    )
    .await;
    up.clear_faults();
    expect_oci_error(
        proxy.get("/v2/team/none/tags/list", None).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn referrers_are_proxied_cached_and_404_passes_through() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 40);
    let sbom = push_artifact_with_subject(&up, "team/app", &img.amd64, 41);
    let proxy = Proxy::start(&up).await;
    let path = format!("/v2/team/app/referrers/{}", img.amd64.digest);
    let resp = proxy.get(&path, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some(OCI_INDEX));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"][0]["digest"], sbom.digest.as_str());
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sbom.v1+json"
    );

    // Within the tag TTL: from the cache.
    up.clear_requests();
    assert_eq!(proxy.get(&path, None).await.status(), 200);
    assert!(up.requests().is_empty());

    // The artifact itself comes through by digest with its bytes.
    let resp = proxy
        .get(
            &format!("/v2/team/app/manifests/{}", sbom.digest),
            Some(OCI_MANIFEST),
        )
        .await;
    assert_eq!(resp.bytes().await.unwrap(), sbom.bytes);

    // An upstream without the referrers API: 404, so clients use the tag schema.
    up.add_fault(FaultRule::new(Fault::Status(404)).path("/referrers/"));
    let other = format!("/v2/team/app/referrers/{}", img.arm64.digest);
    expect_oci_error(proxy.get(&other, None).await, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn the_longest_legal_names_and_tags_work() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let repo = vec!["n".repeat(50); 5].join("/"); // 254 characters
    let tag = "t".repeat(128);
    let img = push_oci_index(&up, &repo, &tag, 70);
    let proxy = Proxy::start(&up).await;
    let resp = proxy
        .get(
            &format!("/v2/{repo}/manifests/{tag}"),
            Some(DOCKER_CLIENT_ACCEPT),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), img.index.bytes);
    let blob = &img.amd64.blob_digests()[1];
    let resp = proxy.get(&format!("/v2/{repo}/blobs/{blob}"), None).await;
    assert_eq!(sha256(&resp.bytes().await.unwrap()), *blob);
    let tags = proxy.get(&format!("/v2/{repo}/tags/list"), None).await;
    assert_eq!(tags.status(), 200);
    // One character more is refused before anything happens.
    let too_long = format!("{repo}nn"); // 256 characters
    let resp = proxy
        .get(&format!("/v2/{too_long}/manifests/{tag}"), None)
        .await;
    expect_oci_error(resp, 400, "NAME_INVALID").await;
}

#[tokio::test]
async fn repositories_outside_the_allow_list_are_denied_before_any_call() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let ok = push_oci_index(&up, "team/app", "v1", 80);
    push_oci_index(&up, "other/app", "v1", 81);
    let toml = format!(
        "{}allow = [\"team/*\", \"library/**\"]\n",
        local_config(&up.url())
    );
    let proxy = Proxy::with_config(&toml).await;
    let resp = proxy.manifest("team/app", "v1").await;
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(ok.index.digest.as_str())
    );

    up.clear_requests();
    let files_before = proxy.all_files();
    let blob = &ok.amd64.blob_digests()[0];
    for path in [
        "/v2/other/app/manifests/v1".to_owned(),
        "/v2/team/app/nested/manifests/v1".to_owned(),
        format!("/v2/other/app/blobs/{blob}"),
        "/v2/other/app/tags/list".to_owned(),
        format!("/v2/other/app/referrers/{blob}"),
        "/v2/local/other/app/manifests/v1".to_owned(),
    ] {
        let msg = expect_oci_error(
            proxy.get(&path, Some(DOCKER_CLIENT_ACCEPT)).await,
            403,
            "DENIED",
        )
        .await;
        assert!(msg.contains("allow-list"), "{path}: {msg}");
    }
    assert!(
        up.requests().is_empty(),
        "a denied request reached the upstream"
    );
    assert_eq!(
        proxy.all_files(),
        files_before,
        "a denied request changed the store"
    );
}

#[tokio::test]
async fn a_reference_that_is_neither_tag_nor_digest_is_manifest_unknown() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    for path in [
        "/v2/team/app/manifests/.INVALID_MANIFEST_NAME",
        "/v2/team/app/manifests/-x",
        &format!("/v2/team/app/manifests/{}", "t".repeat(129)),
    ] {
        let (status, body) = raw_get(&proxy, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN", "{path}");
        let head = proxy.head(path, None).await;
        assert_eq!(head.status(), 404, "HEAD {path}");
    }
    // A malformed digest stays a bad request.
    let (status, body) = raw_get(&proxy, "/v2/team/app/manifests/sha256:xyz").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    assert!(
        up.requests().is_empty(),
        "an invalid reference reached the upstream"
    );
    assert!(proxy.all_files().is_empty());
}

/// The tags of one `tags/list` answer and its `Link`.
async fn tags_page(proxy: &Proxy, path: &str) -> (Vec<String>, Option<String>) {
    let resp = proxy.get(path, None).await;
    assert_eq!(resp.status(), 200, "{path}");
    let link = header(&resp, "link").map(str::to_owned);
    let v: serde_json::Value = resp.json().await.unwrap();
    let tags = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (tags, link)
}

/// Follows `Link`s from `path`, returning every page and the links seen.
async fn tags_pages(proxy: &Proxy, path: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let (mut pages, mut links) = (Vec::new(), Vec::new());
    let mut next = Some(path.to_owned());
    while let Some(p) = next.take() {
        assert!(pages.len() < 10, "pagination does not end: {links:?}");
        let (tags, link) = tags_page(proxy, &p).await;
        pages.push(tags);
        if let Some(l) = link {
            let url = l
                .split_once('<')
                .unwrap()
                .1
                .split_once('>')
                .unwrap()
                .0
                .to_owned();
            links.push(l);
            next = Some(url);
        }
    }
    (pages, links)
}

#[tokio::test]
async fn tags_list_is_sorted_and_paged_by_the_proxy_whatever_the_upstream_does_with_n_and_last() {
    let sorted = ["V2", "a", "b", "c", "v10"];
    for paging in [
        TagsPaging::IgnoreLast,
        TagsPaging::Always(2),
        TagsPaging::Honour,
    ] {
        let up = FakeRegistry::start(FakeOptions {
            tags_paging: paging,
            ..FakeOptions::default()
        })
        .await;
        let img = push_oci_image(&up, "team/app", "amd64", 1, 90);
        for t in ["v10", "b", "a", "V2", "c"] {
            up.tag("team/app", t, &img.digest);
        }
        let proxy = Proxy::start(&up).await;
        let (all, links) = tags_pages(&proxy, "/v2/team/app/tags/list").await;
        assert_eq!(
            all,
            vec![sorted.to_vec()],
            "{paging:?}: the whole list, one page"
        );
        assert!(links.is_empty());

        let (pages, links) = tags_pages(&proxy, "/v2/team/app/tags/list?n=2").await;
        assert_eq!(
            pages,
            vec![vec!["V2", "a"], vec!["b", "c"], vec!["v10"]],
            "{paging:?}"
        );
        assert_eq!(
            links,
            [
                "</v2/team/app/tags/list?n=2&last=a>; rel=\"next\"",
                "</v2/team/app/tags/list?n=2&last=c>; rel=\"next\"",
            ]
        );
        assert_eq!(
            tags_page(&proxy, "/v2/team/app/tags/list?last=b").await,
            (vec!["c".to_owned(), "v10".to_owned()], None)
        );
        assert_eq!(
            tags_page(&proxy, "/v2/team/app/tags/list?n=0").await,
            (vec![], None)
        );
        let (_, link) = tags_page(&proxy, "/v2/team/app/tags/list?n=4&ns=local").await;
        assert_eq!(
            link.as_deref(),
            Some("</v2/team/app/tags/list?n=4&last=c&ns=local>; rel=\"next\"")
        );

        // The upstream gone, the tags the cache knows follow the same rules.
        for t in ["c", "V2", "a"] {
            let resp = proxy
                .get(&format!("/v2/team/app/manifests/{t}"), None)
                .await;
            assert_eq!(resp.status(), 200);
        }
        up.add_fault(FaultRule::new(Fault::Status(503)).path("/tags/list"));
        let (pages, links) = tags_pages(&proxy, "/v2/team/app/tags/list?n=2").await;
        assert_eq!(pages, vec![vec!["V2", "a"], vec!["c"]]);
        assert_eq!(links, ["</v2/team/app/tags/list?n=2&last=a>; rel=\"next\""]);
    }
}

#[tokio::test]
async fn referrers_pages_link_to_the_referrers_path() {
    let up = FakeRegistry::start(FakeOptions {
        referrers_page_size: Some(2),
        ..FakeOptions::default()
    })
    .await;
    let img = push_oci_index(&up, "team/app", "v1", 95);
    let mut expected: Vec<String> = (0..3)
        .map(|i| push_artifact_with_subject(&up, "team/app", &img.amd64, 96 + i).digest)
        .collect();
    let proxy = Proxy::start(&up).await;
    let base = format!("/v2/team/app/referrers/{}", img.amd64.digest);
    let mut next = Some(base.clone());
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages <= 3, "pagination does not end");
        let resp = proxy.get(&path, None).await;
        assert_eq!(resp.status(), 200, "{path}");
        if let Some(l) = header(&resp, "link") {
            let url = l.split_once('<').unwrap().1.split_once('>').unwrap().0;
            assert!(
                url.starts_with(&format!("{base}?")),
                "a referrers page links elsewhere: {l}"
            );
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            next = Some(url.to_owned());
        }
        let v: serde_json::Value = resp.json().await.unwrap();
        for m in v["manifests"].as_array().unwrap() {
            seen.push(m["digest"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(pages, 2);
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
    // The first page again, now from the cache: the same link.
    up.clear_requests();
    let resp = proxy.get(&base, None).await;
    assert!(header(&resp, "link").is_some_and(|l| l.contains("/referrers/")));
    assert!(up.requests().is_empty());
}
