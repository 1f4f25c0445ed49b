//! The application's assembly: from a validated [`Config`] to a running proxy. It opens the
//! store, makes the AWS clients the configuration needs, builds the client authentication, the
//! cache and its router, and serves that router on a listener until a shutdown future
//! resolves (which is what lets tests run the real server on `127.0.0.1:0`).
//!
//! Everything that can go wrong while setting up is an [`AppError`], so `main` has one place that
//! prints it and picks the exit status. This module decides no request's outcome (that is the
//! cache's and the router's), parses no flag (that is `config`'s) and installs no signal handler
//! or runtime (that is `main`'s).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{self, AuthSetupError};
use crate::aws::{self, AwsSetupError};
use crate::cache::{Cache, Clock, FillPolicy, Services, SetupError};
use crate::config::{
    ClientAuthSetting, Config, ConfigError, ConnectionLimits, Htpasswd, HtpasswdError, Settings,
    StoreLocation,
};
use crate::http;
use crate::http::server;
use crate::lambda;
use crate::store::Store;
use crate::store::counted::Counted;
use crate::store::fs::FsStore;
use crate::store::s3::{S3Options, S3Store};

/// Why the proxy could not start, or stopped serving.
///
/// One variant per step of the set-up, each with the context the operator needs (which
/// directory, which bucket, which address). `main` prints it after `pullthrough: ` and exits 2
/// for any of them but [`AppError::Serve`] (1: the server ran and failed). Some steps still
/// report a sentence (`String`) because the layer below has no error type of its own yet.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The flags, environment or file do not make a usable configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The filesystem store's directory cannot be created or opened.
    #[error("cannot open store directory {}: {source}", path.display())]
    StoreDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `verify` was pointed at a filesystem store that is not there (it creates nothing).
    #[error("store directory {} does not exist", path.display())]
    NoStoreDir { path: PathBuf },
    /// The S3 store's options could not be derived from the configuration.
    #[error("S3 store {bucket:?} has no options")]
    S3Options { bucket: String },
    /// The S3 client could not be set up (no network I/O happens at this point).
    #[error("cannot open S3 store s3://{bucket}: {source}")]
    S3Store {
        bucket: String,
        source: AwsSetupError,
    },
    /// The AWS SDK configuration of the Secrets Manager and Lambda clients (a CA bundle that
    /// cannot be read, say).
    #[error(transparent)]
    AwsSdk(#[from] AwsSetupError),
    /// The client users' htpasswd text is not usable.
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    /// Client authentication cannot be set up (the token key).
    #[error(transparent)]
    ClientAuth(#[from] AuthSetupError),
    /// Client users are in a secret, but nothing can read secrets.
    #[error(
        "PULLTHROUGH_AUTH names the secret {arn}, but no Secrets Manager client was configured"
    )]
    NoSecretsClient { arn: String },
    /// The cache could not be built over the store and upstreams (an upstream's HTTP
    /// client, a missing Secrets Manager client).
    #[error(transparent)]
    Cache(#[from] SetupError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The process's async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    /// `verify` could not list or read the store.
    #[error("verify failed: {0}")]
    Verify(#[source] crate::store::StoreError),
    /// Lambda mode was given a filesystem store.
    #[error(
        "Lambda mode needs an S3 store (PULLTHROUGH_STORE=s3://bucket/prefix): an instance's disk does not outlive it"
    )]
    LambdaNeedsS3,
    /// Lambda mode outside Lambda (or a runtime that does not name the function).
    #[error("AWS_LAMBDA_FUNCTION_NAME is not set (Lambda sets it)")]
    NoFunctionName,
    /// Lambda mode's runtime loop failed.
    #[error(transparent)]
    Lambda(#[from] lambda::RuntimeError),
    /// The server failed while serving (accepting connections).
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// A lifecycle command (`gc`, `purge`, `prefetch`, `ls`) failed as a whole.
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
}

