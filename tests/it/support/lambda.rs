//! Lambda mode in the test process: the function built as at a cold start over the in-process
//! S3 server, a fake AWS endpoint for Lambda `Invoke` and Secrets Manager `GetSecretValue` as the
//! SDK clients send them (it checks every SigV4 signature independently of the signer; plain
//! HTTP, or HTTPS with a private CA), and API Gateway HTTP API / function URL events built from
//! the fixtures in `tests/fixtures/lambda/`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use pullthrough::aws::{LambdaInvoker, SecretsManager};
use pullthrough::cache::{Clock, FillJob, FillPolicy, Services};
use pullthrough::config::S3Settings;
use pullthrough::lambda::Function;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::s3::{self, ACCESS_KEY, REGION, S3Server, SECRET_KEY, TestCa};

pub const FUNCTION_NAME: &str = "pullthrough-test";

/// One request the fake AWS endpoint received.
#[derive(Clone, Debug)]
pub struct AwsCall {
    /// `Invoke` or `GetSecretValue`.
    pub op: &'static str,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
    /// The SigV4 signature checked out (right key, scope, signed headers and body hash).
    pub signature_ok: bool,
}

#[derive(Default)]
struct AwsState {
    calls: Vec<AwsCall>,
    /// Secret ARN → SecretString.
    secrets: BTreeMap<String, String>,
    /// Answer `Invoke` with this status instead of 202.
    invoke_status: Option<u16>,
    /// Answer `GetSecretValue` with this status instead of the secret: a 5xx is a transient
    /// `InternalServiceError` (retried by the SDK), a 4xx an `AccessDeniedException` (not).
    secret_status: Option<u16>,
    /// Answer the next this many requests (any operation) with 503 `ServiceUnavailable`.
    transient_failures: u32,
}

/// A fake of the two AWS APIs the function calls besides S3.
pub struct FakeAws {
    /// `http://127.0.0.1:PORT`, or `https://…` from [`FakeAws::start_tls`].
    pub url: String,
    /// For HTTPS: the CA that signed the certificate, and a file holding it.
    pub ca: Option<(TestCa, std::path::PathBuf, tempfile::TempDir)>,
    /// The SDK configuration the clients of [`FakeAws::secrets_manager`] and
    /// [`FakeAws::invoker`] share: the production loader with the test credentials and region,
    /// and the default `max_attempts`.
    sdk: aws_types::SdkConfig,
    state: Arc<Mutex<AwsState>>,
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<AwsState>>,
    changed: watch::Sender<u64>,
}

impl FakeAws {
    /// Plain HTTP.
    pub async fn start() -> FakeAws {
        FakeAws::start_inner(false).await
    }

    /// HTTPS with a certificate from a fresh private CA ([`FakeAws::ca_file`]).
    pub async fn start_tls() -> FakeAws {
        FakeAws::start_inner(true).await
    }

