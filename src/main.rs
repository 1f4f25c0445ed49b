//! The `pullthrough` command: `serve` runs the proxy as an HTTP server.

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
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve(settings) = Cli::parse().command;
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
