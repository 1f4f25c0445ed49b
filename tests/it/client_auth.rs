//! Client authentication: htpasswd users (from a file or from an AWS Secrets Manager secret,
//! read lazily through the fake AWS endpoint of `crate::support::lambda`), the registry token flow
//! through our own `/token` endpoint, and nothing reaching the upstream or the store without
//! valid credentials.

use std::sync::Arc;
use std::time::Duration;

use crate::support::lambda::{FakeAws, Source, call, function};
use crate::support::*;
use base64::Engine as _;
use pullthrough::cache::{Clock, Services};

/// A proxy whose one htpasswd user is alice (password `s3cret`).
async fn proxy_with_users(up: &FakeRegistry) -> (Proxy, tempfile::TempDir) {
    proxy_with_limits(up, &[("alice", "s3cret")], 4, "").await
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

/// `token`, as `Authorization: Bearer`, opens the manifest `team/app:v1` (of digest `digest`).
async fn bearer_opens_the_manifest(proxy: &Proxy, token: &str, digest: &str) {
    let path = "/v2/team/app/manifests/v1";
    let resp = get_with(proxy, path, &format!("Bearer {token}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest));
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

    bearer_opens_the_manifest(&proxy, &token, &img.index.digest).await;
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

/// containerd, when it has credentials, first asks for a token with an OAuth2 password grant
/// (a form-encoded POST, what `ctr images pull --user` sends) and falls back to GET with Basic
/// only after an error; the grant is answered directly.
#[tokio::test]
async fn the_oauth2_password_grant_gives_a_token() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 93);
    let (proxy, _dir) = proxy_with_users(&up).await;
    let post = |body: String, content_type: &'static str| {
        proxy
            .http
            .post(format!("{}/token", proxy.url))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let form = |password: &str| {
        let mut f = url::form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", "password")
            .append_pair("username", "alice")
            .append_pair("password", password)
            .append_pair("service", "pullthrough")
            .append_pair("scope", "repository:team/app:pull")
            .append_pair("client_id", "containerd-client");
        f.finish()
    };
    const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

    let resp = post(form("s3cret"), FORM).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(body["expires_in"], 300);
    bearer_opens_the_manifest(&proxy, &token, &img.index.digest).await;

    // A wrong password, another grant, or the fields in another content type: no token.
    let refresh = "grant_type=refresh_token&refresh_token=x&service=pullthrough".to_owned();
    for (body, content_type) in [
        (form("wrong"), FORM),
        (refresh, FORM),
        (form("s3cret"), "text/plain"),
    ] {
        let resp = post(body, content_type).await.unwrap();
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    }
    // Basic on a POST still works (the fields are optional).
    let resp = proxy
        .http
        .post(format!("{}/token", proxy.url))
        .header("authorization", basic("alice", "s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
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

// --- Users from a Secrets Manager secret ---------------------------------------------------

/// In us-east-1: the region the fake AWS endpoint checks signatures for.
const USERS_ARN: &str =
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:pullthrough/users-AbCdEf";

/// htpasswd text with bcrypt entries (cost 4, the minimum, to keep the tests fast).
fn htpasswd(users: &[(&str, &str)]) -> String {
    htpasswd_with_cost(users, 4)
}

/// htpasswd text with bcrypt entries of `cost`.
fn htpasswd_with_cost(users: &[(&str, &str)], cost: u32) -> String {
    users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, cost).unwrap()))
        .collect()
}

fn secret_config(up: &FakeRegistry, arn: &str, extra: &str) -> String {
    local_config_with(&up.url(), &format!("auth = \"{arn}\"\n{extra}"))
}

fn with_secrets(aws: &FakeAws) -> Services {
    Services {
        secrets: Some(aws.secrets_manager()),
        ..Services::default()
    }
}

/// A proxy whose users are in the secret [`USERS_ARN`] of `aws`.
async fn proxy_with_secret(up: &FakeRegistry, aws: &FakeAws, extra: &str) -> Proxy {
    Proxy::with_services(&secret_config(up, USERS_ARN, extra), with_secrets(aws)).await
}

async fn token_for(proxy: &Proxy, user: &str, password: &str) -> String {
    let resp = get_with(
        proxy,
        "/token?service=pullthrough&scope=repository:team/app:pull",
        &basic(user, password),
    )
    .await;
    assert_eq!(resp.status(), 200, "token for {user}");
    let body: serde_json::Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn status_with(proxy: &Proxy, path: &str, authorization: &str) -> u16 {
    get_with(proxy, path, authorization).await.status().as_u16()
}

/// Asserts the status each `Authorization` value gets on `path`, one request after the other.
async fn expect_statuses(proxy: &Proxy, path: &str, cases: &[(String, u16)]) {
    for (authorization, status) in cases {
        assert_eq!(
            status_with(proxy, path, authorization).await,
            *status,
            "{authorization}"
        );
    }
}

#[tokio::test]
async fn users_from_a_secret_log_in_with_basic_and_tokens_and_pull() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 93);
    let aws = FakeAws::start().await;
    aws.put_secret(
        USERS_ARN,
        &htpasswd(&[("alice", "s3cret"), ("bob", "hunter2")]),
    );
    let proxy = proxy_with_secret(&up, &aws, "").await;
    assert!(aws.calls().is_empty(), "nothing is read at start-up");

    // No credentials: the challenge, without reading the secret.
    let resp = proxy.get("/v2/", None).await;
    assert!(header(&resp, "www-authenticate").is_some_and(|h| h.starts_with("Bearer realm=")));
    expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    assert!(
        aws.calls().is_empty(),
        "an anonymous request read the secret"
    );

    // The token flow.
    let token = token_for(&proxy, "alice", "s3cret").await;
    bearer_opens_the_manifest(&proxy, &token, &img.index.digest).await;
    // Basic, for another user of the same secret, down to a blob's bytes.
    let layer = &img.amd64.blob_digests()[1];
    let resp = get_with(
        &proxy,
        &format!("/v2/team/app/blobs/{layer}"),
        &basic("bob", "hunter2"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sha256(&resp.bytes().await.unwrap()), *layer);

    // Wrong passwords and unknown users: 401, on /v2/ and on /token.
    for (user, password) in [("alice", "hunter2"), ("bob", "s3cret"), ("carol", "s3cret")] {
        let resp = get_with(&proxy, "/v2/team/app/manifests/v1", &basic(user, password)).await;
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
        let resp = get_with(&proxy, "/token", &basic(user, password)).await;
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    }

    // A registry client logs in and pulls.
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::secrets::RegistryAuth;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let host = proxy.url.trim_start_matches("http://");
    let reference: oci_client::Reference = format!("{host}/team/app:v1").parse().unwrap();
    let (_, digest) = client
        .pull_manifest(
            &reference,
            &RegistryAuth::Basic("bob".into(), "hunter2".into()),
        )
        .await
        .expect("pull with login");
    assert_eq!(digest, img.index.digest);

    // Many requests, one read, signed, of that secret.
    for _ in 0..5 {
        assert_eq!(
            status_with(&proxy, "/v2/", &basic("alice", "s3cret")).await,
            200
        );
        assert_eq!(
            status_with(&proxy, "/v2/", &format!("Bearer {token}")).await,
            200
        );
    }
    let calls = aws.calls();
    assert_eq!(calls.len(), 1, "the secret is read once: {calls:?}");
    assert_eq!(calls[0].op, "GetSecretValue");
    assert!(
        calls[0].signature_ok,
        "SigV4-signed: {:?}",
        calls[0].headers
    );
    let asked: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(asked["SecretId"], USERS_ARN);
}

#[tokio::test]
async fn an_unreadable_secret_fails_closed_with_503_and_leaks_nothing() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 94);
    let aws = FakeAws::start().await;
    // No such secret yet (Secrets Manager answers ResourceNotFoundException).
    let proxy = proxy_with_secret(&up, &aws, "").await;
    let forged = format!(
        "Bearer {}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","exp":99999999999}"#),
        "c2lnbmF0dXJl"
    );
    for (path, authorization) in [
        ("/v2/team/app/manifests/v1", basic("alice", "s3cret")),
        ("/v2/", forged.clone()),
        ("/token?service=pullthrough", basic("alice", "s3cret")),
    ] {
        let resp = get_with(&proxy, path, &authorization).await;
        assert_eq!(header(&resp, "retry-after"), Some("10"), "{path}");
        let msg = expect_oci_error(resp, 503, "UNAVAILABLE").await;
        assert!(
            msg.contains("client-auth secret") && msg.contains("could not be read"),
            "{msg}"
        );
        assert!(msg.contains(USERS_ARN), "{msg}");
        assert!(!msg.contains("ResourceNotFound"), "{msg}");
    }
    // Without credentials it is still the 401 challenge: nobody gets in either way.
    expect_oci_error(proxy.get("/v2/", None).await, 401, "UNAUTHORIZED").await;
    // The three requests shared one failed read (it stands for 10 s).
    assert_eq!(aws.count("GetSecretValue"), 1);

    // A secret that is not usable htpasswd: the 503 says what is wrong and quotes nothing.
    let good = htpasswd(&[("alice", "s3cret")]);
    let bad_line = "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
    aws.put_secret(USERS_ARN, &format!("{good}{bad_line}\n"));
    proxy.advance(Duration::from_secs(10));
    let resp = get_with(&proxy, "/v2/", &basic("alice", "s3cret")).await;
    let msg = expect_oci_error(resp, 503, "UNAVAILABLE").await;
    assert!(
        msg.contains(USERS_ARN) && msg.contains("line 2 is not a bcrypt entry"),
        "{msg}"
    );
    let alice_hash = good.trim().split_once(':').unwrap().1;
    for leak in [
        alice_hash,
        "W6ph5Mm5Pz8GgiULbPgzG37mj9g",
        "bob",
        "alice",
        "s3cret",
    ] {
        assert!(!msg.contains(leak), "{leak:?} in {msg}");
    }
    // Key/value JSON (the console's default editor) gets a hint.
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    aws.put_secret(USERS_ARN, &format!("{{\"alice\":\"{hash}\"}}"));
    proxy.advance(Duration::from_secs(10));
    let resp = get_with(&proxy, "/v2/", &basic("alice", "s3cret")).await;
    let msg = expect_oci_error(resp, 503, "UNAVAILABLE").await;
    assert!(
        msg.contains("holds JSON") && !msg.contains(&hash[7..]),
        "{msg}"
    );

    // Nothing got through to the upstream or into the store.
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    assert!(proxy.all_files().is_empty());

    // Once the secret is right, the next read lets its users in.
    aws.put_secret(USERS_ARN, &good);
    proxy.advance(Duration::from_secs(10));
    assert_eq!(
        status_with(
            &proxy,
            "/v2/team/app/manifests/v1",
            &basic("alice", "s3cret")
        )
        .await,
        200
    );
    assert_eq!(aws.count("GetSecretValue"), 4);
}

