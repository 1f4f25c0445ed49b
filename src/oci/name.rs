//! Repository names, tags and references, per the OCI distribution grammar.
//!
//! Parsing is the only validation: a [`RepoName`] or [`Tag`] that exists is safe to put into a
//! store key (no `..`, no empty component, no absolute path) and into an upstream URL.

use std::fmt;

use super::digest::{Digest, truncate_for_message};

/// Longest repository name accepted. The OCI spec advises registries to accept at least 255
/// characters including the host name; store keys are designed for this bound.
pub const MAX_NAME_LEN: usize = 255;

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid repository name {0:?}")]
pub struct InvalidName(pub String);

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, InvalidName> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(InvalidName(truncate_for_message(s)));
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component (`ghcr.io` in `ghcr.io/org/img`).
    pub fn first_component(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The name without its first component, if it has more than one.
    pub fn strip_first_component(&self) -> Option<RepoName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RepoName(rest.to_owned()))
    }

    pub fn component_count(&self) -> usize {
        self.0.split('/').count()
    }

    /// Prefixes `library/`: Docker Hub's official images live there (`alpine` ⇒ `library/alpine`).
    pub fn with_library_prefix(&self) -> RepoName {
        RepoName(format!("library/{}", self.0))
    }
}

/// One component: alphanumeric runs separated by `.`, `_`, `__` or one or more `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", always followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid tag {0:?}")]
pub struct InvalidTag(pub String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, InvalidTag> {
        let b = s.as_bytes();
        let first = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let rest = |x: u8| first(x) || x == b'.' || x == b'-';
        if b.is_empty() || b.len() > 128 || !first(b[0]) || !b[1..].iter().all(|&x| rest(x)) {
            return Err(InvalidTag(truncate_for_message(s)));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid reference {0:?}: expected a tag or a digest")]
pub struct InvalidReference(pub String);

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, InvalidReference> {
        // A tag cannot contain ':', so anything with one must be a digest.
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(|_| InvalidReference(truncate_for_message(s)))
        } else {
            Tag::parse(s)
                .map(Reference::Tag)
                .map_err(|_| InvalidReference(truncate_for_message(s)))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_from_the_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "ghcr.io/org/img",
            "a/b/c/d",
            "my-repo",
            "my--repo",
            "my_repo",
            "my__repo",
            "foo.bar",
            "0",
            "quay.io/prometheus/node-exporter",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_names_outside_the_grammar_including_traversal() {
        for bad in [
            "", "Alpine", "..", "../etc", "a/../b", "a/./b", "/abs", "a/", "a//b", "a___b", "a..b",
            ".hidden", "-a", "a-", "a_", "a b", "a%2e%2e", "a\\b", "a:1",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        assert!(RepoName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
        assert!(RepoName::parse(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["latest", "3.20", "v1.0.0-rc.1", "_x", "A", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["", ".x", "-x", "..", "a/b", "a:b", "a b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(Reference::parse("sha256:xyz").is_err());
        assert!(Reference::parse("..").is_err());
    }

    #[test]
    fn library_prefix_and_components() {
        let n = RepoName::parse("ghcr.io/org/img").unwrap();
        assert_eq!(n.first_component(), "ghcr.io");
        assert_eq!(n.strip_first_component().unwrap().as_str(), "org/img");
        assert_eq!(n.component_count(), 3);
        let a = RepoName::parse("alpine").unwrap();
        assert_eq!(a.with_library_prefix().as_str(), "library/alpine");
        assert!(a.strip_first_component().is_none());
    }
}