    async fn start_inner(tls: bool) -> FakeAws {
        let state = Arc::new(Mutex::new(AwsState::default()));
        let (changed, _) = watch::channel(0);
        let ctx = Ctx {
            state: Arc::clone(&state),
            changed: changed.clone(),
        };
        let app = Router::new().fallback(aws_handler).with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake AWS");
        let addr = listener.local_addr().expect("addr");
        let ca = tls.then(|| {
            let ca = TestCa::generate();
            let dir = tempfile::tempdir().expect("CA dir");
            let path = dir.path().join("fake-aws-ca.pem");
            std::fs::write(&path, &ca.ca_pem).expect("write CA file");
            (ca, path, dir)
        });
        let (url, task) = match &ca {
            None => (
                format!("http://{addr}"),
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                }),
            ),
            Some((ca, _, _)) => {
                let tls = TlsListener {
                    tcp: listener,
                    acceptor: ca.tls_acceptor(),
                };
                (
                    format!("https://{addr}"),
                    tokio::spawn(async move {
                        let _ = axum::serve(tls, app).await;
                    }),
                )
            }
        };
        let sdk = pullthrough::aws::load_sdk_config(
            Some(REGION),
            ca.as_ref().map(|(_, path, _)| path.as_path()),
            Some(s3::test_credentials()),
            S3Settings::default().max_attempts,
        )
        .await
        .expect("SDK config");
        FakeAws {
            url,
            ca,
            sdk,
            state,
            changed,
            task,
        }
    }

    /// The CA file of an HTTPS fake.
    pub fn ca_file(&self) -> &std::path::Path {
        &self.ca.as_ref().expect("an HTTPS fake").1
    }

    pub fn put_secret(&self, arn: &str, secret_string: &str) {
        self.state
            .lock()
            .unwrap()
            .secrets
            .insert(arn.to_owned(), secret_string.to_owned());
    }

    /// Makes every `GetSecretValue` fail with `status` (`None`: answer again).
    pub fn fail_secret_reads_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().secret_status = status;
    }

    /// A Secrets Manager client for this endpoint, signing with the test credentials.
    pub fn secrets_manager(&self) -> Arc<SecretsManager> {
        Arc::new(SecretsManager::with_endpoint(&self.sdk, &self.url))
    }

    /// A Lambda client invoking [`FUNCTION_NAME`] at this endpoint.
    pub fn invoker(&self) -> LambdaInvoker {
        LambdaInvoker::with_endpoint(&self.sdk, &self.url, FUNCTION_NAME.into())
    }

    /// Answers the next `n` requests, whatever their operation, with a transient 503.
    pub fn fail_next_requests(&self, n: u32) {
        self.state.lock().unwrap().transient_failures = n;
    }

    pub fn fail_invokes_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().invoke_status = status;
    }

    pub fn calls(&self) -> Vec<AwsCall> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn count(&self, op: &str) -> usize {
        self.calls().iter().filter(|c| c.op == op).count()
    }

    /// The `{"fill": …}` jobs invoked so far, in order.
    pub fn fill_jobs(&self) -> Vec<FillJob> {
        self.calls()
            .iter()
            .filter(|c| c.op == "Invoke")
            .map(|c| {
                let v: serde_json::Value = serde_json::from_slice(&c.body).expect("JSON event");
                serde_json::from_value(v["fill"].clone()).expect("a fill event")
            })
            .collect()
    }

    /// The raw payloads of the `Invoke` calls.
    pub fn invoke_payloads(&self) -> Vec<serde_json::Value> {
        self.calls()
            .iter()
            .filter(|c| c.op == "Invoke")
            .map(|c| serde_json::from_slice(&c.body).expect("JSON event"))
            .collect()
    }

    /// Waits (up to 30 s) until `n` calls of `op` arrived.
    pub async fn wait_for(&self, op: &str, n: usize) {
        let mut rx = self.changed.subscribe();
        let ok = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if self.count(op) >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "timed out waiting for {n} {op}: {:?}",
            self.calls()
        );
    }
}

async fn aws_handler(State(ctx): State<Ctx>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let path = parts.uri.path().to_owned();
    let target = headers.get("x-amz-target").cloned().unwrap_or_default();
    let (op, service) = if path.starts_with("/2015-03-31/functions/") {
        ("Invoke", "lambda")
    } else if target == "secretsmanager.GetSecretValue" {
        ("GetSecretValue", "secretsmanager")
    } else {
        ("Unknown", "")
    };
    let signature_ok = verify_sigv4(
        parts.method.as_str(),
        &path,
        parts.uri.query().unwrap_or(""),
        &headers,
        &body,
        service,
    );
    let call = AwsCall {
        op,
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        signature_ok,
    };
    let answer = {
        let mut st = ctx.state.lock().unwrap();
        st.calls.push(call);
        if !signature_ok {
            (
                StatusCode::FORBIDDEN,
                r#"{"__type":"InvalidSignatureException"}"#.to_owned(),
            )
        } else if st.transient_failures > 0 {
            st.transient_failures -= 1;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"__type":"ServiceUnavailable","Message":"injected"}"#.to_owned(),
            )
        } else {
            match op {
                "Invoke" => match st.invoke_status {
                    Some(s) => (
                        StatusCode::from_u16(s).unwrap(),
                        r#"{"Type":"Service","message":"injected"}"#.to_owned(),
                    ),
                    None => (StatusCode::ACCEPTED, String::new()),
                },
                "GetSecretValue" if st.secret_status.is_some() => {
                    let status = st.secret_status.unwrap_or(500);
                    let code = if status >= 500 {
                        "InternalServiceError"
                    } else {
                        "AccessDeniedException"
                    };
                    (
                        StatusCode::from_u16(status).unwrap(),
                        format!(r#"{{"__type":"{code}","Message":"injected"}}"#),
                    )
                }
                "GetSecretValue" => {
                    let id: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let arn = id["SecretId"].as_str().unwrap_or_default();
                    match st.secrets.get(arn) {
                        Some(s) => (
                            StatusCode::OK,
                            serde_json::json!({"ARN": arn, "Name": "x", "SecretString": s})
                                .to_string(),
                        ),
                        None => (
                            StatusCode::BAD_REQUEST,
                            r#"{"__type":"ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#.to_owned(),
                        ),
                    }
                }
                _ => (StatusCode::NOT_FOUND, String::new()),
            }
        }
    };
    ctx.changed.send_modify(|n| *n += 1);
    (
        answer.0,
        [("content-type", "application/x-amz-json-1.1")],
        answer.1,
    )
        .into_response()
}

