//! The integration tests: one binary, one module per subject, all sharing the harness in
//! [`support`] (the real proxy on 127.0.0.1:0 in front of in-process fake upstreams, over a
//! temporary filesystem store or an in-process S3-compatible server). See docs/testing.md.
//!
//! Every test runs in this one process, two or more at a time: a test owns what it starts (ports
//! on 127.0.0.1:0, temporary directories, child processes) and sets no process-wide state (no
//! environment variables, no global subscriber).

mod support;

mod admin;
mod blobs;
mod cli;
mod client_auth;
mod crash;
mod disk_full;
mod gc;
mod hostile;
mod lambda_binary;
mod lambda_events;
mod lambda_fill;
mod layers;
mod lifecycle_ops;
mod load;
mod manifests;
mod observability;
mod oci_client_pull;
mod parsers_prop;
mod routing;
mod s3_ca_bundle;
mod s3_proxy;
mod store_suite;
mod upstream_auth;
