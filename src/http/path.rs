//! Request paths parsed into typed requests, from the right (`/v2/<name>/manifests/<ref>`: the
//! name may itself contain slashes, the endpoint part never does).

use crate::http::error::{Code, Error};
use crate::oci::{Digest, Reference, RepoName};

#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    TagsList(RepoName),
    Referrers(RepoName, Digest),
    /// `/blobs/uploads/...`: the push API, which this proxy does not offer.
    Upload,
}

/// What a path after `/v2/` asks for, by its shape alone, read from the right (a repository
/// name may contain `manifests` or `blobs`), before any name, tag or digest is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Upload,
    TagsList,
    Manifest,
    Blob,
    Referrers,
}

/// The shape of the path after `/v2/`, split at `/`; `None` for no endpoint of the API.
pub fn shape(segs: &[&str]) -> Option<Shape> {
    let n = segs.len();
    let at = |i: usize| n.checked_sub(i).map(|j| segs[j]);
    if at(3) == Some("blobs") && at(2) == Some("uploads")
        || at(2) == Some("blobs") && at(1) == Some("uploads")
    {
        return Some(Shape::Upload);
    }
    if n < 3 {
        return None;
    }
    match (segs[n - 2], segs[n - 1]) {
        ("tags", "list") => Some(Shape::TagsList),
        ("manifests", _) => Some(Shape::Manifest),
        ("blobs", _) => Some(Shape::Blob),
        ("referrers", _) => Some(Shape::Referrers),
        _ => None,
    }
}

/// Parses the part of the path after `/v2/`. The raw (still percent-encoded) path is used: no
/// name, tag or digest may contain `%`, so an encoded `..` or `/` is refused, never decoded.
pub fn parse(rest: &str) -> Result<Endpoint, Error> {
    if rest.contains('%') {
        return Err(Error::bad_request(
            Code::NameInvalid,
            "percent-encoded characters are not allowed in repository names, tags or digests",
        ));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(Error::bad_request(
            Code::NameInvalid,
            "dot segments (. and ..) are not allowed in registry paths",
        ));
    }
    let n = segs.len();
    let name = |upto: usize| -> Result<RepoName, Error> {
        let joined = segs[..upto].join("/");
        RepoName::parse(&joined).map_err(|e| Error::bad_request(Code::NameInvalid, e.to_string()))
    };
    let last = segs[n - 1];
    match shape(&segs) {
        Some(Shape::Upload) => Ok(Endpoint::Upload),
        Some(Shape::TagsList) => Ok(Endpoint::TagsList(name(n - 2)?)),
        Some(Shape::Manifest) => {
            let name = name(n - 2)?;
            // Something that is neither tag nor digest names no manifest: 404, as the OCI
            // conformance suites expect (`.INVALID_MANIFEST_NAME`). A malformed digest is a bad
            // request.
            let reference = Reference::parse(last).map_err(|e| {
                if last.contains(':') {
                    Error::bad_request(Code::DigestInvalid, e.to_string())
                } else {
                    Error::not_found(Code::ManifestUnknown, format!("manifest unknown: {e}"))
                }
            })?;
            Ok(Endpoint::Manifest(name, reference))
        }
        Some(Shape::Blob) => Ok(Endpoint::Blob(name(n - 2)?, digest(last)?)),
        Some(Shape::Referrers) => Ok(Endpoint::Referrers(name(n - 2)?, digest(last)?)),
        None => Err(Error::not_found(
            Code::Unsupported,
            "no such endpoint: expected /v2/<name>/manifests/<reference>, /blobs/<digest>, /tags/list or /referrers/<digest>",
        )),
    }
}

fn digest(s: &str) -> Result<Digest, Error> {
    Digest::parse(s).map_err(|e| Error::bad_request(Code::DigestInvalid, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(rest: &str) -> &'static str {
        parse(rest).unwrap_err().code.as_str()
    }

    #[test]
    fn parses_endpoints_from_the_right() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            parse("library/alpine/manifests/3.20"),
            Ok(Endpoint::Manifest(n, Reference::Tag(_))) if n.as_str() == "library/alpine"
        ));
        assert!(matches!(
            parse(&format!("ghcr.io/a/b/manifests/{d}")),
            Ok(Endpoint::Manifest(n, Reference::Digest(_))) if n.as_str() == "ghcr.io/a/b"
        ));
        assert!(matches!(
            parse(&format!("a/blobs/{d}")),
            Ok(Endpoint::Blob(..))
        ));
        assert!(matches!(parse("a/b/tags/list"), Ok(Endpoint::TagsList(n)) if n.as_str() == "a/b"));
        assert!(matches!(
            parse(&format!("a/referrers/{d}")),
            Ok(Endpoint::Referrers(..))
        ));
        assert!(matches!(parse("a/blobs/uploads/"), Ok(Endpoint::Upload)));
        assert!(matches!(parse("a/blobs/uploads/abc"), Ok(Endpoint::Upload)));
        // A repository may be named like an endpoint word.
        assert!(matches!(
            parse("manifests/manifests/latest"),
            Ok(Endpoint::Manifest(n, _)) if n.as_str() == "manifests"
        ));
    }

    #[test]
    fn refuses_bad_input_with_the_right_code() {
        assert_eq!(code("../etc/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("%2e%2e/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("a/manifests/%2e%2e"), "NAME_INVALID");
        assert_eq!(code("/abs/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("Upper/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("a/manifests/.."), "NAME_INVALID");
        assert_eq!(code("a/manifests/.x"), "MANIFEST_UNKNOWN");
        assert_eq!(
            code("a/manifests/.INVALID_MANIFEST_NAME"),
            "MANIFEST_UNKNOWN"
        );
        assert_eq!(parse("a/manifests/.x").unwrap_err().status.as_u16(), 404);
        assert_eq!(code("a/manifests/sha256:abc"), "DIGEST_INVALID");
        assert_eq!(code("a/blobs/latest"), "DIGEST_INVALID");
        assert_eq!(code("a/referrers/sha256:zz"), "DIGEST_INVALID");
        assert_eq!(code("a/unknown/x"), "UNSUPPORTED");
        assert_eq!(code("a"), "UNSUPPORTED");
    }
}
