//! The `pullthrough` command: `serve` runs the proxy as an HTTP server; `verify` checks that
//! every blob in the store holds the bytes its name says and no pointer or marker names what is
//! missing; `gc`, `purge`, `prefetch` and `ls` look after what is cached; with
//! `AWS_LAMBDA_RUNTIME_API` set (inside AWS Lambda) the same binary runs as the Lambda function.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pullthrough::AppError;
use pullthrough::config::{Config, LogFormat, Settings};

#[derive(Parser)]
#[command(version, about = "A pull-through cache for OCI container images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy as an HTTP server (filesystem store by default).
    Serve(Settings),
    /// Check every object under blobs/ against its digest, and every tag pointer and marker
    /// against what it names; exit 1 if anything does not match.
    Verify(Settings),
    /// Remove what no one pulled within the retention (mark and sweep); safe beside a server.
    Gc(GcArgs),
    /// Forget a repository, tag or digest so that the next pull goes upstream.
    Purge(PurgeArgs),
    /// Pull tags into the cache ahead of time (every platform, or chosen ones).
    Prefetch(PrefetchArgs),
    /// List cached repositories, or one repository's tags and digests.
    Ls(LsArgs),
}

#[derive(clap::Args)]
struct GcArgs {
    /// Roots (tags, digests) not pulled within this time are removed, e.g. 30d (default: `[gc]
    /// older_than`, else 30d; at least 2h).
    #[arg(long)]
    older_than: Option<String>,
    /// Unreferenced blobs younger than this stay, e.g. 1h (default: `[gc] grace`, else 1h).
    #[arg(long)]
    grace: Option<String>,
    /// Then evict the least recently pulled images until the blobs fit, e.g. 200GiB (default:
    /// `[gc] max_size`, else no bound).
    #[arg(long)]
    max_size: Option<String>,
    /// List what would be removed, with sizes; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(clap::Args)]
struct PurgeArgs {
    /// `[upstream/]repo`, `repo:tag` or `repo@digest`.
    #[arg(required = true)]
    refs: Vec<String>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(clap::Args)]
struct PrefetchArgs {
    /// `[upstream/]repo:tag` or `repo@digest`.
    #[arg(required = true)]
    refs: Vec<String>,
    /// `all`, or a comma-separated list of os/arch[/variant].
    #[arg(long, default_value = "all")]
    platform: String,
    #[command(flatten)]
    settings: Settings,
}

#[derive(clap::Args)]
struct LsArgs {
    /// `[upstream/]repo`; every repository when absent.
    repo: Option<String>,
    #[command(flatten)]
    settings: Settings,
}

impl Command {
    fn settings(&self) -> &Settings {
        match self {
            Command::Serve(s) | Command::Verify(s) => s,
            Command::Gc(a) => &a.settings,
            Command::Purge(a) => &a.settings,
            Command::Prefetch(a) => &a.settings,
            Command::Ls(a) => &a.settings,
        }
    }
}

/// Lambda mode takes its settings from the environment only (Lambda passes no arguments).
#[derive(Parser)]
struct LambdaSettings {
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let command = (!lambda).then(|| Cli::parse().command);
    let settings = match &command {
        Some(c) => c.settings().clone(),
        None => LambdaSettings::parse_from(["pullthrough"]).settings,
    };
    // A bad value is reported by `Config::load`, in the default format.
    init_tracing(lambda, LogFormat::from_settings(&settings).ok().flatten());
    match start(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            exit_code(&e)
        }
    }
}

/// The exit status of a failure: 1 when the server or a lifecycle command ran and failed (or no
/// runtime could start), 2 when setting up failed (configuration, store, clients, listener,
/// signals, Lambda, a bad reference or option).
fn exit_code(e: &AppError) -> ExitCode {
    use pullthrough::lifecycle::LifecycleError;
    match e {
        AppError::Serve(_) | AppError::Runtime(_) => ExitCode::FAILURE,
        // A lifecycle command that started and then failed (the store or an upstream): 1, as a
        // server that failed while serving; a bad reference or option: 2, like bad settings.
        AppError::Lifecycle(LifecycleError::Store(_) | LifecycleError::Cache(_)) => {
            ExitCode::FAILURE
        }
        _ => ExitCode::from(2),
    }
}

