//! Client authentication: htpasswd users, the registry token flow through our own `/token`
//! endpoint, and nothing reaching the upstream or the store without valid credentials.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;

async fn proxy_with_users(up: &FakeRegistry) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
    let extra = format!("auth = \"{}\"", path.display());
    (
        Proxy::with_config(&local_config_with(&up.url(), &extra)).await,
        dir,
    )
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn get_with(proxy: &Proxy, path: &str, authorization: &str) -> reqwest::Response {
    proxy
        .http
        .get(format!("{}{path}", proxy.url))
        .header("authorization", authorization)
        .header("accept", DOCKER_CLIENT_ACCEPT)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn without_credentials_clients_get_the_token_challenge_and_nothing_else() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 90);
    let (proxy, _dir) = proxy_with_users(&up).await;
    for path in [
        "/v2/",
        "/v2/team/app/manifests/v1",
        "/v2/team/app/tags/list",
    ] {
        let resp = proxy.get(path, Some(DOCKER_CLIENT_ACCEPT)).await;
        let host = proxy.url.trim_start_matches("http://");
        assert_eq!(
            header(&resp, "www-authenticate"),
            Some(format!("Bearer realm=\"http://{host}/token\",service=\"pullthrough\"").as_str()),
            "{path}"
        );
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
        let resp = get_with(&proxy, path, &basic("alice", "wrong")).await;
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
        let resp = get_with(&proxy, path, "Bearer not.a-token").await;
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    }
    assert!(
        up.requests().is_empty(),
        "an unauthenticated request reached the upstream"
    );
    assert!(proxy.all_files().is_empty());
}

#[tokio::test]
async fn the_token_flow_and_basic_credentials_both_work() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 91);
    let (proxy, _dir) = proxy_with_users(&up).await;

    let resp = get_with(
        &proxy,
        "/token?service=pullthrough&scope=repository:team/app:pull",
        &basic("alice", "wrong"),
    )
    .await;
    assert_eq!(
        header(&resp, "www-authenticate"),
        Some("Basic realm=\"pullthrough\"")
    );
    expect_oci_error(resp, 401, "UNAUTHORIZED").await;

    let resp = get_with(
        &proxy,
        "/token?service=pullthrough&scope=repository:team/app:pull",
        &basic("alice", "s3cret"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], token.as_str());
    assert_eq!(body["expires_in"], 300);

    let resp = get_with(
        &proxy,
        "/v2/team/app/manifests/v1",
        &format!("Bearer {token}"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(img.index.digest.as_str())
    );
    let resp = get_with(
        &proxy,
        "/v2/team/app/manifests/v1",
        &basic("alice", "s3cret"),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // A tampered token, and the same token once expired, are refused.
    let mut tampered = token.clone();
    tampered.insert(0, 'x');
    let resp = get_with(&proxy, "/v2/", &format!("Bearer {tampered}")).await;
    expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    proxy.advance(Duration::from_secs(301));
    let resp = get_with(&proxy, "/v2/", &format!("Bearer {token}")).await;
    expect_oci_error(resp, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn a_registry_client_logs_in_and_pulls() {
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::secrets::RegistryAuth;
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 92);
    let (proxy, _dir) = proxy_with_users(&up).await;
    let host = proxy.url.trim_start_matches("http://").to_owned();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: oci_client::Reference = format!("{host}/team/app:v1").parse().unwrap();
    let denied = client
        .pull_manifest(&reference, &RegistryAuth::Anonymous)
        .await;
    assert!(denied.is_err(), "anonymous pull must fail");
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let auth = RegistryAuth::Basic("alice".into(), "s3cret".into());
    let (_, digest) = client
        .pull_manifest(&reference, &auth)
        .await
        .expect("pull with login");
    assert_eq!(digest, img.index.digest);
}