/// Opens the store named by the configuration. For S3 this loads the AWS configuration
/// (credentials chain, region, endpoint, `AWS_CA_BUNDLE`) without any network I/O.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    match &config.store {
        StoreLocation::Fs(root) => FsStore::open(root)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|source| AppError::StoreDir {
                path: root.clone(),
                source,
            }),
        StoreLocation::S3 { bucket, .. } => {
            let options = S3Options::from_config(config).ok_or_else(|| AppError::S3Options {
                bucket: bucket.clone(),
            })?;
            S3Store::open(options)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(|source| AppError::S3Store {
                    bucket: bucket.clone(),
                    source,
                })
        }
    }
}

/// Opens the store named by the configuration to read it, as `verify` does: a filesystem store
/// must exist already and is not changed in any way (a live server's temporary files stay).
pub async fn open_existing_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    match &config.store {
        StoreLocation::Fs(root) => FsStore::open_existing(root)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => AppError::NoStoreDir { path: root.clone() },
                _ => AppError::StoreDir {
                    path: root.clone(),
                    source,
                },
            }),
        StoreLocation::S3 { .. } => open_store(config).await,
    }
}

/// The application: a registry over `store`, served by one router.
pub fn app(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
) -> Result<axum::Router, AppError> {
    build(config, store, clock, Services::default()).map(|(router, _)| router)
}

/// The router and the cache behind it, with `services` (secrets, Lambda fill policy).
pub fn build(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
    services: Services,
) -> Result<(axum::Router, Arc<Cache>), AppError> {
    let key = config.token_key.as_ref().map(|k| k.as_bytes().to_vec());
    let auth = match &config.auth {
        ClientAuthSetting::None => None,
        ClientAuthSetting::Htpasswd(text) => {
            let users = Htpasswd::parse(text)?;
            Some(Arc::new(
                auth::ClientAuth::new(users, key)?.with_limits(&config.auth_limits),
            ))
        }
        ClientAuthSetting::Secret { arn, refresh } => {
            let secrets = services
                .secrets
                .clone()
                .ok_or_else(|| AppError::NoSecretsClient { arn: arn.clone() })?;
            Some(Arc::new(
                auth::ClientAuth::from_secret(arn.clone(), secrets, *refresh, key)?
                    .with_limits(&config.auth_limits),
            ))
        }
    };
    let store = Arc::new(Counted::new(store));
    let cache = Cache::with_services(config, store, clock, services)?;
    Ok((http::router(Arc::clone(&cache), auth), cache))
}

/// The cache over an existing store, without a router or listener: what the lifecycle commands
/// (`gc`, `purge`, `prefetch`, `ls`) run against, with the same settings as `serve`.
pub async fn open_cache(config: Config) -> Result<Arc<Cache>, AppError> {
    let store = open_existing_store(&config).await?;
    let services = server_services(&config).await?;
    let store = Arc::new(Counted::new(store));
    Ok(Cache::with_services(
        config,
        store,
        Arc::default(),
        services,
    )?)
}

/// The SDK configuration of the Secrets Manager and Lambda clients: the S3 client's (`[s3]
/// region` and `max_attempts`, `AWS_CA_BUNDLE`, credential chain, endpoint variables), so all
/// AWS calls trust the same CAs and retry alike. No network I/O.
pub async fn aws_sdk_config(config: &Config) -> Result<aws_types::SdkConfig, AppError> {
    let ca_bundle = std::env::var_os("AWS_CA_BUNDLE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    crate::aws::load_sdk_config(
        config.s3.region.as_deref(),
        ca_bundle.as_deref(),
        None,
        config.s3.max_attempts,
    )
    .await
    .map_err(AppError::AwsSdk)
}

/// The services of the server: a Secrets Manager reader when an upstream has a `secret_arn` or
/// the client users are in a secret.
pub async fn server_services(config: &Config) -> Result<Services, AppError> {
    let mut services = Services::default();
    if config.upstreams.iter().any(|u| u.secret_arn.is_some())
        || matches!(config.auth, ClientAuthSetting::Secret { .. })
    {
        let sdk = aws_sdk_config(config).await?;
        services.secrets = Some(Arc::new(aws::SecretsManager::new(&sdk)));
    }
    Ok(services)
}

