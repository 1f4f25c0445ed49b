//! The two AWS API calls pullthrough makes besides S3, made with the SDK crates
//! (`aws-sdk-secretsmanager`, `aws-sdk-lambda`) over the S3 client's shared configuration
//! ([`crate::store::s3::load_sdk_config`]): Secrets Manager `GetSecretValue` (upstream
//! credentials, client users) and Lambda `Invoke` with `InvocationType=Event` (a blob fill handed
//! to an asynchronous invocation of this function).
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

use std::time::Duration;

use aws_sdk_lambda::types::InvocationType;
use aws_sdk_secretsmanager::config::Region;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_types::SdkConfig;

use crate::cache::{FillHandoff, FillJob, HandoffError};
use crate::secrets::{SecretError, SecretSource};

/// Both calls answer in milliseconds; these bound a hung endpoint. A whole call, retries and
/// their backoff included, gives up after [`OPERATION_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

fn timeouts() -> TimeoutConfig {
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
fn describe<E>(service: &str, err: &SdkError<E, HttpResponse>) -> String
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

/// Secrets Manager `GetSecretValue`: upstream credentials stored as
/// `{"username":"…","password":"…"}`, and client users stored as htpasswd text.
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
    /// The client's region; a secret whose ARN names another region is read there.
    region: Option<String>,
}

impl SecretsManager {
    /// Over the shared configuration, at the endpoint the SDK resolves.
    pub fn new(sdk: &SdkConfig) -> SecretsManager {
        SecretsManager::build(sdk, None)
    }

    /// Against an explicit endpoint (tests).
    pub fn with_endpoint(sdk: &SdkConfig, endpoint: &str) -> SecretsManager {
        SecretsManager::build(sdk, Some(endpoint))
    }

    fn build(sdk: &SdkConfig, endpoint: Option<&str>) -> SecretsManager {
        let mut config =
            aws_sdk_secretsmanager::config::Builder::from(sdk).timeout_config(timeouts());
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        SecretsManager {
            client: aws_sdk_secretsmanager::Client::from_conf(config.build()),
            region: sdk.region().map(|r| r.as_ref().to_owned()),
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for SecretsManager {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        let mut call = self.client.get_secret_value().secret_id(arn).customize();
        // A secret lives in the region its ARN names (which picks endpoint and signing scope).
        if let Some(region) = crate::config::secret_arn_region(arn)
            && self.region.as_deref() != Some(region)
        {
            call = call.config_override(
                aws_sdk_secretsmanager::config::Builder::default()
                    .region(Region::new(region.to_owned())),
            );
        }
        let answer = call.send().await.map_err(|e| {
            SecretError::Read(format!(
                "GetSecretValue {arn}: {}",
                describe("Secrets Manager", &e)
            ))
        })?;
        answer.secret_string.ok_or_else(|| SecretError::NotText {
            arn: arn.to_owned(),
        })
    }
}

/// Lambda `Invoke` with `InvocationType=Event` on a function (this one): the event
/// `{"fill": …}` is queued by Lambda and handled by another invocation, for up to 15 minutes.
///
/// A retried `Invoke` whose first attempt was queued after all queues the event twice; the
/// second fill finds the blob stored or the lease taken (Lambda itself delivers events at least
/// once), so that costs a short invocation, nothing else.
pub struct LambdaInvoker {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl LambdaInvoker {
    /// `function` is a name or ARN (`AWS_LAMBDA_FUNCTION_NAME` in Lambda).
    pub fn new(sdk: &SdkConfig, function: String) -> LambdaInvoker {
        LambdaInvoker::build(sdk, None, function)
    }

    /// Against an explicit endpoint (tests).
    pub fn with_endpoint(sdk: &SdkConfig, endpoint: &str, function: String) -> LambdaInvoker {
        LambdaInvoker::build(sdk, Some(endpoint), function)
    }

    fn build(sdk: &SdkConfig, endpoint: Option<&str>, function: String) -> LambdaInvoker {
        let mut config = aws_sdk_lambda::config::Builder::from(sdk).timeout_config(timeouts());
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        LambdaInvoker {
            client: aws_sdk_lambda::Client::from_conf(config.build()),
            function,
        }
    }
}

#[async_trait::async_trait]
impl FillHandoff for LambdaInvoker {
    async fn hand_off(&self, job: &FillJob) -> Result<(), HandoffError> {
        let body = serde_json::to_vec(&serde_json::json!({ "fill": job }))
            .map_err(|e| HandoffError(format!("Invoke {}: event: {e}", self.function)))?;
        let answer = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(aws_sdk_lambda::primitives::Blob::new(body))
            .send()
            .await
            .map_err(|e| {
                HandoffError(format!(
                    "Invoke {}: {}",
                    self.function,
                    describe("Lambda", &e)
                ))
            })?;
        if answer.status_code != 202 {
            return Err(HandoffError(format!(
                "Invoke {}: expected 202 Accepted for an Event invocation, got {}",
                self.function, answer.status_code
            )));
        }
        tracing::info!(function = %self.function, digest = %job.digest, "blob fill handed to an asynchronous invocation");
        Ok(())
    }
}
