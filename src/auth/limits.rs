//! Bounds on the work wrong passwords can cause: failure token buckets per client address and
//! per user name, and the bcrypt turns. Owns no users and no secrets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::AuthError;
use crate::config::AuthLimits;

/// Most failure buckets kept per kind (addresses, user names); see [`Buckets::take`].
const MAX_BUCKETS: usize = 10_000;
/// Longest user name a bucket is keyed by (longer names share the bucket of their prefix).
const MAX_BUCKET_NAME: usize = 256;

/// Bounds on the password checks of one [`ClientAuth`](super::ClientAuth) (see the module documentation).
pub struct Checks {
    /// bcrypt turns; tokio's semaphore serves waiters in order of arrival.
    pub(super) bcrypt: Arc<tokio::sync::Semaphore>,
    pub(super) wait: Duration,
    per_minute: u32,
    failures: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_addr: HashMap<IpAddr, Bucket>,
    by_user: HashMap<String, Bucket>,
}

/// A token bucket of failures: `per_minute` tokens at most, one back every `60 / per_minute` s.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn refill(&mut self, now_ms: u64, per_minute: u32) {
        let rate = f64::from(per_minute) / 60_000.0;
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(per_minute));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes a token, or says in how many seconds one will be there.
    fn take(&mut self, now_ms: u64, per_minute: u32) -> Result<(), u64> {
        self.refill(now_ms, per_minute);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let rate = f64::from(per_minute) / 60_000.0;
            Err((((1.0 - self.tokens) / rate) / 1000.0).ceil().max(1.0) as u64)
        }
    }
}

impl Buckets {
    fn bucket<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, Bucket>,
        key: K,
        now_ms: u64,
        per_minute: u32,
    ) -> &mut Bucket {
        if map.len() >= MAX_BUCKETS && !map.contains_key(&key) {
            // Forget buckets that are full again; if that is not enough, forget them all
            // (memory stays bounded; an attacker with that many names or addresses resets the
            // limits, which per-address limits and the bcrypt cap still bound).
            map.retain(|_, b| {
                b.refill(now_ms, per_minute);
                b.tokens < f64::from(per_minute)
            });
            if map.len() >= MAX_BUCKETS {
                map.clear();
            }
        }
        map.entry(key).or_insert(Bucket {
            tokens: f64::from(per_minute),
            at_ms: now_ms,
        })
    }
}

impl Checks {
    pub fn new(limits: &AuthLimits) -> Checks {
        Checks {
            bcrypt: Arc::new(tokio::sync::Semaphore::new(
                limits.bcrypt_concurrency.max(1),
            )),
            wait: limits.bcrypt_wait,
            per_minute: limits.failures_per_minute.max(1),
            failures: Mutex::new(Buckets::default()),
        }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn user_key(user: &str) -> String {
        let mut end = user.len().min(MAX_BUCKET_NAME);
        while !user.is_char_boundary(end) {
            end -= 1;
        }
        user[..end].to_owned()
    }

    /// Takes a failure token from the address and the user, or answers 429. The same answer
    /// whichever ran out, and whether the user exists or not.
    pub(super) fn reserve(
        &self,
        client: Option<IpAddr>,
        user: &str,
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let per_minute = self.per_minute;
        let mut b = self.buckets();
        let b = &mut *b;
        if let Some(addr) = client
            && let Err(secs) =
                Buckets::bucket(&mut b.by_addr, addr, now_ms, per_minute).take(now_ms, per_minute)
        {
            return Err(AuthError::TooManyFailures { retry_after: secs });
        }
        let by_user = Buckets::bucket(&mut b.by_user, Self::user_key(user), now_ms, per_minute);
        if let Err(secs) = by_user.take(now_ms, per_minute) {
            if let Some(addr) = client
                && let Some(a) = b.by_addr.get_mut(&addr)
            {
                a.tokens = (a.tokens + 1.0).min(f64::from(per_minute));
            }
            return Err(AuthError::TooManyFailures { retry_after: secs });
        }
        Ok(())
    }

    /// Gives back the tokens of a check that succeeded or did not happen.
    pub(super) fn refund(&self, client: Option<IpAddr>, user: &str) {
        let max = f64::from(self.per_minute);
        let mut b = self.buckets();
        if let Some(addr) = client
            && let Some(a) = b.by_addr.get_mut(&addr)
        {
            a.tokens = (a.tokens + 1.0).min(max);
        }
        if let Some(u) = b.by_user.get_mut(&Self::user_key(user)) {
            u.tokens = (u.tokens + 1.0).min(max);
        }
    }
}
