//! The embedded filesystem store: one file per key under a root directory.
//!
//! Every write goes to a temporary file under `<root>/.tmp/` and is published by `rename`, which
//! is atomic within one filesystem, so a reader sees a whole object or none. Streamed writes are
//! flushed to disk before the rename, so a crash never leaves a short file under a final name.
//! Leftover temporary files (a crash mid-write) are removed at start-up by the process that
//! holds the store's lock (an advisory `flock` on the root directory, kept for the life of the
//! store):
//! a second server started on the same directory leaves `.tmp` alone, since files there may be
//! the first one's writes in flight. [`FsStore::open_existing`] (for `verify`) creates nothing
//! and never touches `.tmp`.

use std::io::{ErrorKind, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{BlobRead, ByteStream, Key, ObjectInfo, RangeRequest, Store, StoreError};

pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Makes temporary file names unique within the process ([`super::process_tag`] across).
    counter: AtomicU64,
    /// The root directory, locked while this store lives, when it was free at opening.
    _lock: Option<std::fs::File>,
}

const TMP_DIR: &str = ".tmp";

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`. When no other process holds the
    /// store's lock, takes it and clears abandoned temporary files.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<FsStore> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&root)?;
        let lock = std::fs::File::open(&root)?;
        let lock = match lock.try_lock() {
            Ok(()) => {
                match std::fs::remove_dir_all(&tmp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Some(lock)
            }
            Err(_) => {
                tracing::info!(store = %root.display(), "another process holds the store's lock: its temporary files are left alone");
                None
            }
        };
        std::fs::create_dir_all(&tmp)?;
        Ok(FsStore {
            root,
            tmp,
            counter: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// Opens an existing store to read it: creates nothing, removes nothing (`verify`, beside a
    /// live server). A missing directory is a `NotFound` error.
    pub fn open_existing(root: impl Into<PathBuf>) -> std::io::Result<FsStore> {
        let root = root.into();
        if !std::fs::metadata(&root)?.is_dir() {
            return Err(std::io::Error::new(
                ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(FsStore {
            tmp: root.join(TMP_DIR),
            root,
            counter: AtomicU64::new(0),
            _lock: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", super::process_tag()))
    }

    async fn publish(&self, tmp: &Path, key: &Key) -> Result<(), StoreError> {
        let dest = self.path(key);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err(key, e))?;
        }
        tokio::fs::rename(tmp, &dest)
            .await
            .map_err(|e| io_err(key, e))
    }
}

fn io_err(key: &Key, source: std::io::Error) -> StoreError {
    StoreError::Io {
        key: key.to_string(),
        source,
    }
}

/// Removes a temporary file when dropped unless disarmed: a write abandoned for any reason
/// (error, cancelled future) leaves nothing behind.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[async_trait::async_trait]
impl Store for FsStore {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn put(&self, key: &Key, bytes: Bytes, _content_type: &str) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let mut guard = TmpGuard(Some(tmp.clone()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| io_err(key, e))?;
        self.publish(&tmp, key).await?;
        guard.0 = None;
        Ok(())
    }

    async fn head(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        let mut dir = match tokio::fs::read_dir(self.path(prefix)).await {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(vec![]),
            Err(e) => return Err(io_err(prefix, e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(|e| io_err(prefix, e))? {
            let is_file = entry
                .file_type()
                .await
                .map(|t| t.is_file())
                .unwrap_or(false);
            if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    async fn put_stream(
        &self,
        key: &Key,
        _len_hint: Option<u64>,
        mut body: ByteStream,
    ) -> Result<u64, StoreError> {
        let tmp = self.tmp_path();
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(key, e))?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await.map_err(|e| io_err(key, e))?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| io_err(key, e))?;
        file.sync_data().await.map_err(|e| io_err(key, e))?;
        drop(file);
        self.publish(&tmp, key).await?;
        guard.0 = None;
        Ok(written)
    }

    fn spill_path(&self) -> Option<PathBuf> {
        Some(self.tmp_path())
    }

    async fn adopt(&self, key: &Key, path: &Path) -> Result<(), StoreError> {
        let p = path.to_owned();
        tokio::task::spawn_blocking(move || std::fs::File::open(p)?.sync_data())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| io_err(key, e))?;
        self.publish(path, key).await
    }

    async fn open(
        &self,
        key: &Key,
    ) -> Result<Option<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>>, StoreError>
    {
        match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => Ok(Some(ReaderStream::new(f).boxed())),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn read(
        &self,
        key: &Key,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobRead>, StoreError> {
        let mut file = match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err(key, e)),
        };
        let total = file.metadata().await.map_err(|e| io_err(key, e))?.len();
        let range = match range {
            None => None,
            Some(r) => match r.resolve(total) {
                Some(r) => Some(r),
                None => return Ok(Some(BlobRead::Unsatisfiable { total })),
            },
        };
        let body = match range {
            None => ReaderStream::new(file).boxed(),
            Some(r) => {
                file.seek(SeekFrom::Start(r.first))
                    .await
                    .map_err(|e| io_err(key, e))?;
                ReaderStream::new(file.take(r.last - r.first + 1)).boxed()
            }
        };
        Ok(Some(BlobRead::Stream { total, range, body }))
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn walk(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.trim_matches('/').to_owned();
        let what = prefix.clone();
        tokio::task::spawn_blocking(move || walk_dir(&root, &prefix))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| StoreError::Io { key: what, source })
    }
}

/// Every file under `root/prefix`, with keys relative to `root`; `.tmp` at the root is skipped
/// (temporary files are not objects). Entries that vanish during the walk (a concurrent delete
/// or rename) are skipped, not errors.
fn walk_dir(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.join(prefix), prefix.to_owned())];
    while let Some((dir, key)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // never a key: keys are ASCII
            };
            if key.is_empty() && name == TMP_DIR {
                continue;
            }
            let child = if key.is_empty() {
                name
            } else {
                format!("{key}/{name}")
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                dirs.push((entry.path(), child));
            } else if meta.is_file() {
                let modified_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                out.push(ObjectInfo {
                    key: child,
                    size: meta.len(),
                    modified_ms,
                });
            }
        }
    }
    Ok(out)
}

/// Absent, or a path component that is a file where a directory was expected.
fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}
