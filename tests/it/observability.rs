//! What an operator sees: `/metrics` scraped with a real Prometheus text parser
//! (`prometheus-parse`) while images are pulled cold and warm, over both stores; `/healthz` and
//! `/readyz` with a store that answers and stores that do not; `/metrics` on its own address;
//! the JSON and text log lines; Lambda's embedded-metric-format line through the runtime API.
//!
//! The figures are the process's own (one registry per process), so every test here runs the
//! real binary as a child process: tests running beside it in this process cannot move them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use crate::support::lambda::{Source, decode, http_event};
use crate::support::runtime_api::{Outcome, RuntimeApi};
use crate::support::*;

fn local_toml(up: &FakeRegistry, extra: &str) -> String {
    format!(
        "default_upstream = \"local\"\n{extra}\n[[upstream]]\nalias = \"local\"\nurl = \"{}\"\ninsecure = true\n",
        up.url()
    )
}

/// `/metrics` of the server at `url`, parsed.
async fn scrape_at(url: &str) -> Scrape {
    let resp = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = resp.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The sum of `name`'s samples whose labels include `labels` (counters and gauges).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
        .sum()
}

/// The figures a pull moves, as `(name, labels)` → value.
fn figures(s: &Scrape) -> HashMap<&'static str, f64> {
    let local = [("upstream", "local")];
    let mut figures = HashMap::from([
        (
            "upstream requests",
            value(s, "pullthrough_upstream_requests_total", &local),
        ),
        (
            "upstream bytes",
            value(s, "pullthrough_upstream_bytes_total", &local),
        ),
        (
            "fills ok",
            value(s, "pullthrough_fills_total", &[("result", "ok")]),
        ),
        ("fills", value(s, "pullthrough_fills_total", &[])),
        (
            "manifest GETs",
            value(
                s,
                "pullthrough_requests_total",
                &[
                    ("endpoint", "manifest"),
                    ("method", "GET"),
                    ("status", "200"),
                ],
            ),
        ),
        ("stale", value(s, "pullthrough_stale_served_total", &local)),
        ("served", value(s, "pullthrough_served_bytes_total", &[])),
        ("redirects", value(s, "pullthrough_redirects_total", &[])),
        (
            "store calls",
            value(s, "pullthrough_store_requests_total", &[]),
        ),
    ]);
    for (name, kind, result) in [
        ("tag miss", "tag", "miss"),
        ("manifest miss", "manifest", "miss"),
        ("blob miss", "blob", "miss"),
        ("tag hit", "tag", "hit"),
        ("manifest hit", "manifest", "hit"),
        ("blob hit", "blob", "hit"),
    ] {
        let labels = [("kind", kind), ("result", result)];
        figures.insert(name, value(s, "pullthrough_cache_lookups_total", &labels));
    }
    figures
}

