//! pullthrough: a pull-through cache for OCI container images.
//!
//! Map of the crate, from the edge inwards (dependencies point one way; docs/design.md has the
//! picture and `tests/it/layers.rs` checks it):
//! - [`app`](mod@app): the assembly: store, AWS clients, client auth, cache and router from a
//!   configuration; one [`AppError`] for every way starting up can fail.
//! - [`http`]: the edge: the axum router, the `/token` endpoint, paths into typed requests,
//!   responses, the one mapping of every error to a status and an OCI error code, and server
//!   mode's connections (limits, timeouts, graceful shutdown).
//! - [`lambda`]: Lambda mode: API Gateway / function URL events into the same router, `{"fill":
//!   …}` events, and blob fills handed to another invocation.
//! - [`auth`]: client authentication: htpasswd users (from a file or a Secrets Manager secret),
//!   our own tokens, bounds on password checks.
//! - [`cache`]: the pull-through policy (upstream choice and allow-lists, tag freshness,
//!   stale-if-error, negotiation, verification, single-flight fills, spill files, leases); the
//!   only place that decides hit, miss or revalidate. Knows no HTTP.
//! - [`store`]: the store trait, the key scheme, the filesystem and S3 stores, the verifying
//!   stream every blob is written through, and the `verify` command's check.
//! - [`upstream`]: the registry client (token auth, redirects, timeouts, SSRF guard).
//! - [`aws`]: the AWS SDK set-up every AWS client shares (`AWS_CA_BUNDLE`), Secrets Manager
//!   `GetSecretValue` and Lambda `Invoke`.
//! - [`oci`]: digests, names, references, media types and `Accept` parsing.
//! - Leaves: [`config`] (one validated configuration from flags, environment and a TOML file),
//!   [`secrets`] (where secrets are read), [`bounded`] (the one bounded map), [`metrics`] (the
//!   process's figures: Prometheus text, Lambda EMF lines, and what a request's log line says).
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
pub mod lifecycle;
pub mod metrics;
pub mod oci;
pub mod secrets;
pub mod store;
pub mod upstream;

pub use app::{
    AppError, app, aws_sdk_config, build, open_existing_store, open_store, serve, serve_with,
    server_services,
};
