//! Counts and logs store calls per request, and counts every store call and its result in the
//! process's figures ([`crate::metrics`]).
//!
//! [`Counted`] wraps any store; [`counting`] runs a request's future with a task-local counter
//! that every call made on that task increments. The HTTP edge reports the count in its request
//! log line and in the `X-Pullthrough-Store-Calls` header, which is how the warm-path budgets
//! (at most one store request for a warm tag, digest or blob) are checked. Calls made by
//! background fills run on their own tasks and are logged but not counted to any request.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::{BlobRead, ByteStream, Condition, Key, ObjectInfo, RangeRequest, Store, StoreError};

tokio::task_local! {
    static CALLS: Cell<u32>;
}

/// Runs `f`, returning its output and the number of store calls it made on this task.
pub async fn counting<F: Future>(f: F) -> (F::Output, u32) {
    CALLS
        .scope(Cell::new(0), async {
            let out = f.await;
            (out, CALLS.try_with(Cell::get).unwrap_or(0))
        })
        .await
}

fn note(op: &'static str, key: &Key) {
    let _ = CALLS.try_with(|c| c.set(c.get() + 1));
    tracing::debug!(op, %key, "store call");
}

/// Counts a finished store call in the process's figures (`pullthrough_store_requests_total`).
fn done<T>(op: &'static str, result: Result<T, StoreError>) -> Result<T, StoreError> {
    crate::metrics::store_request(op, result.is_ok());
    result
}

pub struct Counted {
    inner: Arc<dyn Store>,
}

impl Counted {
    pub fn new(inner: Arc<dyn Store>) -> Counted {
        Counted { inner }
    }
}

#[async_trait::async_trait]
impl Store for Counted {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        note("get", key);
        done("get", self.inner.get(key).await)
    }

    async fn put(&self, key: &Key, bytes: Bytes, content_type: &str) -> Result<(), StoreError> {
        note("put", key);
        done("put", self.inner.put(key, bytes, content_type).await)
    }

    async fn head(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        note("head", key);
        done("head", self.inner.head(key).await)
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        note("list", prefix);
        done("list", self.inner.list(prefix).await)
    }

    async fn put_stream(
        &self,
        key: &Key,
        len_hint: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, StoreError> {
        note("put_stream", key);
        done(
            "put_stream",
            self.inner.put_stream(key, len_hint, body).await,
        )
    }

    async fn open(
        &self,
        key: &Key,
    ) -> Result<Option<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>>, StoreError>
    {
        note("open", key);
        done("open", self.inner.open(key).await)
    }

    fn serves_by_redirect(&self) -> bool {
        self.inner.serves_by_redirect()
    }

    fn spill_path(&self) -> Option<std::path::PathBuf> {
        self.inner.spill_path()
    }

    async fn adopt(&self, key: &Key, path: &std::path::Path) -> Result<(), StoreError> {
        note("adopt", key);
        done("adopt", self.inner.adopt(key, path).await)
    }

    async fn read_through(
        &self,
        key: &Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError> {
        note("read", key);
        done("read", self.inner.read_through(key, range).await)
    }

    async fn read(
        &self,
        key: &Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError> {
        let read = self.inner.read(key, range).await;
        // A redirect is computed locally (a presigned URL): not a store request.
        if !matches!(read, Ok(Some(BlobRead::Redirect(_)))) {
            note("read", key);
            crate::metrics::store_request("read", read.is_ok());
        }
        read
    }

    async fn get_versioned(&self, key: &Key) -> Result<Option<(Bytes, String)>, StoreError> {
        note("get_versioned", key);
        done("get_versioned", self.inner.get_versioned(key).await)
    }

    async fn put_if(
        &self,
        key: &Key,
        bytes: Bytes,
        condition: Condition,
    ) -> Result<Option<String>, StoreError> {
        note("put_if", key);
        done("put_if", self.inner.put_if(key, bytes, condition).await)
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        note("delete", key);
        done("delete", self.inner.delete(key).await)
    }

    async fn walk(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let _ = CALLS.try_with(|c| c.set(c.get() + 1));
        tracing::debug!(op = "walk", prefix, "store call");
        self.inner.walk(prefix).await
    }
}
