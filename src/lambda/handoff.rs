//! Lambda's side of a blob fill that outlives its request: the job goes to another invocation
//! of this function as an `Invoke` event (`InvocationType=Event`), queued by Lambda and handled
//! for up to 15 minutes.

use crate::aws::LambdaInvoker;
use crate::cache::{FillHandoff, FillJob, HandoffError};

#[async_trait::async_trait]
impl FillHandoff for LambdaInvoker {
    async fn hand_off(&self, job: &FillJob) -> Result<(), HandoffError> {
        let body = serde_json::to_vec(&serde_json::json!({ "fill": job }))
            .map_err(|e| HandoffError(format!("Invoke {}: event: {e}", self.function())))?;
        self.send_event(body)
            .await
            .map_err(|e| HandoffError(e.to_string()))?;
        tracing::info!(function = %self.function(), digest = %job.digest, "blob fill handed to an asynchronous invocation");
        Ok(())
    }
}
