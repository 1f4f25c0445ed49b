//! `AWS_CA_BUNDLE`: the AWS SDK for Rust ignores it; pullthrough honours it (its certificates
//! are trusted in addition to the platform roots) for S3 and for Secrets Manager and Lambda,
//! which share the S3 client's configuration. These machines set it to the system bundle.
//!
//! In-process tests give the store the bundle path directly; the binary tests run
//! `pullthrough serve` with the variable really set (or not) in its environment, against an
//! S3-compatible server or a fake Secrets Manager over plain HTTP or over HTTPS with a private CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::lambda::FakeAws;
use crate::support::s3::{ACCESS_KEY, S3Server, SECRET_KEY, TestCa};
use crate::support::*;
use bytes::Bytes;
use pullthrough::config::S3Settings;
use pullthrough::store::s3::{S3Options, S3Store};
use pullthrough::store::{BlobRead, Store, StoreError, keys};

fn one_attempt() -> S3Settings {
    S3Settings {
        max_attempts: 1,
        ..S3Settings::default()
    }
}

#[tokio::test]
async fn the_bundle_is_trusted_for_an_https_endpoint() {
    let server = S3Server::start_tls().await;
    let options = server.options("", S3Settings::default());
    assert_eq!(options.ca_bundle.as_deref(), Some(server.ca_file()));
    let store = S3Store::open(options).await.unwrap();
    let bytes = blob_bytes(40, 70_000);
    let key = keys::blob(&pullthrough::oci::Digest::sha256_of(&bytes));
    store
        .put(&key, bytes.clone(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), Some(bytes.clone()));
    let Some(BlobRead::Redirect(url)) = store.read(&key, None).await.unwrap() else {
        panic!("not a redirect");
    };
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let resp = server.plain_client().get(&url).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn without_the_bundle_a_private_ca_is_not_trusted() {
    let server = S3Server::start_tls().await;
    let store = S3Store::open(S3Options {
        ca_bundle: None,
        ..server.options("", one_attempt())
    })
    .await
    .unwrap();
    let key = keys::blob(&pullthrough::oci::Digest::sha256_of(b"x"));
    let err = store
        .put(&key, Bytes::from_static(b"x"), "application/octet-stream")
        .await
        .unwrap_err();
    let StoreError::Backend { message, .. } = &err else {
        panic!("{err}");
    };
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(server.count("PutObject"), 0);
}

#[tokio::test]
async fn a_bundle_that_is_missing_or_holds_no_certificate_stops_start_up() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    for (path, expected) in [
        (dir.path().join("missing.pem"), "cannot read"),
        (junk, "no usable CA certificate"),
    ] {
        let err = match S3Store::open(S3Options {
            ca_bundle: Some(path.clone()),
            ..server.options("", S3Settings::default())
        })
        .await
        {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("AWS_CA_BUNDLE=") && err.contains(expected),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The binary, with the variable in its real environment
// ---------------------------------------------------------------------------------------------

/// The bundle these machines set, or the system bundle; elsewhere a fresh CA's certificate (a
/// valid bundle all the same).
fn machine_bundle(scratch: &Path) -> PathBuf {
    let candidates = [
        std::env::var_os("AWS_CA_BUNDLE").map(PathBuf::from),
        Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return p;
    }
    let p = scratch.join("bundle.pem");
    std::fs::write(&p, TestCa::generate().ca_pem).unwrap();
    p
}

/// A `pullthrough serve` process and the scratch directory of its config. Dropping it kills the
/// process.
struct Binary {
    server: ServerProcess,
    _scratch: tempfile::TempDir,
}

/// Starts `pullthrough serve` with a clean environment: the test server's credentials in
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, no profile files, no instance metadata, and
/// `AWS_CA_BUNDLE` only if given. `Err` holds the exit code and output of a process that
/// stopped instead of serving.
async fn start_binary(
    config_toml: &str,
    ca_bundle: Option<&Path>,
) -> Result<Binary, (Option<i32>, String)> {
    start_binary_with_env(config_toml, ca_bundle, &[]).await
}

/// [`start_binary`] with more environment variables.
async fn start_binary_with_env(
    config_toml: &str,
    ca_bundle: Option<&Path>,
    env: &[(&str, &str)],
) -> Result<Binary, (Option<i32>, String)> {
    let scratch = tempfile::tempdir().unwrap();
    let config = config_file(scratch.path(), config_toml);
    let nowhere = scratch.path().join("no-such-aws-file");
    let (config, nowhere) = (config.to_str().unwrap(), nowhere.to_str().unwrap());
    let mut all = vec![
        ("PULLTHROUGH_CONFIG", config),
        ("PULLTHROUGH_STORE", s3::STORE_URL),
        ("PULLTHROUGH_LISTEN", "127.0.0.1:0"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_CONFIG_FILE", nowhere),
        ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("RUST_LOG", "info"),
        ("NO_COLOR", "1"),
    ];
    if let Some(b) = ca_bundle {
        all.push(("AWS_CA_BUNDLE", b.to_str().unwrap()));
    }
    all.extend_from_slice(env);
    let (server, _log) = ServerProcess::try_start_clean(&[], &all).await?;
    Ok(Binary {
        server,
        _scratch: scratch,
    })
}

/// GETs `path` from the binary (following no redirect), with `authorization` if given.
async fn get_from(bin: &Binary, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut req = no_redirects().get(format!("{}{path}", bin.server.url));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

/// The blob's 307 to S3: a cold blob is first streamed by the binary (checked) while it uploads;
/// once uploaded and marked, the answer is the redirect.
async fn redirect_to_blob(bin: &Binary, d: &str, data: &Bytes) -> reqwest::Response {
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let resp = get_from(bin, &format!("/v2/team/app/blobs/{d}"), None).await;
        if resp.status() == 307 {
            return resp;
        }
        assert_eq!(resp.status(), 200);
        assert_eq!(&resp.bytes().await.unwrap(), data);
        deadline.pause("never redirected").await;
    }
}

/// GETs a blob from the binary: a 307 whose Location `follower` fetches to the exact bytes.
async fn pull_blob(bin: &Binary, follower: &reqwest::Client, d: &str, data: &Bytes) {
    let resp = redirect_to_blob(bin, d, data).await;
    let location = header(&resp, "location").unwrap().to_owned();
    let body = follower
        .get(&location)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&body), d);
    assert_eq!(&body, data);
}

#[tokio::test]
async fn the_binary_works_with_aws_ca_bundle_set_as_on_these_machines() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(41, 300_000);
    let d = up.put_blob("team/app", data.clone());
    let server = S3Server::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let bundle = machine_bundle(scratch.path());
    // No region anywhere: the store falls back to us-east-1 without asking the network.
    let toml = format!(
        "{}\n[s3]\nendpoint = \"{}\"\n",
        local_config(&up.url()),
        server.endpoint
    );
    let bin = start_binary(&toml, Some(&bundle))
        .await
        .unwrap_or_else(|(code, err)| panic!("exit {code:?}: {err}"));
    pull_blob(&bin, &server.plain_client(), &d, &data).await;
    assert_eq!(
        server.blob_keys("").await,
        vec![format!("blobs/{}", d.replace(':', "/"))]
    );
    drop(bin);
}

#[tokio::test]
async fn the_binary_takes_the_endpoint_and_region_from_the_aws_environment() {
    // No [s3] table at all: AWS_ENDPOINT_URL_S3 and AWS_REGION, read by the SDK; an endpoint
    // override makes addressing path-style (the test server has no virtual-hosted names).
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(43, 10_000);
    let d = up.put_blob("team/app", data.clone());
    let server = S3Server::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let bundle = machine_bundle(scratch.path());
    let bin = start_binary_with_env(
        &local_config(&up.url()),
        Some(&bundle),
        &[
            ("AWS_ENDPOINT_URL_S3", server.endpoint.as_str()),
            ("AWS_REGION", "eu-west-1"),
        ],
    )
    .await
    .unwrap_or_else(|(code, err)| panic!("exit {code:?}: {err}"));
    let resp = redirect_to_blob(&bin, &d, &data).await;
    let location = header(&resp, "location").unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/{}/blobs/", server.endpoint, server.bucket)),
        "{location}"
    );
    assert!(
        location.contains("%2Feu-west-1%2Fs3%2Faws4_request"),
        "{location}"
    );
    pull_blob(&bin, &server.plain_client(), &d, &data).await;
}