/// Logs to stdout as `format` says: JSON (the default in Lambda: one object per line, fields at
/// the top level, for CloudWatch Logs Insights) or text.
fn init_tracing(lambda: bool, format: Option<LogFormat>) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let format = format.unwrap_or(if lambda {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    if format == LogFormat::Json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else if lambda {
        // CloudWatch adds timestamps and shows no colours.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .init();
    } else {
        // Colours only for a terminal: a log written to a file or a pipe (systemd, `docker
        // logs`) stays plain text.
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
}

/// Starts the async runtime and runs the command line's command on it, or the Lambda function
/// when there is none.
fn start(command: Option<Command>) -> Result<ExitCode, AppError> {
    let runtime = if command.is_none() {
        // One invocation at a time: a current-thread runtime starts faster and is enough.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .map_err(AppError::Runtime)?;
    match command {
        None => {
            runtime.block_on(run_lambda())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(command) => runtime.block_on(run(command)),
    }
}

async fn run_lambda() -> Result<(), AppError> {
    let settings = LambdaSettings::parse_from(["pullthrough"]).settings;
    pullthrough::app::run_lambda(&settings).await
}

/// `serve` until SIGTERM/SIGINT, `verify` (whose status says whether every blob matched), or a
/// lifecycle command.
async fn run(command: Command) -> Result<ExitCode, AppError> {
    let (settings, verify) = match command {
        Command::Serve(s) => (s, false),
        Command::Verify(s) => (s, true),
        Command::Gc(args) => return run_gc(args).await,
        Command::Purge(args) => return run_purge(args).await,
        Command::Prefetch(args) => return run_prefetch(args).await,
        Command::Ls(args) => return run_ls(args).await,
    };
    let config = Config::load(&settings)?;
    if verify {
        let store = pullthrough::open_existing_store(&config).await?;
        return run_verify(store.as_ref()).await;
    }
    let store = pullthrough::open_store(&config).await?;
    let services = pullthrough::server_services(&config).await?;
    let listen = config.listen;
    let limits = config.connections.clone();
    let summary = config.summary();
    let metrics_listen = config.metrics_listen;
    let (router, cache) = pullthrough::build(config, store, Arc::default(), services)?;
    let _gc = pullthrough::app::periodic_gc(&cache);
    let listener = pullthrough::app::bind(listen).await?;
    // The bound addresses, not the configured ones: with port 0 this says which port was chosen.
    let listen = listener.local_addr().unwrap_or(listen);
    let metrics_listen = match metrics_listen {
        Some(addr) => {
            let listener = pullthrough::app::bind(addr).await?;
            let bound = listener.local_addr().unwrap_or(addr);
            // Ends with the process; nothing there needs draining.
            tokio::spawn(async move {
                if let Err(e) =
                    axum::serve(listener, pullthrough::http::ops::metrics_router()).await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
            eprintln!("pullthrough: metrics on http://{bound}/metrics");
            bound.to_string()
        }
        None => format!("{listen} (with the API)"),
    };
    summary.log(pullthrough::config::Running::Server {
        listen: &listen.to_string(),
        metrics: &metrics_listen,
    });
    eprintln!("pullthrough: serving on http://{listen}");
    let shutdown = shutdown_signal().map_err(AppError::Signals)?;
    pullthrough::serve_with(listener, router, limits, shutdown).await?;
    // The last-pulled times noted since the last background flush.
    cache.flush_touches().await;
    eprintln!("pullthrough: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM (systemd, Kubernetes, `docker stop`) or SIGINT (Ctrl-C). The
/// handlers are installed now, before serving starts, so no signal is lost in between.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: no new connections");
        eprintln!("pullthrough: {name} received, shutting down");
    })
}

/// Prints what `verify` found; the status is 1 if any blob is bad or strange or any reference
/// dangles (counted as bad).
async fn run_verify(store: &dyn pullthrough::store::Store) -> Result<ExitCode, AppError> {
    let report = pullthrough::store::verify::verify(store)
        .await
        .map_err(AppError::Verify)?;
    for (key, actual) in &report.bad {
        println!("BAD {key}: its bytes hash to {actual}");
    }
    for (key, missing) in &report.dangling {
        println!("DANGLING {key}: names {missing}, which is missing");
    }
    for key in &report.strange {
        println!("STRANGE {key}: neither named by a digest nor naming one");
    }
    println!(
        "checked {} blobs ({} bytes) and {} references: {} bad, {} strange",
        report.checked,
        report.bytes,
        report.references,
        report.bad.len() + report.dangling.len(),
        report.strange.len()
    );
    Ok(
        if report.bad.is_empty() && report.strange.is_empty() && report.dangling.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// `gc`: prints each key removed (or that would be, with `--dry-run`) and the totals.
async fn run_gc(args: GcArgs) -> Result<ExitCode, AppError> {
    let config = Config::load(&args.settings)?;
    // The flags are checked, and the unset ones defaulted from `[gc]`, as the admin API's body.
    let request = pullthrough::http::admin::GcRequest {
        older_than: args.older_than,
        grace: args.grace,
        max_size: args.max_size.map(pullthrough::http::admin::SizeValue::Text),
        dry_run: args.dry_run,
    };
    let options = request.options(&config.gc).map_err(|e| {
        use pullthrough::http::admin::RequestError;
        let message = match e {
            RequestError::Gc { field, source } => {
                let flag = match field {
                    "olderThan" => "--older-than",
                    "maxSize" => "--max-size",
                    _ => "--grace",
                };
                format!("{flag}: {source}")
            }
            other => other.to_string(),
        };
        AppError::Lifecycle(pullthrough::lifecycle::LifecycleError::BadOption(message))
    })?;
    let cache = pullthrough::app::open_cache(config).await?;
    let report = pullthrough::lifecycle::gc(&cache, &options).await?;
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for r in &report.removed {
        println!("{verb} {} ({})", r.key, human_bytes(r.bytes));
    }
    let kinds = ["tags", "markers", "referrers", "blobs"]
        .map(|k| format!("{} {k}", report.removed_by_kind.get(k).unwrap_or(&0)))
        .join(", ");
    let evicted = if report.evicted_roots > 0 {
        format!("; {} roots evicted by --max-size", report.evicted_roots)
    } else {
        String::new()
    };
    println!(
        "gc: {verb} {} objects ({}: {kinds}); kept {} objects ({}), of which {} blobs ({}){evicted}",
        report.removed_objects,
        human_bytes(report.removed_bytes),
        report.kept_objects,
        human_bytes(report.kept_bytes),
        report.kept_blobs,
        human_bytes(report.kept_blob_bytes),
    );
    Ok(ExitCode::SUCCESS)
}

/// `1234 B`, `1.2 KiB`, `3.4 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM` UTC (`-` when unknown).
fn utc_time(ms: Option<u64>) -> String {
    let Some(t) = ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(ms / 1000).ok()?).ok()
    }) else {
        return "-".into();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Prints rows as columns, each as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `purge`: prints what was forgotten.
async fn run_purge(args: PurgeArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let report = pullthrough::lifecycle::purge(&cache, &args.refs).await?;
    for key in &report.removed {
        println!("removed {key}");
    }
    for r in &report.purged {
        println!("purged {r}");
    }
    println!(
        "{} documents removed; blobs stay until gc finds them unreferenced",
        report.removed.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `prefetch`: prints what was warmed; the status is 1 if any reference failed.
async fn run_prefetch(args: PrefetchArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let platforms = args.platform.parse()?;
    let report = pullthrough::lifecycle::prefetch(&cache, &args.refs, &platforms).await?;
    // Last-pulled times of what was already cached.
    cache.flush_touches().await;
    for r in &report.warmed {
        println!("warmed {r}");
    }
    for (r, why) in &report.failed {
        println!("FAILED {r}: {why}");
    }
    println!(
        "{} manifests, {} blobs ({} fetched now), {} bytes; {} failed",
        report.manifests,
        report.blobs,
        report.fetched_blobs,
        report.bytes,
        report.failed.len()
    );
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ls`: cached repositories, or one repository's tags and digests, as tables.
async fn run_ls(args: LsArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let listing = pullthrough::lifecycle::ls(&cache, args.repo.as_deref()).await?;
    if let Some(detail) = &listing.repository {
        println!("{}/{}", detail.upstream, detail.repo);
        let rows: Vec<Vec<String>> = detail
            .tags
            .iter()
            .map(|t| {
                vec![
                    t.tag.clone(),
                    t.digest.clone(),
                    human_bytes(t.size),
                    utc_time(t.last_pulled),
                ]
            })
            .collect();
        print_table(&["TAG", "DIGEST", "SIZE", "LAST PULLED (UTC)"], &rows);
        println!();
        let rows: Vec<Vec<String>> = detail
            .digests
            .iter()
            .map(|d| {
                vec![
                    d.digest.clone(),
                    d.media_type.clone().unwrap_or_else(|| "blob".into()),
                    human_bytes(d.size),
                    utc_time(d.last_pulled),
                ]
            })
            .collect();
        print_table(&["DIGEST", "TYPE", "SIZE", "LAST PULLED (UTC)"], &rows);
    } else {
        let rows: Vec<Vec<String>> = listing
            .repositories
            .iter()
            .map(|r| {
                vec![
                    format!("{}/{}", r.upstream, r.repo),
                    r.tags.to_string(),
                    r.digests.to_string(),
                    human_bytes(r.bytes),
                    utc_time(r.last_pulled),
                ]
            })
            .collect();
        print_table(
            &["REPOSITORY", "TAGS", "DIGESTS", "SIZE", "LAST PULLED (UTC)"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_print_readably() {
        assert_eq!(utc_time(Some(0)), "1970-01-01 00:00");
        assert_eq!(
            utc_time(Some(1_709_251_200_000 + 61_000)),
            "2024-03-01 00:01"
        );
        assert_eq!(utc_time(Some(951_782_400_000)), "2000-02-29 00:00");
        assert_eq!(utc_time(None), "-");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 * 1024 * 1024 * 1024), "200.0 GiB");
    }
}