fn changes(
    before: &HashMap<&'static str, f64>,
    after: &HashMap<&'static str, f64>,
) -> HashMap<&'static str, f64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before[k]))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// A docker-like pull of `repo:tag`'s linux/amd64 image: the index by tag, the platform's
/// manifest by digest, its config and layers (redirects followed).
async fn pull(url: &str, repo: &str, tag: &str, img: &MultiArch) {
    let http = reqwest::Client::new();
    let index = http
        .get(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("accept", DOCKER_CLIENT_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_manifest(index, &img.index).await;
    let amd64 = http
        .get(format!("{url}/v2/{repo}/manifests/{}", img.amd64.digest))
        .header("accept", DOCKER_CLIENT_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_manifest(amd64, &img.amd64).await;
    for digest in img.amd64.blob_digests() {
        let resp = http
            .get(format!("{url}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{digest}");
        assert_eq!(sha256(&resp.bytes().await.unwrap()), digest);
    }
}

/// Waits until no fill runs (over S3 a fill's upload goes on after its clients were served).
async fn fills_done(url: &str) {
    let deadline = Deadline::after(Duration::from_secs(20));
    while value(&scrape_at(url).await, "pullthrough_fills_in_flight", &[]) != 0.0 {
        deadline.pause("fills still in flight").await;
    }
}

async fn cold_then_warm(server: &ServerProcess, img: &MultiArch, s3: bool) {
    let url = &server.url;
    let blobs = img.amd64.blob_digests().len() as f64;
    let before = figures(&scrape_at(url).await);

    pull(url, "team/app", "v1", img).await;
    fills_done(url).await;
    let cold = figures(&scrape_at(url).await);
    let moved = changes(&before, &cold);
    assert!(moved["upstream requests"] >= 3.0, "{moved:?}");
    assert!(moved["upstream bytes"] > 0.0, "{moved:?}");
    assert_eq!(moved["tag miss"], 1.0, "{moved:?}");
    assert_eq!(moved["manifest miss"], 1.0, "{moved:?}");
    assert_eq!(moved["blob miss"], blobs, "{moved:?}");
    assert_eq!(moved["fills ok"], blobs, "{moved:?}");
    assert_eq!(moved["fills"], blobs, "{moved:?}");
    assert_eq!(moved["manifest GETs"], 2.0, "{moved:?}");
    assert!(moved["store calls"] > 0.0, "{moved:?}");
    assert!(!moved.contains_key("tag hit"), "{moved:?}");
    assert!(!moved.contains_key("stale"), "{moved:?}");

    pull(url, "team/app", "v1", img).await;
    let warm = figures(&scrape_at(url).await);
    let moved = changes(&cold, &warm);
    // Only hits: no upstream figure moves, no miss, no fill.
    for unmoved in [
        "upstream requests",
        "upstream bytes",
        "tag miss",
        "manifest miss",
        "blob miss",
        "fills",
    ] {
        assert!(!moved.contains_key(unmoved), "{unmoved} moved: {moved:?}");
    }
    assert_eq!(moved["tag hit"], 1.0, "{moved:?}");
    assert_eq!(moved["manifest hit"], 1.0, "{moved:?}");
    assert_eq!(moved["blob hit"], blobs, "{moved:?}");
    assert_eq!(moved["manifest GETs"], 2.0, "{moved:?}");
    if s3 {
        // Warm blobs are presigned redirects: S3 sends their bytes.
        assert_eq!(moved["redirects"], blobs, "{moved:?}");
    } else {
        let layers: u64 = img.amd64.blob_digests().len() as u64;
        assert!(moved["served"] > layers as f64, "{moved:?}");
        assert!(!moved.contains_key("redirects"), "{moved:?}");
    }

    // Latency: a histogram per route kind, with cumulative buckets up to +Inf.
    let s = scrape_at(url).await;
    let latency = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "pullthrough_request_duration_seconds"
                && x.labels.get("endpoint") == Some("manifest")
        })
        .expect("a manifest latency histogram");
    let Value::Histogram(buckets) = &latency.value else {
        panic!("{latency:?}")
    };
    let inf = buckets.last().unwrap();
    assert!(
        inf.less_than.is_infinite() && inf.count >= 4.0,
        "{buckets:?}"
    );
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    assert!(
        value(
            &s,
            "pullthrough_request_duration_seconds_count",
            &[("endpoint", "manifest")]
        ) >= 4.0
    );
}

#[tokio::test]
async fn a_cold_pull_counts_upstream_requests_misses_and_fills_a_warm_pull_only_hits() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 301);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &local_toml(&up, ""));
    let store = dir.path().join("data");
    let server = ServerProcess::start(&[
        "--store",
        store.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    cold_then_warm(&server, &img, false).await;
}

#[tokio::test]
async fn over_s3_too_and_warm_blobs_count_as_redirects() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 302);
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill");
    let toml = format!(
        "{}{}\n[spill]\ndir = \"{}\"\n",
        local_toml(&up, ""),
        s3.config_table(""),
        spill.display()
    );
    let config = config_file(dir.path(), &toml);
    let server = ServerProcess::start_with_env(&s3::binary_args(&config), &s3::AWS_ENV).await;
    cold_then_warm(&server, &img, true).await;
}