/// A TCP listener whose connections are TLS-terminated, for `axum::serve`. A failed handshake
/// (a client that does not trust the CA) just ends that connection.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((socket, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(socket).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// Checks an `Authorization: AWS4-HMAC-SHA256 ...` header from scratch (RFC-style SigV4:
/// canonical request, string to sign, derived key), with the test credentials, region
/// us-east-1 and `service`.
fn verify_sigv4(
    method: &str,
    path: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    service: &str,
) -> bool {
    let Some(auth) = headers.get("authorization") else {
        return false;
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return false;
    };
    let fields: BTreeMap<&str, &str> = rest.split(", ").filter_map(|f| f.split_once('=')).collect();
    let (Some(credential), Some(signed), Some(signature)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return false;
    };
    let Some(date) = headers.get("x-amz-date") else {
        return false;
    };
    let day = &date[..8];
    let scope = format!("{day}/{REGION}/{service}/aws4_request");
    if *credential != format!("{ACCESS_KEY}/{scope}") {
        return false;
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return false;
    }
    let mut canonical_headers = String::new();
    for n in &names {
        let Some(v) = headers.get(*n) else {
            return false;
        };
        canonical_headers.push_str(&format!("{n}:{}\n", v.trim()));
    }
    let canonical = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}",
        hex::encode(Sha256::digest(body))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), day.as_bytes());
    for part in [REGION, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hex::encode(hmac(&key, to_sign.as_bytes())) == *signature
}

/// A function instance (one Lambda execution environment) over `server`, configured by `toml`
/// (which should hold `server.config_table(..)`), with its AWS calls going to `aws`.
pub async fn function(toml: &str, server: &S3Server, aws: &FakeAws, clock: Arc<Clock>) -> Function {
    let (config, store) = server.configured_store(toml).await;
    let invoker = aws.invoker();
    let services = Services {
        secrets: Some(aws.secrets_manager()),
        fill_policy: Some(FillPolicy::new(config.fill_deadline, Arc::new(invoker))),
        ..Services::default()
    };
    let (router, registry) =
        pullthrough::build(config, Arc::new(store), clock, services).expect("app builds");
    Function::new(router, registry)
}

/// Which kind of HTTP event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// API Gateway HTTP API, payload format 2.0, `$default` stage.
    HttpApi,
    /// A Lambda function URL (the same payload format).
    FunctionUrl,
    /// API Gateway HTTP API with a named stage `prod` (the stage in `rawPath`).
    NamedStage,
}

impl Source {
    fn fixture(self) -> &'static str {
        match self {
            Source::HttpApi => include_str!("../../fixtures/lambda/apigw-v2-get.json"),
            Source::FunctionUrl => include_str!("../../fixtures/lambda/function-url-get.json"),
            Source::NamedStage => include_str!("../../fixtures/lambda/apigw-v2-named-stage.json"),
        }
    }
}

/// An HTTP event from the fixture of `source`, for `method` and `path_and_query`, with extra
/// request headers.
pub fn http_event(
    source: Source,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut event: serde_json::Value = serde_json::from_str(source.fixture()).expect("fixture");
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = match source {
        Source::NamedStage => format!("/prod{path}"),
        _ => path.to_owned(),
    };
    event["rawPath"] = path.clone().into();
    event["rawQueryString"] = query.into();
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    for (k, v) in headers {
        event["headers"][k.to_ascii_lowercase()] = (*v).into();
    }
    event
}

/// A decoded payload format 2.0 response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub base64: bool,
    /// The response payload as the function returned it.
    pub raw: serde_json::Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Decodes a response payload: the body from text, or from base64 when `isBase64Encoded`.
pub fn decode(raw: serde_json::Value) -> Answer {
    let status = raw["statusCode"].as_u64().expect("statusCode") as u16;
    let headers = raw["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("header value").to_owned()))
        .collect();
    let base64 = raw["isBase64Encoded"].as_bool().expect("isBase64Encoded");
    let body = match raw.get("body").and_then(|b| b.as_str()) {
        None => Vec::new(),
        Some(b) if base64 => base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64 body"),
        Some(b) => b.as_bytes().to_vec(),
    };
    Answer {
        status,
        headers,
        body,
        base64,
        raw,
    }
}

/// Sends an HTTP event through the function and decodes the answer.
pub async fn call(
    f: &Function,
    source: Source,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let event = http_event(source, method, path, headers);
    let raw = f
        .handle(&event.to_string())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: the function failed: {e}"));
    decode(raw)
}
