//! Signed Docker schema1 manifests (`application/vnd.docker.distribution.manifest.v1+prettyjws`).
//!
//! Their digest is not the hash of the bytes sent but of the JWS payload: the document with its
//! `signatures` member removed, rebuilt as libtrust's `ParsePrettySignature` does from the
//! `formatLength` and `formatTail` of the protected headers. Registries (distribution stores them
//! under it and re-signs on every GET, so the bytes differ each time) and clients
//! (containers/image `manifest.Digest`) use that digest.

use base64::Engine as _;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::digest::{Algorithm, Digest, Hasher};
use super::media::{DOCKER_LIST, DOCKER_MANIFEST};

/// Whether `doc` is a signed schema1 manifest, by the rule containers/image applies
/// (`GuessMIMEType`): not declaring a schema2 type, `schemaVersion` 1, a non-null `signatures`.
pub fn is_signed(doc: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<i64>,
        #[serde(default)]
        signatures: Option<IgnoredAny>,
    }
    // Cheap test first: almost every manifest is not one.
    if !doc.windows(12).any(|w| w == b"\"signatures\"") {
        return false;
    }
    let Ok(meta) = serde_json::from_slice::<Meta>(doc) else {
        return false;
    };
    let schema2 = matches!(
        meta.media_type.as_deref(),
        Some(DOCKER_MANIFEST | DOCKER_LIST)
    );
    !schema2 && meta.schema_version == Some(1) && meta.signatures.is_some()
}

/// The JWS payload of a signed schema1 document: its first `formatLength` bytes followed by
/// `formatTail`, both from the protected headers (which must all agree). `None` unless the
/// document is exactly that payload with one `"signatures"` member added at its end: then what a
/// client reads from the whole document is what the digest covers.
pub fn payload(doc: &[u8]) -> Option<Vec<u8>> {
    let top: serde_json::Map<String, Value> = serde_json::from_slice(doc).ok()?;
    let signatures = top.get("signatures")?.as_array()?;
    let mut format: Option<(usize, Vec<u8>)> = None;
    for s in signatures {
        let protected = base64url(s.get("protected")?.as_str()?)?;
        let header: serde_json::Map<String, Value> = serde_json::from_slice(&protected).ok()?;
        let length = usize::try_from(header.get("formatLength")?.as_u64()?).ok()?;
        let tail = base64url(header.get("formatTail")?.as_str()?)?;
        match &format {
            None => format = Some((length, tail)),
            Some(f) if f.0 == length && f.1 == tail => {}
            Some(_) => return None,
        }
    }
    let (length, tail) = format?;
    if length > doc.len() || !is_closing_brace(&tail) || !is_signatures_member(&doc[length..]) {
        return None;
    }
    let mut payload = Vec::with_capacity(length + tail.len());
    payload.extend_from_slice(&doc[..length]);
    payload.extend_from_slice(&tail);
    serde_json::from_slice::<IgnoredAny>(&payload).ok()?;
    Some(payload)
}

/// The digest registries and clients give a manifest: the hash of its bytes, or for a signed
/// schema1 document the hash of its JWS payload. `None` for a signed schema1 document whose
/// payload cannot be recovered (it has no digest anyone agrees on).
pub fn manifest_digest(doc: &[u8], algorithm: Algorithm) -> Option<Digest> {
    let hash = |bytes: &[u8]| {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    };
    if is_signed(doc) {
        payload(doc).map(|p| hash(&p))
    } else {
        Some(hash(doc))
    }
}

/// Whether `doc` is the manifest `digest` names (see [`manifest_digest`]).
pub fn matches(doc: &[u8], digest: &Digest) -> bool {
    manifest_digest(doc, digest.algorithm()).as_ref() == Some(digest)
}

/// libtrust's `joseBase64UrlDecode`: base64url, padding optional.
fn base64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &b[n..]
}

/// What libtrust puts in `formatTail`: the document's closing brace with the whitespace around it.
fn is_closing_brace(tail: &[u8]) -> bool {
    skip_ws(tail)
        .strip_prefix(b"}")
        .is_some_and(|rest| skip_ws(rest).is_empty())
}

