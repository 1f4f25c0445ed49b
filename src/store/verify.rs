//! `pullthrough verify`: reads every object under `blobs/` and checks that its bytes hash to the
//! digest its key names (for a signed schema1 manifest: its JWS payload). The store's invariant
//! is that this never finds anything; the command exists to prove it after a crash, a disk fault
//! or a hand edit.

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
    /// Names under `blobs/` that are not digests at all.
    pub strange: Vec<String>,
}

pub async fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
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
