//! The `pullthrough` command: `serve` runs the proxy as an HTTP server; `verify` checks that
//! every blob in the store holds the bytes its name says; with `AWS_LAMBDA_RUNTIME_API` set
//! (inside AWS Lambda) the same binary runs as the Lambda function.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pullthrough::config::{Config, Settings};

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
}

/// Lambda mode takes its settings from the environment only (Lambda passes no arguments).
#[derive(Parser)]
struct LambdaSettings {
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if lambda {
        // CloudWatch adds timestamps and shows no colours.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = if lambda {
        // One invocation at a time: a current-thread runtime starts faster and is enough.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pullthrough: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if lambda {
        runtime.block_on(lambda_main())
    } else {
        runtime.block_on(serve_main())
    }
}

async fn lambda_main() -> ExitCode {
    let settings = LambdaSettings::parse_from(["pullthrough"]).settings;
    match pullthrough::lambda::run(&settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve_main() -> ExitCode {
    let (settings, verify) = match Cli::parse().command {
        Command::Serve(s) => (s, false),
        Command::Verify(s) => (s, true),
    };
    let config = match Config::load(&settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            return ExitCode::from(2);
        }
    };
    if verify {
        return match pullthrough::open_existing_store(&config).await {
            Ok(store) => run_verify(store.as_ref()).await,
            Err(e) => {
                eprintln!("pullthrough: {e}");
                ExitCode::from(2)
            }
        };
    }
    let store = match pullthrough::open_store(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            return ExitCode::from(2);
        }
    };
    let services = match pullthrough::server_services(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            return ExitCode::from(2);
        }
    };
    let listen = config.listen;
    let limits = config.connections.clone();
    let router = match pullthrough::build(config, store, Arc::default(), services) {
        Ok((r, _)) => r,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pullthrough: cannot listen on {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    // The bound address, not the configured one: with port 0 this says which port was chosen.
    let listen = listener.local_addr().unwrap_or(listen);
    tracing::info!(%listen, "pullthrough serving");
    eprintln!("pullthrough: serving on http://{listen}");
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pullthrough: cannot listen for signals: {e}");
            return ExitCode::from(2);
        }
    };
    match pullthrough::serve_with(listener, router, limits, shutdown).await {
        Ok(()) => {
            eprintln!("pullthrough: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pullthrough: server error: {e}");
            ExitCode::FAILURE
        }
    }
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

async fn run_verify(store: &dyn pullthrough::store::Store) -> ExitCode {
    match pullthrough::verify::verify(store).await {
        Ok(report) => {
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
            if report.bad.is_empty() && report.strange.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("pullthrough: verify failed: {e}");
            ExitCode::from(2)
        }
    }
}
