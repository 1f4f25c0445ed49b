//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and a streaming verifier.
//!
//! A [`Digest`] exists only if it is well formed, so code holding one never re-checks it, and its
//! hex part is safe to use in a store key or an upstream URL.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest as _, Sha256, Sha512};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest: `sha256:` + 64 lowercase hex digits, or `sha512:` + 128.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
pub struct InvalidDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, InvalidDigest> {
        let invalid = || InvalidDigest(truncate_for_message(s));
        let (alg, hex) = s.split_once(':').ok_or_else(invalid)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(invalid()),
        };
        let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(lower_hex) {
            return Err(invalid());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The sha256 digest of `bytes`: the identity of a manifest is the hash of its exact bytes.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` with this digest's algorithm.
    pub fn of_same_algorithm(&self, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(self.algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// Incremental hashing with the algorithm of an expected digest.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

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

pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_valid_sha256_and_sha512() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        let long = format!("sha512:{}", "a".repeat(128));
        assert_eq!(Digest::parse(&long).unwrap().to_string(), long);
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}", "a".repeat(65)),
            &format!("md5:{}", "a".repeat(32)),
            &format!("sha512:{}", "a".repeat(64)),
            "sha256:../../etc/passwd",
            &format!("sha256:{}/..", "a".repeat(61)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sha256_of_empty_is_the_well_known_value() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY_SHA256);
    }

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