#[tokio::test]
async fn a_rotated_secret_takes_effect_after_the_refresh_interval() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 95);
    let aws = FakeAws::start().await;
    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "old-pass")]));
    let proxy = proxy_with_secret(&up, &aws, "auth_refresh = \"1m\"").await;
    let path = "/v2/team/app/manifests/v1";
    assert_eq!(
        status_with(&proxy, path, &basic("alice", "old-pass")).await,
        200
    );
    let old_token = token_for(&proxy, "alice", "old-pass").await;

    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "new-pass")]));
    // Within the interval the users read last are used, without asking again.
    proxy.advance(Duration::from_secs(59));
    expect_statuses(
        &proxy,
        path,
        &[
            (basic("alice", "old-pass"), 200),
            (basic("alice", "new-pass"), 401),
            (format!("Bearer {old_token}"), 200),
        ],
    )
    .await;
    assert_eq!(aws.count("GetSecretValue"), 1);

    // After it, the rotated secret is read: the new password works, the old one does not,
    // remembered or not, and tokens signed before the rotation stop working though unexpired
    // (the token key is derived from the secret's content).
    proxy.advance(Duration::from_secs(2));
    expect_statuses(
        &proxy,
        path,
        &[
            (basic("alice", "new-pass"), 200),
            (basic("alice", "old-pass"), 401),
            (format!("Bearer {old_token}"), 401),
        ],
    )
    .await;
    let resp = get_with(&proxy, "/token", &basic("alice", "old-pass")).await;
    expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    let new_token = token_for(&proxy, "alice", "new-pass").await;
    assert_eq!(
        status_with(&proxy, path, &format!("Bearer {new_token}")).await,
        200
    );
    assert_eq!(aws.count("GetSecretValue"), 2);
}

