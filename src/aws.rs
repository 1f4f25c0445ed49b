//! The two AWS API calls pullthrough makes besides S3, each one SigV4-signed JSON request sent
//! with reqwest: Secrets Manager `GetSecretValue` (upstream credentials) and Lambda `Invoke` with
//! `InvocationType=Event` (a blob fill handed to an asynchronous invocation of this function).
//!
//! Signing one request with `aws-sigv4` (already in the tree for S3) instead of linking
//! `aws-sdk-lambda` and `aws-sdk-secretsmanager` keeps the binary small and the start-up short:
//! see `bench/RESULTS.md`. Credentials and region come from the same SDK configuration as the S3
//! client (environment, profiles, web identity, container and instance roles), resolved on first
//! use: building these clients does no network I/O.
//!
//! Endpoints follow the SDKs' environment variables, so tests can point them at local fakes:
//! `AWS_ENDPOINT_URL_LAMBDA` / `AWS_ENDPOINT_URL_SECRETS_MANAGER`, else `AWS_ENDPOINT_URL`, else
//! the public regional endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::cache::{FillHandoff, FillJob};
use crate::upstream::SecretSource;

/// A signed-request client: one reqwest client, the credentials provider and the default region.
pub struct AwsApi {
    http: reqwest::Client,
    credentials: SharedCredentialsProvider,
    region: String,
}

/// What an AWS endpoint answered, when it was not a success.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{service}: no AWS credentials: {0}", service = .1)]
    Credentials(String, &'static str),
    #[error("{service} unreachable: {detail}")]
    Unreachable {
        service: &'static str,
        detail: String,
    },
    #[error("{service} answered HTTP {status}: {body}")]
    Status {
        service: &'static str,
        status: u16,
        body: String,
    },
    #[error("{service}: {detail}")]
    Invalid {
        service: &'static str,
        detail: String,
    },
}

impl AwsApi {
    /// Uses the credentials and region of `sdk` (see [`crate::store::s3::load_sdk_config`]).
    pub fn new(sdk: &aws_types::SdkConfig) -> Result<AwsApi, String> {
        let credentials = sdk
            .credentials_provider()
            .ok_or("the AWS configuration has no credentials provider")?;
        let region = sdk
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_else(|| "us-east-1".to_owned());
        AwsApi::with_credentials(credentials, region)
    }

    pub fn with_credentials(
        credentials: SharedCredentialsProvider,
        region: String,
    ) -> Result<AwsApi, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("pullthrough/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("AWS API client: {e}"))?;
        Ok(AwsApi {
            http,
            credentials,
            region,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Sends one SigV4-signed request. `service` is the signing name (`lambda`,
    /// `secretsmanager`), `label` the name used in messages.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        label: &'static str,
        service: &str,
        region: &str,
        method: Method,
        url: Url,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), AwsError> {
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| AwsError::Credentials(e.to_string(), label))?;
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| AwsError::Invalid {
                service: label,
                detail: format!("signing parameters: {e}"),
            })?
            .into();
        let mut request = http::Request::builder()
            .method(method.as_str())
            .uri(url.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(body.clone()).map_err(|e| AwsError::Invalid {
            service: label,
            detail: format!("request: {e}"),
        })?;
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.uri().to_string(),
            request
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| AwsError::Invalid {
            service: label,
            detail: format!("signing: {e}"),
        })?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| AwsError::Invalid {
                service: label,
                detail: format!("signing: {e}"),
            })?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);

        let mut req = self.http.request(method, url);
        for (name, value) in request.headers() {
            req = req.header(name.as_str(), value.as_bytes());
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| AwsError::Unreachable {
                service: label,
                detail: e.to_string(),
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| AwsError::Unreachable {
            service: label,
            detail: format!("reading the answer: {e}"),
        })?;
        if status.is_success() {
            Ok((status, bytes))
        } else {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            Err(AwsError::Status {
                service: label,
                status: status.as_u16(),
                body: text,
            })
        }
    }
}

/// The endpoint of a service: `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`, else the
/// public regional endpoint `https://<prefix>.<region>.amazonaws.com` (`.com.cn` in China).
pub fn endpoint(env_suffix: &str, prefix: &str, region: &str) -> Result<Url, String> {
    let specific = format!("AWS_ENDPOINT_URL_{env_suffix}");
    let from_env = [specific.as_str(), "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (name, v))
        });
    match from_env {
        Some((name, value)) => {
            let url = Url::parse(&value).map_err(|e| format!("{name}={value:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "{name}={value:?}: use an http(s)://host[:port] URL"
                ));
            }
            Ok(url)
        }
        None => {
            let domain = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            Url::parse(&format!("https://{prefix}.{region}.{domain}"))
                .map_err(|e| format!("endpoint for region {region:?}: {e}"))
        }
    }
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

