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

/// Walk prefixes ([`Store::walk`](super::Store::walk)): every blob, every repository document.
pub const BLOBS_WALK: &str = "blobs";
pub const REPOS_WALK: &str = "repos";

/// The walk prefix of one repository's documents (tags, markers, referrers). A repository
/// nested under it (`team/app/sub` under `team/app`) is walked too: filter by
/// [`Parsed::repository`].
pub fn repository_walk(upstream: &str, repo: &RepoName) -> String {
    repo_root(upstream, repo)
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

/// What a key found by [`Store::walk`](super::Store::walk) names: the inverse of the builders
/// above. Anything they could not have built is [`Parsed::Other`] (gc and `verify` leave it
/// alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Blob(Digest),
    Tag {
        upstream: String,
        repo: RepoName,
        tag: Tag,
    },
    Marker {
        upstream: String,
        repo: RepoName,
        digest: Digest,
    },
    Referrers {
        upstream: String,
        repo: RepoName,
        digest: Digest,
    },
    Lease(Digest),
    Other,
}

impl Parsed {
    /// The key this names (`None` for [`Parsed::Other`]).
    pub fn key(&self) -> Option<Key> {
        Some(match self {
            Parsed::Blob(d) => blob(d),
            Parsed::Tag {
                upstream,
                repo,
                tag: t,
            } => tag(upstream, repo, t),
            Parsed::Marker {
                upstream,
                repo,
                digest,
            } => marker(upstream, repo, digest),
            Parsed::Referrers {
                upstream,
                repo,
                digest,
            } => referrers(upstream, repo, digest),
            Parsed::Lease(d) => lease(d),
            Parsed::Other => return None,
        })
    }

    /// `(upstream, repo)` of a tag pointer, marker or referrers answer.
    pub fn repository(&self) -> Option<(&str, &RepoName)> {
        match self {
            Parsed::Tag { upstream, repo, .. }
            | Parsed::Marker { upstream, repo, .. }
            | Parsed::Referrers { upstream, repo, .. } => Some((upstream, repo)),
            _ => None,
        }
    }
}

/// Parses a store key back into what it names. A key is recognised only if building it again
/// gives exactly the same text, so a stray file (`repos/x/_tags/..`, `blobs/sha256/ABC`) is
/// [`Parsed::Other`], never a near match.
pub fn parse(key: &str) -> Parsed {
    let parsed = parse_loosely(key).unwrap_or(Parsed::Other);
    match parsed.key() {
        Some(k) if k.as_str() == key => parsed,
        _ => Parsed::Other,
    }
}

fn parse_loosely(key: &str) -> Option<Parsed> {
    let digest = |alg: &str, hex: &str| Digest::parse(&format!("{alg}:{hex}")).ok();
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["blobs", alg, hex] => return digest(alg, hex).map(Parsed::Blob),
        ["leases", "blobs", alg, hex] => return digest(alg, hex).map(Parsed::Lease),
        ["repos", upstream, rest @ ..] if !matches!(*upstream, "" | "." | "..") => {
            // The first component starting with `_` ends the repository name.
            let at = rest.iter().position(|c| c.starts_with('_'))?;
            let repo = RepoName::parse(&rest[..at].join("/")).ok()?;
            let upstream = (*upstream).to_owned();
            return match (rest[at], &rest[at + 1..]) {
                ("_tags", [t]) => Some(Parsed::Tag {
                    upstream,
                    repo,
                    tag: Tag::parse(t).ok()?,
                }),
                ("_digests", [alg, hex]) => Some(Parsed::Marker {
                    upstream,
                    repo,
                    digest: digest(alg, hex)?,
                }),
                ("_referrers", [alg, hex]) => Some(Parsed::Referrers {
                    upstream,
                    repo,
                    digest: digest(alg, hex)?,
                }),
                _ => None,
            };
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::name::MAX_NAME_LEN;

    #[test]
    fn walked_keys_parse_back_into_what_built_them() {
        let d = Digest::sha256_of(b"x");
        let d512 = Digest::parse(&format!("sha512:{}", "ab".repeat(64))).unwrap();
        let r = RepoName::parse("library/alpine").unwrap();
        let deep = RepoName::parse("a/b-c/d.e/f__g").unwrap();
        let t = Tag::parse("3.20_rc-1").unwrap();
        let all = [
            Parsed::Blob(d.clone()),
            Parsed::Blob(d512.clone()),
            Parsed::Lease(d.clone()),
            Parsed::Tag {
                upstream: "docker.io".into(),
                repo: r.clone(),
                tag: t.clone(),
            },
            Parsed::Tag {
                upstream: "localhost:5000".into(),
                repo: deep.clone(),
                tag: Tag::parse("_latest").unwrap(),
            },
            Parsed::Marker {
                upstream: "ghcr.io".into(),
                repo: deep.clone(),
                digest: d512.clone(),
            },
            Parsed::Referrers {
                upstream: "docker.io".into(),
                repo: r.clone(),
                digest: d.clone(),
            },
        ];
        for p in all {
            let key = p.key().unwrap();
            assert_eq!(parse(key.as_str()), p, "{key}");
        }
        assert_eq!(
            parse(&format!("repos/docker.io/library/alpine/_tags/{t}"))
                .repository()
                .map(|(u, r)| (u.to_owned(), r.to_string())),
            Some(("docker.io".to_owned(), "library/alpine".to_owned()))
        );
    }

    #[test]
    fn keys_no_builder_makes_are_other() {
        let hex = Digest::sha256_of(b"x").hex().to_owned();
        for k in [
            "".to_owned(),
            "blobs".to_owned(),
            "blobs/sha256".to_owned(),
            format!("blobs/sha256/{}", hex.to_uppercase()),
            format!("blobs/md5/{hex}"),
            format!("blobs/sha256/{hex}/x"),
            "blobs/sha256/not-a-digest".to_owned(),
            format!("leases/sha256/{hex}"),
            "repos/docker.io/library/alpine".to_owned(),
            "repos/docker.io/_tags/latest".to_owned(),
            "repos//library/alpine/_tags/latest".to_owned(),
            "repos/../library/alpine/_tags/latest".to_owned(),
            "repos/./library/alpine/_tags/latest".to_owned(),
            "repos/docker.io/Library/alpine/_tags/latest".to_owned(),
            "repos/docker.io/library/alpine/_tags/.bad".to_owned(),
            "repos/docker.io/library/alpine/_tags/a/b".to_owned(),
            format!("repos/docker.io/library/alpine/_digests/sha256/{hex}/x"),
            format!("repos/docker.io/library/alpine/_other/sha256/{hex}"),
            format!("repos/docker.io/library/alpine/_digests/{hex}"),
            ".tmp/123-abc-0".to_owned(),
            "README".to_owned(),
        ] {
            assert_eq!(parse(&k), Parsed::Other, "{k:?}");
        }
    }

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
