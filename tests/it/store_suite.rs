//! One suite of store tests, written once and run against every store: the filesystem store,
//! the S3 store without a key prefix, and the S3 store under a prefix (the S3 ones against an
//! in-process S3-compatible server that checks SigV4 signatures). Then a few tests of what only
//! S3 has: write-once blob keys, retries, bounded parts in flight.

use std::sync::Arc;

use crate::support::s3::S3Server;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use pullthrough::config::{MIB, S3Settings};
use pullthrough::oci::{Digest, RepoName, Tag};
use pullthrough::store::fs::FsStore;
use pullthrough::store::{BlobRead, ByteStream, Key, Store, StoreError, keys};
use pullthrough::store::{FillError, VerifyingStream};

/// Part size of the S3 stores under test: S3's minimum, so multipart cases stay small.
const PART: usize = 5 * MIB as usize;
/// A blob of three parts (5 + 5 + 2 MiB and a few bytes).
const MULTIPART_LEN: usize = 2 * PART + 2 * MIB as usize + 7;

enum Backend {
    Fs(tempfile::TempDir),
    S3 { server: S3Server, prefix: String },
}

struct Harness {
    store: Arc<dyn Store>,
    backend: Backend,
}

impl Harness {
    async fn fs() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        Harness {
            store: Arc::new(store),
            backend: Backend::Fs(dir),
        }
    }

    async fn s3(prefix: &str) -> Harness {
        let server = S3Server::start().await;
        let store = server.store(prefix, s3_settings()).await;
        Harness {
            store: Arc::new(store),
            backend: Backend::S3 {
                server,
                prefix: prefix.to_owned(),
            },
        }
    }

    /// Where each stored object physically is, sorted: a path under the root (temporary files
    /// excluded) or an object key in the bucket.
    async fn raw_keys(&self) -> Vec<String> {
        match &self.backend {
            Backend::Fs(dir) => {
                let mut out: Vec<String> = crate::support::files_under(dir.path())
                    .into_iter()
                    .map(|p| {
                        p.strip_prefix(dir.path())
                            .unwrap()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .filter(|p| !p.starts_with(".tmp"))
                    .collect();
                out.sort();
                out
            }
            Backend::S3 { server, .. } => server.object_keys("").await,
        }
    }

    /// The raw location `key` is expected at.
    fn raw_key(&self, key: &Key) -> String {
        match &self.backend {
            Backend::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{key}"),
            _ => key.to_string(),
        }
    }

    /// Nothing half-written anywhere: no temporary file, no multipart upload in progress.
    async fn assert_no_leftovers(&self) {
        match &self.backend {
            Backend::Fs(dir) => {
                assert_eq!(
                    crate::support::files_under(&dir.path().join(".tmp")),
                    Vec::<std::path::PathBuf>::new()
                );
            }
            Backend::S3 { server, .. } => server.assert_no_uploads().await,
        }
    }

    async fn assert_empty(&self, what: &str) {
        assert_eq!(self.raw_keys().await, Vec::<String>::new(), "{what}");
        self.assert_no_leftovers().await;
    }

    /// Requests the S3 server has handled so far (`None` for the filesystem).
    fn s3_calls(&self) -> Option<usize> {
        match &self.backend {
            Backend::Fs(_) => None,
            Backend::S3 { server, .. } => Some(server.calls().len()),
        }
    }

    /// A client that holds no credentials, as a container runtime following a redirect.
    fn plain_client(&self) -> reqwest::Client {
        match &self.backend {
            Backend::Fs(_) => reqwest::Client::new(),
            Backend::S3 { server, .. } => server.plain_client(),
        }
    }

    /// After a cancelled write: waits until the store's clean-up has run.
    async fn settle_cancelled(&self) {
        if let Backend::S3 { server, .. } = &self.backend {
            server
                .wait_for("the abandoned upload to be aborted", |calls| {
                    calls.iter().any(|c| c.op == "AbortMultipartUpload")
                })
                .await;
        }
    }
}

fn s3_settings() -> S3Settings {
    S3Settings {
        part_size: PART as u64,
        parts_in_flight: 2,
        ..S3Settings::default()
    }
}

fn data(seed: u64, len: usize) -> Bytes {
    crate::support::blob_bytes(seed, len)
}

/// `bytes` as a stream of 64 KiB chunks.
fn chunks(bytes: &Bytes) -> Vec<Result<Bytes, FillError>> {
    (0..bytes.len())
        .step_by(64 * 1024)
        .map(|i| Ok(bytes.slice(i..(i + 64 * 1024).min(bytes.len()))))
        .collect()
}

fn stream_of(bytes: &Bytes) -> ByteStream {
    stream::iter(chunks(bytes)).boxed()
}

/// What a fill sends: the bytes through the digest verifier.
fn verified(bytes: &Bytes, expected: &Digest) -> ByteStream {
    VerifyingStream::new(stream_of(bytes), expected.clone(), Some(bytes.len() as u64)).boxed()
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

fn tag_key(repo_name: &str, tag: &str) -> Key {
    keys::tag("local", &repo(repo_name), &Tag::parse(tag).unwrap())
}

fn blob_key(bytes: &[u8]) -> Key {
    keys::blob(&Digest::sha256_of(bytes))
}

async fn read_all(h: &Harness, key: &Key) -> Bytes {
    let read = h.store.read(key, None).await.unwrap().expect("present");
    fetch(h, read).await
}

/// The bytes a client gets from a read: the stream, or the redirect followed without credentials.
async fn fetch(h: &Harness, read: BlobRead) -> Bytes {
    match read {
        BlobRead::Stream { body, .. } => {
            let parts: Vec<Bytes> = body.try_collect().await.unwrap();
            parts.concat().into()
        }
        BlobRead::Redirect(url) => {
            let resp = h.plain_client().get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "following {url}");
            resp.bytes().await.unwrap()
        }
        BlobRead::Unsatisfiable { .. } => panic!("unexpected 416"),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

async fn put_get_head_round_trip(h: Harness) {
    let key = tag_key("team/app", "v1");
    let body = Bytes::from_static(br#"{"digest":"sha256:00"}"#);
    h.store
        .put(&key, body.clone(), "application/json")
        .await
        .unwrap();
    assert_eq!(h.store.get(&key).await.unwrap(), Some(body.clone()));
    assert_eq!(h.store.head(&key).await.unwrap(), Some(body.len() as u64));
    let empty = tag_key("team/app", "empty");
    h.store
        .put(&empty, Bytes::new(), "application/json")
        .await
        .unwrap();
    assert_eq!(h.store.get(&empty).await.unwrap(), Some(Bytes::new()));
    assert_eq!(h.store.head(&empty).await.unwrap(), Some(0));
}

async fn absent_keys_read_as_none(h: Harness) {
    let key = tag_key("team/app", "nope");
    assert_eq!(h.store.get(&key).await.unwrap(), None);
    assert_eq!(h.store.head(&key).await.unwrap(), None);
    assert_eq!(h.store.head(&blob_key(b"nope")).await.unwrap(), None);
    let prefix = keys::tags_prefix("local", &repo("no/such/repo"));
    assert_eq!(h.store.list(&prefix).await.unwrap(), Vec::<String>::new());
}

async fn put_replaces_a_small_object(h: Harness) {
    let key = tag_key("team/app", "latest");
    h.store
        .put(&key, Bytes::from_static(b"first"), "application/json")
        .await
        .unwrap();
    h.store
        .put(&key, Bytes::from_static(b"second"), "application/json")
        .await
        .unwrap();
    assert_eq!(
        h.store.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"second"))
    );
}

async fn list_names_the_objects_directly_under_a_prefix(h: Harness) {
    for (r, t) in [("team/app", "v1"), ("team/app", "v2"), ("team/other", "v3")] {
        h.store
            .put(
                &tag_key(r, t),
                Bytes::from_static(b"{}"),
                "application/json",
            )
            .await
            .unwrap();
    }
    // A marker deeper in the same repository is not a tag.
    let d = Digest::sha256_of(b"x");
    h.store
        .put(
            &keys::marker("local", &repo("team/app"), &d),
            Bytes::from_static(b"{}"),
            "application/json",
        )
        .await
        .unwrap();
    let mut names = h
        .store
        .list(&keys::tags_prefix("local", &repo("team/app")))
        .await
        .unwrap();
    names.sort();
    assert_eq!(names, vec!["v1", "v2"]);
}

async fn list_returns_every_name_past_one_page(h: Harness) {
    // S3 answers at most 1,000 keys per ListObjectsV2 page.
    let store = Arc::clone(&h.store);
    stream::iter(0..1003)
        .for_each_concurrent(16, |i| {
            let store = Arc::clone(&store);
            async move {
                store
                    .put(
                        &tag_key("team/many", &format!("t{i:04}")),
                        Bytes::from_static(b"{}"),
                        "application/json",
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    let names = h
        .store
        .list(&keys::tags_prefix("local", &repo("team/many")))
        .await
        .unwrap();
    assert_eq!(names.len(), 1003);
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), 1003);
}

async fn put_stream_stores_small_and_multipart_blobs_whole(h: Harness) {
    for (seed, len) in [
        (1, 0),
        (2, 1000),
        (3, PART - 1),
        (4, PART),
        (5, MULTIPART_LEN),
    ] {
        let bytes = data(seed, len);
        let key = blob_key(&bytes);
        let d = Digest::sha256_of(&bytes);
        let written = h
            .store
            .put_stream(&key, Some(len as u64), verified(&bytes, &d))
            .await
            .unwrap();
        assert_eq!(written, len as u64);
        assert_eq!(h.store.head(&key).await.unwrap(), Some(len as u64), "{len}");
        assert_eq!(read_all(&h, &key).await, bytes, "{len} bytes");
        assert_eq!(h.store.get(&key).await.unwrap(), Some(bytes));
    }
    // Without a length hint too.
    let bytes = data(6, MULTIPART_LEN);
    let key = blob_key(&bytes);
    let written = h
        .store
        .put_stream(&key, None, stream_of(&bytes))
        .await
        .unwrap();
    assert_eq!(written, bytes.len() as u64);
    assert_eq!(read_all(&h, &key).await, bytes);
    h.assert_no_leftovers().await;
}

async fn put_stream_with_a_digest_mismatch_leaves_nothing(h: Harness) {
    for len in [1000, MULTIPART_LEN] {
        let bytes = data(7, len);
        let claimed = Digest::sha256_of(b"something else");
        let key = keys::blob(&claimed);
        let err = h
            .store
            .put_stream(&key, Some(len as u64), verified(&bytes, &claimed))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Fill(FillError::DigestMismatch { .. })),
            "{err}"
        );
        assert_eq!(h.store.head(&key).await.unwrap(), None);
        h.assert_empty(&format!("{len}-byte mismatch")).await;
    }
}

async fn put_stream_cut_off_leaves_nothing(h: Harness) {
    for len in [100, PART + PART / 2] {
        let bytes = data(8, len);
        let key = blob_key(&bytes);
        let mut items = chunks(&bytes);
        items.push(Err(FillError::Source("connection reset by peer".into())));
        let err = h
            .store
            .put_stream(&key, Some(2 * len as u64), stream::iter(items).boxed())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Fill(FillError::Source(_))),
            "{err}"
        );
        h.assert_empty(&format!("cut off after {len} bytes")).await;
    }
}

