//! The test harness. A test starts what it needs, each on 127.0.0.1:0 and in its own temporary
//! directories, and everything stops when the test drops it:
//!
//! - [`proxy`]: [`Proxy`], the real proxy in this process, over a temporary filesystem store or
//!   the in-process S3 server, and the configuration text tests give it;
//! - [`pull`]: what a client does and checks (a manifest answer, a blob through an S3 redirect,
//!   a whole image);
//! - [`fake_registry`]: the fake upstream registry (token auth, request log, fault injection)
//!   and the deterministic images pushed into it;
//! - [`s3`]: an S3-compatible server (`s3s-fs`) that checks SigV4 signatures, plain or HTTPS;
//! - [`lambda`]: Lambda mode in this process, a fake AWS endpoint (Lambda `Invoke`, Secrets
//!   Manager) with its own SigV4 check, and API Gateway / function URL events;
//! - [`runtime_api`]: a local Lambda runtime API, for the real binary in Lambda mode;
//! - [`process`]: the real binary as a child process ([`ServerProcess`], [`run`]);
//! - [`wait`]: bounded waits on a condition ([`Deadline`], [`eventually`]).

pub mod fake_registry;
pub mod lambda;
pub mod process;
pub mod proxy;
pub mod pull;
pub mod runtime_api;
pub mod s3;
pub mod wait;

use std::path::{Path, PathBuf};

pub use fake_registry::*;
pub use process::{ServerProcess, config_file, lambda_command, run};
pub use proxy::{Proxy, local_config, local_config_with, local_s3_config, spill_table};
pub use pull::{
    assert_manifest, blob_via_redirect, follow_redirect, full_pull, realworld_manifests,
    store_calls,
};
pub use s3::S3Server;
pub use wait::{Deadline, eventually};

/// What docker 20+ sends when pulling.
pub const DOCKER_CLIENT_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v1+prettyjws";

/// `"sha256:<hex>"` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    sha256_digest(bytes)
}

/// A client that follows no redirect (the answer a registry client sees first).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Asserts an OCI JSON error with the given status and code, returning its message.
pub async fn expect_oci_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(
        header(&resp, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let body: serde_json::Value = resp.json().await.expect("error body is JSON");
    let first = &body["errors"][0];
    assert_eq!(first["code"], code, "body: {body}");
    first["message"].as_str().unwrap_or_default().to_owned()
}
