//! Bounded waits: poll a condition until it holds and fail the test once a deadline has passed.
//! The pause between two polls is a polling interval, never a synchronisation.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`Deadline::pause`] waits before the next poll.
const POLL: Duration = Duration::from_millis(20);

/// A point in time after which a wait fails the test.
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    /// Fails the test with `what` once the deadline has passed.
    pub fn check(&self, what: &str) {
        assert!(
            Instant::now() < self.at,
            "not within {:?}: {what}",
            self.limit
        );
    }

    /// [`Self::check`], then a short pause before the caller polls again:
    /// `while !cond { deadline.pause("what").await }`.
    pub async fn pause(&self, what: &str) {
        self.check(what);
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds, failing with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Deadline::after(limit);
    while !cond().await {
        deadline.pause(what).await;
    }
}