#[tokio::test]
async fn a_transient_secrets_manager_failure_is_retried() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let aws = FakeAws::start().await;
    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "s3cret")]));
    // Two 503s, then the secret: the SDK's retries get it within the one request.
    aws.fail_next_requests(2);
    let proxy = proxy_with_secret(&up, &aws, "").await;
    assert_eq!(
        status_with(&proxy, "/v2/", &basic("alice", "s3cret")).await,
        200
    );
    let calls = aws.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.op == "GetSecretValue" && c.signature_ok)
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_users() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 96);
    let aws = FakeAws::start().await;
    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "s3cret")]));
    let proxy = proxy_with_secret(&up, &aws, "").await;
    let path = "/v2/team/app/manifests/v1";
    assert_eq!(
        status_with(&proxy, path, &basic("alice", "s3cret")).await,
        200
    );
    let token = token_for(&proxy, "alice", "s3cret").await;

    // Secrets Manager fails once the default interval (5 minutes) has passed (a 4xx error: not
    // retried, so each refresh is one request).
    aws.fail_secret_reads_with(Some(400));
    proxy.advance(Duration::from_secs(301));
    assert_eq!(
        status_with(&proxy, path, &basic("alice", "s3cret")).await,
        200
    );
    assert_eq!(aws.count("GetSecretValue"), 2, "the refresh was tried");
    let fresh_token = token_for(&proxy, "alice", "s3cret").await;
    expect_statuses(
        &proxy,
        path,
        &[
            (format!("Bearer {fresh_token}"), 200),
            (basic("alice", "wrong"), 401),
        ],
    )
    .await;
    assert_eq!(
        aws.count("GetSecretValue"),
        2,
        "a failure stands for a while"
    );
    // The token from before the failed refresh expired meanwhile (5 minutes).
    assert_eq!(
        status_with(&proxy, path, &format!("Bearer {token}")).await,
        401
    );

    // Tried again 10 s later; so is a secret whose new text is broken: the last good users stay.
    proxy.advance(Duration::from_secs(10));
    assert_eq!(
        status_with(&proxy, path, &basic("alice", "s3cret")).await,
        200
    );
    assert_eq!(aws.count("GetSecretValue"), 3);
    aws.fail_secret_reads_with(None);
    aws.put_secret(USERS_ARN, "alice:not-a-hash\n");
    proxy.advance(Duration::from_secs(10));
    assert_eq!(
        status_with(&proxy, path, &basic("alice", "s3cret")).await,
        200
    );
    assert_eq!(aws.count("GetSecretValue"), 4);

    // Repaired and rotated: the next read replaces the users.
    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "rotated")]));
    proxy.advance(Duration::from_secs(10));
    expect_statuses(
        &proxy,
        path,
        &[
            (basic("alice", "rotated"), 200),
            (basic("alice", "s3cret"), 401),
        ],
    )
    .await;
    assert_eq!(aws.count("GetSecretValue"), 5);
}

