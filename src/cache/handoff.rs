//! Blob misses in Lambda mode: a deadline, a lease, and a hand-off to an asynchronous
//! invocation. The cache decides when to hand off and what the job is; how a job reaches another
//! invocation is the [`FillHandoff`] given to it (Lambda's `Invoke`, in `crate::lambda`).
//!
//! API Gateway ends a request after 30 s, and a Lambda instance is frozen as soon as it has
//! answered, so a copy cannot simply go on in the background. A miss is therefore:
//!
//! 1. **Leased.** `leases/blobs/<alg>/<hex>` is created with `If-None-Match: *`. Whoever creates
//!    it copies the blob; everyone else (another instance, another request) gets `503` with
//!    `Retry-After`, or a `307` to the upstream's own signed URL when the copy in progress
//!    learned one for the same repository. A lease names its expiry: an expired lease (its owner
//!    crashed or was killed) is taken over with `If-Match` on its ETag, so two takers cannot both
//!    win.
//! 2. **Copied against the deadline** (`fill_deadline`, default 20 s): done in time, the lease
//!    is deleted and the client gets the usual presigned `307`.
//! 3. **Handed off** when the deadline passes: the local copy is dropped (its multipart upload
//!    aborted), the lease is rewritten for an asynchronous owner with a 16-minute expiry (the
//!    longest a Lambda invocation runs, plus a margin), and the function invokes itself with
//!    `InvocationType=Event` and `{"fill": {upstream, repo, digest, lease}}`. The client gets
//!    `503` + `Retry-After`, or a `307` to the upstream's signed URL when its blob GET had
//!    redirected to another host (a CDN): the client then downloads from there, as it would
//!    from the upstream directly, while the cache fills.
//! 4. The **asynchronous invocation** ([`Cache::fill_job`]) adopts the lease (it is the named
//!    owner, or the lease is gone or expired), copies with no deadline but Lambda's own, and
//!    deletes the lease.
//!

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lease::{Acquired, Lease, busy, new_owner};
use super::{BlobAnswer, Cache, CacheError, Target};
use crate::oci::{Digest, RepoName};
use crate::store::{BlobRead, Condition, keys};
use crate::upstream::RedirectSink;

/// How a copy that missed its deadline is continued elsewhere: in Lambda, an `Invoke` of this
/// function with `InvocationType=Event` (`crate::lambda::handoff`).
#[async_trait::async_trait]
pub trait FillHandoff: Send + Sync {
    async fn hand_off(&self, job: &FillJob) -> Result<(), HandoffError>;
}

/// A job that could not be handed off: the reason, as the hand-off's backend gave it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandoffError(pub String);

/// A blob copy to be done by an asynchronous invocation: the payload of `{"fill": …}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FillJob {
    /// The upstream's alias.
    pub upstream: String,
    /// The repository on the upstream (`library/alpine`).
    pub repo: String,
    pub digest: String,
    /// The owner the lease was handed to.
    pub lease: String,
}

/// What an asynchronous fill did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FillOutcome {
    /// The blob was copied (or found already stored): its size.
    Filled { size: u64 },
    /// Another owner holds a live lease on it: nothing done.
    Skipped { reason: String },
}

/// Lambda mode's policy for blob misses.
#[derive(Clone)]
pub struct FillPolicy {
    /// How long a miss is copied while the client waits.
    pub deadline: Duration,
    /// How the copy goes on once the deadline passed.
    pub handoff: Arc<dyn FillHandoff>,
    /// `Retry-After` sent with the 503 while a copy is in progress.
    pub retry_after: Duration,
}

impl FillPolicy {
    pub fn new(deadline: Duration, handoff: Arc<dyn FillHandoff>) -> FillPolicy {
        FillPolicy {
            deadline,
            handoff,
            retry_after: Duration::from_secs(10),
        }
    }
}

/// Beyond the deadline, how long the lease of a synchronous copy stays valid: time to hand off.
const SYNC_GRACE: Duration = Duration::from_secs(10);
/// The lease of an asynchronous copy: Lambda's 15-minute limit plus a margin.
pub const ASYNC_LEASE: Duration = Duration::from_secs(16 * 60);

impl Cache {
    /// A blob miss in Lambda mode (see the module documentation).
    pub(super) async fn fill_within_deadline(
        &self,
        target: &Target,
        digest: &Digest,
        policy: &FillPolicy,
    ) -> Result<BlobAnswer, CacheError> {
        let key = keys::lease(digest);
        let started = self.clock.now_ms();
        let lease = Lease {
            owner: new_owner(),
            expires_at: started + (policy.deadline + SYNC_GRACE).as_millis() as u64,
            upstream: target.alias().to_owned(),
            repo: target.repo.to_string(),
            redirect: None,
        };
        let etag = match self.acquire_lease(&key, &lease).await? {
            Acquired::Yes(etag) => etag,
            Acquired::Held(other) => return self.while_filling(target, digest, &other),
        };

        let seen = RedirectSink::default();
        let copy = self.copy_blob(target, digest, None, Some(&seen));
        match tokio::time::timeout(policy.deadline, copy).await {
            Ok(result) => {
                self.release_lease(&key).await;
                result?;
                self.stored(&keys::blob(digest), None, digest).await
            }
            Err(_) => {
                // The copy was dropped here: its upload is aborted. Another invocation redoes it.
                let redirect = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .map(String::from);
                self.hand_off(target, digest, policy, etag, redirect).await
            }
        }
    }

