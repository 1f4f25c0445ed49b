//! The upstream token flow: anonymous Bearer, Bearer with configured credentials, Basic; tokens
//! cached per repository scope; refused credentials become 403 DENIED naming the upstream.

use crate::support::*;

fn config_with_credentials(url: &str, user: &str, pass: &str) -> String {
    format!(
        r#"default_upstream = "local"
request_timeout = "2s"

[[upstream]]
alias = "local"
url = "{url}"
insecure = true
username = "{user}"
password = "{pass}"
"#
    )
}

/// Asserts that a proxy without upstream credentials gets 403 DENIED for `repo:v1`.
async fn assert_anonymous_pull_denied(up: &FakeRegistry, repo: &str) {
    let anonymous = Proxy::start(up).await;
    expect_oci_error(anonymous.manifest(repo, "v1").await, 403, "DENIED").await;
}

#[tokio::test]
async fn anonymous_bearer_tokens_are_fetched_once_per_repository() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let a = push_oci_index(&up, "team/a", "v1", 60);
    let b = push_oci_index(&up, "team/b", "v1", 61);
    let proxy = Proxy::start(&up).await;
    for (repo, img) in [("team/a", &a), ("team/b", &b)] {
        for d in [&img.index.digest, &img.amd64.digest, &img.arm64.digest] {
            let resp = proxy
                .get(
                    &format!("/v2/{repo}/manifests/{d}"),
                    Some(DOCKER_CLIENT_ACCEPT),
                )
                .await;
            assert_eq!(resp.status(), 200);
        }
    }
    assert_eq!(
        up.count("GET", "/token"),
        2,
        "one token per repository scope"
    );
    let tokens: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert!(
        tokens[0]
            .query
            .as_deref()
            .unwrap()
            .contains("scope=repository%3Ateam%2Fa%3Apull")
    );
    // Only the very first request took a 401: the realm is then known, so the second
    // repository's token is fetched before its first request.
    let unauthorized = up.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(unauthorized, 1);
}

#[tokio::test]
async fn configured_credentials_are_used_for_the_token() {
    let up = FakeRegistry::start(FakeOptions {
        auth: FakeAuth::BearerWithCredentials {
            username: "robot".into(),
            password: "s3cret".into(),
        },
        ..FakeOptions::default()
    })
    .await;
    let img = push_oci_index(&up, "private/app", "v1", 62);
    let good = Proxy::with_config(&config_with_credentials(&up.url(), "robot", "s3cret")).await;
    let resp = good.manifest("private/app", "v1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(img.index.digest.as_str())
    );

    let bad = Proxy::with_config(&config_with_credentials(&up.url(), "robot", "wrong")).await;
    let msg = expect_oci_error(bad.manifest("private/app", "v1").await, 403, "DENIED").await;
    assert!(msg.contains("local"), "{msg}");
    assert!(bad.all_files().is_empty());

    assert_anonymous_pull_denied(&up, "private/app").await;
}

#[tokio::test]
async fn basic_auth_upstreams_work_with_credentials() {
    let up = FakeRegistry::start(FakeOptions {
        auth: FakeAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        },
        ..FakeOptions::default()
    })
    .await;
    let img = push_oci_index(&up, "team/app", "v1", 63);
    let proxy = Proxy::with_config(&config_with_credentials(&up.url(), "u", "p")).await;
    for _ in 0..3 {
        let resp = proxy.manifest("team/app", &img.amd64.digest).await;
        assert_eq!(resp.status(), 200);
    }
    let blob = &img.amd64.blob_digests()[0];
    assert_eq!(
        proxy
            .get(&format!("/v2/team/app/blobs/{blob}"), None)
            .await
            .status(),
        200
    );
    // The first request learned that Basic is wanted; later ones send it straight away.
    assert_eq!(up.requests().iter().filter(|r| r.status == 401).count(), 1);

    assert_anonymous_pull_denied(&up, "team/app").await;
}

#[tokio::test]
async fn cached_content_needs_no_token_when_the_token_endpoint_is_down() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 64);
    let proxy = Proxy::start(&up).await;
    let by_digest = format!("/v2/team/app/manifests/{}", img.amd64.digest);
    assert_eq!(
        proxy
            .get(&by_digest, Some(DOCKER_CLIENT_ACCEPT))
            .await
            .status(),
        200
    );
    up.add_fault(FaultRule::new(Fault::Status(500)).path("/token"));
    up.clear_requests();
    assert_eq!(
        proxy
            .get(&by_digest, Some(DOCKER_CLIENT_ACCEPT))
            .await
            .status(),
        200
    );
    assert!(up.requests().is_empty());
}