#[tokio::test]
async fn instances_reading_the_same_secret_accept_each_others_tokens() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 97);
    let aws = FakeAws::start().await;
    let users = htpasswd(&[("alice", "s3cret")]);
    aws.put_secret(USERS_ARN, &users);
    // Two instances, no PULLTHROUGH_TOKEN_KEY: the key is derived from the secret.
    let a = proxy_with_secret(&up, &aws, "").await;
    let b = a
        .sibling_with_services(&secret_config(&up, USERS_ARN, ""), with_secrets(&aws))
        .await;
    let token = token_for(&a, "alice", "s3cret").await;
    let path = "/v2/team/app/manifests/v1";
    assert_eq!(status_with(&b, path, &format!("Bearer {token}")).await, 200);
    let token_b = token_for(&b, "alice", "s3cret").await;
    assert_eq!(
        status_with(&a, path, &format!("Bearer {token_b}")).await,
        200
    );

    // A deployment with another secret (the same user and password, other salts) does not
    // accept them: its key is another.
    let other_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:other-users-AbCdEf";
    aws.put_secret(other_arn, &htpasswd(&[("alice", "s3cret")]));
    let c = Proxy::with_services(&secret_config(&up, other_arn, ""), with_secrets(&aws)).await;
    expect_statuses(
        &c,
        path,
        &[
            (basic("alice", "s3cret"), 200),
            (format!("Bearer {token}"), 401),
        ],
    )
    .await;
}

