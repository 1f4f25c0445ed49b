//! Manifest digests (sha256 of the bytes; of the JWS payload for signed schema1) and the
//! manifest endpoint, with Docker Hub's Accept quirk.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::reply::Reply;
use super::{DOCKER_LIST, DOCKER_SCHEMA1_SIGNED, OCI_INDEX, ReqInfo, Shared};

/// `"sha256:<hex>"` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest distribution gives a manifest: sha256 of its bytes, except for signed schema1,
/// whose digest is that of its JWS payload (the first `formatLength` bytes of the document
/// followed by `formatTail`, both from the first signature's protected header).
pub fn manifest_digest(media_type: &str, bytes: &[u8]) -> String {
    if media_type == DOCKER_SCHEMA1_SIGNED
        && let Some(payload) = schema1_payload(bytes)
    {
        return sha256_digest(&payload);
    }
    sha256_digest(bytes)
}

pub(super) fn schema1_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let protected = b64
        .decode(doc["signatures"][0]["protected"].as_str()?)
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&protected).ok()?;
    let length = usize::try_from(header["formatLength"].as_u64()?).ok()?;
    let tail = b64.decode(header["formatTail"].as_str()?).ok()?;
    Some([bytes.get(..length)?, &tail].concat())
}

/// `doc` with its first signature value replaced by one derived from `n`: what distribution
/// does on every GET of a signed schema1 manifest (new bytes, same payload and digest).
pub fn resign_schema1(doc: &[u8], n: u64) -> Bytes {
    let text = String::from_utf8_lossy(doc);
    let Some(start) = text.find("\"signature\": \"").map(|i| i + 14) else {
        return Bytes::copy_from_slice(doc);
    };
    let Some(len) = text[start..].find('"') else {
        return Bytes::copy_from_slice(doc);
    };
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(format!("signature {n}").as_bytes()));
    Bytes::from(format!(
        "{}{signature}{}",
        &text[..start],
        &text[start + len..]
    ))
}

pub(super) fn manifest(shared: &Shared, req: &ReqInfo, repo: &str, reference: &str) -> Reply {
    let found = {
        let st = shared.lock();
        st.repos.get(repo).and_then(|r| {
            let digest = if reference.contains(':') {
                reference.to_string()
            } else {
                r.tags.get(reference)?.clone()
            };
            let (mt, bytes) = r.manifests.get(&digest)?;
            Some((digest, mt.clone(), bytes.clone()))
        })
    };
    let Some((digest, media_type, bytes)) = found else {
        return Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    if shared.opts.hub_accept_quirk && req.accept_present {
        let accepted = req.accepts.iter().any(|a| a == &media_type);
        if !accepted && media_type == OCI_INDEX {
            return Reply::error(
                404,
                "MANIFEST_UNKNOWN",
                "OCI index found, but accept header does not support OCI indexes",
            );
        }
        if !accepted && media_type == DOCKER_LIST {
            return Reply::error(
                404,
                "MANIFEST_UNKNOWN",
                "manifest list found, but accept header does not support manifest lists",
            );
        }
    }
    let bytes = if shared.opts.resign_schema1 && media_type == DOCKER_SCHEMA1_SIGNED {
        resign_schema1(&bytes, shared.token_counter.fetch_add(1, Ordering::Relaxed))
    } else {
        bytes
    };
    Reply::new(200)
        .header("content-type", media_type)
        .header("docker-content-digest", digest)
        .body(bytes)
}
