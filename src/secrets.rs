//! Where secrets kept outside the proxy are read: upstream credentials and client users, from
//! AWS Secrets Manager in practice (`crate::aws::SecretsManager`). A data leaf: the trait and
//! its errors, nothing that reads a secret itself.

use serde::Deserialize;

/// A secret that could not be read or is not what it should be. Messages name the secret, never
/// its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret store's own account of a failed read.
    #[error("{0}")]
    Read(String),
    #[error("secret {arn} has no SecretString (binary secrets are not supported)")]
    NotText { arn: String },
    #[error("secret {arn} is not JSON of the form {{\"username\":\"…\",\"password\":\"…\"}}")]
    NotCredentials { arn: String },
    #[error("secret {arn}: username and password must not be empty")]
    EmptyCredentials { arn: String },
}

/// Where secrets are read. Called on first use, never at start-up.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    /// The `SecretString` of the secret `arn`, as stored.
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError>;

    /// The `(username, password)` held by the secret `arn` as
    /// `{"username":"…","password":"…"}`.
    async fn basic_credentials(&self, arn: &str) -> Result<(String, String), SecretError> {
        #[derive(Deserialize)]
        struct Basic {
            username: String,
            password: String,
        }
        let text = self.secret_string(arn).await?;
        let basic: Basic =
            serde_json::from_str(&text).map_err(|_| SecretError::NotCredentials {
                arn: arn.to_owned(),
            })?;
        if basic.username.is_empty() || basic.password.is_empty() {
            return Err(SecretError::EmptyCredentials {
                arn: arn.to_owned(),
            });
        }
        Ok((basic.username, basic.password))
    }
}
