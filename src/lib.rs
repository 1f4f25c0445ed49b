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
//! - [`app`](mod@app): the assembly: store, AWS clients, client auth and router from a
//!   configuration; one [`AppError`] for every way starting up can fail.
//!
//! [`app()`] assembles a router from a configuration; [`serve`] runs it on a listener until a
//! shutdown future resolves, which is what lets tests run the real server on `127.0.0.1:0`.

pub mod app;
pub mod auth;
pub mod aws;
pub mod bounded;
pub mod cache;
pub mod config;
pub mod http;
pub mod lambda;
pub mod oci;
pub mod secrets;
pub mod store;
pub mod upstream;

pub use app::{
    AppError, app, aws_sdk_config, build, open_existing_store, open_store, serve, serve_with,
    server_services,
};
