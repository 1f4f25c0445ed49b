//! The AWS SDK set-up every AWS client of the process shares (S3, Secrets Manager, Lambda), and
//! the two AWS calls made besides S3: Secrets Manager `GetSecretValue` ([`SecretsManager`]:
//! upstream credentials, client users) and Lambda `Invoke` with `InvocationType=Event`
//! ([`LambdaInvoker`]: a blob fill handed to an asynchronous invocation of this function).
//!
//! Sharing the configuration means one HTTP client (rustls, trusting `AWS_CA_BUNDLE` besides the
//! platform roots), one credential chain (environment, profiles, web identity, container and
//! instance roles, resolved on first use: building these clients does no network I/O), one
//! region, and the S3 client's retry policy (`[s3] max_attempts`, standard mode: transient 5xx,
//! throttling and connection errors are retried with backoff).
//!
//! Endpoints follow the SDK's own resolution, so tests can point them at local fakes:
//! `AWS_ENDPOINT_URL_LAMBDA` / `AWS_ENDPOINT_URL_SECRETS_MANAGER`, else `AWS_ENDPOINT_URL`
//! (or `endpoint_url` in the profile), else the public regional endpoint.
//!
//! This module knows the SDKs and nothing of the cache, the store's keys or HTTP requests of
//! clients: what a secret means and what a fill job is belong to the callers.
//!
//! ## `AWS_CA_BUNDLE`
//!
//! The AWS SDK for Rust does not read `AWS_CA_BUNDLE` (nor a profile's `ca_bundle`): its HTTPS
//! client trusts the platform's roots only (via `rustls-native-certs`, which honours
//! `SSL_CERT_FILE`/`SSL_CERT_DIR`). The other SDKs and the AWS CLI use the bundle, and these
//! machines set it, so this store honours it explicitly: when `AWS_CA_BUNDLE` names a PEM file,
//! its certificates are trusted *in addition to* the platform roots (a bundle holding only a
//! private CA still reaches AWS). The file is read and checked at start-up: unreadable, or
//! without one usable certificate, is a start-up error naming the variable. Certificates that
//! rustls cannot use as trust anchors are skipped with a warning, because handing them to the SDK
//! would make it panic on its first connection.

mod invoke;
mod secrets_manager;

pub use invoke::{InvokeError, LambdaInvoker};
pub use secrets_manager::SecretsManager;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use base64::Engine as _;

/// The region when none is configured anywhere.
const FALLBACK_REGION: &str = "us-east-1";

/// The AWS clients cannot be set up. Messages name the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error("AWS_CA_BUNDLE={}: cannot read the CA bundle: {source}", path.display())]
    CaBundleRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("AWS_CA_BUNDLE={}: not a PEM certificate bundle: {detail}", path.display())]
    CaBundleNotPem { path: PathBuf, detail: String },
    #[error("AWS_CA_BUNDLE={}: no usable CA certificate in the file ({skipped} unusable); unset it or point it at a PEM bundle", path.display())]
    CaBundleEmpty { path: PathBuf, skipped: usize },
    #[error("S3 client TLS setup: {0}")]
    Tls(String),
}

/// The AWS SDK configuration shared by every AWS client of the process (S3, and the signed
/// Lambda and Secrets Manager calls): region from `region` or the environment and profile files
/// (never the instance metadata service, so no network I/O), the standard credential chain (or
/// fixed `credentials`), and an HTTPS client that trusts `ca_bundle` in addition to the platform
/// roots.
pub async fn load_sdk_config(
    region: Option<&str>,
    ca_bundle: Option<&Path>,
    credentials: Option<Credentials>,
    max_attempts: u32,
) -> Result<aws_types::SdkConfig, AwsSetupError> {
    let mut trust = TrustStore::default();
    if let Some(path) = &ca_bundle {
        trust = trust.with_pem_certificate(load_ca_bundle(path)?);
    }
    let tls_context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| AwsSetupError::Tls(e.to_string()))?;
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls_context)
        .build_https();

    // The SDK's default region chain ends with the EC2 instance metadata service, a network
    // call at start-up; ours stops at the environment and profile files.
    let region = match &region {
        Some(r) => RegionProviderChain::first_try(Region::new(String::from(*r))),
        None => RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new())
        .or_else(Region::from_static(FALLBACK_REGION)),
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .region(region)
        .retry_config(RetryConfig::standard().with_max_attempts(max_attempts));
    if let Some(c) = credentials {
        loader = loader.credentials_provider(SharedCredentialsProvider::new(c));
    }
    Ok(loader.load().await)
}

/// Reads `AWS_CA_BUNDLE`'s file and returns the certificates rustls accepts as trust anchors,
/// as one PEM document.
fn load_ca_bundle(path: &Path) -> Result<Vec<u8>, AwsSetupError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let pem = std::fs::read(path).map_err(|source| AwsSetupError::CaBundleRead {
        path: path.to_owned(),
        source,
    })?;
    let mut usable = Vec::new();
    let mut skipped = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| AwsSetupError::CaBundleNotPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let mut probe = rustls::RootCertStore::empty();
        match probe.add(cert.clone()) {
            Ok(()) => usable.push(cert),
            Err(e) => {
                skipped += 1;
                tracing::warn!(bundle = %path.display(), error = %e, "skipping a CA certificate rustls cannot use");
            }
        }
    }
    if usable.is_empty() {
        return Err(AwsSetupError::CaBundleEmpty {
            path: path.to_owned(),
            skipped,
        });
    }
    tracing::debug!(bundle = %path.display(), certificates = usable.len(), skipped, "trusting AWS_CA_BUNDLE in addition to the platform roots");
    let mut out = Vec::new();
    for cert in usable {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(out)
}

/// Both calls answer in milliseconds; these bound a hung endpoint. A whole call, retries and
/// their backoff included, gives up after [`OPERATION_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// A failed call in words: the status and AWS error code of an error answer, or the cause of a
/// call that got no usable answer (TLS, connection, timeout), with its whole source chain.
///
/// An answer without an error code (a success that could not be parsed, or an error body that
/// is not AWS JSON) is described by its status only: the parser's message may quote the body,
/// and a `GetSecretValue` body holds the secret.
pub(crate) fn describe<E>(service: &str, err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let e = ctx.err();
            match e.code() {
                Some(code) => format!(
                    "{service} answered HTTP {status}: {code}: {}",
                    e.message().unwrap_or("(no message)")
                ),
                None => format!("{service} answered HTTP {status} without an AWS error code"),
            }
        }
        SdkError::ResponseError(ctx) => format!(
            "{service} answered HTTP {} with an unreadable body",
            ctx.raw().status().as_u16()
        ),
        other => format!("{service} unreachable: {}", DisplayErrorContext(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_errors_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_ca_bundle(&missing).unwrap_err().to_string();
        assert!(
            e.contains("AWS_CA_BUNDLE=") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = load_ca_bundle(&empty).unwrap_err().to_string();
        assert!(e.contains("no usable CA certificate"), "{e}");
    }
}