/// Binds the server's listening socket.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Serves `router` on `listener` with the default connection limits until `shutdown` resolves,
/// then drains (see [`server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    serve_with(listener, router, ConnectionLimits::default(), shutdown).await
}

/// [`serve`] under `limits` (`Config::connections`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    server::run(listener, router, limits, shutdown)
        .await
        .map_err(AppError::Serve)
}

/// Lambda mode: the function built from the environment (as at a cold start), run against the
/// runtime API until the runtime stops it. A failed initialisation is reported to the runtime
/// API's `init/error` first, so Lambda shows the message.
pub async fn run_lambda(settings: &Settings) -> Result<(), AppError> {
    let function = match lambda_from_env(settings).await {
        Ok(f) => f,
        Err(e) => {
            lambda::report_init_error(&e.to_string()).await;
            return Err(e);
        }
    };
    tracing::info!("pullthrough Lambda function initialised");
    Ok(lambda::run(function).await?)
}

async fn lambda_from_env(settings: &Settings) -> Result<lambda::Function, AppError> {
    let config = Config::load(settings)?;
    let function_name =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").map_err(|_| AppError::NoFunctionName)?;
    config.summary().log(crate::config::Running::Lambda {
        function: &function_name,
    });
    lambda_function(config, function_name).await
}

/// The Lambda function from the configuration: the S3 store, the AWS clients (Secrets Manager,
/// and `Invoke` of `function_name` for fills that outlive their request) and the router. No
/// network I/O.
pub async fn lambda_function(
    config: Config,
    function_name: String,
) -> Result<lambda::Function, AppError> {
    if !matches!(config.store, StoreLocation::S3 { .. }) {
        return Err(AppError::LambdaNeedsS3);
    }
    let store = open_store(&config).await?;
    let sdk = aws_sdk_config(&config).await?;
    let secrets = aws::SecretsManager::new(&sdk);
    let invoker = aws::LambdaInvoker::new(&sdk, function_name);
    let services = Services {
        secrets: Some(Arc::new(secrets)),
        fill_policy: Some(FillPolicy::new(config.fill_deadline, Arc::new(invoker))),
        ..Services::default()
    };
    let (router, cache) = build(config, store, Arc::new(Clock::default()), services)?;
    Ok(lambda::Function::new(router, cache))
}

/// Server mode's periodic gc, running while this value lives (dropping it stops the task).
pub struct PeriodicGc {
    runs: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PeriodicGc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeriodicGc {
    /// How many runs have ended so far (with a report or an error); tests wait on it.
    pub fn runs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.runs.clone()
    }
}

/// Starts gc every `[gc] interval` over `cache` with the configured retention, grace and size
/// bound, when an interval is configured (`None` otherwise). The first run is one interval after
/// the start (a restart loop does not gc each time); runs follow one another, never two at once
/// (a run longer than the interval delays the next). Each run logs a summary line; a failed run
/// is logged and the next one runs as planned.
pub fn periodic_gc(cache: &Arc<Cache>) -> Option<PeriodicGc> {
    let settings = cache.config().gc.clone();
    let interval = settings.interval?;
    let options = crate::lifecycle::GcOptions {
        older_than: settings.older_than,
        grace: settings.grace,
        max_size: settings.max_size,
        dry_run: false,
    };
    tracing::info!(?interval, ?options, "periodic gc on");
    let (tx, runs) = tokio::sync::watch::channel(0u64);
    let cache = Arc::clone(cache);
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let started = std::time::Instant::now();
            match crate::lifecycle::gc(&cache, &options).await {
                Ok(report) => tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    report = %serde_json::to_string(&report).unwrap_or_default(),
                    "periodic gc done"
                ),
                Err(e) => tracing::error!(
                    ms = started.elapsed().as_millis() as u64,
                    error = %e,
                    "periodic gc failed; the next run is in {interval:?}"
                ),
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    Some(PeriodicGc { runs, task })
}
