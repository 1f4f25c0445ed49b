//! Lambda mode in process: API Gateway HTTP API (payload 2.0, `$default` and a named stage) and
//! function URL events, built from the fixtures in `tests/fixtures/lambda/`, go through
//! `lambda_http` into the router, over the in-process S3 server and the fake upstream; the
//! answers are decoded as API Gateway would (base64 when `isBase64Encoded`).

use std::sync::Arc;

use crate::support::lambda::{Answer, FakeAws, Source, call, function};
use crate::support::*;
use bytes::Bytes;
use pullthrough::cache::Clock;

struct Setup {
    up: FakeRegistry,
    s3: S3Server,
    aws: FakeAws,
}

impl Setup {
    async fn new(opts: FakeOptions) -> Setup {
        Setup {
            up: FakeRegistry::start(opts).await,
            s3: S3Server::start().await,
            aws: FakeAws::start().await,
        }
    }

    fn toml(&self, extra: &str) -> String {
        format!(
            "{}{}",
            local_config_with(&self.up.url(), extra),
            self.s3.config_table("")
        )
    }

    /// A function whose upstream's credentials are in the secret `arn`.
    async fn function_with_upstream_secret(&self, arn: &str) -> pullthrough::lambda::Function {
        let toml = self.toml("").replace(
            "insecure = true",
            &format!("insecure = true\nsecret_arn = \"{arn}\""),
        );
        function(&toml, &self.s3, &self.aws, Arc::new(Clock::default())).await
    }

    async fn function(&self, extra: &str) -> pullthrough::lambda::Function {
        function(
            &self.toml(extra),
            &self.s3,
            &self.aws,
            Arc::new(Clock::default()),
        )
        .await
    }
}

/// Options of an upstream that wants the credentials robot / s3cr3t for its tokens.
fn robot_upstream() -> FakeOptions {
    FakeOptions {
        auth: FakeAuth::BearerWithCredentials {
            username: "robot".into(),
            password: "s3cr3t".into(),
        },
        ..FakeOptions::default()
    }
}

