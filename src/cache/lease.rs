//! The fill lease in the bucket: `leases/blobs/<alg>/<hex>`, created with `If-None-Match: *`
//! so that one party copies a blob, named with its owner and expiry, taken over with `If-Match`
//! once expired (two takers cannot both win). Lambda mode's deadline and hand-off use it
//! (see `handoff`).
//!
//! In **server mode over S3** ([`Cache::leased_copy`]) several instances may share a bucket.
//! The single-flight leader of a fill takes the same lease (valid [`ServerLease::ttl`], renewed
//! every [`ServerLease::renew_every`] while the copy runs, so a long copy is never taken over
//! while its owner lives) and deletes it when done. A leader that finds the lease held by
//! another owner does not fetch: it waits until the blob is stored (or the lease is released or
//! expires, when it takes over) and then serves it as any blob stored by another instance.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CacheError;
use super::blobs::{FillStage, StageTx};
use super::{Cache, Target};
use crate::oci::Digest;
use crate::store::{Condition, keys};

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

/// The longest a request waits for another instance's copy of a blob (by the cache's clock).
const SERVER_WAIT_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The first pause between looks at a lease held elsewhere, doubled up to [`WAIT_PAUSE_MAX`].
const WAIT_PAUSE_FIRST: Duration = Duration::from_millis(200);
const WAIT_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The lease document (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) struct Lease {
    pub(super) owner: String,
    /// Unix milliseconds.
    pub(super) expires_at: u64,
    pub(super) upstream: String,
    pub(super) repo: String,
    /// The upstream's own URL for the blob on another host, when its GET redirected there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) redirect: Option<String>,
}

pub(super) enum Acquired {
    /// Ours, with the ETag that lets us rewrite it.
    Yes(String),
    /// Held by someone else, not expired.
    Held(Lease),
}

/// A new owner name: unique per process (random seed), per call (counter) and per time.
pub(super) fn new_owner() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one((n, std::process::id()));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{random:016x}{:08x}{n:x}", nanos as u32)
}

impl Cache {
    pub(super) fn lease_json(lease: &Lease) -> bytes::Bytes {
        serde_json::to_vec(lease).unwrap_or_default().into()
    }

    /// Creates the lease, or takes it over if it expired.
    pub(super) async fn acquire_lease(
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

    pub(super) fn retry_after(&self) -> Duration {
        self.fill_policy
            .as_ref()
            .map_or(Duration::from_secs(10), |p| p.retry_after)
    }

    pub(super) async fn release_lease(&self, key: &crate::store::Key) {
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
}

pub(super) fn busy(message: &str, retry_after: Duration) -> CacheError {
    CacheError::Busy {
        message: message.to_owned(),
        retry_after: retry_after.as_secs().max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_unique() {
        let a: std::collections::HashSet<String> = (0..1000).map(|_| new_owner()).collect();
        assert_eq!(a.len(), 1000);
    }
}
