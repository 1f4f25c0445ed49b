//! The real binary in Lambda mode (`AWS_LAMBDA_RUNTIME_API` set), against the local runtime API
//! of `tests/it/support/runtime_api.rs`: it initialises without network I/O, asks for work, answers
//! API Gateway events, hands a slow blob copy to an asynchronous invocation through the fake
//! `Invoke` endpoint, and finishes that copy when the test delivers the event back to it.
//! (How long initialisation takes is measured by `bench/lambda_init.sh`, on the release build.)

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::lambda::{FakeAws, Source, decode, http_event};
use crate::support::runtime_api::{Outcome, RuntimeApi};
use crate::support::*;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SECRET_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:local-robot-AbCdEf";

fn spawn(api: &RuntimeApi, aws: &FakeAws, store: &str, config_toml: &str) -> Running {
    Running(
        lambda_command(&api.address)
            .env("AWS_ENDPOINT_URL_LAMBDA", &aws.url)
            .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &aws.url)
            .env("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true")
            .env("PULLTHROUGH_STORE", store)
            .env("PULLTHROUGH_CONFIG_TOML", config_toml)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the binary"),
    )
}

async fn http(api: &RuntimeApi, method: &str, path: &str, accept: Option<&str>) -> lambda::Answer {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let event = http_event(Source::HttpApi, method, path, &headers);
    match api.invoke(&event, Duration::from_secs(30)).await {
        Outcome::Response(body) => decode(serde_json::from_slice(&body).expect("JSON response")),
        Outcome::Error(e) => panic!("{method} {path}: {}", String::from_utf8_lossy(&e)),
    }
}

use crate::support::lambda;

#[tokio::test]
async fn the_binary_serves_api_gateway_events_and_finishes_slow_copies_asynchronously() {
    let up = FakeRegistry::start(FakeOptions {
        auth: FakeAuth::BearerWithCredentials {
            username: "robot".into(),
            password: "s3cr3t".into(),
        },
        ..FakeOptions::default()
    })
    .await;
    let s3 = S3Server::start().await;
    let aws = FakeAws::start().await;
    aws.put_secret(SECRET_ARN, r#"{"username":"robot","password":"s3cr3t"}"#);
    let img = push_oci_index(&up, "team/app", "v1", 71);
    let slow = up.put_blob("team/app", blob_bytes(72, 200_000));
    let config_toml = format!(
        r#"default_upstream = "local"
fill_deadline = "1s"
request_timeout = "10s"
read_timeout = "10s"

[[upstream]]
alias = "local"
url = "{}"
insecure = true
secret_arn = "{SECRET_ARN}"
{}"#,
        up.url(),
        s3.config_table("")
    );
    let api = RuntimeApi::start().await;
    let _child = spawn(&api, &aws, &format!("s3://{}", s3.bucket), &config_toml);

    // Init completes and the function asks for work; init made no AWS call and no S3 call.
    assert!(
        api.first_next(Duration::from_secs(30)).await.is_some(),
        "no /next call; init error: {:?}",
        api.init_error()
    );
    assert!(aws.calls().is_empty());
    assert!(
        s3.calls().iter().all(|c| c.op == "CreateBucket"),
        "{:?}",
        s3.calls()
    );

    let base = http(&api, "GET", "/v2/", None).await;
    assert_eq!(base.status, 200);
    assert_eq!(base.body, b"{}");

    for (reference, expected) in [("v1", &img.index), (img.amd64.digest.as_str(), &img.amd64)] {
        let path = format!("/v2/team/app/manifests/{reference}");
        let get = http(&api, "GET", &path, Some(DOCKER_CLIENT_ACCEPT)).await;
        assert_eq!(get.status, 200, "{:?}", get.raw);
        assert_eq!(
            get.header("docker-content-digest"),
            Some(expected.digest.as_str())
        );
        assert_eq!(sha256(&get.body), expected.digest);
        let head = http(&api, "HEAD", &path, Some(DOCKER_CLIENT_ACCEPT)).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(
            head.header("content-length"),
            Some(expected.bytes.len().to_string().as_str())
        );
        assert_eq!(
            head.header("docker-content-digest"),
            Some(expected.digest.as_str())
        );
    }
    let layer = &img.amd64.blob_digests()[1];
    let blob = http(&api, "GET", &format!("/v2/team/app/blobs/{layer}"), None).await;
    assert_eq!(blob.status, 307, "{:?}", blob.raw);
    s3.assert_serves(blob.header("location").unwrap(), layer)
        .await;
    // Upstream credentials were read from Secrets Manager, once, signed.
    assert_eq!(aws.count("GetSecretValue"), 1);
    assert!(aws.calls().iter().all(|c| c.signature_ok));

    // A slow blob: 503 + Retry-After, and an Event invocation of the function itself.
    up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(2)))
            .method("GET")
            .path(&format!("/blobs/{slow}"))
            .times(1),
    );
    let path = format!("/v2/team/app/blobs/{slow}");
    let pending = http(&api, "GET", &path, None).await;
    assert_eq!(pending.status, 503, "{:?}", pending.raw);
    assert_eq!(pending.header("retry-after"), Some("10"));
    aws.wait_for("Invoke", 1).await;
    let invoke = aws.calls().into_iter().find(|c| c.op == "Invoke").unwrap();
    assert!(invoke.signature_ok);
    assert_eq!(
        invoke.path,
        format!(
            "/2015-03-31/functions/{}/invocations",
            lambda::FUNCTION_NAME
        )
    );
    assert_eq!(
        invoke
            .headers
            .get("x-amz-invocation-type")
            .map(String::as_str),
        Some("Event")
    );

    // Lambda would deliver the event to an instance of the function: here, the same one.
    let event = aws.invoke_payloads().remove(0);
    assert!(event.get("fill").is_some(), "{event}");
    match api.invoke(&event, Duration::from_secs(60)).await {
        Outcome::Response(body) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["fill"]["filled"]["size"], 200_000, "{v}");
        }
        Outcome::Error(e) => panic!("fill event failed: {}", String::from_utf8_lossy(&e)),
    }
    let done = http(&api, "GET", &path, None).await;
    assert_eq!(done.status, 307, "{:?}", done.raw);
    s3.assert_serves(done.header("location").unwrap(), &slow)
        .await;

    // An event of no known kind is an invocation error, and the function goes on.
    match api
        .invoke(
            &serde_json::json!({"hello": "world"}),
            Duration::from_secs(10),
        )
        .await
    {
        Outcome::Error(e) => assert!(String::from_utf8_lossy(&e).contains("fill event"), "{e:?}"),
        Outcome::Response(r) => panic!("answered {}", String::from_utf8_lossy(&r)),
    }
    assert_eq!(http(&api, "GET", "/v2/", None).await.status, 200);
}

