//! Manifests: bytes are sacred.
//!
//! A manifest is stored and served exactly as the upstream sent it, under the sha256 of those
//! bytes. Tags are pointers to digests, trusted for the tag TTL, then revalidated with one
//! upstream HEAD; when the upstream fails, the last known answer is served with a `Warning`.

use bytes::Bytes;

use super::{Cache, Marker, TagPointer, Target, inline_copy, verified_inline};
use super::{CacheError, Wanted};
use crate::metrics::{Lookup, LookupKind, cache_lookup};
use crate::oci::digest::Algorithm;
use crate::oci::media::{self, ClientAccept};
use crate::oci::schema1;
use crate::oci::{Digest, Reference, Tag};
use crate::store::keys;
use crate::upstream::UpstreamError;

/// A manifest ready to send.
#[derive(Clone, Debug)]
pub struct ManifestAnswer {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
    /// Set when served from cache because the upstream could not be asked.
    pub warning: Option<String>,
}

impl Cache {
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: &ClientAccept,
    ) -> Result<ManifestAnswer, CacheError> {
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(target, d, accept).await,
            Reference::Tag(t) if accept.wants_schema1_only() => {
                self.schema1_passthrough(target, t, accept).await
            }
            Reference::Tag(t) => {
                let answer = self.manifest_by_tag(target, t, accept).await?;
                self.negotiate(target, answer, accept).await
            }
        }
    }

    async fn manifest_by_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &ClientAccept,
    ) -> Result<ManifestAnswer, CacheError> {
        let key = keys::tag(target.alias(), &target.repo, tag);
        let miss = || cache_lookup(LookupKind::Tag, Lookup::Miss);
        let Some((pointer, seen_at)) = self.load_pointer(&key).await? else {
            miss();
            return self.fetch_tag(target, tag, accept).await;
        };
        let Ok(digest) = Digest::parse(&pointer.digest) else {
            miss();
            return self.fetch_tag(target, tag, accept).await;
        };
        if self.is_fresh(target, &pointer) {
            return match self
                .answer_from_pointer(target, &key, pointer, seen_at, &digest)
                .await?
            {
                Some(a) => {
                    cache_lookup(LookupKind::Tag, Lookup::Hit);
                    Ok(a)
                }
                None => {
                    miss();
                    self.fetch_tag(target, tag, accept).await
                }
            };
        }
        // Stale: one HEAD decides whether the cached digest is still current.
        let head = target
            .upstream
            .head_manifest(&target.repo, tag.as_str(), &accept.upstream_header())
            .await;
        match head {
            Ok(info) if info.digest.as_ref() == Some(&digest) => {
                let Some(answer) = self.cached_manifest(target, &digest).await? else {
                    miss();
                    return self.fetch_tag(target, tag, accept).await;
                };
                cache_lookup(LookupKind::Tag, Lookup::Revalidated);
                let now = self.clock.now_ms();
                let refreshed = TagPointer {
                    checked_at: now,
                    ..pointer
                };
                self.write_pointer(&key, refreshed, now).await?;
                Ok(answer)
            }
            Ok(_) => match self.fetch_tag(target, tag, accept).await {
                Ok(a) => {
                    miss();
                    Ok(a)
                }
                Err(e) if e.is_transient() => self.stale(target, &digest, e).await,
                Err(e) => Err(e),
            },
            Err(e @ UpstreamError::NotFound { .. }) => {
                miss();
                Err(CacheError::upstream(e, Wanted::Manifest))
            }
            Err(e) => {
                self.stale(target, &digest, CacheError::upstream(e, Wanted::Manifest))
                    .await
            }
        }
    }

    /// A tag pointer, from memory or the store, with when it was last seen in the store.
    async fn load_pointer(
        &self,
        key: &crate::store::Key,
    ) -> Result<Option<(TagPointer, u64)>, CacheError> {
        let now = self.clock.now_ms();
        if let Some(seen) = self.tags.get(key.as_str(), now) {
            return Ok(Some(seen));
        }
        let pointer = self.read_json::<TagPointer>(key).await?;
        if let Some(p) = &pointer {
            self.knows_pulled(key, p.last_pulled);
            self.tags.insert(key.as_str(), p.clone(), now);
        }
        Ok(pointer.map(|p| (p, now)))
    }

    fn is_fresh(&self, target: &Target, pointer: &TagPointer) -> bool {
        let age = self.clock.now_ms().saturating_sub(pointer.checked_at);
        u128::from(age) < self.tag_ttl(target).as_millis()
    }

    /// The manifest a fresh pointer (seen in the store at `seen_at`) names: its inline copy, or
    /// the cached manifest; `None` when neither is available (then the tag is fetched again).
    /// Notes the pointer as pulled.
    async fn answer_from_pointer(
        &self,
        target: &Target,
        key: &crate::store::Key,
        pointer: TagPointer,
        seen_at: u64,
        digest: &Digest,
    ) -> Result<Option<ManifestAnswer>, CacheError> {
        if let Some(bytes) = verified_inline(pointer.manifest.as_ref(), digest) {
            self.pulled_pointer(target, key, pointer.last_pulled);
            // The pointer is written after the marker, so the repository held this digest when
            // the pointer was seen.
            self.manifests.insert(
                &target.scoped_name(),
                digest,
                bytes.clone(),
                &pointer.media_type,
                seen_at,
            );
            return Ok(Some(ManifestAnswer {
                bytes,
                media_type: pointer.media_type,
                digest: digest.clone(),
                warning: None,
            }));
        }
        let answer = self.cached_manifest(target, digest).await?;
        if answer.is_some() {
            self.pulled_pointer(target, key, pointer.last_pulled);
        }
        Ok(answer)
    }

    /// The cached manifest with a `Warning`, or the upstream's error when nothing is cached.
    async fn stale(
        &self,
        target: &Target,
        digest: &Digest,
        upstream_err: CacheError,
    ) -> Result<ManifestAnswer, CacheError> {
        match self.cached_manifest(target, digest).await? {
            Some(mut a) => {
                cache_lookup(LookupKind::Tag, Lookup::Stale);
                crate::metrics::stale_served(target.alias());
                tracing::warn!(repo = %target.scoped_name(), error = %upstream_err, "serving stale tag");
                a.warning = Some(format!("299 - \"stale: {} unreachable\"", target.alias()));
                Ok(a)
            }
            None => {
                cache_lookup(LookupKind::Tag, Lookup::Miss);
                Err(upstream_err)
            }
        }
    }

    /// Fetches a tag upstream (one fetch shared by concurrent callers), stores the manifest and
    /// moves the tag pointer.
    async fn fetch_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &ClientAccept,
    ) -> Result<ManifestAnswer, CacheError> {
        let flight_key = format!("{}:{tag}", target.scoped_name());
        let this = self.handle();
        let target = target.clone();
        let tag = tag.clone();
        let upstream_accept = accept.upstream_header();
        self.manifest_flights
            .run(flight_key, async move {
                // A flight that ended just before this one started may have moved the pointer:
                // then there is nothing to fetch (this closes the gap between a caller's pointer
                // read and its flight).
                let key = keys::tag(target.alias(), &target.repo, &tag);
                if let Some((p, seen_at)) = this.load_pointer(&key).await?
                    && this.is_fresh(&target, &p)
                    && let Ok(d) = Digest::parse(&p.digest)
                    && let Some(a) = this
                        .answer_from_pointer(&target, &key, p, seen_at, &d)
                        .await?
                {
                    return Ok(a);
                }
                let answer = this
                    .fetch_and_store(&target, tag.as_str(), &upstream_accept, None)
                    .await?;
                // Asked with every modern type, the upstream answered this document: it is the
                // tag's, schema1 included (an old image with nothing else; its digest is stable).
                let now = this.clock.now_ms();
                let pointer = TagPointer {
                    digest: answer.digest.to_string(),
                    media_type: answer.media_type.clone(),
                    size: answer.bytes.len() as u64,
                    checked_at: now,
                    manifest: inline_copy(&answer.bytes),
                    last_pulled: None, // stamped by write_pointer
                };
                this.write_pointer(&key, pointer, now).await?;
                Ok(answer)
            })
            .await
    }

    async fn manifest_by_digest(
        &self,
        target: &Target,
        digest: &Digest,
        accept: &ClientAccept,
    ) -> Result<ManifestAnswer, CacheError> {
        if let Some(a) = self.cached_manifest(target, digest).await? {
            cache_lookup(LookupKind::Manifest, Lookup::Hit);
            return Ok(a);
        }
        cache_lookup(LookupKind::Manifest, Lookup::Miss);
        let flight_key = target.scoped_digest(digest);
        let this = self.handle();
        let target = target.clone();
        let digest = digest.clone();
        let upstream_accept = if accept.wants_schema1_only() {
            accept.forwarded_header()
        } else {
            accept.upstream_header()
        };
        self.manifest_flights
            .run(flight_key, async move {
                if let Some(a) = this.cached_manifest(&target, &digest).await? {
                    return Ok(a);
                }
                this.fetch_and_store(
                    &target,
                    &digest.to_string(),
                    &upstream_accept,
                    Some(&digest),
                )
                .await
            })
            .await
    }

    /// A manifest this repository is known to hold (its marker exists): from memory, else from
    /// the marker's inline copy (one store read), else from `blobs/` (two). Bytes held only for
    /// other repositories are not served here: without a marker the caller fetches by digest, so
    /// one repository's content is never served under another's name unasked.
    async fn cached_manifest(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<Option<ManifestAnswer>, CacheError> {
        let scoped = target.scoped_name();
        let now = self.clock.now_ms();
        if let Some((bytes, media_type)) = self.manifests.get(&scoped, digest, now) {
            self.pulled_marker(target, digest, None);
            return Ok(Some(ManifestAnswer {
                bytes,
                media_type,
                digest: digest.clone(),
                warning: None,
            }));
        }
        let Some(marker) = self.read_marker(target, digest).await? else {
            return Ok(None);
        };
        // Decided from the marker alone, before anything is read: a layer's digest asked for
        // here must not load the layer. Only manifests get a marker with a media type; a blob
        // marker small enough to be a manifest (one fetched through the blobs endpoint) leaves
        // the answer to the upstream's fetch by digest.
        let limit = self.config.max_manifest_size;
        if marker.size > limit {
            return Err(not_a_manifest(digest, marker.size, limit));
        }
        let Some(media_type) = marker.media_type else {
            return Ok(None);
        };
        let bytes = match verified_inline(marker.manifest.as_ref(), digest) {
            Some(b) => b,
            None => match self.store.get(&keys::blob(digest)).await? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        self.manifests
            .insert(&scoped, digest, bytes.clone(), &media_type, now);
        Ok(Some(ManifestAnswer {
            bytes,
            media_type,
            digest: digest.clone(),
            warning: None,
        }))
    }

    /// GETs a manifest upstream, verifies it, and stores object then marker (in that order, so a
    /// marker never names a missing object). `expected` is set for by-digest fetches.
    async fn fetch_and_store(
        &self,
        target: &Target,
        reference: &str,
        accept: &str,
        expected: Option<&Digest>,
    ) -> Result<ManifestAnswer, CacheError> {
        let fetched = target
            .upstream
            .get_manifest(
                &target.repo,
                reference,
                accept,
                self.config.max_manifest_size,
            )
            .await
            .map_err(|e| CacheError::upstream(e, Wanted::Manifest))?;
        let media_type =
            media::manifest_media_type(fetched.content_type.as_deref(), &fetched.bytes);
        // A manifest's digest is the hash of its bytes, or for signed schema1 of its JWS payload
        // (its signatures change on every GET; the payload and its digest do not).
        let digest_of = |algorithm| {
            schema1::manifest_digest(&fetched.bytes, algorithm).ok_or_else(|| {
                CacheError::BadUpstream(format!(
                    "{} sent a signed schema1 manifest whose JWS payload cannot be recovered; nothing stored",
                    target.alias()
                ))
            })
        };
        let digest = match expected {
            Some(d) => {
                let actual = digest_of(d.algorithm())?;
                if &actual != d {
                    return Err(mismatch(target, d, &actual));
                }
                d.clone()
            }
            None => digest_of(Algorithm::Sha256)?,
        };
        // The upstream's own claim must match too.
        if let Some(header) = fetched.digest_header.as_deref().map(str::trim) {
            let claimed = Digest::parse(header).map_err(|_| {
                CacheError::BadUpstream(format!(
                    "{} sent an invalid Docker-Content-Digest; nothing stored",
                    target.alias()
                ))
            })?;
            let actual = digest_of(claimed.algorithm())?;
            if claimed != actual {
                return Err(mismatch(target, &claimed, &actual));
            }
        }
        let blob_key = keys::blob(&digest);
        if self.store.head(&blob_key).await?.is_none() {
            self.store
                .put(&blob_key, fetched.bytes.clone(), &media_type)
                .await?;
        }
        let marker = Marker {
            media_type: Some(media_type.clone()),
            size: fetched.bytes.len() as u64,
            manifest: inline_copy(&fetched.bytes),
            last_pulled: None, // stamped by write_marker
        };
        self.write_marker(target, &digest, marker).await?;
        self.manifests.insert(
            &target.scoped_name(),
            &digest,
            fetched.bytes.clone(),
            &media_type,
            self.clock.now_ms(),
        );
        Ok(ManifestAnswer {
            bytes: fetched.bytes,
            media_type,
            digest,
            warning: None,
        })
    }

    /// A client asking only for schema1: its Accept is forwarded as is and the answer passed
    /// through, cached by digest only (no tag pointer moves).
    async fn schema1_passthrough(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &ClientAccept,
    ) -> Result<ManifestAnswer, CacheError> {
        cache_lookup(LookupKind::Tag, Lookup::Miss);
        self.fetch_and_store(target, tag.as_str(), &accept.forwarded_header(), None)
            .await
    }

    /// Answers as the upstream would for this client's `Accept`: the stored document when
    /// accepted; for a list the client cannot take, its linux/amd64 child if that is acceptable;
    /// otherwise 404 with the reason. Never re-serialises.
    async fn negotiate(
        &self,
        target: &Target,
        answer: ManifestAnswer,
        accept: &ClientAccept,
    ) -> Result<ManifestAnswer, CacheError> {
        if accept.accepts(&answer.media_type) {
            return Ok(answer);
        }
        if media::is_list(&answer.media_type) {
            if let Some((child, _)) = media::default_platform_child(&answer.bytes, accept) {
                let mut child = self.manifest_by_digest(target, &child, accept).await?;
                child.warning = answer.warning;
                return Ok(child);
            }
            let kind = if answer.media_type == media::OCI_INDEX {
                "an OCI index"
            } else {
                "a manifest list"
            };
            return Err(CacheError::ManifestUnknown(format!(
                "{kind} found, but the Accept header does not include {} and no linux/amd64 manifest of an accepted type is listed",
                answer.media_type
            )));
        }
        Err(CacheError::ManifestUnknown(format!(
            "manifest of type {} found, but the Accept header does not include it",
            answer.media_type
        )))
    }
}

fn not_a_manifest(digest: &Digest, size: u64, limit: u64) -> CacheError {
    CacheError::ManifestUnknown(format!(
        "{digest} is not a manifest: it is {size} bytes, over the {limit}-byte manifest limit"
    ))
}

fn mismatch(target: &Target, expected: &Digest, actual: &Digest) -> CacheError {
    CacheError::BadUpstream(format!(
        "{} sent a manifest whose bytes hash to {actual}, not {expected}; nothing stored",
        target.alias()
    ))
}
