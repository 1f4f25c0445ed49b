//! Single-flight: concurrent callers asking for the same key share one run of the work.
//!
//! The work runs in its own task, so a caller that goes away (client disconnect) does not cancel
//! it for the others; its result, success or error, is handed to every caller waiting then. The
//! slot is freed by a guard when the task ends in any way, a panic included: a panic costs the
//! callers of that one run a 500, never the key for the life of the process.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::CacheError;

pub type SharedResult<V> = Shared<BoxFuture<'static, Result<V, CacheError>>>;

/// A test-only fault injector, called with the point reached, the flight's kind (`"manifest"`,
/// `"blob"`) and key in every run, inside its task (see [`super::Services::fault_hook`]).
pub type FaultHook = Arc<dyn Fn(FlightPoint, &str, &str) + Send + Sync>;

/// Where in a run a [`FaultHook`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlightPoint {
    /// Before the work starts.
    Start,
    /// After the work has ended, before its slot is freed: a caller arriving now joins the
    /// ended run.
    End,
}

type Slots<K, V> = Arc<Mutex<HashMap<K, SharedResult<V>>>>;

pub struct SingleFlight<K, V: Clone> {
    running: Slots<K, V>,
    /// What this flight runs (`"manifest"`, `"blob"`), for the fault hook.
    kind: &'static str,
    hook: Option<FaultHook>,
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(kind: &'static str, hook: Option<FaultHook>) -> Self {
        SingleFlight {
            running: Arc::new(Mutex::new(HashMap::new())),
            kind,
            hook,
        }
    }

    /// Runs `work` unless a run for `key` is in progress, in which case waits for that one.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, CacheError>
    where
        F: Future<Output = Result<V, CacheError>> + Send + 'static,
    {
        self.start(key, || work).1.await
    }

    /// Starts the work made by `make` unless a run for `key` is in progress. Returns whether
    /// this caller started it (`make` is called only then) and the shared result.
    pub fn start<F>(&self, key: K, make: impl FnOnce() -> F) -> (bool, SharedResult<V>)
    where
        F: Future<Output = Result<V, CacheError>> + Send + 'static,
    {
        self.start_holding(key, || (make(), ()))
    }

    /// [`SingleFlight::start`], where `make` also returns something the run holds until its slot
    /// is freed, and drops only then: what the work registers for its callers (a fill's spill
    /// file) is still there for any caller that finds the run in its slot, even one that
    /// arrives after the work itself has ended.
    pub fn start_holding<F, H>(
        &self,
        key: K,
        make: impl FnOnce() -> (F, H),
    ) -> (bool, SharedResult<V>)
    where
        F: Future<Output = Result<V, CacheError>> + Send + 'static,
        H: Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = running.get(&key) {
            return (false, existing.clone());
        }
        let (work, held) = make();
        let slot = Slot {
            map: Arc::clone(&self.running),
            key: key.clone(),
            _held: held,
        };
        let hook = self.hook.clone().map(|h| (h, self.kind, key.to_string()));
        let task = tokio::spawn(async move {
            // Done, or unwinding from a panic: later callers start afresh (and find the result
            // in the store).
            let _slot = slot;
            if let Some((hook, kind, key)) = &hook {
                hook(FlightPoint::Start, kind, key);
            }
            let result = work.await;
            if let Some((hook, kind, key)) = &hook {
                hook(FlightPoint::End, kind, key);
            }
            result
        });
        let fut: BoxFuture<'static, Result<V, CacheError>> = async move {
            task.await.unwrap_or_else(|e| {
                Err(CacheError::Internal(format!("background fill failed: {e}")))
            })
        }
        .boxed();
        let shared = fut.shared();
        running.insert(key, shared.clone());
        (true, shared)
    }
}

/// Frees a key's slot when its task ends, however it ends; what the run holds is dropped after
/// (fields drop once `drop` has run).
struct Slot<K: Eq + Hash, V: Clone, H> {
    map: Slots<K, V>,
    key: K,
    _held: H,
}

impl<K: Eq + Hash, V: Clone, H> Drop for Slot<K, V, H> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}
