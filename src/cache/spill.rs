//! Spill files: a blob fill's bytes on local disk, read by any number of parties at their own pace.
//!
//! A fill writes the upstream's bytes into one [`Spill`] as fast as the upstream sends them and
//! never waits for a reader. Every reader (each client streaming the blob, and an upload) has
//! its own position and reads the file with positional reads, following the written length: a
//! reader that stops reading holds only itself (and keeps the file alive until it goes), never
//! the writer and never another reader.
//!
//! Bytes are sacred: a reader never receives the blob's last byte (with a known length) or its
//! end (without one) before the fill declares the spill [`Spill::complete`], which the fill does
//! only after the digest and length were verified. On [`Spill::fail`] the file is removed and
//! every reader ends with an error instead, so its client sees a cut-off body and retries, and
//! finds nothing of the failed fill.
//!
//! A spill file is removed when the last handle to it goes (writer, readers, the fill's
//! cache entry); the bytes it reserved in its [`SpillDir`] are given back then. This module
//! knows nothing of registries, stores or HTTP.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

/// Largest chunk a reader reads (and sends) at once.
const READ_CHUNK: usize = 256 * 1024;
/// The writer gathers upstream chunks that are already there up to this size per disk write.
const WRITE_BATCH: usize = 256 * 1024;

/// A directory of spill files with a bound on the bytes they may hold together.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
}

