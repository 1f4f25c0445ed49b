//! The verifying stream every blob is stored through: bytes pass as they come, hashed on the
//! way, and the stream ends with an error instead of its end when they do not hash to the
//! expected digest or do not have the expected length. Every store treats an error item as
//! "abort", so unverified bytes are never published; [`FillError`] is the store's word for a
//! stream it refused.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::oci::Digest;
use crate::oci::digest::Hasher;

/// Why a stream of blob bytes could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("reading from the source failed: {0}")]
    Source(String),
    #[error("digest mismatch: expected {expected}, received bytes hash to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("length mismatch for {digest}: expected {expected} bytes, received {actual}")]
    LengthMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

/// Wraps a byte stream, hashing as it goes. At the end of the stream it yields one final
/// `Err` instead of ending when the bytes do not hash to the expected digest or do not have the
/// expected length, so a store writing the stream never publishes unverified bytes: every store
/// treats any `Err` as "abort".
pub struct VerifyingStream<S> {
    inner: S,
    expected: Digest,
    expected_len: Option<u64>,
    hasher: Option<Hasher>,
    seen: u64,
}

impl<S> VerifyingStream<S> {
    pub fn new(inner: S, expected: Digest, expected_len: Option<u64>) -> Self {
        let hasher = Some(Hasher::new(expected.algorithm()));
        VerifyingStream {
            inner,
            expected,
            expected_len,
            hasher,
            seen: 0,
        }
    }
}

impl<S> Stream for VerifyingStream<S>
where
    S: Stream<Item = Result<Bytes, FillError>> + Unpin,
{
    type Item = Result<Bytes, FillError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                hasher.update(&chunk);
                this.seen += chunk.len() as u64;
                if let Some(expected) = this.expected_len
                    && this.seen > expected
                {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(FillError::LengthMismatch {
                        digest: this.expected.clone(),
                        expected,
                        actual: this.seen,
                    })));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let actual = this.hasher.take().map(Hasher::finish);
                if let Some(expected) = this.expected_len
                    && this.seen != expected
                {
                    return Poll::Ready(Some(Err(FillError::LengthMismatch {
                        digest: this.expected.clone(),
                        expected,
                        actual: this.seen,
                    })));
                }
                match actual {
                    Some(actual) if actual != this.expected => {
                        Poll::Ready(Some(Err(FillError::DigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                        })))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    async fn run(chunks: Vec<&'static [u8]>, expected: Digest, len: Option<u64>) -> Vec<String> {
        let s = stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))));
        VerifyingStream::new(s, expected, len)
            .map(|r| match r {
                Ok(b) => format!("ok:{}", b.len()),
                Err(e) => format!("err:{e}"),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn verifying_stream_passes_matching_bytes() {
        let d = Digest::sha256_of(b"hello world");
        let out = run(vec![b"hello ", b"world"], d, Some(11)).await;
        assert_eq!(out, vec!["ok:6", "ok:5"]);
    }

    #[tokio::test]
    async fn verifying_stream_fails_on_digest_mismatch() {
        let d = Digest::sha256_of(b"hello world");
        let out = run(vec![b"hello ", b"wOrld"], d, None).await;
        assert_eq!(out.len(), 3);
        assert!(out[2].starts_with("err:digest mismatch"), "{out:?}");
    }

    #[tokio::test]
    async fn verifying_stream_fails_on_short_and_long_bodies() {
        let d = Digest::sha256_of(b"hello world");
        let out = run(vec![b"hello "], d.clone(), Some(11)).await;
        assert!(out.last().unwrap().starts_with("err:length mismatch"));
        let out = run(vec![b"hello ", b"world!!"], d, Some(11)).await;
        assert!(out.last().unwrap().starts_with("err:length mismatch"));
    }
}