async fn a_cancelled_put_stream_leaves_nothing(h: Harness) {
    let chunk = Bytes::from(vec![7u8; PART + 1]);
    // Capacity 1: once the third chunk is accepted, the writer has taken the first two, so it
    // is past its first part (for S3: the upload exists and part 1 is on its way).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, FillError>>(1);
    let store = Arc::clone(&h.store);
    let key = blob_key(b"never finished");
    let k = key.clone();
    let task = tokio::spawn(async move {
        let body = tokio_stream_from(rx);
        store.put_stream(&k, None, body).await
    });
    for _ in 0..3 {
        tx.send(Ok(chunk.clone())).await.unwrap();
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    drop(tx);
    h.settle_cancelled().await;
    assert_eq!(h.store.head(&key).await.unwrap(), None);
    h.assert_empty("cancelled write").await;
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, FillError>>) -> ByteStream {
    stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

async fn writing_an_existing_blob_key_again_succeeds(h: Harness) {
    for len in [1000, MULTIPART_LEN] {
        let bytes = data(9, len);
        let key = blob_key(&bytes);
        let d = Digest::sha256_of(&bytes);
        h.store
            .put(&key, bytes.clone(), "application/octet-stream")
            .await
            .unwrap();
        // The lost race of a second writer: success, same bytes.
        h.store
            .put(&key, bytes.clone(), "application/octet-stream")
            .await
            .unwrap();
        let written = h
            .store
            .put_stream(&key, Some(len as u64), verified(&bytes, &d))
            .await
            .unwrap();
        assert_eq!(written, len as u64);
        assert_eq!(read_all(&h, &key).await, bytes);
    }
    h.assert_no_leftovers().await;
}

async fn keys_land_under_the_configured_prefix(h: Harness) {
    let bytes = data(10, 1234);
    let blob = blob_key(&bytes);
    let tag = tag_key("team/app", "v1");
    h.store
        .put(&blob, bytes.clone(), "application/octet-stream")
        .await
        .unwrap();
    h.store
        .put(&tag, Bytes::from_static(b"{}"), "application/json")
        .await
        .unwrap();
    let mut expected = vec![h.raw_key(&blob), h.raw_key(&tag)];
    expected.sort();
    assert_eq!(h.raw_keys().await, expected);
    assert_eq!(h.store.get(&blob).await.unwrap(), Some(bytes));
}

async fn read_lets_a_plain_client_get_the_exact_bytes(h: Harness) {
    let bytes = data(11, 300_000);
    let key = blob_key(&bytes);
    h.store
        .put_stream(&key, Some(bytes.len() as u64), stream_of(&bytes))
        .await
        .unwrap();
    let before = h.s3_calls();
    let read = h.store.read(&key, None).await.unwrap().expect("present");
    // Presigning is local: no request to S3.
    assert_eq!(h.s3_calls(), before);
    match (&read, &h.backend) {
        (BlobRead::Stream { total, range, .. }, Backend::Fs(_)) => {
            assert_eq!(*total, bytes.len() as u64);
            assert_eq!(*range, None);
        }
        (BlobRead::Redirect(url), Backend::S3 { .. }) => {
            assert!(url.contains("X-Amz-Signature="), "{url}");
            assert!(url.contains("X-Amz-Expires=900"), "{url}");
        }
        _ => panic!("unexpected kind of read for this store"),
    }
    let got = fetch(&h, read).await;
    assert_eq!(crate::support::sha256(&got), crate::support::sha256(&bytes));
    assert_eq!(got, bytes);
}

async fn open_streams_bytes_and_verify_finds_what_does_not_match(h: Harness) {
    let good = data(11, 3000);
    h.store
        .put(&blob_key(&good), good.clone(), "application/octet-stream")
        .await
        .unwrap();
    let mut body = h
        .store
        .open(&blob_key(&good))
        .await
        .unwrap()
        .expect("present");
    let mut got = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, good.to_vec());
    assert!(h.store.open(&blob_key(b"absent")).await.unwrap().is_none());
    let report = pullthrough::store::verify::verify(h.store.as_ref())
        .await
        .unwrap();
    assert_eq!((report.checked, report.bad.len()), (1, 0));

    // A plain put bypasses verification: exactly what verify is there to catch.
    let named_for = data(12, 100);
    h.store
        .put(
            &blob_key(&named_for),
            Bytes::from_static(b"other bytes"),
            "application/octet-stream",
        )
        .await
        .unwrap();
    let report = pullthrough::store::verify::verify(h.store.as_ref())
        .await
        .unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.bad.len(), 1);
    assert_eq!(report.bad[0].0, blob_key(&named_for).to_string());
    assert_eq!(report.bad[0].1, crate::support::sha256(b"other bytes"));
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod fs {
            $( #[tokio::test] async fn $test() { super::$test(super::Harness::fs().await).await } )*
        }
        mod s3 {
            $( #[tokio::test] async fn $test() { super::$test(super::Harness::s3("").await).await } )*
        }
        mod s3_prefixed {
            $( #[tokio::test] async fn $test() {
                super::$test(super::Harness::s3("cache/v1").await).await
            } )*
        }
    };
}