/// Numbers spill files within the process (the pid makes names unique across processes), for
/// every directory alike: two registries of one process may share a directory.
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl SpillDir {
    /// Opens (creating) the directory and removes the spill files of processes that no longer
    /// run (a crash): spill files are named `<pid>-<random>-<n>` ([`process_tag`](crate::store::process_tag)), so several
    /// processes may share one directory without removing each other's files.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64) -> io::Result<Arc<SpillDir>> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !process_alive(pid) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Arc::new(SpillDir {
            path,
            max_bytes,
            used: AtomicU64::new(0),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes reserved by the spill files alive now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves room for a spill of `len` bytes and names its file, or `None` when the directory
    /// has less than that left.
    pub fn reserve(self: &Arc<Self>, len: u64) -> Option<(PathBuf, Reservation)> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(len).filter(|n| *n <= self.max_bytes)?;
            match self
                .used
                .compare_exchange(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .path
            .join(format!("{}-{n}", crate::store::process_tag()));
        let reservation = Reservation {
            dir: Arc::clone(self),
            bytes: len,
        };
        Some((path, reservation))
    }
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Room held in a [`SpillDir`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    dir: Arc<SpillDir>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.dir.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// How far the fill has got.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Progress {
    written: u64,
    end: End,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Still being written.
    Open,
    /// Verified (and, where the fill says so, stored): readers may read to the end.
    Complete,
    /// Every reader fails with this message.
    Failed(Arc<str>),
}

/// One blob's bytes on local disk, being written by its fill.
pub struct Spill {
    file: Arc<std::fs::File>,
    path: PathBuf,
    /// The length the upstream announced; `None` when it sent none. With a length, client
    /// readers are held one byte short of it until the spill is complete.
    len: Option<u64>,
    progress: watch::Sender<Progress>,
    /// Room held in the spill directory until the file is removed.
    _reservation: Option<Reservation>,
}

/// The last handle removes the file. A filesystem store has adopted (renamed) a good one as its
/// object by then, and removing the old name is a harmless no-op.
impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Spill {
    /// Creates the spill file at `path` (which must not exist).
    pub async fn create(
        path: PathBuf,
        len: Option<u64>,
        reservation: Option<Reservation>,
    ) -> io::Result<Arc<Spill>> {
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(p)
        })
        .await
        .map_err(io::Error::other)??;
        let (progress, _) = watch::channel(Progress {
            written: 0,
            end: End::Open,
        });
        Ok(Arc::new(Spill {
            file: Arc::new(file),
            path,
            len,
            progress,
            _reservation: reservation,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn announced_len(&self) -> Option<u64> {
        self.len
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.progress.borrow().written
    }

    /// Copies `body` into the file at the body's own pace, telling readers after every write.
    /// Returns the bytes written, or the body's error (nothing is declared to readers then: the
    /// caller cleans up, then calls [`Spill::fail`]).
    pub async fn write_from<S, E>(&self, mut body: S) -> Result<u64, SpillError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let mut written = self.written();
        let mut ended = false;
        while !ended {
            let Some(first) = body.next().await else {
                break;
            };
            let mut batch = first.map_err(SpillError::Source)?;
            // Gather what has already arrived into one write; never wait for more.
            if batch.len() < WRITE_BATCH {
                let mut gathered: Option<BytesMut> = None;
                while gathered.as_ref().map_or(batch.len(), |g| g.len()) < WRITE_BATCH {
                    match body.next().now_or_never() {
                        Some(Some(next)) => {
                            let next = next.map_err(SpillError::Source)?;
                            gathered
                                .get_or_insert_with(|| {
                                    let mut g = BytesMut::with_capacity(WRITE_BATCH);
                                    g.extend_from_slice(&batch);
                                    g
                                })
                                .extend_from_slice(&next);
                        }
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                if let Some(g) = gathered {
                    batch = g.freeze();
                }
            }
            let file = Arc::clone(&self.file);
            let at = written;
            let n = batch.len() as u64;
            tokio::task::spawn_blocking(move || file.write_all_at(&batch, at))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(SpillError::Disk)?;
            written += n;
            self.progress.send_modify(|p| p.written = written);
        }
        Ok(written)
    }

    /// The bytes are verified (and stored, where the caller waits for that): readers may read
    /// to the end.
    pub fn complete(&self) {
        self.progress.send_modify(|p| p.end = End::Complete);
    }

    /// The fill failed: the file is removed (readers keep their open handle) and every reader
    /// fails. A client that retries finds nothing of this fill.
    pub fn fail(&self, message: &str) {
        let _ = std::fs::remove_file(&self.path);
        self.progress
            .send_modify(|p| p.end = End::Failed(message.into()));
    }

    /// Fails the spill unless it was completed or failed already: for a fill that stops without
    /// a verdict (cancelled, panicked), so that no reader waits for bytes that never come.
    pub fn fail_unless_ended(&self, message: &str) {
        let ended = matches!(self.progress.borrow().end, End::Complete | End::Failed(_));
        if !ended {
            self.fail(message);
        }
    }

    /// A reader of bytes `first..=last` (the whole blob when `None`), at its own pace.
    pub fn reader(
        self: &Arc<Self>,
        range: Option<(u64, u64)>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        let (pos, stop) = match range {
            Some((first, last)) => (first, Some(last + 1)),
            None => (0, None),
        };
        let state = ReaderState {
            spill: Arc::clone(self),
            progress: self.progress.subscribe(),
            pos,
            stop,
        };
        futures_util::stream::unfold(Some(state), |s| async move {
            let mut s = s?;
            match s.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(s))),
                Ok(None) => None,
                // One error ends the stream.
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }
}

struct ReaderState {
    spill: Arc<Spill>,
    progress: watch::Receiver<Progress>,
    pos: u64,
    /// One past the last byte wanted; `None`: to the end of the blob.
    stop: Option<u64>,
}

impl ReaderState {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let p = self.progress.borrow_and_update().clone();
            let readable = match &p.end {
                End::Complete => p.written,
                End::Failed(m) => return Err(io::Error::other(m.to_string())),
                // Held short of the end until the bytes are verified.
                End::Open => match self.spill.len {
                    Some(len) => p.written.min(len.saturating_sub(1)),
                    None => p.written,
                },
            };
            let end = self.stop.map_or(readable, |s| s.min(readable));
            if self.pos < end {
                let n = (end - self.pos).min(READ_CHUNK as u64) as usize;
                let file = Arc::clone(&self.spill.file);
                let at = self.pos;
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .map_err(io::Error::other)??;
                self.pos += n as u64;
                return Ok(Some(Bytes::from(chunk)));
            }
            // Nothing more to read now: done, or wait for the writer.
            if p.end == End::Complete || self.stop.is_some_and(|s| self.pos >= s) {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                // The fill is gone without declaring an end (cancelled): not a whole blob.
                return Err(io::Error::other("the blob fill stopped"));
            }
        }
    }
}

/// Why [`Spill::write_from`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum SpillError<E> {
    #[error(transparent)]
    Source(E),
    #[error("spill file: {0}")]
    Disk(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(dir.path(), 100).unwrap();
        let (_, a) = spill.reserve(60).unwrap();
        assert!(spill.reserve(41).is_none(), "over the bound");
        let (_, b) = spill.reserve(40).unwrap();
        assert_eq!(spill.used(), 100);
        drop(a);
        assert_eq!(spill.used(), 40);
        drop(b);
        assert_eq!(spill.used(), 0);
    }

    #[test]
    fn files_of_dead_processes_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        // Pid numbers above the kernel's maximum (4194304) are never alive.
        std::fs::write(dir.path().join("4194399-0"), b"left by a crash").unwrap();
        let mine = dir.path().join(format!("{}-999999", std::process::id()));
        std::fs::write(&mine, b"in use").unwrap();
        std::fs::write(dir.path().join("not-a-spill"), b"kept").unwrap();
        SpillDir::open(dir.path(), 1).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("{}-999999", std::process::id()),
                "not-a-spill".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn a_client_gets_the_last_byte_only_once_complete_and_never_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        for complete in [true, false] {
            let path = dir.path().join(format!("s-{complete}"));
            let spill = Spill::create(path.clone(), Some(4), None).await.unwrap();
            let mut reader = spill.reader(None);
            let body =
                futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"abcd"))]);
            assert_eq!(spill.write_from(body).await.unwrap(), 4);
            assert_eq!(reader.next().await.unwrap().unwrap(), &b"abc"[..]);
            // Held one byte short until the verdict.
            assert!(reader.next().now_or_never().is_none());
            if complete {
                spill.complete();
                assert_eq!(reader.next().await.unwrap().unwrap(), &b"d"[..]);
                assert!(reader.next().await.is_none());
            } else {
                spill.fail("bad digest");
                assert!(reader.next().await.unwrap().is_err());
                assert!(reader.next().await.is_none());
                assert!(!path.exists(), "a failed spill file is removed at once");
            }
        }
    }

    #[tokio::test]
    async fn a_fill_without_a_verdict_fails_its_readers_instead_of_leaving_them_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::create(dir.path().join("s"), Some(4), None)
            .await
            .unwrap();
        let mut waiting = spill.reader(None);
        assert!(waiting.next().now_or_never().is_none());
        spill.fail_unless_ended("stopped");
        assert!(waiting.next().await.unwrap().is_err());

        let done = Spill::create(dir.path().join("t"), Some(1), None)
            .await
            .unwrap();
        let body = futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"x"))]);
        done.write_from(body).await.unwrap();
        done.complete();
        done.fail_unless_ended("stopped");
        let mut reader = done.reader(None);
        assert_eq!(reader.next().await.unwrap().unwrap(), &b"x"[..]);
        assert!(
            reader.next().await.is_none(),
            "a completed spill stays complete"
        );
    }
}