#[tokio::test]
async fn the_binary_honours_aws_ca_bundle_for_an_https_endpoint() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(42, 50_000);
    let d = up.put_blob("team/app", data.clone());
    let server = S3Server::start_tls().await;
    let toml = format!(
        "{}{}",
        local_config(&up.url()),
        server.config_table("max_attempts = 1")
    );

    // With the private CA in AWS_CA_BUNDLE: served.
    let bin = start_binary(&toml, Some(server.ca_file()))
        .await
        .unwrap_or_else(|(code, err)| panic!("exit {code:?}: {err}"));
    pull_blob(&bin, &server.plain_client(), &d, &data).await;
    drop(bin);

    // The same process without the variable: the S3 server's certificate is not trusted.
    server.clear_calls();
    let bin = start_binary(&toml, None)
        .await
        .unwrap_or_else(|(code, err)| panic!("exit {code:?}: {err}"));
    let resp = get_from(&bin, &format!("/v2/team/app/blobs/{d}"), None).await;
    let msg = expect_oci_error(resp, 503, "UNAVAILABLE").await;
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert!(server.calls().is_empty(), "{:?}", server.calls());
}

#[tokio::test]
async fn the_binary_refuses_to_start_with_an_unreadable_aws_ca_bundle() {
    let server = S3Server::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("missing-bundle.pem");
    let toml = format!(
        "{}{}",
        local_config("http://127.0.0.1:9"),
        server.config_table("")
    );
    match start_binary(&toml, Some(&missing)).await {
        Ok(_) => panic!("started with an unreadable AWS_CA_BUNDLE"),
        Err((code, err)) => {
            assert_eq!(code, Some(2), "{err}");
            assert!(
                err.contains("AWS_CA_BUNDLE=") && err.contains("missing-bundle.pem"),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn the_binary_honours_aws_ca_bundle_for_secrets_manager() {
    // Client users in a secret, read from a Secrets Manager endpoint served over HTTPS with a
    // private CA; S3 over plain HTTP (not touched by GET /v2/).
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ca-users-AbCdEf";
    let aws = FakeAws::start_tls().await;
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    aws.put_secret(arn, &format!("alice:{hash}\n"));
    let server = S3Server::start().await;
    let toml = format!(
        "{}{}",
        local_config_with("http://127.0.0.1:9", &format!("auth = \"{arn}\"\n")),
        server.config_table("max_attempts = 1")
    );
    let env = [
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws.url.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let alice = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret")
    );

    // With the private CA in AWS_CA_BUNDLE: the secret is read and alice gets in.
    let bin = start_binary_with_env(&toml, Some(aws.ca_file()), &env)
        .await
        .unwrap_or_else(|(code, err)| panic!("exit {code:?}: {err}"));
    let resp = get_from(&bin, "/v2/", Some(&alice)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(aws.count("GetSecretValue"), 1);
    assert!(aws.calls()[0].signature_ok);
    drop(bin);

    // Without it: the certificate is not trusted, no request gets through, and the proxy fails
    // closed.
    let bin = start_binary_with_env(&toml, None, &env)
        .await
        .unwrap_or_else(|(code, err)| panic!("exit {code:?}: {err}"));
    let resp = get_from(&bin, "/v2/", Some(&alice)).await;
    expect_oci_error(resp, 503, "UNAVAILABLE").await;
    assert_eq!(aws.count("GetSecretValue"), 1, "{:?}", aws.calls());
}
