//! Single-flight: concurrent callers asking for the same key share one run of the work.
//!
//! The work runs in its own task, so a caller that goes away (client disconnect) does not cancel
//! it for the others; its result, success or error, is handed to every caller waiting then.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::error::{Code, Error};

pub type SharedResult<V> = Shared<BoxFuture<'static, Result<V, Error>>>;

pub struct SingleFlight<K, V: Clone> {
    running: Arc<Mutex<HashMap<K, SharedResult<V>>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless a run for `key` is in progress, in which case waits for that one.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, Error>
    where
        F: Future<Output = Result<V, Error>> + Send + 'static,
    {
        self.start(key, || work).1.await
    }

    /// Starts the work made by `make` unless a run for `key` is in progress. Returns whether
    /// this caller started it (`make` is called only then) and the shared result.
    pub fn start<F>(&self, key: K, make: impl FnOnce() -> F) -> (bool, SharedResult<V>)
    where
        F: Future<Output = Result<V, Error>> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = running.get(&key) {
            return (false, existing.clone());
        }
        let work = make();
        let map = Arc::clone(&self.running);
        let k = key.clone();
        let task = tokio::spawn(async move {
            let result = work.await;
            // Done: later callers start afresh (and find the result in the store).
            map.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
            result
        });
        let fut: BoxFuture<'static, Result<V, Error>> = async move {
            task.await.unwrap_or_else(|e| {
                Err(Error::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    Code::Unavailable,
                    format!("internal error: background fill failed: {e}"),
                ))
            })
        }
        .boxed();
        let shared = fut.shared();
        running.insert(key, shared.clone());
        (true, shared)
    }
}
