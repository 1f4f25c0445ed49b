//! `pullthrough verify`: reads every object under `blobs/` and checks that its bytes hash to the
//! digest its key names (for a signed schema1 manifest: its JWS payload), and that no reference
//! dangles: every tag pointer's digest has a marker in its repository, every marker's digest an
//! object under `blobs/` (the write order object → marker → pointer, and gc's reverse delete
//! order, keep it so at every instant). The store's invariant is that this never finds anything;
//! the command exists to prove it after a crash, a disk fault, an interrupted gc or a hand edit.

use std::collections::HashSet;

use futures_util::StreamExt;

use crate::oci::Digest;
use crate::oci::digest::{Algorithm, Hasher};
use crate::store::{Store, StoreError, keys};

/// Largest object checked as a signed schema1 manifest when its bytes do not hash to its name.
const SCHEMA1_LIMIT: usize = 4 * 1024 * 1024;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub checked: u64,
    pub bytes: u64,
    /// Keys whose bytes do not match their name, with what they hash to.
    pub bad: Vec<(String, String)>,
    /// Names under `blobs/` that are not digests at all, and tag pointers that do not name one.
    pub strange: Vec<String>,
    /// Tag pointers and markers checked for dangling references.
    pub references: u64,
    /// References to something absent: (the referring key, the missing key).
    pub dangling: Vec<(String, String)>,
}

/// Reads of pointers (and re-checks) in flight at once.
const READS_IN_FLIGHT: usize = 16;

pub async fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    check_references(store, &mut report).await?;
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let prefix = keys::blobs_prefix(alg);
        let mut names = store.list(&prefix).await?;
        names.sort();
        for name in names {
            let Ok(digest) = Digest::parse(&format!("{}:{name}", alg.as_str())) else {
                report.strange.push(format!("{prefix}/{name}"));
                continue;
            };
            let key = keys::blob(&digest);
            let Some(mut body) = store.open(&key).await? else {
                continue; // removed meanwhile
            };
            let mut hasher = Hasher::new(alg);
            // Small objects are kept: a signed schema1 manifest is named by its JWS payload.
            let mut small = Some(Vec::new());
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|source| StoreError::Io {
                    key: key.to_string(),
                    source,
                })?;
                report.bytes += chunk.len() as u64;
                hasher.update(&chunk);
                small = small.filter(|b| b.len() + chunk.len() <= SCHEMA1_LIMIT);
                if let Some(b) = small.as_mut() {
                    b.extend_from_slice(&chunk);
                }
            }
            report.checked += 1;
            let actual = hasher.finish();
            let signed_schema1 = || {
                small
                    .as_deref()
                    .is_some_and(|b| crate::oci::schema1::matches(b, &digest))
            };
            if actual != digest && !signed_schema1() {
                report.bad.push((key.to_string(), actual.to_string()));
            }
        }
    }
    Ok(report)
}

/// The tag pointer's one field this check needs.
#[derive(serde::Deserialize)]
struct PointerDigest {
    digest: String,
}

/// Finds dangling references. The repositories are walked before the blobs: a marker seen
/// implies its object was written before it, so the later blob walk sees that object unless it
/// was removed since. Anything missing from a walk is asked for again before it is reported,
/// so writes racing the walks (a live server) are not mistaken for damage.
async fn check_references(store: &dyn Store, report: &mut Report) -> Result<(), StoreError> {
    let docs: Vec<keys::Parsed> = store
        .walk(keys::REPOS_WALK)
        .await?
        .into_iter()
        .map(|o| keys::parse(&o.key))
        .collect();
    let blobs: HashSet<String> = store
        .walk(keys::BLOBS_WALK)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let markers: HashSet<String> = docs
        .iter()
        .filter(|p| matches!(p, keys::Parsed::Marker { .. }))
        .filter_map(|p| Some(p.key()?.to_string()))
        .collect();

    // Each check: Ok(None) fine, Ok(Some(Ok((from, missing)))) dangling, Some(Err(key)) strange.
    let checks = docs.iter().map(|doc| {
        let (markers, blobs) = (&markers, &blobs);
        async move {
            let (from, missing) = match doc {
                keys::Parsed::Tag {
                    upstream,
                    repo,
                    tag,
                } => {
                    let from = keys::tag(upstream, repo, tag);
                    let Some(bytes) = store.get(&from).await? else {
                        return Ok(None); // removed meanwhile
                    };
                    let digest = serde_json::from_slice::<PointerDigest>(&bytes)
                        .ok()
                        .and_then(|p| Digest::parse(&p.digest).ok());
                    let Some(digest) = digest else {
                        return Ok(Some(Err(from.to_string())));
                    };
                    let missing = keys::marker(upstream, repo, &digest);
                    if markers.contains(missing.as_str()) {
                        return Ok(None);
                    }
                    (from, missing)
                }
                keys::Parsed::Marker { digest, .. } => {
                    let missing = keys::blob(digest);
                    if blobs.contains(missing.as_str()) {
                        return Ok(None);
                    }
                    let Some(from) = doc.key() else {
                        return Ok(None);
                    };
                    (from, missing)
                }
                _ => return Ok(None),
            };
            // Written since the walk, or the referring document removed since?
            if store.head(&missing).await?.is_some() || store.head(&from).await?.is_none() {
                return Ok(None);
            }
            Ok::<_, StoreError>(Some(Ok((from.to_string(), missing.to_string()))))
        }
    });
    let found: Vec<_> = futures_util::stream::iter(checks)
        .buffer_unordered(READS_IN_FLIGHT)
        .collect()
        .await;
    report.references = docs
        .iter()
        .filter(|d| matches!(d, keys::Parsed::Tag { .. } | keys::Parsed::Marker { .. }))
        .count() as u64;
    for f in found {
        match f? {
            None => {}
            Some(Ok(dangling)) => report.dangling.push(dangling),
            Some(Err(strange)) => report.strange.push(strange),
        }
    }
    report.dangling.sort();
    Ok(())
}
