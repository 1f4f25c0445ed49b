//! Blob misses in Lambda mode: a deadline, a lease, and a hand-off; and the same lease for
//! server instances sharing a bucket.
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
//! 4. The **asynchronous invocation** ([`Registry::fill_job`]) adopts the lease (it is the named
//!    owner, or the lease is gone or expired), copies with no deadline but Lambda's own, and
//!    deletes the lease.
//!
//! In **server mode over S3** ([`Registry::leased_copy`]) several instances may share a bucket.
//! The single-flight leader of a fill takes the same lease (valid [`ServerLease::ttl`], renewed
//! every [`ServerLease::renew_every`] while the copy runs, so a long copy is never taken over
//! while its owner lives) and deletes it when done. A leader that finds the lease held by
//! another owner does not fetch: it waits until the blob is stored (or the lease is released or
//! expires, when it takes over) and then serves it as any blob stored by another instance.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CacheError;
use super::blobs::{FillStage, StageTx};
use super::{BlobAnswer, Registry, Target};
use crate::oci::{Digest, RepoName};
use crate::store::{BlobRead, Condition, keys};
use crate::upstream::RedirectSink;

/// How a copy that missed its deadline is continued elsewhere: in Lambda, an `Invoke` of this
/// function with `InvocationType=Event` ([`crate::aws::LambdaInvoker`]).
#[async_trait::async_trait]
pub trait FillHandoff: Send + Sync {
    async fn hand_off(&self, job: &FillJob) -> Result<(), String>;
}

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

/// Server mode over S3: the lease of a fill, so that instances sharing the bucket fetch a blob
/// from the upstream once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLease {
    /// How long a lease is valid past its last renewal: an owner that died is taken over after
    /// this long.
    pub ttl: Duration,
    /// How often the owner renews it while the copy runs.
    pub renew_every: Duration,
}

impl ServerLease {
    /// A lease valid for `ttl`, renewed every third of it.
    pub fn from_ttl(ttl: Duration) -> ServerLease {
        ServerLease {
            ttl,
            renew_every: ttl / 3,
        }
    }
}

/// The longest a request waits for another instance's copy of a blob (by the registry's clock).
const SERVER_WAIT_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The first pause between looks at a lease held elsewhere, doubled up to [`WAIT_PAUSE_MAX`].
const WAIT_PAUSE_FIRST: Duration = Duration::from_millis(200);
const WAIT_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The lease document (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Lease {
    owner: String,
    /// Unix milliseconds.
    expires_at: u64,
    upstream: String,
    repo: String,
    /// The upstream's own URL for the blob on another host, when its GET redirected there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redirect: Option<String>,
}

enum Acquired {
    /// Ours, with the ETag that lets us rewrite it.
    Yes(String),
    /// Held by someone else, not expired.
    Held(Lease),
}

/// A new owner name: unique per process (random seed), per call (counter) and per time.
fn new_owner() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one((n, std::process::id()));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{random:016x}{:08x}{n:x}", nanos as u32)
}

impl Registry {
    fn lease_json(lease: &Lease) -> bytes::Bytes {
        serde_json::to_vec(lease).unwrap_or_default().into()
    }

    /// Creates the lease, or takes it over if it expired.
    async fn acquire_lease(
        &self,
        key: &crate::store::Key,
        lease: &Lease,
    ) -> Result<Acquired, CacheError> {
        // Two rounds: a lease that vanishes between our failed create and our read (its fill just
        // finished) is simply created again.
        for _ in 0..2 {
            if let Some(etag) = self
                .store
                .put_if(key, Self::lease_json(lease), Condition::Absent)
                .await?
            {
                return Ok(Acquired::Yes(etag));
            }
            let Some((bytes, etag)) = self.store.get_versioned(key).await? else {
                continue;
            };
            let current: Option<Lease> = serde_json::from_slice(&bytes).ok();
            match current {
                Some(c) if c.expires_at > self.clock.now_ms() => return Ok(Acquired::Held(c)),
                _ => {
                    // Expired (or unreadable): take it over, unless someone else just did.
                    if let Some(etag) = self
                        .store
                        .put_if(key, Self::lease_json(lease), Condition::Matches(etag))
                        .await?
                    {
                        tracing::info!(%key, "took over an expired fill lease");
                        return Ok(Acquired::Yes(etag));
                    }
                }
            }
        }
        match self.store.get_versioned(key).await? {
            Some((bytes, _)) => match serde_json::from_slice::<Lease>(&bytes) {
                Ok(c) => Ok(Acquired::Held(c)),
                Err(_) => Err(busy("the fill lease is contended", self.retry_after())),
            },
            None => Err(busy("the fill lease is contended", self.retry_after())),
        }
    }

    fn retry_after(&self) -> Duration {
        self.fill_policy
            .as_ref()
            .map_or(Duration::from_secs(10), |p| p.retry_after)
    }