/// `, "signatures": <one JSON value> }` with any JSON whitespace, and nothing after it.
fn is_signatures_member(rest: &[u8]) -> bool {
    let value = skip_ws(rest)
        .strip_prefix(b",")
        .map(skip_ws)
        .and_then(|r| r.strip_prefix(b"\"signatures\""))
        .map(skip_ws)
        .and_then(|r| r.strip_prefix(b":"))
        .map(skip_ws);
    let Some(value) = value else {
        return false;
    };
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<IgnoredAny>();
    if !matches!(values.next(), Some(Ok(_))) {
        return false;
    }
    is_closing_brace(&value[values.byte_offset()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containers/image `internal/manifest/testdata/v2s1.manifest.json`, byte for byte.
    const SIGNED: &[u8] =
        include_bytes!("../../tests/fixtures/realworld-manifests/real/ci-v2s1-signed.json");

    /// The digest containers/image's own tests give that document (`TestDigest`), and the
    /// payload size its descriptors record.
    const SIGNED_DIGEST: &str =
        "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000";

    #[test]
    fn the_digest_of_a_signed_schema1_is_that_of_its_payload() {
        assert!(is_signed(SIGNED));
        let p = payload(SIGNED).expect("payload");
        assert_eq!(p.len(), 5480);
        assert!(p.ends_with(b"\n}"));
        assert!(!p.windows(12).any(|w| w == b"\"signatures\""));
        let d = manifest_digest(SIGNED, Algorithm::Sha256).unwrap();
        assert_eq!(d.to_string(), SIGNED_DIGEST);
        assert!(matches(SIGNED, &Digest::parse(SIGNED_DIGEST).unwrap()));
        // The bytes' own hash is not its digest.
        assert!(!matches(SIGNED, &Digest::sha256_of(SIGNED)));
        // The payload itself is unsigned schema1: its hash is the same digest.
        assert!(!is_signed(&p));
        assert_eq!(manifest_digest(&p, Algorithm::Sha256), Some(d));
    }

    /// `SIGNED` with another signature value (what distribution does on every GET).
    fn resigned(doc: &[u8], signature: &str) -> Vec<u8> {
        let text = std::str::from_utf8(doc).unwrap();
        let start = text.find("\"signature\": \"").unwrap() + 14;
        let end = start + text[start..].find('"').unwrap();
        format!("{}{signature}{}", &text[..start], &text[end..]).into_bytes()
    }

    #[test]
    fn a_resigned_document_keeps_its_digest() {
        let other = resigned(SIGNED, "AAAA");
        assert_ne!(other, SIGNED);
        assert_eq!(
            manifest_digest(&other, Algorithm::Sha256)
                .unwrap()
                .to_string(),
            SIGNED_DIGEST
        );
        let sha512 = manifest_digest(SIGNED, Algorithm::Sha512).unwrap();
        assert!(matches(&other, &sha512));
    }

    fn with_protected(doc: &[u8], header: &str) -> Vec<u8> {
        let text = std::str::from_utf8(doc).unwrap();
        let start = text.find("\"protected\": \"").unwrap() + 14;
        let end = start + text[start..].find('"').unwrap();
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header);
        format!("{}{enc}{}", &text[..start], &text[end..]).into_bytes()
    }

    #[test]
    fn documents_whose_payload_is_not_their_prefix_have_no_digest() {
        let tail = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("\n}");
        for header in [
            // Length past the end, or cutting inside a member.
            format!(r#"{{"formatLength":99999,"formatTail":"{tail}"}}"#),
            format!(r#"{{"formatLength":10,"formatTail":"{tail}"}}"#),
            // A tail that is more than the closing brace: a payload unrelated to the document.
            format!(
                r#"{{"formatLength":5478,"formatTail":"{}"}}"#,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#","x":1}"#)
            ),
            // Missing or malformed fields.
            r#"{"formatTail":"Cn0"}"#.to_owned(),
            r#"{"formatLength":-1,"formatTail":"Cn0"}"#.to_owned(),
            r#"{"formatLength":5478}"#.to_owned(),
            "not json".to_owned(),
        ] {
            let doc = with_protected(SIGNED, &header);
            assert!(is_signed(&doc));
            assert_eq!(payload(&doc), None, "{header}");
            assert_eq!(manifest_digest(&doc, Algorithm::Sha256), None, "{header}");
        }
        // Another member after the signatures would be read by clients but not covered.
        let text = std::str::from_utf8(SIGNED).unwrap();
        let end = text.rfind('}').unwrap();
        let extra = format!("{},\"fsLayers\":[]}}", &text[..end]);
        assert_eq!(payload(extra.as_bytes()), None);
        // No signatures at all, or an empty list.
        assert_eq!(payload(br#"{"schemaVersion":1,"signatures":[]}"#), None);
    }

    #[test]
    fn other_documents_are_hashed_as_they_are() {
        for doc in [
            &br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#[..],
            br#"{"schemaVersion":1,"name":"a","signatures":null}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","signatures":[]}"#,
            b"not json \"signatures\"",
        ] {
            assert!(!is_signed(doc));
            assert_eq!(
                manifest_digest(doc, Algorithm::Sha256),
                Some(Digest::sha256_of(doc))
            );
        }
    }
}
