//! Secrets Manager `GetSecretValue`, as the project's [`SecretSource`].

use aws_sdk_secretsmanager::config::Region;
use aws_types::SdkConfig;

use super::{describe, timeouts};
use crate::secrets::{SecretError, SecretSource};

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