    async fn release_lease(&self, key: &crate::store::Key) {
        if let Err(e) = self.store.delete(key).await {
            // It expires by itself; the next miss takes it over.
            tracing::warn!(%key, error = %e, "could not delete a fill lease");
        }
    }

    /// Whether a fill takes the lease of [`Self::leased_copy`]: in server mode over a store that
    /// several instances share (S3). Lambda mode leases in [`Self::fill_within_deadline`]; a
    /// filesystem store belongs to one process.
    pub(super) fn leases_server_fills(&self) -> bool {
        self.fill_policy.is_none() && self.store.serves_by_redirect()
    }

    /// A fill in server mode over S3, run by the process's single-flight leader: under the lease,
    /// or, while another owner holds it, by waiting for that owner's copy.
    pub(super) async fn leased_copy(
        &self,
        target: &Target,
        digest: &Digest,
        mut stage: Option<StageTx>,
    ) -> Result<u64, CacheError> {
        let key = keys::lease(digest);
        let blob_key = keys::blob(digest);
        let give_up = self.clock.now_ms() + SERVER_WAIT_LIMIT.as_millis() as u64;
        let mut pause = WAIT_PAUSE_FIRST;
        let mut waiting = false;
        loop {
            let lease = Lease {
                owner: new_owner(),
                expires_at: self.clock.now_ms() + self.server_lease.ttl.as_millis() as u64,
                upstream: target.alias().to_owned(),
                repo: target.repo.to_string(),
                redirect: None,
            };
            let other = match self.acquire_lease(&key, &lease).await? {
                Acquired::Yes(etag) => {
                    return self
                        .copy_under_lease(target, digest, stage, lease, etag)
                        .await;
                }
                Acquired::Held(other) => other,
            };
            // Not streamed here: this fill's requests wait with it and are then answered from
            // the store.
            if let Some(s) = stage.take() {
                s.send_replace(FillStage::NotStreamed);
            }
            if !waiting {
                tracing::info!(repo = %target.scoped_name(), %digest, owner = %other.owner, "another instance is copying this blob; waiting for it");
                waiting = true;
            }
            if self.store.head(&blob_key).await?.is_some() {
                let same_repo =
                    other.upstream == target.alias() && other.repo == target.repo.as_str();
                if !same_repo {
                    // Copied for another repository: the upstream confirms this one holds it
                    // (unless its marker is there already).
                    return self.confirm_with_upstream(target, digest).await;
                }
                if let Some(m) = self.read_marker(target, digest).await? {
                    return Ok(m.size);
                }
                // Copied for this repository: its marker follows, then the lease is released.
            }
            if self.clock.now_ms() >= give_up {
                return Err(busy(
                    &format!(
                        "another instance has been copying {digest} from the upstream for over {} minutes",
                        SERVER_WAIT_LIMIT.as_secs() / 60
                    ),
                    self.retry_after(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(WAIT_PAUSE_MAX);
        }
    }

    /// The copy, with the lease renewed while it runs and released when it ends.
    async fn copy_under_lease(
        &self,
        target: &Target,
        digest: &Digest,
        stage: Option<StageTx>,
        lease: Lease,
        etag: String,
    ) -> Result<u64, CacheError> {
        let key = keys::lease(digest);
        let lost = std::sync::atomic::AtomicBool::new(false);
        let renew = async {
            let mut etag = etag;
            loop {
                tokio::time::sleep(self.server_lease.renew_every).await;
                let renewed = Lease {
                    expires_at: self.clock.now_ms() + self.server_lease.ttl.as_millis() as u64,
                    ..lease.clone()
                };
                match self
                    .store
                    .put_if(
                        &key,
                        Self::lease_json(&renewed),
                        Condition::Matches(etag.clone()),
                    )
                    .await
                {
                    Ok(Some(e)) => etag = e,
                    Ok(None) => {
                        // Taken over (it expired: renewals kept failing). The copy goes on: the
                        // blob is written once, whoever finishes first.
                        tracing::warn!(%key, "lost the fill lease to another owner");
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    // Tried again at the next interval; the lease outlives several.
                    Err(e) => tracing::warn!(%key, error = %e, "could not renew the fill lease"),
                }
            }
        };
        let copy = self.copy_blob(target, digest, stage, None);
        let result = {
            tokio::pin!(copy, renew);
            match futures_util::future::select(copy, renew).await {
                futures_util::future::Either::Left((result, _)) => result,
                futures_util::future::Either::Right(((), copy)) => copy.await,
            }
        };
        if !lost.load(Ordering::Relaxed) {
            self.release_lease(&key).await;
        }
        result
    }

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

fn busy(message: &str, retry_after: Duration) -> CacheError {
    CacheError::Busy {
        message: message.to_owned(),
        retry_after: retry_after.as_secs().max(1),
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
    fn owners_are_unique() {
        let a: std::collections::HashSet<String> = (0..1000).map(|_| new_owner()).collect();
        assert_eq!(a.len(), 1000);
    }

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