#[tokio::test]
async fn a_bad_configuration_is_reported_to_the_runtime_api_as_an_init_error() {
    let aws = FakeAws::start().await;
    let api = RuntimeApi::start().await;
    let mut child = spawn(&api, &aws, "./local-directory", "");
    let deadline = Deadline::after(Duration::from_secs(30));
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        deadline.pause("the binary exits").await;
    };
    assert_eq!(status.code(), Some(2));
    let reported = api.init_error().expect("an init error was posted");
    let text = String::from_utf8_lossy(&reported);
    assert!(text.contains("Lambda mode needs an S3 store"), "{text}");
    assert!(text.contains("Runtime.InitError"), "{text}");
}

/// `secret_arn` works for the server too: `pullthrough serve` reads the upstream's credentials
/// from Secrets Manager (the fake endpoint, via `AWS_ENDPOINT_URL_SECRETS_MANAGER`) on first use.
#[tokio::test]
async fn the_server_reads_upstream_credentials_from_secrets_manager_too() {
    let up = FakeRegistry::start(FakeOptions {
        auth: FakeAuth::Basic {
            username: "robot".into(),
            password: "s3cr3t".into(),
        },
        ..FakeOptions::default()
    })
    .await;
    let aws = FakeAws::start().await;
    aws.put_secret(SECRET_ARN, r#"{"username":"robot","password":"s3cr3t"}"#);
    let img = push_oci_index(&up, "team/app", "v1", 73);
    let store = tempfile::tempdir().unwrap();
    let config_toml = format!(
        "default_upstream = \"local\"\n[[upstream]]\nalias = \"local\"\nurl = \"{}\"\ninsecure = true\nsecret_arn = \"{SECRET_ARN}\"\n",
        up.url()
    );
    let env = [
        s3::AWS_ENV.as_slice(),
        &[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &aws.url),
            ("PULLTHROUGH_CONFIG_TOML", &config_toml),
            ("RUST_LOG", "warn"),
        ],
    ]
    .concat();
    let (server, _log) =
        ServerProcess::try_start_clean(&["--store", store.path().to_str().unwrap()], &env)
            .await
            .unwrap_or_else(|(code, log)| {
                panic!("server exited ({code:?}) before serving:\n{log}")
            });
    let url = &server.url;
    assert_eq!(aws.calls().len(), 0, "nothing read at start-up");
    let client = reqwest::Client::new();
    for reference in ["v1", img.amd64.digest.as_str()] {
        let resp = client
            .get(format!("{url}/v2/team/app/manifests/{reference}"))
            .header("accept", DOCKER_CLIENT_ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(aws.count("GetSecretValue"), 1);
    assert!(aws.calls()[0].signature_ok);
}