#[tokio::test]
async fn concurrent_first_lambda_invocations_share_one_secret_read() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 98);
    let s3 = S3Server::start().await;
    let aws = FakeAws::start().await;
    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "s3cret")]));
    let toml = format!(
        "{}{}",
        secret_config(&up, USERS_ARN, ""),
        s3.config_table("")
    );
    let f = function(&toml, &s3, &aws, Arc::new(Clock::default())).await;
    assert!(aws.calls().is_empty(), "init reads nothing");
    let good = basic("alice", "s3cret");
    let bad = basic("alice", "wrong");
    // The test runs on one thread: every invocation below is polled (up to the secret read, or
    // the wait for it) before the fake endpoint can answer the first read.
    let answers = futures_util::future::join_all((0..8).map(|i| {
        let authorization = if i == 7 { bad.as_str() } else { good.as_str() };
        let f = &f;
        async move {
            call(
                f,
                Source::HttpApi,
                "GET",
                "/v2/team/app/manifests/v1",
                &[
                    ("accept", DOCKER_CLIENT_ACCEPT),
                    ("authorization", authorization),
                ],
            )
            .await
        }
    }))
    .await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, if i == 7 { 401 } else { 200 }, "{:?}", a.raw);
    }
    assert_eq!(aws.count("GetSecretValue"), 1, "{:?}", aws.calls());
}

/// The real binary over the filesystem store `store` with its users in [`USERS_ARN`] of `aws`,
/// logging at `level`.
async fn server_with_secret_users(
    store: &std::path::Path,
    aws: &FakeAws,
    level: &str,
) -> (ServerProcess, std::thread::JoinHandle<String>) {
    let env = [
        s3::AWS_ENV.as_slice(),
        &[
            ("RUST_LOG", level),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &aws.url),
        ],
    ]
    .concat();
    ServerProcess::start_logged(
        &["--store", store.to_str().unwrap(), "--auth", USERS_ARN],
        &env,
    )
    .await
}

#[tokio::test]
async fn the_server_binary_reads_users_from_a_secret_and_logs_no_secret() {
    let aws = FakeAws::start().await;
    let password = "pw-that-must-not-be-logged";
    let good = htpasswd(&[("alice", password)]);
    let alice_hash = good.trim().split_once(':').unwrap().1.to_owned();
    let bad_line = "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
    aws.put_secret(USERS_ARN, &format!("{good}{bad_line}\n"));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let (mut server, log) = server_with_secret_users(&store, &aws, "debug").await;
    assert!(aws.calls().is_empty(), "nothing is read at start-up");
    let http = reqwest::Client::new();
    let get = |authorization: String| {
        http.get(format!("{}/v2/", server.url))
            .header("authorization", authorization)
            .send()
    };
    // Broken text: 503, and the log says why without quoting it.
    let resp = get(basic("alice", password)).await.unwrap();
    assert_eq!(resp.status(), 503);
    // Any other credentials get the same: while no users are known, nobody gets in.
    let resp = get(basic("alice", "wrong")).await.unwrap();
    assert_eq!(resp.status(), 503);
    server.kill();
    let log = log.join().unwrap();
    assert!(
        log.contains(USERS_ARN) && log.contains("line 2 is not a bcrypt entry"),
        "{log}"
    );
    for leak in [
        password,
        alice_hash.as_str(),
        &alice_hash[7..29],
        "W6ph5Mm5Pz8GgiULbPgzG37mj9g",
        &base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}")),
    ] {
        assert!(!log.contains(leak), "{leak:?} logged:\n{log}");
    }

    // A good secret: the binary lets alice in, and still logs none of it, even at trace level
    // (where the SDK logs each answer it receives).
    let aws2 = FakeAws::start().await;
    aws2.put_secret(USERS_ARN, &good);
    let (mut server, log) = server_with_secret_users(&store, &aws2, "trace").await;
    let url = format!("{}/v2/", server.url);
    let resp = http
        .get(&url)
        .header("authorization", basic("alice", password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(&url)
        .header("authorization", basic("alice", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(aws2.count("GetSecretValue"), 1);
    server.kill();
    let log = log.join().unwrap();
    assert!(
        log.contains("client users read from Secrets Manager")
            && log.contains("received response from service"),
        "{log}"
    );
    for leak in [password, alice_hash.as_str(), &alice_hash[7..29]] {
        assert!(!log.contains(leak), "{leak:?} logged:\n{log}");
    }
}

// ---- Bounded password checks: failures limited per client address and per user (429 with
// Retry-After), bcrypt capped, and a flood of wrong passwords does not hold up a right one.

/// A client whose connections come from `127.0.0.<last>` (all of 127/8 is loopback on Linux),
/// so one test can play several client addresses.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .build()
        .unwrap()
}

async fn status_from(
    client: &reqwest::Client,
    url: &str,
    authorization: &str,
) -> reqwest::Response {
    client
        .get(url)
        .header("authorization", authorization)
        .send()
        .await
        .unwrap()
}

/// A proxy with htpasswd users (bcrypt `cost`) and `limits` (config lines).
async fn proxy_with_limits(
    up: &FakeRegistry,
    users: &[(&str, &str)],
    cost: u32,
    limits: &str,
) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, htpasswd_with_cost(users, cost)).unwrap();
    let extra = format!("auth = \"{}\"\n{limits}", path.display());
    (
        Proxy::with_config(&local_config_with(&up.url(), &extra)).await,
        dir,
    )
}

