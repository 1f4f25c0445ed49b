//! The `pullthrough` command: `serve` runs the proxy as an HTTP server; `verify` checks that
//! every blob in the store holds the bytes its name says.

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

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
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
    let store = match pullthrough::open_store(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            return ExitCode::from(2);
        }
    };
    if verify {
        return run_verify(store.as_ref()).await;
    }
    let listen = config.listen;
    let router = match pullthrough::app(config, store, Arc::default()) {
        Ok(r) => r,
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
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match pullthrough::serve(listener, router, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pullthrough: server error: {e}");
            ExitCode::FAILURE
        }
    }
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
