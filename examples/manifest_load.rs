//! A bounded load generator for registry manifest GETs (the benchmark's latency figures).
//!
//! ```sh
//! cargo run --release --example manifest_load -- \
//!     --url http://127.0.0.1:5000/v2/e2e/manylayers/manifests/v1 --requests 5000 --concurrency 16
//! ```
//!
//! Sends exactly `--requests` GETs (after `--warmup` unmeasured ones) from `--concurrency` tasks
//! over keep-alive connections, each with a per-request timeout, and stops by itself: the whole
//! run is bounded by `--max-seconds` (requests not sent by then are reported as not sent). Every
//! response must be 200 (and, with `--expect-digest`, carry that `Docker-Content-Digest`) and its
//! body is read in full. Prints one JSON object: counts, latency percentiles in milliseconds,
//! elapsed seconds and requests per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

const DEFAULT_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Parser, Debug)]
#[command(about = "Bounded manifest GET load: latency percentiles as JSON")]
struct Args {
    /// The manifest URL (http://HOST:PORT/v2/<name>/manifests/<tag or digest>).
    #[arg(long)]
    url: String,
    /// Measured requests.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Unmeasured requests first (connections opened, caches warmed).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// The Accept header.
    #[arg(long, default_value = DEFAULT_ACCEPT)]
    accept: String,
    /// Required Docker-Content-Digest of every answer.
    #[arg(long)]
    expect_digest: Option<String>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Upper bound of the whole run, seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
}

async fn one(client: &reqwest::Client, args: &Args) -> Result<(), String> {
    let resp = client
        .get(&args.url)
        .header(reqwest::header::ACCEPT, &args.accept)
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    if let Some(want) = &args.expect_digest
        && digest.as_deref() != Some(want.as_str())
    {
        return Err(format!("Docker-Content-Digest {digest:?}, expected {want}"));
    }
    Ok(())
}

/// Runs `total` requests from `args.concurrency` tasks; stops early at `deadline`.
async fn run(
    client: &reqwest::Client,
    args: &Arc<Args>,
    total: usize,
    deadline: Instant,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, args, next) = (client.clone(), Arc::clone(args), Arc::clone(&next));
        tasks.spawn(async move {
            let mut out = Outcome::default();
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let t = Instant::now();
                match one(&client, &args).await {
                    Ok(()) => out.latencies_us.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            out
        });
    }
    let mut all = Outcome::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(o) = r {
            all.latencies_us.extend(o.latencies_us);
            all.errors += o.errors;
            if all.first_error.is_none() {
                all.first_error = o.first_error;
            }
        }
    }
    all
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .pool_max_idle_per_host(args.concurrency.max(1))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);

    let warm = run(&client, &args, args.warmup, deadline).await;
    let t = Instant::now();
    let mut out = run(&client, &args, args.requests, deadline).await;
    let elapsed = t.elapsed().as_secs_f64();
    out.latencies_us.sort_unstable();
    let ok = out.latencies_us.len();
    let mean = if ok == 0 {
        f64::NAN
    } else {
        out.latencies_us.iter().sum::<u64>() as f64 / ok as f64 / 1000.0
    };
    let report = serde_json::json!({
        "url": args.url,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ok": ok,
        "errors": out.errors,
        "not_sent": args.requests.saturating_sub(ok + out.errors),
        "warmup_errors": warm.errors,
        "first_error": out.first_error.or(warm.first_error),
        "p50_ms": percentile(&out.latencies_us, 50.0),
        "p90_ms": percentile(&out.latencies_us, 90.0),
        "p99_ms": percentile(&out.latencies_us, 99.0),
        "max_ms": percentile(&out.latencies_us, 100.0),
        "mean_ms": mean,
        "elapsed_s": elapsed,
        "rps": ok as f64 / elapsed.max(1e-9),
        "timed_out": Instant::now() >= deadline,
    });
    println!("{report}");
    if ok == 0 || out.errors > 0 {
        std::process::exit(1);
    }
}