#[tokio::test]
async fn health_and_readiness_and_metrics_need_no_client_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    std::fs::write(
        &users,
        format!("ops:{}\n", bcrypt::hash("s3cret", 4).unwrap()),
    )
    .unwrap();
    let store = dir.path().join("data");
    let server = ServerProcess::start(&[
        "--store",
        store.to_str().unwrap(),
        "--auth",
        users.to_str().unwrap(),
    ])
    .await;
    let url = &server.url;
    assert_eq!(
        reqwest::get(format!("{url}/v2/")).await.unwrap().status(),
        401
    );
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["store"], store.to_str().unwrap());
    let s = scrape_at(url).await;
    assert_eq!(
        value(
            &s,
            "pullthrough_requests_total",
            &[("endpoint", "base"), ("status", "401")]
        ),
        1.0
    );
    assert!(
        value(
            &s,
            "pullthrough_store_requests_total",
            &[("op", "head"), ("result", "ok")]
        ) >= 1.0
    );

    // The store's directory goes away: not ready (503 naming the store) once the last answer's
    // second of reuse is over, still alive.
    std::fs::remove_dir_all(&store).unwrap();
    eventually("/readyz says 503", Duration::from_secs(10), || async {
        reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(header(&ready, "content-type"), Some("application/json"));
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["store"], store.to_str().unwrap());
    assert!(body["error"].as_str().unwrap().contains(".tmp"), "{body}");
    assert_eq!(
        reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A method the operator's endpoints do not take is a 405 in OCI JSON with `Allow`, like the
/// registry API's, never an empty body; HEAD answers like GET without a body.
#[tokio::test]
async fn operator_endpoints_refuse_other_methods_in_oci_json() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let resp = http
                .request(method.parse().unwrap(), format!("{}{path}", proxy.url))
                .send()
                .await
                .unwrap();
            assert_eq!(header(&resp, "allow"), Some("GET, HEAD"), "{method} {path}");
            let message = expect_oci_error(resp, 405, "UNSUPPORTED").await;
            assert!(message.contains(method), "{method} {path}: {message}");
        }
        let head = http
            .head(format!("{}{path}", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
    }
}

#[tokio::test]
async fn an_s3_store_that_does_not_answer_is_not_ready() {
    // A port with nothing listening on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[s3]\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nmax_attempts = 1\n[spill]\ndir = \"{}\"\n",
        dir.path().join("spill").display()
    );
    let config = config_file(dir.path(), &toml);
    let server = ServerProcess::start_with_env(&s3::binary_args(&config), &s3::AWS_ENV).await;
    let started = std::time::Instant::now();
    let ready = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(10));
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["store"], s3::STORE_URL, "{body}");
    assert_eq!(
        reqwest::get(format!("{}/healthz", server.url))
            .await
            .unwrap()
            .status(),
        200
    );
    let s = scrape_at(&server.url).await;
    assert!(
        value(
            &s,
            "pullthrough_store_requests_total",
            &[("op", "head"), ("result", "error")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn metrics_listen_serves_metrics_on_its_own_address_only() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = free.local_addr().unwrap();
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let server = ServerProcess::start(&[
        "--store",
        store.to_str().unwrap(),
        "--metrics-listen",
        &metrics_addr.to_string(),
    ])
    .await;
    assert_eq!(
        reqwest::get(format!("{}/v2/", server.url))
            .await
            .unwrap()
            .status(),
        200
    );
    let on_api = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert_eq!(on_api.status(), 404);
    let s = scrape_at(&format!("http://{metrics_addr}")).await;
    assert_eq!(
        value(
            &s,
            "pullthrough_requests_total",
            &[("endpoint", "base"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "pullthrough_requests_total",
            &[("endpoint", "metrics"), ("status", "404")]
        ),
        1.0,
        "the API's /metrics is a 404 there"
    );
    // The metrics address answers errors in OCI JSON too: another path, another method.
    let http = reqwest::Client::new();
    for (method, path, status, allow) in [
        ("GET", "/v2/", 404, None),
        ("GET", "/healthz", 404, None),
        ("POST", "/metrics", 405, Some("GET, HEAD")),
        ("DELETE", "/metrics", 405, Some("GET, HEAD")),
    ] {
        let resp = http
            .request(
                method.parse().unwrap(),
                format!("http://{metrics_addr}{path}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        assert_eq!(header(&resp, "allow"), allow, "{method} {path}");
        assert_eq!(
            header(&resp, "content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED", "{body}");
    }
}

/// The request lines (`"message":"request"`) of a JSON log, and every JSON line.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.starts_with("pullthrough: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn json_logs_have_a_start_up_line_and_one_line_per_request_with_its_fields() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 303);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &local_toml(&up, "tag_ttl = \"90s\""));
    let store = dir.path().join("data");
    let (mut server, log) = ServerProcess::start_logged(
        &[
            "--store",
            store.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info"), ("PULLTHROUGH_LOG_FORMAT", "json")],
    )
    .await;
    let http = reqwest::Client::new();
    let path = "/v2/team/app/manifests/v1";
    for _ in 0..2 {
        let resp = http
            .get(format!("{}{path}?ns=local", server.url))
            .header("accept", DOCKER_CLIENT_ACCEPT)
            .send()
            .await
            .unwrap();
        assert_manifest(resp, &img.index).await;
    }
    // A method is any token a client likes: a 10,000-character one is answered and logged cut
    // to a bounded length, like a path.
    let long = "X".repeat(10_000);
    for path in ["/v2/", "/healthz"] {
        let resp = http
            .request(
                reqwest::Method::from_bytes(long.as_bytes()).unwrap(),
                format!("{}{path}", server.url),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        let body = resp.bytes().await.unwrap();
        assert!(body.len() < 1024, "{path}: a {}-byte answer", body.len());
    }
    server.kill();
    let lines = json_lines(&log.join().unwrap());
    let odd: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["status"] == 405)
        .collect();
    assert_eq!(odd.len(), 2, "{odd:?}");
    for line in odd {
        let method = line["method"].as_str().unwrap();
        assert!(method.len() < 256, "a {}-byte method logged", method.len());
    }

    let start = lines
        .iter()
        .find(|l| l["message"] == "pullthrough serving")
        .expect("a start-up line");
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["listen"], server.url.trim_start_matches("http://"));
    assert_eq!(start["store"], store.to_str().unwrap());
    assert_eq!(start["auth"], "none");
    assert_eq!(start["tag_ttl"], "90s");
    assert_eq!(start["default_upstream"], "local");
    let upstreams = start["upstreams"].as_str().unwrap();
    assert!(
        upstreams.contains(&format!("local={}", up.url().trim_end_matches('/'))),
        "{upstreams}"
    );

    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["method"] == "GET")
        .collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for (line, cache) in requests.iter().zip(["miss", "hit"]) {
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["query"], "ns=local", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes"], img.index.bytes.len(), "{line}");
        assert_eq!(line["upstream"], "local", "{line}");
        assert_eq!(line["cache"], cache, "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert!(line["ms"].is_u64(), "{line}");
        assert!(line["store_calls"].is_u64(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
    assert_eq!(
        requests[1]["store_calls"], 0,
        "a warm tag is served from memory"
    );
}

#[tokio::test]
async fn text_logs_have_the_same_request_fields_and_no_colour_codes() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 304);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &local_toml(&up, ""));
    let store = dir.path().join("data");
    let (mut server, log) = ServerProcess::start_logged(
        &[
            "--store",
            store.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
    )
    .await;
    let url = format!(
        "{}/v2/team/app/blobs/{}",
        server.url,
        img.amd64.blob_digests()[0]
    );
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The line is written when the response body has ended.
    resp.bytes().await.unwrap();
    server.kill();
    let log = log.join().unwrap();
    assert!(!log.contains('\u{1b}'), "colour codes:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("request method="))
        .unwrap_or_else(|| panic!("no request line:\n{log}"));
    for field in [
        "method=GET",
        "status=200",
        "upstream=local",
        "cache=miss",
        "client=127.0.0.1",
        "bytes=",
        "store_calls=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}

/// The binary in Lambda mode (JSON logs by default), its stdout lines sent to a channel.
struct LambdaProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LambdaProcess {
    fn spawn(api: &RuntimeApi, s3: &S3Server, config_toml: &str) -> LambdaProcess {
        let mut child = lambda_command(&api.address)
            .env("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true")
            .env("PULLTHROUGH_STORE", format!("s3://{}", s3.bucket))
            .env("PULLTHROUGH_CONFIG_TOML", config_toml)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LambdaProcess { child, lines }
    }

    /// Stdout lines until the next EMF line (returned, parsed) and the lines before it.
    fn next_emf(&self) -> (serde_json::Value, Vec<serde_json::Value>) {
        let mut before = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("an EMF line within 30 s");
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a Lambda log line is not JSON ({e}): {line}"));
            if v.get("_aws").is_some() {
                return (v, before);
            }
            before.push(v);
        }
    }
}

async fn invoke(api: &RuntimeApi, path: &str) -> u16 {
    let event = http_event(
        Source::HttpApi,
        "GET",
        path,
        &[("accept", DOCKER_CLIENT_ACCEPT)],
    );
    match api.invoke(&event, Duration::from_secs(30)).await {
        Outcome::Response(body) => decode(serde_json::from_slice(&body).unwrap()).status,
        Outcome::Error(e) => panic!("{path}: {}", String::from_utf8_lossy(&e)),
    }
}

#[tokio::test]
async fn lambda_writes_one_emf_line_per_invocation_with_what_changed() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    push_oci_index(&up, "team/app", "v1", 305);
    let s3 = S3Server::start().await;
    let api = RuntimeApi::start().await;
    let toml = format!("{}{}", local_toml(&up, ""), s3.config_table(""));
    let lambda = LambdaProcess::spawn(&api, &s3, &toml);
    assert!(
        api.first_next(Duration::from_secs(30)).await.is_some(),
        "init error: {:?}",
        api.init_error()
    );

    let path = "/v2/team/app/manifests/v1";
    assert_eq!(invoke(&api, path).await, 200);
    let (emf, logs) = lambda.next_emf();
    let directive = &emf["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Pullthrough", "{emf}");
    assert!(emf["_aws"]["Timestamp"].is_u64(), "{emf}");
    let names: Vec<&str> = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in &names {
        assert!(emf.get(*name).is_some(), "{name} has no value: {emf}");
    }
    assert_eq!(emf["requests_total"], 1.0, "{emf}");
    assert_eq!(emf["requests_total.manifest.GET.200"], 1.0, "{emf}");
    assert_eq!(emf["requests_total.2xx"], 1.0, "{emf}");
    assert_eq!(emf["cache_lookups_total.tag.miss"], 1.0, "{emf}");
    assert!(
        emf["upstream_requests_total.local.GET.200"].as_f64() >= Some(1.0),
        "{emf}"
    );
    assert!(
        emf["upstream_bytes_total.local"].as_f64() > Some(0.0),
        "{emf}"
    );
    assert!(emf["request_duration_seconds.manifest"].is_f64(), "{emf}");
    // JSON logs by default in Lambda, with the request line.
    let request = logs
        .iter()
        .find(|l| l["message"] == "request")
        .unwrap_or_else(|| panic!("no request line in {logs:?}"));
    assert_eq!(request["cache"], "miss");
    assert_eq!(request["upstream"], "local");
    // The start-up line names what the function runs with, as the server's does.
    let startup = logs
        .iter()
        .find(|l| l["message"] == "pullthrough Lambda configuration")
        .unwrap_or_else(|| panic!("no start-up line in {logs:?}"));
    for field in ["function", "store", "upstreams", "auth", "tag_ttl"] {
        assert!(startup[field].is_string(), "{field}: {startup}");
    }
    assert_eq!(startup["admin_api"], "off", "{startup}");

    // The same tag again: only what changed, and nothing upstream.
    assert_eq!(invoke(&api, path).await, 200);
    let (emf, _) = lambda.next_emf();
    assert_eq!(emf["requests_total"], 1.0, "{emf}");
    assert_eq!(emf["cache_lookups_total.tag.hit"], 1.0, "{emf}");
    assert!(emf.get("cache_lookups_total.tag.miss").is_none(), "{emf}");
    assert!(emf.get("upstream_requests_total").is_none(), "{emf}");
    assert!(emf.get("upstream_bytes_total").is_none(), "{emf}");
}

/// The Grafana dashboard in `docs/` is valid JSON, picks its Prometheus data source through a
/// variable, and queries only metrics the process exports; docs/operations.md lists them all.
#[test]
fn the_dashboard_and_the_docs_name_the_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
    );
    let exported = Scrape::parse(
        pullthrough::metrics::render()
            .lines()
            .map(|l| Ok(l.to_owned())),
    )
    .unwrap()
    .docs;
    let names = regex::Regex::new(r"pullthrough_[a-z_]+").unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            for m in names.find_iter(target["expr"].as_str().unwrap()) {
                let family = m.as_str().trim_end_matches("_bucket");
                assert!(exported.contains_key(family), "{family} is not exported");
                queried += 1;
            }
        }
    }
    assert!(queried >= 10);
    let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    for family in exported.keys() {
        let short = family.trim_start_matches("pullthrough_");
        assert!(
            ops.contains(&format!("| `{short}` |")),
            "{short} is not in docs/operations.md"
        );
    }
}

/// The SAM template's dashboard and alarms name `Pullthrough` figures the function writes: an
/// EMF name is a family without `pullthrough_`, then label values or a status class.
#[test]
fn the_cloudwatch_dashboard_and_alarms_name_figures_the_function_writes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(root.join("infra/template.yaml")).unwrap();
    let exported = Scrape::parse(
        pullthrough::metrics::render()
            .lines()
            .map(|l| Ok(l.to_owned())),
    )
    .unwrap()
    .docs;
    let mut named: Vec<String> = Vec::new();
    // Dashboard rows: ["Pullthrough","name"] and the [".","name"] rows that follow them.
    let mut in_pullthrough = false;
    for line in template.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("[\"Pullthrough\",\"") {
            in_pullthrough = true;
            named.push(rest.split('"').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("[\".\",\"") {
            if in_pullthrough {
                named.push(rest.split('"').next().unwrap().to_owned());
            }
        } else if line.starts_with('[') {
            in_pullthrough = false;
        }
    }
    // Alarms: `Namespace: Pullthrough` then `MetricName: name`.
    let lines: Vec<&str> = template.lines().map(str::trim).collect();
    for pair in lines.windows(2) {
        if pair[0] == "Namespace: Pullthrough"
            && let Some(name) = pair[1].strip_prefix("MetricName: ")
        {
            named.push(name.to_owned());
        }
    }
    assert!(named.len() >= 8, "{named:?}");
    assert!(named.iter().any(|n| n == "fills_total.error"), "{named:?}");
    for name in &named {
        let family = format!("pullthrough_{}", name.split('.').next().unwrap());
        assert!(
            exported.contains_key(&family),
            "infra/template.yaml names {name}, but {family} is not a metric"
        );
    }
}

/// `/readyz` needs no credentials, so it must not turn a client's requests into store requests:
/// concurrent probes share one check and an answer is reused for a second. 60 probes (40 at once,
/// then 20 in a row) cost at most one S3 `HeadObject` per second they took, plus one.
#[tokio::test]
async fn readyz_probes_share_one_store_check_a_second() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start_s3(&up).await;
    let client = reqwest::Client::new();
    let url = format!("{}/readyz", proxy.url);
    proxy.s3().clear_calls();
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..40).map(|_| client.get(&url).send())).await;
    for a in answers {
        assert_eq!(a.unwrap().status(), 200);
    }
    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let heads = proxy.s3().count("HeadObject");
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(
        (1..=allowed).contains(&heads),
        "{heads} HeadObject for 60 probes in {:?}",
        started.elapsed()
    );
}