fn assert_manifest_answer(a: &Answer, expected: &Pushed, head: bool) {
    assert_eq!(a.status, 200, "{:?}", a.raw);
    assert_eq!(a.header("content-type"), Some(expected.media_type.as_str()));
    assert_eq!(
        a.header("docker-content-digest"),
        Some(expected.digest.as_str())
    );
    assert_eq!(
        a.header("content-length"),
        Some(expected.bytes.len().to_string().as_str()),
        "Content-Length is sent as the manifest's length (HEAD too)"
    );
    assert_eq!(
        a.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    if head {
        assert!(a.body.is_empty());
        assert!(a.raw.get("body").is_none(), "{:?}", a.raw);
    } else {
        assert_eq!(
            manifest_digest(&expected.media_type, &a.body),
            expected.digest,
            "the served bytes are the digest's (for signed schema1: their payload)"
        );
        assert_eq!(a.body, expected.bytes);
    }
}

#[tokio::test]
async fn http_api_function_url_and_named_stage_events_serve_the_registry_api() {
    for source in [Source::HttpApi, Source::FunctionUrl, Source::NamedStage] {
        let s = Setup::new(FakeOptions::default()).await;
        let img = push_oci_index(&s.up, "team/app", "v1", 51);
        let f = s.function("").await;
        let accept = [("accept", DOCKER_CLIENT_ACCEPT)];

        let base = call(&f, source, "GET", "/v2/", &[]).await;
        assert_eq!(base.status, 200, "{source:?}: {:?}", base.raw);
        assert_eq!(base.body, b"{}");
        assert_eq!(
            base.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );

        for (reference, expected) in [
            ("v1", &img.index),
            (img.index.digest.as_str(), &img.index),
            (img.amd64.digest.as_str(), &img.amd64),
        ] {
            let path = format!("/v2/team/app/manifests/{reference}");
            let get = call(&f, source, "GET", &path, &accept).await;
            assert_manifest_answer(&get, expected, false);
            let head = call(&f, source, "HEAD", &path, &accept).await;
            assert_manifest_answer(&head, expected, true);
        }

        // Blobs: a 307 to a presigned S3 URL, never the bytes.
        for d in img.amd64.blob_digests() {
            let a = call(&f, source, "GET", &format!("/v2/team/app/blobs/{d}"), &[]).await;
            assert_eq!(a.status, 307, "{source:?}: {:?}", a.raw);
            assert_eq!(a.header("docker-content-digest"), Some(d.as_str()));
            assert!(a.body.is_empty());
            let location = a.header("location").unwrap();
            assert!(location.starts_with(&s.s3.endpoint), "{location}");
            s.s3.assert_serves(location, &d).await;
            let head = call(&f, source, "HEAD", &format!("/v2/team/app/blobs/{d}"), &[]).await;
            assert_eq!(head.status, 200);
            assert_eq!(head.header("docker-content-digest"), Some(d.as_str()));
            assert!(head.header("content-length").is_some());
        }

        // Errors are OCI JSON, with the right status, through the encoder too.
        let missing = call(&f, source, "GET", "/v2/team/app/manifests/nope", &accept).await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.header("content-type"), Some("application/json"));
        assert_eq!(missing.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
        let push = call(&f, source, "POST", "/v2/team/app/blobs/uploads/", &[]).await;
        assert_eq!(push.status, 405);
        assert_eq!(push.json()["errors"][0]["code"], "UNSUPPORTED");
        let bad = call(&f, source, "GET", "/v2/Team/App/manifests/v1", &[]).await;
        assert_eq!(bad.status, 400, "{:?}", bad.raw);
        assert_eq!(bad.json()["errors"][0]["code"], "NAME_INVALID");
        let elsewhere = call(&f, source, "GET", "/index.html", &[]).await;
        assert_eq!(elsewhere.status, 404);
        let blob404 = call(
            &f,
            source,
            "GET",
            &format!("/v2/team/app/blobs/{}", sha256(b"absent")),
            &[],
        )
        .await;
        assert_eq!(blob404.status, 404);
        assert_eq!(blob404.json()["errors"][0]["code"], "BLOB_UNKNOWN");
        // Nothing needed the asynchronous path.
        assert_eq!(s.aws.count("Invoke"), 0);
    }
}

#[tokio::test]
async fn query_strings_reach_the_router() {
    let s = Setup::new(FakeOptions::default()).await;
    let img = push_oci_index(&s.up, "team/app", "v1", 52);
    let f = s.function("").await;
    let a = call(
        &f,
        Source::HttpApi,
        "GET",
        "/v2/team/app/manifests/v1?ns=local",
        &[("accept", DOCKER_CLIENT_ACCEPT)],
    )
    .await;
    assert_manifest_answer(&a, &img.index, false);
    assert_eq!(a.header("oci-namespace"), Some("local"));
}

/// Every real-world manifest fixture, plus documents a text encoder would alter (a byte-order
/// mark, invalid UTF-8, a body whose JSON escape is larger than base64), comes back byte for
/// byte after the Lambda response encoding.
#[tokio::test]
async fn manifest_bytes_survive_the_lambda_response_encoding() {
    let s = Setup::new(FakeOptions::default()).await;
    let mut docs = realworld_manifests();
    let config = sha256(b"{}");
    let odd = |prefix: &[u8], middle: &[u8]| {
        let mut v = prefix.to_vec();
        v.extend_from_slice(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[],"annotations":{{"x":""#
            )
            .as_bytes(),
        );
        v.extend_from_slice(middle);
        v.extend_from_slice(b"\"}}");
        Bytes::from(v)
    };
    docs.push((
        "bom".into(),
        OCI_MANIFEST.into(),
        odd(b"\xef\xbb\xbf", b"bom"),
    ));
    docs.push(("latin1".into(), OCI_MANIFEST.into(), odd(b"", b"caf\xe9")));
    docs.push((
        "quotes".into(),
        OCI_MANIFEST.into(),
        odd(b"", "\\\"".repeat(2000).as_bytes()),
    ));
    docs.push((
        "controls".into(),
        OCI_MANIFEST.into(),
        odd(b"", b"\\u0000\\u001f \xe2\x80\xa8 \xf0\x9f\x90\xb3"),
    ));
    let expected: Vec<_> = docs
        .into_iter()
        .map(|(tag, media_type, bytes)| {
            let p = push_tagged(&s.up, "fixtures/real", &tag, &media_type, bytes);
            (tag, p)
        })
        .collect();
    let f = s.function("").await;
    let mut encodings = std::collections::BTreeSet::new();
    for source in [Source::HttpApi, Source::FunctionUrl] {
        for (tag, p) in &expected {
            let accept = format!("{DOCKER_CLIENT_ACCEPT}, {}", p.media_type);
            for reference in [tag.as_str(), p.digest.as_str()] {
                let a = call(
                    &f,
                    source,
                    "GET",
                    &format!("/v2/fixtures/real/manifests/{reference}"),
                    &[("accept", &accept)],
                )
                .await;
                assert_manifest_answer(&a, p, false);
                encodings.insert(a.base64);
                if tag == "bom" || tag == "latin1" {
                    assert!(a.base64, "{tag}: must travel as base64");
                }
            }
            let head = call(
                &f,
                source,
                "HEAD",
                &format!("/v2/fixtures/real/manifests/{tag}"),
                &[("accept", &accept)],
            )
            .await;
            assert_manifest_answer(&head, p, true);
        }
    }
    // Both encodings were exercised: text for ordinary JSON, base64 for the odd ones.
    assert_eq!(encodings.len(), 2);
}

/// Why `lambda_http`'s own response encoder is not used: it decodes `+json` bodies through
/// `encoding_rs`, which drops a byte-order mark and replaces invalid UTF-8.
#[tokio::test]
async fn lambda_http_own_encoder_would_alter_such_manifests() {
    use lambda_http::IntoResponse as _;
    for body in [&b"\xef\xbb\xbf{}"[..], &b"{\"x\":\"caf\xe9\"}"[..]] {
        let resp = http::Response::builder()
            .header("content-type", OCI_MANIFEST)
            .body(axum::body::Body::from(body.to_vec()))
            .unwrap();
        let converted = resp.into_response().await;
        let out: Vec<u8> = match converted.body() {
            lambda_http::Body::Text(t) => t.as_bytes().to_vec(),
            lambda_http::Body::Binary(b) => b.clone(),
            _ => Vec::new(),
        };
        assert_ne!(
            out, body,
            "lambda_http kept the bytes: it could be used again"
        );
    }
}

#[tokio::test]
async fn upstream_credentials_come_from_secrets_manager_once() {
    let s = Setup::new(robot_upstream()).await;
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:pullthrough/local-AbCdEf";
    s.aws
        .put_secret(arn, r#"{"username":"robot","password":"s3cr3t"}"#);
    let img = push_oci_index(&s.up, "team/private", "v1", 53);
    let f = s.function_with_upstream_secret(arn).await;
    // Building the function asked nothing.
    assert_eq!(s.aws.calls().len(), 0);
    let accept = [("accept", DOCKER_CLIENT_ACCEPT)];
    for reference in ["v1", img.amd64.digest.as_str()] {
        let a = call(
            &f,
            Source::HttpApi,
            "GET",
            &format!("/v2/team/private/manifests/{reference}"),
            &accept,
        )
        .await;
        assert_eq!(a.status, 200, "{:?}", a.raw);
    }
    let d = &img.amd64.blob_digests()[0];
    let a = call(
        &f,
        Source::HttpApi,
        "GET",
        &format!("/v2/team/private/blobs/{d}"),
        &[],
    )
    .await;
    assert_eq!(a.status, 307);
    let reads = s.aws.calls();
    assert_eq!(reads.len(), 1, "the secret is read once: {reads:?}");
    assert_eq!(reads[0].op, "GetSecretValue");
    assert!(
        reads[0].signature_ok,
        "SigV4-signed: {:?}",
        reads[0].headers
    );
    assert_eq!(
        reads[0].headers.get("x-amz-target").map(String::as_str),
        Some("secretsmanager.GetSecretValue")
    );
}

#[tokio::test]
async fn an_unreadable_secret_is_a_clear_503_and_is_retried() {
    let s = Setup::new(robot_upstream()).await;
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf";
    push_oci_index(&s.up, "team/private", "v1", 54);
    let f = s.function_with_upstream_secret(arn).await;
    let accept = [("accept", DOCKER_CLIENT_ACCEPT)];
    let a = call(
        &f,
        Source::HttpApi,
        "GET",
        "/v2/team/private/manifests/v1",
        &accept,
    )
    .await;
    assert_eq!(a.status, 503, "{:?}", a.raw);
    let msg = a.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("credentials") && msg.contains(arn), "{msg}");
    // A failure is not kept: once the secret exists, the next request reads it and succeeds.
    s.aws
        .put_secret(arn, r#"{"username":"robot","password":"s3cr3t"}"#);
    let a = call(
        &f,
        Source::HttpApi,
        "GET",
        "/v2/team/private/manifests/v1",
        &accept,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.raw);
    assert_eq!(s.aws.count("GetSecretValue"), 2);
}

#[tokio::test]
async fn events_that_are_neither_http_nor_fill_are_invocation_errors() {
    let s = Setup::new(FakeOptions::default()).await;
    let f = s.function("").await;
    for event in [
        r#"{"hello":"world"}"#,
        r#"{"fill":{"upstream":"local"}}"#,
        "[]",
    ] {
        assert!(f.handle(event).await.is_err(), "{event}");
    }
}

// ---- Scheduled operations: `{"gc": …}` and `{"prefetch": …}` events (DESIGN §10). ----

/// The real binary in Lambda mode against the local runtime API, over `s3` and `up`.
struct LambdaBinary(std::process::Child);

impl Drop for LambdaBinary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lambda_binary(
    api: &crate::support::runtime_api::RuntimeApi,
    aws: &FakeAws,
    s3: &S3Server,
    up: &FakeRegistry,
) -> LambdaBinary {
    let config_toml = format!("{}{}", local_config(&up.url()), s3.config_table(""));
    LambdaBinary(
        lambda_command(&api.address)
            .env("AWS_ENDPOINT_URL_LAMBDA", &aws.url)
            .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &aws.url)
            .env("PULLTHROUGH_STORE", format!("s3://{}", s3.bucket))
            .env("PULLTHROUGH_CONFIG_TOML", config_toml)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the binary"),
    )
}

#[tokio::test]
async fn gc_and_prefetch_events_through_the_runtime_api_return_json_reports() {
    use crate::support::runtime_api::{Outcome, RuntimeApi};
    use std::time::Duration;

    let s = Setup::new(FakeOptions::default()).await;
    push_oci_index(&s.up, "team/app", "v1", 81);
    let api = RuntimeApi::start().await;
    let _child = lambda_binary(&api, &s.aws, &s.s3, &s.up);
    let invoke = |event: serde_json::Value| {
        let api = &api;
        async move { api.invoke(&event, Duration::from_secs(60)).await }
    };

    for (event, key) in [
        (
            serde_json::json!({"gc": {"olderThan": "30d", "dryRun": true}}),
            "gc",
        ),
        (serde_json::json!({"gc": {}}), "gc"),
        (
            serde_json::json!({"prefetch": {"refs": ["team/app:v1"], "platforms": "all"}}),
            "prefetch",
        ),
        (
            serde_json::json!({"prefetch": {"refs": ["team/app:v1"]}}),
            "prefetch",
        ),
    ] {
        match invoke(event.clone()).await {
            Outcome::Response(body) => {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON payload");
                assert!(v[key].is_object(), "{event}: {v}");
                assert_eq!(v.as_object().unwrap().len(), 1, "{event}: {v}");
            }
            Outcome::Error(e) => panic!("{event}: {}", String::from_utf8_lossy(&e)),
        }
    }
    // A malformed event fails the invocation with a message naming the problem.
    for (event, says) in [
        (serde_json::json!({"gc": {"olderThan": "5m"}}), "olderThan"),
        (
            serde_json::json!({"gc": {"retention": "30d"}}),
            "unknown field",
        ),
        (
            serde_json::json!({"prefetch": {"refs": []}}),
            "at least one",
        ),
        (
            serde_json::json!({"prefetch": {"refs": ["a:b"]}, "extra": 1}),
            "unknown field",
        ),
    ] {
        match invoke(event.clone()).await {
            Outcome::Error(e) => {
                let e = String::from_utf8_lossy(&e);
                assert!(e.contains(says), "{event}: {e}");
            }
            Outcome::Response(body) => {
                panic!("{event}: answered {}", String::from_utf8_lossy(&body))
            }
        }
    }
}

/// Needs the lifecycle code: a prefetch event warms the image (the next pull makes no upstream
/// request), and a gc event a month later removes it from the bucket.
#[tokio::test]
async fn a_prefetch_event_warms_an_image_and_a_gc_event_collects_it() {
    let s = Setup::new(FakeOptions::default()).await;
    let img = push_oci_index(&s.up, "team/app", "v1", 82);
    let clock = Arc::new(Clock::default());
    let f = function(&s.toml(""), &s.s3, &s.aws, Arc::clone(&clock)).await;

    let out = f
        .handle(r#"{"prefetch": {"refs": ["team/app:v1"], "platforms": "all"}}"#)
        .await
        .expect("the prefetch event succeeds");
    assert!(out["prefetch"].is_object(), "{out}");
    s.up.clear_requests();
    let accept = [("accept", DOCKER_CLIENT_ACCEPT)];
    for (reference, expected) in [("v1", &img.index), (img.amd64.digest.as_str(), &img.amd64)] {
        let a = call(
            &f,
            Source::HttpApi,
            "GET",
            &format!("/v2/team/app/manifests/{reference}"),
            &accept,
        )
        .await;
        assert_manifest_answer(&a, expected, false);
    }
    for d in img.amd64.blob_digests() {
        let a = call(
            &f,
            Source::HttpApi,
            "GET",
            &format!("/v2/team/app/blobs/{d}"),
            &[],
        )
        .await;
        assert_eq!(a.status, 307, "{d} is in the bucket: {:?}", a.raw);
    }
    assert_eq!(s.up.request_lines(), Vec::<String>::new(), "a warm pull");

    clock.advance(std::time::Duration::from_secs(31 * 86_400));
    let out = f
        .handle(r#"{"gc": {"olderThan": "30d", "dryRun": false}}"#)
        .await
        .expect("the gc event succeeds");
    assert!(out["gc"].is_object(), "{out}");
    for d in img.amd64.blob_digests() {
        assert!(!s.s3.has_blob(&d).await, "{d} was collected: {out}");
    }
}

/// A Lambda instance is frozen between invocations, so the cache's 30 s background flush cannot
/// be relied on: each invocation writes the last-pulled times it noted right after its answer.
/// A manifest pulled by digest two hours after its marker was written gets a new `lastPulled`
/// in the bucket, once however often it is pulled within the hour.
#[tokio::test]
async fn an_invocation_writes_the_last_pulled_times_it_noted_after_its_answer() {
    let s = Setup::new(FakeOptions::default()).await;
    let img = push_oci_index(&s.up, "team/app", "v1", 83);
    let clock = Arc::new(Clock::default());
    let f = function(&s.toml(""), &s.s3, &s.aws, Arc::clone(&clock)).await;
    let accept = [("accept", DOCKER_CLIENT_ACCEPT)];
    let path = format!("/v2/team/app/manifests/{}", img.amd64.digest);
    let get = || call(&f, Source::HttpApi, "GET", &path, &accept);
    assert_manifest_answer(&get().await, &img.amd64, false);

    // Two hours on: the stored lastPulled is stale, so the next pull notes it (a manifest by
    // digest is immutable: nothing else rewrites its marker).
    clock.advance(std::time::Duration::from_secs(2 * 3_600));
    s.s3.clear_calls();
    assert_manifest_answer(&get().await, &img.amd64, false);
    let marker = format!(
        "/_digests/sha256/{}",
        img.amd64.digest.trim_start_matches("sha256:")
    );
    let marker_puts = |calls: &[crate::support::s3::S3Call]| {
        calls
            .iter()
            .filter(|c| c.op == "PutObject" && c.key.ends_with(&marker) && c.error.is_none())
            .count()
    };
    s.s3.wait_for(
        "the marker's lastPulled is written after the answer",
        |calls| marker_puts(calls) == 1,
    )
    .await;

    // Written once: more pulls within the hour write nothing more.
    for _ in 0..3 {
        assert_manifest_answer(&get().await, &img.amd64, false);
    }
    let calls = s.s3.calls();
    assert_eq!(marker_puts(&calls), 1, "{calls:?}");
}