/// Secrets Manager `GetSecretValue`: upstream credentials stored as
/// `{"username":"…","password":"…"}`, and client users stored as htpasswd text.
pub struct SecretsManager {
    api: Arc<AwsApi>,
    /// From the environment at start-up; `None`: the secret's own regional endpoint.
    endpoint_override: Option<Url>,
}

impl SecretsManager {
    pub fn new(api: Arc<AwsApi>) -> Result<SecretsManager, String> {
        let has_override = ["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|n| std::env::var(n).is_ok_and(|v| !v.is_empty()));
        let endpoint_override = if has_override {
            Some(endpoint("SECRETS_MANAGER", "secretsmanager", api.region())?)
        } else {
            None
        };
        Ok(SecretsManager {
            api,
            endpoint_override,
        })
    }

    /// Against an explicit endpoint (tests).
    pub fn with_endpoint(api: Arc<AwsApi>, endpoint: Url) -> SecretsManager {
        SecretsManager {
            api,
            endpoint_override: Some(endpoint),
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for SecretsManager {
    async fn secret_string(&self, arn: &str) -> Result<String, String> {
        // A secret lives in the region its ARN names.
        let region = crate::config::secret_arn_region(arn).unwrap_or(self.api.region());
        let url = match &self.endpoint_override {
            Some(u) => u.clone(),
            None => endpoint("SECRETS_MANAGER", "secretsmanager", region)?,
        };
        let body = serde_json::json!({ "SecretId": arn }).to_string();
        let (_, answer) = self
            .api
            .send(
                "Secrets Manager",
                "secretsmanager",
                region,
                Method::POST,
                join(&url, "/"),
                &[
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amz-target", "secretsmanager.GetSecretValue"),
                ],
                Bytes::from(body),
            )
            .await
            .map_err(|e| format!("GetSecretValue {arn}: {e}"))?;
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "SecretString")]
            secret_string: Option<String>,
        }
        // Not serde's own message: it may quote values, and this answer holds the secret.
        let answer: Answer = serde_json::from_slice(&answer).map_err(|e| {
            format!(
                "GetSecretValue {arn}: unreadable answer ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        answer.secret_string.ok_or_else(|| {
            format!("secret {arn} has no SecretString (binary secrets are not supported)")
        })
    }
}

/// Lambda `Invoke` with `InvocationType=Event` on a function (this one): the event
/// `{"fill": …}` is queued by Lambda and handled by another invocation, for up to 15 minutes.
pub struct LambdaInvoker {
    api: Arc<AwsApi>,
    url: Url,
    function: String,
}

impl LambdaInvoker {
    /// `function` is a name or ARN (`AWS_LAMBDA_FUNCTION_NAME` in Lambda).
    pub fn new(api: Arc<AwsApi>, function: String) -> Result<LambdaInvoker, String> {
        let base = endpoint("LAMBDA", "lambda", api.region())?;
        Ok(LambdaInvoker::with_endpoint(api, &base, function))
    }

    /// Against an explicit endpoint (tests).
    pub fn with_endpoint(api: Arc<AwsApi>, base: &Url, function: String) -> LambdaInvoker {
        let encoded: String =
            url::form_urlencoded::byte_serialize(function.as_bytes()).collect::<String>();
        let url = join(
            base,
            &format!("/2015-03-31/functions/{encoded}/invocations"),
        );
        LambdaInvoker { api, url, function }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }
}

#[async_trait::async_trait]
impl FillHandoff for LambdaInvoker {
    async fn hand_off(&self, job: &FillJob) -> Result<(), String> {
        let body = serde_json::to_vec(&serde_json::json!({ "fill": job })).unwrap_or_default();
        let region = self.api.region().to_owned();
        let (status, _) = self
            .api
            .send(
                "Lambda",
                "lambda",
                &region,
                Method::POST,
                self.url.clone(),
                &[
                    ("content-type", "application/json"),
                    ("x-amz-invocation-type", "Event"),
                ],
                Bytes::from(body),
            )
            .await
            .map_err(|e| format!("Invoke {}: {e}", self.function))?;
        if status != StatusCode::ACCEPTED {
            return Err(format!(
                "Invoke {}: expected 202 Accepted for an Event invocation, got {status}",
                self.function
            ));
        }
        tracing::info!(function = %self.function, digest = %job.digest, "blob fill handed to an asynchronous invocation");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_a_base_path() {
        let base = Url::parse("http://127.0.0.1:9/prefix/").unwrap();
        assert_eq!(
            join(&base, "/2015-03-31/functions/f/invocations").as_str(),
            "http://127.0.0.1:9/prefix/2015-03-31/functions/f/invocations"
        );
        let base = Url::parse("https://lambda.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(
            join(&base, "/x").as_str(),
            "https://lambda.eu-west-1.amazonaws.com/x"
        );
    }
}
