//! The `pullthrough` command: `serve` runs the proxy as an HTTP server; `verify` checks that
//! every blob in the store holds the bytes its name says; with `AWS_LAMBDA_RUNTIME_API` set
//! (inside AWS Lambda) the same binary runs as the Lambda function.

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
    /// Check every object under blobs/ against its digest; exit 1 if any does not match.
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
    /// Roots (tags, digests) not pulled within this time are removed, e.g. 30d.
    #[arg(long, default_value = "30d")]
    older_than: String,
    /// Unreferenced blobs younger than this stay, e.g. 1h.
    #[arg(long, default_value = "1h")]
    grace: String,
    /// Then evict the least recently pulled images until the blobs fit, e.g. 200GiB.
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

/// The exit status of a failure: 1 when the server ran and failed (or no runtime could start),
/// 2 when setting up failed (configuration, store, clients, listener, signals, Lambda).
fn exit_code(e: &AppError) -> ExitCode {
    match e {
        AppError::Serve(_) | AppError::Runtime(_) => ExitCode::FAILURE,
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
    let (router, _) = pullthrough::build(config, store, Arc::default(), services)?;
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
    tracing::info!(
        %listen,
        metrics = %metrics_listen,
        store = %summary.store,
        upstreams = %summary.upstreams,
        default_upstream = %summary.default_upstream,
        auth = %summary.auth,
        tag_ttl = %summary.tag_ttl,
        presign_ttl = %summary.presign_ttl,
        "pullthrough serving"
    );
    eprintln!("pullthrough: serving on http://{listen}");
    let shutdown = shutdown_signal().map_err(AppError::Signals)?;
    pullthrough::serve_with(listener, router, limits, shutdown).await?;
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

/// Prints what `verify` found; the status is 1 if any blob is bad or strange.
async fn run_verify(store: &dyn pullthrough::store::Store) -> Result<ExitCode, AppError> {
    let report = pullthrough::store::verify::verify(store)
        .await
        .map_err(AppError::Verify)?;
    for (key, actual) in &report.bad {
        println!("BAD {key}: its bytes hash to {actual}");
    }
    for key in &report.strange {
        println!("STRANGE {key}: not named by a digest");
    }
    println!(
        "checked {} blobs ({} bytes): {} bad, {} strange",
        report.checked,
        report.bytes,
        report.bad.len(),
        report.strange.len()
    );
    Ok(if report.bad.is_empty() && report.strange.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `gc`: prints what was removed (or would be, with `--dry-run`) and the totals.
async fn run_gc(args: GcArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let options = pullthrough::lifecycle::GcOptions {
        dry_run: args.dry_run,
        ..Default::default()
    };
    let _ = (args.older_than, args.grace, args.max_size); // the gc helper parses these
    let report = pullthrough::lifecycle::gc(&cache, &options).await?;
    println!("{report:?}");
    Ok(ExitCode::SUCCESS)
}

/// `purge`: prints what was forgotten.
async fn run_purge(args: PurgeArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let report = pullthrough::lifecycle::purge(&cache, &args.refs).await?;
    println!("{report:?}");
    Ok(ExitCode::SUCCESS)
}

/// `prefetch`: prints what was warmed; the status is 1 if any reference failed.
async fn run_prefetch(args: PrefetchArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let platforms = args.platform.parse()?;
    let report = pullthrough::lifecycle::prefetch(&cache, &args.refs, &platforms).await?;
    println!("{report:?}");
    Ok(ExitCode::SUCCESS)
}

/// `ls`: cached repositories, or one repository's tags and digests.
async fn run_ls(args: LsArgs) -> Result<ExitCode, AppError> {
    let cache = pullthrough::app::open_cache(Config::load(&args.settings)?).await?;
    let listing = pullthrough::lifecycle::ls(&cache, args.repo.as_deref()).await?;
    println!("{listing:?}");
    Ok(ExitCode::SUCCESS)
}
