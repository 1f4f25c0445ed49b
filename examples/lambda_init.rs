//! Measures Lambda-mode start-up of a pullthrough binary: the time from `exec` to its first
//! `GET /2018-06-01/runtime/invocation/next` against a local runtime API, then the first
//! invocation (`GET /v2/` through an API Gateway HTTP API event). Run by `bench/lambda_init.sh`.
//!
//! Usage: `lambda_init <binary> [runs]`. Prints one line per run and a summary.

#[path = "../tests/it/support/runtime_api.rs"]
mod runtime_api;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runtime_api::{Outcome, RuntimeApi};

const EVENT: &str = include_str!("../tests/fixtures/lambda/apigw-v2-get.json");

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args.next().expect("usage: lambda_init <binary> [runs]");
    let runs: usize = args.next().map_or(20, |n| n.parse().expect("runs"));
    let event: serde_json::Value = serde_json::from_str(EVENT).expect("fixture");
    let mut init_ms = Vec::new();
    let mut first_ms = Vec::new();
    for run in 1..=runs {
        let api = RuntimeApi::start().await;
        let started = Instant::now();
        let mut child = Command::new(&binary)
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", &api.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", "pullthrough-bench")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK0000000")
            .env("AWS_SECRET_ACCESS_KEY", "bench/secret")
            .env("AWS_SESSION_TOKEN", "bench-token")
            .env("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true")
            .env("PULLTHROUGH_STORE", "s3://pullthrough-bench/cache")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the binary");
        let Some(first) = api.first_next(Duration::from_secs(10)).await else {
            let _ = child.kill();
            panic!(
                "run {run}: no /next call; init error: {:?}",
                api.init_error()
            );
        };
        let init = first.duration_since(started);
        let t = Instant::now();
        let out = api.invoke(&event, Duration::from_secs(10)).await;
        let first_invoke = t.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        match out {
            Outcome::Response(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b).expect("JSON");
                assert_eq!(v["statusCode"], 200, "{v}");
            }
            Outcome::Error(e) => panic!("run {run}: error {}", String::from_utf8_lossy(&e)),
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "run {run:>3}: init {:>7.2} ms   first invocation (GET /v2/) {:>6.2} ms",
            ms(init),
            ms(first_invoke)
        );
        init_ms.push(ms(init));
        first_ms.push(ms(first_invoke));
    }
    let summary = |name: &str, v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let median = v[v.len() / 2];
        let p90 = v[(v.len() * 9 / 10).min(v.len() - 1)];
        println!(
            "{name}: min {:.2} ms, median {median:.2} ms, p90 {p90:.2} ms, max {:.2} ms ({} runs)",
            v[0],
            v[v.len() - 1],
            v.len()
        );
    };
    summary(
        "init (exec -> first /runtime/invocation/next)",
        &mut init_ms,
    );
    summary("first invocation", &mut first_ms);
}
