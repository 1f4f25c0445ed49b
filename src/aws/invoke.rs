//! Lambda `Invoke` with `InvocationType=Event`: an event queued for another invocation.

use aws_sdk_lambda::types::InvocationType;
use aws_types::SdkConfig;

use super::{describe, timeouts};

/// An event Lambda did not accept.
#[derive(Debug, thiserror::Error)]
#[error("Invoke {function}: {detail}")]
pub struct InvokeError {
    pub function: String,
    pub detail: String,
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

    /// The function's name or ARN.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// Queues `body` as an event for the function: `Ok` once Lambda accepted it (202).
    pub async fn send_event(&self, body: Vec<u8>) -> Result<(), InvokeError> {
        let answer = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(aws_sdk_lambda::primitives::Blob::new(body))
            .send()
            .await
            .map_err(|e| InvokeError {
                function: self.function.clone(),
                detail: describe("Lambda", &e),
            })?;
        if answer.status_code != 202 {
            return Err(InvokeError {
                function: self.function.clone(),
                detail: format!(
                    "expected 202 Accepted for an Event invocation, got {}",
                    answer.status_code
                ),
            });
        }
        Ok(())
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
