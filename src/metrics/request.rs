//! What a request's handling learnt below the edge, for its log line: the upstream its name
//! resolved to and how the cache answered. The edge runs the request inside [`observe`]; the
//! cache writes with [`note_upstream`] and (through [`super::cache_lookup`]) the lookup result,
//! on the request's own task. Work on other tasks (a fill shared by several requests) writes to
//! no request; outside [`observe`] (a lifecycle command) the notes go nowhere.

use std::cell::RefCell;
use std::future::Future;

use super::Lookup;

tokio::task_local! {
    static NOTES: RefCell<Notes>;
}

/// What a request's log line says about the cache's work for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// The upstream alias the request's repository resolved to.
    pub upstream: Option<String>,
    /// The most telling lookup result (a miss over a hit, stale over a miss); `None` when the
    /// request made no cache lookup (`/v2/`, a tags list, an error before the cache).
    pub cache: Option<Lookup>,
}

/// Runs `f`, returning its output and what it noted on this task.
pub async fn observe<F: Future>(f: F) -> (F::Output, Notes) {
    NOTES
        .scope(RefCell::new(Notes::default()), async {
            let out = f.await;
            let notes = NOTES.try_with(|n| n.borrow().clone()).unwrap_or_default();
            (out, notes)
        })
        .await
}

/// The request's repository goes to `upstream` (an alias).
pub fn note_upstream(upstream: &str) {
    let _ = NOTES.try_with(|n| {
        let mut n = n.borrow_mut();
        if n.upstream.as_deref() != Some(upstream) {
            n.upstream = Some(upstream.to_owned());
        }
    });
}

pub(super) fn note_lookup(result: Lookup) {
    let _ = NOTES.try_with(|n| {
        let mut n = n.borrow_mut();
        n.cache = Some(n.cache.map_or(result, |c| c.max(result)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LookupKind, cache_lookup};

    #[tokio::test]
    async fn the_most_telling_lookup_and_the_upstream_are_noted_on_the_requests_task() {
        let ((), notes) = observe(async {
            note_upstream("docker.io");
            cache_lookup(LookupKind::Tag, Lookup::Hit);
            cache_lookup(LookupKind::Manifest, Lookup::Miss);
            cache_lookup(LookupKind::Manifest, Lookup::Hit);
            // Another task's work is not this request's.
            tokio::spawn(async { cache_lookup(LookupKind::Blob, Lookup::Stale) })
                .await
                .unwrap();
        })
        .await;
        assert_eq!(notes.upstream.as_deref(), Some("docker.io"));
        assert_eq!(notes.cache, Some(Lookup::Miss));
        // Outside a request nothing is noted and nothing fails.
        cache_lookup(LookupKind::Blob, Lookup::Hit);
    }
}