suite!(
    put_get_head_round_trip,
    absent_keys_read_as_none,
    put_replaces_a_small_object,
    list_names_the_objects_directly_under_a_prefix,
    list_returns_every_name_past_one_page,
    put_stream_stores_small_and_multipart_blobs_whole,
    put_stream_with_a_digest_mismatch_leaves_nothing,
    put_stream_cut_off_leaves_nothing,
    a_cancelled_put_stream_leaves_nothing,
    writing_an_existing_blob_key_again_succeeds,
    keys_land_under_the_configured_prefix,
    read_lets_a_plain_client_get_the_exact_bytes,
    open_streams_bytes_and_verify_finds_what_does_not_match,
);

// ---------------------------------------------------------------------------------------------
// What only the S3 store has
// ---------------------------------------------------------------------------------------------

mod s3_only {
    use super::*;
    use s3s::S3ErrorCode;

    #[tokio::test]
    async fn blob_keys_are_written_once_with_if_none_match() {
        let server = S3Server::start().await;
        let store = server.store("", s3_settings()).await;
        for len in [1000, MULTIPART_LEN] {
            let first = data(20, len);
            let key = blob_key(&first);
            store
                .put(&key, first.clone(), "application/octet-stream")
                .await
                .unwrap();
            server.clear_calls();
            // Other bytes under the same key (impossible for a digest, which is the point): the
            // server refuses them, the store takes the refusal as "already there".
            let other = data(21, len);
            store
                .put(&key, other.clone(), "application/octet-stream")
                .await
                .unwrap();
            store
                .put_stream(&key, None, stream_of(&other))
                .await
                .unwrap();
            assert_eq!(store.get(&key).await.unwrap(), Some(first));
            let refused: Vec<_> = server
                .calls()
                .into_iter()
                .filter(|c| c.error.as_deref() == Some("PreconditionFailed"))
                .map(|c| c.op)
                .collect();
            let last = if len > PART {
                "CompleteMultipartUpload"
            } else {
                "PutObject"
            };
            assert_eq!(refused, vec!["PutObject", last]);
            server.assert_no_uploads().await;
        }
        // A tag pointer is not write-once.
        let tag = tag_key("team/app", "v1");
        store
            .put(&tag, Bytes::from_static(b"a"), "application/json")
            .await
            .unwrap();
        store
            .put(&tag, Bytes::from_static(b"b"), "application/json")
            .await
            .unwrap();
        assert_eq!(
            store.get(&tag).await.unwrap(),
            Some(Bytes::from_static(b"b"))
        );
    }

