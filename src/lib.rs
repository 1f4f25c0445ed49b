//! pullthrough: a pull-through cache for OCI container images.
//!
//! Map of the crate, from the edge inwards:
//! - [`http`]: the axum router; parses paths into typed requests, builds responses.
//! - [`error`]: the OCI JSON error envelope; every lower-layer error is converted there, once.
//! - [`cache`]: the pull-through policy (tag freshness, stale-if-error, negotiation,
//!   verification, single-flight); the only place that decides hit, miss or revalidate.
//! - [`upstream`]: the registry client (token auth, redirects, timeouts), one per upstream.
//! - [`store`]: the store trait, the key scheme, the filesystem store and the S3 store.
//! - [`spill`]: spill files, where a blob fill's bytes wait on local disk for every reader
//!   (clients, the S3 upload), each at its own pace.
//! - [`oci`]: digests, names, references, media types and `Accept` parsing.
//! - [`access`]: client authentication (htpasswd users from a file or a Secrets Manager secret,
//!   our own tokens) and per-upstream repository allow-lists.
//! - [`server`]: server mode's connections: accept loop, connection limits and timeouts,
//!   graceful shutdown.
//! - [`verify`]: the `verify` command's check that every stored blob matches its name.
//! - [`config`]: one validated configuration from flags, environment and a TOML file.
//! - [`lambda`]: Lambda mode: API Gateway / function URL events into the same router, and the
//!   `{"fill": …}` events of asynchronous blob copies.
//! - [`aws`]: the Lambda `Invoke` and Secrets Manager `GetSecretValue` calls (SDK clients).
//!
//! [`app`] assembles a router from a configuration; [`serve`] runs it on a listener until a
//! shutdown future resolves, which is what lets tests run the real server on `127.0.0.1:0`.

pub mod auth;
pub mod aws;
pub mod bounded;
pub mod cache;
pub mod config;
pub mod http;
pub mod lambda;
pub mod oci;
pub mod secrets;
pub mod server;
pub mod spill;
pub mod store;
pub mod upstream;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use cache::{Clock, Registry, Services};
use config::{Config, StoreLocation};
use store::Store;
use store::fs::FsStore;
use store::s3::{S3Options, S3Store};

/// Opens the store named by the configuration. For S3 this loads the AWS configuration
/// (credentials chain, region, endpoint, `AWS_CA_BUNDLE`) without any network I/O.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match &config.store {
        StoreLocation::Fs(root) => FsStore::open(root)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("cannot open store directory {}: {e}", root.display())),
        StoreLocation::S3 { bucket, .. } => {
            let options = S3Options::from_config(config)
                .ok_or_else(|| format!("S3 store {bucket:?} has no options"))?;
            S3Store::open(options)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(|e| format!("cannot open S3 store s3://{bucket}: {e}"))
        }
    }
}

/// Opens the store named by the configuration to read it, as `verify` does: a filesystem store
/// must exist already and is not changed in any way (a live server's temporary files stay).
pub async fn open_existing_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match &config.store {
        StoreLocation::Fs(root) => FsStore::open_existing(root)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("store directory {} does not exist", root.display())
                }
                _ => format!("cannot open store directory {}: {e}", root.display()),
            }),
        StoreLocation::S3 { .. } => open_store(config).await,
    }
}

/// The application: a registry over `store`, served by one router.
pub fn app(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
) -> Result<axum::Router, String> {
    build(config, store, clock, Services::default()).map(|(router, _)| router)
}

/// The router and the registry behind it, with `services` (secrets, Lambda fill policy).
pub fn build(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
    services: Services,
) -> Result<(axum::Router, Arc<Registry>), String> {
    let key = config.token_key.as_ref().map(|k| k.as_bytes().to_vec());
    let auth = match &config.auth {
        config::ClientAuthSetting::None => None,
        config::ClientAuthSetting::Htpasswd(text) => {
            let users = config::Htpasswd::parse(text).map_err(|e| e.to_string())?;
            Some(Arc::new(
                auth::ClientAuth::new(users, key)
                    .map_err(|e| e.to_string())?
                    .with_limits(&config.auth_limits),
            ))
        }
        config::ClientAuthSetting::Secret { arn, refresh } => {
            let secrets = services.secrets.clone().ok_or_else(|| {
                format!(
                    "PULLTHROUGH_AUTH names the secret {arn}, but no Secrets Manager client was configured"
                )
            })?;
            Some(Arc::new(
                auth::ClientAuth::from_secret(arn.clone(), secrets, *refresh, key)
                    .map_err(|e| e.to_string())?
                    .with_limits(&config.auth_limits),
            ))
        }
    };
    let store = Arc::new(store::counted::Counted::new(store));
    let registry =
        Registry::with_services(config, store, clock, services).map_err(|e| e.to_string())?;
    Ok((http::router(Arc::clone(&registry), auth), registry))
}

/// The SDK configuration of the Secrets Manager and Lambda clients: the S3 client's (`[s3]
/// region` and `max_attempts`, `AWS_CA_BUNDLE`, credential chain, endpoint variables), so all
/// AWS calls trust the same CAs and retry alike. No network I/O.
pub async fn aws_sdk_config(config: &Config) -> Result<aws_types::SdkConfig, String> {
    let ca_bundle = std::env::var_os("AWS_CA_BUNDLE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    store::s3::load_sdk_config(
        config.s3.region.as_deref(),
        ca_bundle.as_deref(),
        None,
        config.s3.max_attempts,
    )
    .await
}

/// The services of the server: a Secrets Manager reader when an upstream has a `secret_arn` or
/// the client users are in a secret.
pub async fn server_services(config: &Config) -> Result<Services, String> {
    let mut services = Services::default();
    if config.upstreams.iter().any(|u| u.secret_arn.is_some())
        || matches!(config.auth, config::ClientAuthSetting::Secret { .. })
    {
        let sdk = aws_sdk_config(config).await?;
        services.secrets = Some(Arc::new(aws::SecretsManager::new(&sdk)));
    }
    Ok(services)
}

/// Serves `router` on `listener` with the default connection limits until `shutdown` resolves,
/// then drains (see [`server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(
        listener,
        router,
        config::ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] under `limits` (`Config::connections`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: config::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, router, limits, shutdown).await
}
