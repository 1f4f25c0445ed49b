//! The key scheme: the single place that builds store keys.
//!
//! ```text
//! blobs/<alg>/<hex>                                  verified bytes: layers, configs, manifests
//! repos/<upstream>/<repo>/_tags/<tag>                tag pointer (JSON)
//! repos/<upstream>/<repo>/_digests/<alg>/<hex>       marker: this repository holds this digest
//! repos/<upstream>/<repo>/_referrers/<alg>/<hex>     cached referrers answer (JSON)
//! leases/blobs/<alg>/<hex>                           fill in progress (Lambda mode; JSON, deleted after)
//! ```
//!
//! Every part comes from a parsed [`RepoName`], [`Tag`] or [`Digest`] or a configured upstream
//! alias, so no key contains `..`, an empty component or a leading `/`. Repository names cannot
//! contain `_` at the start of a component, so `_tags`, `_digests` and `_referrers` never collide
//! with a repository path. The longest key (255-byte name, 128-byte tag, a long alias) stays far
//! under S3's 1,024-byte limit.

use std::fmt;

use crate::oci::{Digest, RepoName, Tag};

/// A store key. Only the functions of this module make one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn new(s: String) -> Key {
        debug_assert!(
            !s.starts_with('/') && s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "unsafe key {s:?}"
        );
        Key(s)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn blob(digest: &Digest) -> Key {
    Key::new(format!(
        "blobs/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

/// The "directory" holding every blob of one algorithm, for listing.
pub fn blobs_prefix(algorithm: crate::oci::digest::Algorithm) -> Key {
    Key::new(format!("blobs/{}", algorithm.as_str()))
}

/// The lease of a blob fill in progress (S3: Lambda, or servers sharing a bucket): at most one
/// copy of a blob at a time.
pub fn lease(digest: &Digest) -> Key {
    Key::new(format!(
        "leases/blobs/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

fn repo_root(upstream: &str, repo: &RepoName) -> String {
    format!("repos/{upstream}/{repo}")
}

pub fn tag(upstream: &str, repo: &RepoName, tag: &Tag) -> Key {
    Key::new(format!("{}/_tags/{tag}", repo_root(upstream, repo)))
}

/// The "directory" holding every tag pointer of a repository, for listing.
pub fn tags_prefix(upstream: &str, repo: &RepoName) -> Key {
    Key::new(format!("{}/_tags", repo_root(upstream, repo)))
}

/// The "directory" holding a repository's markers of one algorithm, for listing.
pub fn markers_prefix(
    upstream: &str,
    repo: &RepoName,
    algorithm: crate::oci::digest::Algorithm,
) -> Key {
    Key::new(format!(
        "{}/_digests/{}",
        repo_root(upstream, repo),
        algorithm.as_str()
    ))
}

/// The "directory" holding a repository's cached referrers answers of one algorithm, for
/// listing.
pub fn referrers_prefix(
    upstream: &str,
    repo: &RepoName,
    algorithm: crate::oci::digest::Algorithm,
) -> Key {
    Key::new(format!(
        "{}/_referrers/{}",
        repo_root(upstream, repo),
        algorithm.as_str()
    ))
}

pub fn marker(upstream: &str, repo: &RepoName, digest: &Digest) -> Key {
    Key::new(format!(
        "{}/_digests/{}/{}",
        repo_root(upstream, repo),
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

pub fn referrers(upstream: &str, repo: &RepoName, digest: &Digest) -> Key {
    Key::new(format!(
        "{}/_referrers/{}/{}",
        repo_root(upstream, repo),
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::name::MAX_NAME_LEN;

    #[test]
    fn keys_have_the_documented_shape() {
        let d = Digest::sha256_of(b"x");
        let r = RepoName::parse("library/alpine").unwrap();
        let t = Tag::parse("3.20").unwrap();
        assert_eq!(blob(&d).as_str(), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(
            tag("docker.io", &r, &t).as_str(),
            "repos/docker.io/library/alpine/_tags/3.20"
        );
        assert_eq!(
            marker("docker.io", &r, &d).as_str(),
            format!("repos/docker.io/library/alpine/_digests/sha256/{}", d.hex())
        );
    }

    #[test]
    fn longest_legal_names_fit_s3_key_limit() {
        let longest_name = vec!["a".repeat(63); 4].join("/");
        let longest_name = &longest_name[..MAX_NAME_LEN.min(longest_name.len())];
        let r = RepoName::parse(longest_name.trim_end_matches('/')).unwrap();
        let t = Tag::parse(&"t".repeat(128)).unwrap();
        let d = Digest::parse(&format!("sha512:{}", "f".repeat(128))).unwrap();
        let alias = "a-very-long-upstream-alias.registry.example.com:65535";
        for k in [
            tag(alias, &r, &t),
            marker(alias, &r, &d),
            referrers(alias, &r, &d),
        ] {
            assert!(k.as_str().len() < 1024, "{} bytes", k.as_str().len());
            // Every path component also fits a filesystem name (255 bytes).
            assert!(k.as_str().split('/').all(|c| c.len() <= 255));
        }
    }
}