#[tokio::test]
async fn failed_logins_are_limited_per_address_and_per_user_with_429() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let users = [("alice", "s3cret"), ("bob", "hunter2")];
    let (proxy, _dir) = proxy_with_limits(&up, &users, 4, "auth_failures_per_minute = 3").await;
    let v2 = format!("{}/v2/", proxy.url);
    let token_url = format!("{}/token?service=pullthrough", proxy.url);

    // alice logs in once: her password is remembered from now on.
    assert_eq!(
        status_from(&client_from(1), &v2, &basic("alice", "s3cret"))
            .await
            .status(),
        200
    );

    // Per address: three wrong passwords from 127.0.0.2, then 429 with Retry-After, for any
    // user name and on the token endpoint too.
    let c2 = client_from(2);
    for _ in 0..3 {
        let resp = status_from(&c2, &v2, &basic("alice", "wrong")).await;
        expect_oci_error(resp, 401, "UNAUTHORIZED").await;
    }
    let resp = status_from(&c2, &v2, &basic("carol", "guess")).await;
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let limited = expect_oci_error(resp, 429, "TOOMANYREQUESTS").await;
    let resp = status_from(&c2, &token_url, &basic("alice", "wrong")).await;
    expect_oci_error(resp, 429, "TOOMANYREQUESTS").await;
    // A remembered password is not held up by the limit, nor is a token.
    assert_eq!(
        status_from(&c2, &v2, &basic("alice", "s3cret"))
            .await
            .status(),
        200
    );
    let resp = status_from(&c2, &token_url, &basic("alice", "s3cret")).await;
    let token = resp.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        status_from(&c2, &v2, &format!("Bearer {token}"))
            .await
            .status(),
        200
    );

    // Per user: wrong passwords for bob from three addresses, and bob is limited from a fourth
    // (his right password too, until it has been verified once). An unknown user gets exactly
    // the same answers: nothing tells which users exist.
    for (user, first) in [("bob", 3u8), ("nobody", 7u8)] {
        for i in 0..3 {
            let resp = status_from(&client_from(first + i), &v2, &basic(user, "wrong")).await;
            expect_oci_error(resp, 401, "UNAUTHORIZED").await;
        }
        let resp = status_from(&client_from(first + 3), &v2, &basic(user, "wrong")).await;
        let msg = expect_oci_error(resp, 429, "TOOMANYREQUESTS").await;
        let shape = |m: &str| m.replace(|c: char| c.is_ascii_digit(), "");
        assert_eq!(shape(&msg), shape(&limited), "{user}");
    }
    let resp = status_from(&client_from(6), &v2, &basic("bob", "hunter2")).await;
    expect_oci_error(resp, 429, "TOOMANYREQUESTS").await;

    // A minute later the limits have refilled.
    proxy.advance(Duration::from_secs(60));
    assert_eq!(
        status_from(&client_from(6), &v2, &basic("bob", "hunter2"))
            .await
            .status(),
        200
    );
    assert_eq!(
        status_from(&c2, &v2, &basic("carol", "guess"))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_does_not_delay_a_right_one_beyond_a_bound() {
    const COST: u32 = 8;
    // What one bcrypt run costs here (debug builds are slow), to set the bound.
    let hash = bcrypt::hash("x", COST).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert!(!bcrypt::verify("y", &hash).unwrap());
    }
    let one = started.elapsed() / 3;

    let up = FakeRegistry::start(FakeOptions::default()).await;
    let users = [("alice", "s3cret"), ("bob", "hunter2")];
    let limits = "auth_failures_per_minute = 1\nbcrypt_concurrency = 2\nbcrypt_wait = \"30s\"";
    let (proxy, _dir) = proxy_with_limits(&up, &users, COST, limits).await;
    let v2 = format!("{}/v2/", proxy.url);
    assert_eq!(
        status_from(&client_from(1), &v2, &basic("alice", "s3cret"))
            .await
            .status(),
        200
    );

    // 400 wrong passwords at once from 16 addresses, for user names that do not exist.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for a in 0..16u8 {
        let client = client_from(10 + a);
        for i in 0..25 {
            let (client, v2, answered) = (client.clone(), v2.clone(), Arc::clone(&answered));
            flood.push(tokio::spawn(async move {
                let resp =
                    status_from(&client, &v2, &basic(&format!("ghost{a}-{i}"), "guess")).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                resp.status().as_u16()
            }));
        }
    }
    let deadline = Deadline::after(Duration::from_secs(30));
    while answered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        deadline.pause("the flood got no answer").await;
    }

    // During the flood: a right password never verified before waits at most for the flood's
    // few admitted checks (16 addresses × 1 failure, two at a time), not for all 400; a
    // remembered one costs no bcrypt at all.
    let c = client_from(1);
    let started = std::time::Instant::now();
    assert_eq!(
        status_from(&c, &v2, &basic("bob", "hunter2"))
            .await
            .status(),
        200
    );
    let fresh = started.elapsed();
    let started = std::time::Instant::now();
    assert_eq!(
        status_from(&c, &v2, &basic("alice", "s3cret"))
            .await
            .status(),
        200
    );
    let remembered = started.elapsed();
    let bound = one * 15 + Duration::from_secs(1);
    assert!(
        fresh < bound,
        "a right password took {fresh:?} during the flood (one bcrypt run: {one:?}, bound {bound:?})"
    );
    assert!(remembered < Duration::from_secs(1), "{remembered:?}");

    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 16, "{checked} wrong passwords were checked");
}