    async fn hand_off(
        &self,
        target: &Target,
        digest: &Digest,
        policy: &FillPolicy,
        etag: String,
        redirect: Option<String>,
    ) -> Result<BlobAnswer, CacheError> {
        let key = keys::lease(digest);
        let handed = Lease {
            owner: new_owner(),
            expires_at: self.clock.now_ms() + ASYNC_LEASE.as_millis() as u64,
            upstream: target.alias().to_owned(),
            repo: target.repo.to_string(),
            redirect: redirect.clone(),
        };
        if self
            .store
            .put_if(&key, Self::lease_json(&handed), Condition::Matches(etag))
            .await?
            .is_none()
        {
            // Our lease was taken over meanwhile (it expired): that owner does the copy.
            return Err(busy(
                "another copy of this blob took over",
                policy.retry_after,
            ));
        }
        let job = FillJob {
            upstream: handed.upstream.clone(),
            repo: handed.repo.clone(),
            digest: digest.to_string(),
            lease: handed.owner.clone(),
        };
        if let Err(e) = policy.handoff.hand_off(&job).await {
            tracing::warn!(%digest, error = %e, "could not hand the blob fill off");
            self.release_lease(&key).await;
            return Err(busy(
                &format!("the copy from upstream could not be continued ({e})"),
                policy.retry_after,
            ));
        }
        tracing::info!(repo = %target.scoped_name(), %digest, redirect = redirect.is_some(), "blob fill continues asynchronously");
        match redirect {
            Some(url) => Ok(BlobAnswer::Stored(BlobRead::Redirect(url))),
            None => Err(pending(digest, policy.retry_after)),
        }
    }

    /// The answer while another copy holds the lease.
    fn while_filling(
        &self,
        target: &Target,
        digest: &Digest,
        lease: &Lease,
    ) -> Result<BlobAnswer, CacheError> {
        let same_repo = lease.upstream == target.alias() && lease.repo == target.repo.as_str();
        match &lease.redirect {
            Some(url) if same_repo => Ok(BlobAnswer::Stored(BlobRead::Redirect(url.clone()))),
            _ => Err(pending(digest, self.retry_after())),
        }
    }

    /// The `{"fill": …}` event of an asynchronous invocation: adopt the lease, copy, release.
    pub async fn fill_job(&self, job: &FillJob) -> Result<FillOutcome, CacheError> {
        let upstream = self.upstreams.get(&job.upstream).cloned().ok_or_else(|| {
            CacheError::NameUnknown(format!(
                "fill event: upstream {:?} is not configured",
                job.upstream
            ))
        })?;
        let repo = RepoName::parse(&job.repo)
            .map_err(|e| CacheError::NameInvalid(format!("fill event: {e}")))?;
        let digest = Digest::parse(&job.digest)
            .map_err(|e| CacheError::DigestInvalid(format!("fill event: {e}")))?;
        let target = Target {
            upstream,
            client_name: repo.clone(),
            repo,
        };
        let key = keys::lease(&digest);
        let mine = Lease {
            owner: job.lease.clone(),
            expires_at: self.clock.now_ms() + ASYNC_LEASE.as_millis() as u64,
            upstream: job.upstream.clone(),
            repo: job.repo.clone(),
            redirect: None,
        };
        let adopted = match self.store.get_versioned(&key).await? {
            Some((bytes, etag)) => {
                let current: Option<Lease> = serde_json::from_slice(&bytes).ok();
                match current {
                    Some(c) if c.owner == job.lease => true,
                    Some(c) if c.expires_at > self.clock.now_ms() => {
                        return Ok(FillOutcome::Skipped {
                            reason: format!("lease held by {}", c.owner),
                        });
                    }
                    _ => self
                        .store
                        .put_if(&key, Self::lease_json(&mine), Condition::Matches(etag))
                        .await?
                        .is_some(),
                }
            }
            None => self
                .store
                .put_if(&key, Self::lease_json(&mine), Condition::Absent)
                .await?
                .is_some(),
        };
        if !adopted {
            return Ok(FillOutcome::Skipped {
                reason: "another copy took the lease".into(),
            });
        }
        let result = self.copy_blob(&target, &digest, None, None).await;
        self.release_lease(&key).await;
        let size = result?;
        Ok(FillOutcome::Filled { size })
    }
}

fn pending(digest: &Digest, retry_after: Duration) -> CacheError {
    busy(
        &format!(
            "{digest} is being copied from the upstream into the cache; retry in {} s",
            retry_after.as_secs().max(1)
        ),
        retry_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_events_have_a_fixed_shape() {
        let job: FillJob = serde_json::from_str(
            r#"{"upstream":"docker.io","repo":"library/alpine","digest":"sha256:00","lease":"x"}"#,
        )
        .unwrap();
        assert_eq!(job.repo, "library/alpine");
        assert!(
            serde_json::from_str::<FillJob>(
                r#"{"upstream":"a","repo":"b","digest":"c","lease":"d","extra":1}"#
            )
            .is_err()
        );
    }
}
