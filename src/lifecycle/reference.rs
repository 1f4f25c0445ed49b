//! The references the lifecycle commands take: `[upstream/]repo`, `[upstream/]repo:tag` and
//! `[upstream/]repo@digest`, resolved to an upstream as a pull of that name would be (default
//! upstream, Docker Hub's `library/` rule, upstream aliases and other names as a prefix, the
//! allow-list).

use super::LifecycleError;
use crate::cache::{Cache, Target};
use crate::oci::{Digest, RepoName, Tag};

/// What in a repository a reference names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole repository.
    Repository,
    Tag(Tag),
    Digest(Digest),
}

/// A reference, parsed and resolved.
#[derive(Clone)]
pub struct Resolved {
    /// The reference as given.
    pub text: String,
    pub target: Target,
    pub scope: Scope,
}

impl Resolved {
    /// `<upstream>/<repo>[:tag|@digest]`: the canonical name, for reports.
    pub fn canonical(&self) -> String {
        let repo = self.target.scoped_name();
        match &self.scope {
            Scope::Repository => repo,
            Scope::Tag(t) => format!("{repo}:{t}"),
            Scope::Digest(d) => format!("{repo}@{d}"),
        }
    }
}

/// Parses `text` and resolves its name like a pull would.
pub fn resolve(cache: &Cache, text: &str) -> Result<Resolved, LifecycleError> {
    let (name, scope) = split(text).map_err(|reason| bad(text, reason))?;
    let target = resolve_name(cache, name).map_err(|reason| bad(text, reason))?;
    Ok(Resolved {
        text: text.to_owned(),
        target,
        scope,
    })
}

/// Resolves a repository name alone (`[upstream/]repo`, as `ls` takes it) like a pull would.
pub fn resolve_repository(cache: &Cache, text: &str) -> Result<Target, LifecycleError> {
    resolve_name(cache, text).map_err(|reason| bad(text, reason))
}

fn resolve_name(cache: &Cache, name: &str) -> Result<Target, String> {
    let name = RepoName::parse(name).map_err(|e| e.to_string())?;
    cache.resolve(&name, None).map_err(|e| e.to_string())
}

fn bad(text: &str, reason: String) -> LifecycleError {
    LifecycleError::BadReference {
        reference: crate::oci::truncate_for_message(text),
        reason,
    }
}

/// Resolves every reference, or fails on the first bad one (so nothing is done for any).
pub fn resolve_all(cache: &Cache, refs: &[String]) -> Result<Vec<Resolved>, LifecycleError> {
    if refs.is_empty() {
        return Err(LifecycleError::BadReference {
            reference: String::new(),
            reason: "no reference given".into(),
        });
    }
    refs.iter().map(|r| resolve(cache, r)).collect()
}

/// `name@digest` (also `name:tag@digest`, where the digest decides, as for docker), `name:tag`
/// (a `:` after the last `/`, so `host:port/repo` is a name), or `name`.
fn split(text: &str) -> Result<(&str, Scope), String> {
    if let Some((name, digest)) = text.split_once('@') {
        let d = Digest::parse(digest).map_err(|e| e.to_string())?;
        let (name, _) = split_tag(name);
        return Ok((name, Scope::Digest(d)));
    }
    match split_tag(text) {
        (name, Some(tag)) => {
            let t = Tag::parse(tag).map_err(|e| e.to_string())?;
            Ok((name, Scope::Tag(t)))
        }
        (name, None) => Ok((name, Scope::Repository)),
    }
}

fn split_tag(text: &str) -> (&str, Option<&str>) {
    let last_slash = text.rfind('/').map_or(0, |i| i + 1);
    match text[last_slash..].rfind(':') {
        Some(i) => (&text[..last_slash + i], Some(&text[last_slash + i + 1..])),
        None => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_scope() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(split("alpine").unwrap(), ("alpine", Scope::Repository));
        assert_eq!(
            split("docker.io/library/alpine:3.20").unwrap(),
            (
                "docker.io/library/alpine",
                Scope::Tag(Tag::parse("3.20").unwrap())
            )
        );
        assert_eq!(
            split("localhost:5000/team/app").unwrap(),
            ("localhost:5000/team/app", Scope::Repository)
        );
        assert_eq!(
            split("localhost:5000/team/app:v1").unwrap().1,
            Scope::Tag(Tag::parse("v1").unwrap())
        );
        assert_eq!(
            split(&format!("team/app@{d}")).unwrap(),
            ("team/app", Scope::Digest(Digest::parse(&d).unwrap()))
        );
        assert_eq!(
            split(&format!("team/app:v1@{d}")).unwrap(),
            ("team/app", Scope::Digest(Digest::parse(&d).unwrap()))
        );
        assert!(split("team/app@sha256:nothex").is_err());
        assert!(split("team/app:bad tag").is_err());
        assert!(split("team/app:").is_err());
    }
}