#[tokio::test]
async fn lambda_limits_failed_logins_per_source_ip_of_the_event() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let s3 = S3Server::start().await;
    let aws = FakeAws::start().await;
    aws.put_secret(USERS_ARN, &htpasswd(&[("alice", "s3cret")]));
    let toml = format!(
        "{}{}",
        secret_config(&up, USERS_ARN, "auth_failures_per_minute = 2\n"),
        s3.config_table("")
    );
    let f = function(&toml, &s3, &aws, Arc::new(Clock::default())).await;
    let attempt = |source, user: &'static str| {
        let f = &f;
        async move {
            let authorization = basic(user, "wrong");
            call(
                f,
                source,
                "GET",
                "/v2/",
                &[("authorization", &authorization)],
            )
            .await
        }
    };
    // Different user names from the HTTP API event's sourceIp (192.0.2.1): the address runs out.
    assert_eq!(attempt(Source::HttpApi, "u1").await.status, 401);
    assert_eq!(attempt(Source::HttpApi, "u2").await.status, 401);
    let limited = attempt(Source::HttpApi, "u3").await;
    assert_eq!(limited.status, 429, "{:?}", limited.raw);
    assert_eq!(limited.json()["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(limited.header("retry-after").is_some(), "{:?}", limited.raw);
    // The function URL event comes from another address (198.51.100.7).
    assert_eq!(attempt(Source::FunctionUrl, "u4").await.status, 401);
}