    #[tokio::test]
    async fn slow_down_is_retried_until_it_lets_up() {
        let server = S3Server::start().await;
        let store = server.store("", s3_settings()).await;
        server.add_fault("PutObject", S3ErrorCode::SlowDown, Some(2));
        server.add_fault("GetObject", S3ErrorCode::InternalError, Some(1));
        let key = tag_key("team/app", "v1");
        store
            .put(&key, Bytes::from_static(b"{}"), "application/json")
            .await
            .unwrap();
        assert_eq!(
            store.get(&key).await.unwrap(),
            Some(Bytes::from_static(b"{}"))
        );
        assert_eq!(server.count("PutObject"), 3);
        assert_eq!(server.count("GetObject"), 2);
    }

    #[tokio::test]
    async fn a_persistent_failure_is_a_backend_error_after_the_retries() {
        let server = S3Server::start().await;
        let settings = S3Settings {
            max_attempts: 2,
            ..s3_settings()
        };
        let store = server.store("", settings).await;
        server.add_fault("HeadObject", S3ErrorCode::SlowDown, None);
        let key = blob_key(b"x");
        let err = store.head(&key).await.unwrap_err();
        let StoreError::Backend { key: k, message } = &err else {
            panic!("{err}");
        };
        assert_eq!(k, key.as_str());
        assert!(
            message.contains("HeadObject") && message.contains("503"),
            "{message}"
        );
        assert_eq!(server.count("HeadObject"), 2);
        // And the HTTP edge answers 503 UNAVAILABLE.
        let e = pullthrough::http::error::Error::from(pullthrough::cache::CacheError::from(err));
        assert_eq!(e.status.as_u16(), 503);
        assert_eq!(e.code.as_str(), "UNAVAILABLE");
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload() {
        let server = S3Server::start().await;
        let store = server
            .store(
                "",
                S3Settings {
                    max_attempts: 1,
                    ..s3_settings()
                },
            )
            .await;
        server.add_fault("UploadPart", S3ErrorCode::AccessDenied, Some(1));
        let bytes = data(22, MULTIPART_LEN);
        let key = blob_key(&bytes);
        let err = store
            .put_stream(&key, Some(bytes.len() as u64), stream_of(&bytes))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend { .. }), "{err}");
        assert_eq!(server.object_keys("").await, Vec::<String>::new());
        assert_eq!(server.count("AbortMultipartUpload"), 1);
        server.assert_no_uploads().await;
    }

    #[tokio::test]
    async fn parts_in_flight_are_bounded() {
        let server = S3Server::start().await;
        let store = server.store("", s3_settings()).await; // 5 MiB parts, 2 in flight
        let bytes = data(23, 6 * PART + 1);
        let key = blob_key(&bytes);
        store
            .put_stream(&key, Some(bytes.len() as u64), stream_of(&bytes))
            .await
            .unwrap();
        assert_eq!(server.count("UploadPart"), 7);
        assert!(server.parts_peak() <= 2, "peak {}", server.parts_peak());
        assert_eq!(store.get(&key).await.unwrap(), Some(bytes));
    }
}
