//! Repository patterns of the per-upstream allow-lists (`allow = ["library/*", "myorg/**"]`):
//! their syntax and matching. Pure data: what may be pulled is decided by the cache.

use std::fmt;

/// A repository glob: `*` matches within one path component, `**` matches across components
/// (also none: `myorg/**` matches `myorg/a` and `myorg/a/b`), `?` matches one character other
/// than `/`. Everything else matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoPattern(String);

impl RepoPattern {
    pub fn parse(s: &str) -> Result<RepoPattern, PatternError> {
        let ok = !s.is_empty()
            && s.len() <= 512
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*?".contains(&b));
        if !ok {
            return Err(PatternError(s.to_owned()));
        }
        Ok(RepoPattern(s.to_owned()))
    }

    pub fn matches(&self, repo: &str) -> bool {
        glob(self.0.as_bytes(), repo.as_bytes())
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `repo` may be pulled under `allow` (an empty list allows everything).
pub fn allowed(allow: &[RepoPattern], repo: &str) -> bool {
    allow.is_empty() || allow.iter().any(|p| p.matches(repo))
}

/// Backtracking glob match; patterns are short and bounded, names at most 255 bytes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            // `**/` may also match nothing, so `a/**/b` matches `a/b`.
            let rest = &p[2..];
            if let Some(after_slash) = rest.strip_prefix(b"/")
                && glob(after_slash, s)
            {
                return true;
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i >= s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// A text that is not a repository pattern.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a repository pattern (lower-case names with *, ** and ?)")]
pub struct PatternError(String);

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        RepoPattern::parse(p).unwrap().matches(s)
    }

    #[test]
    fn single_star_stays_within_a_component() {
        assert!(m("library/*", "library/alpine"));
        assert!(!m("library/*", "library/a/b"));
        assert!(!m("library/*", "other/alpine"));
        assert!(m("team/app-*", "team/app-web"));
        assert!(!m("team/app-*", "team/ap"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(m("myorg/**", "myorg/a"));
        assert!(m("myorg/**", "myorg/a/b/c"));
        assert!(!m("myorg/**", "myorgx/a"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(m("**", "anything/at/all"));
    }

    #[test]
    fn question_mark_and_literals() {
        assert!(m("team/v?", "team/v1"));
        assert!(!m("team/v?", "team/v10"));
        assert!(!m("a?b", "a/b"));
        assert!(m("exact/name", "exact/name"));
        assert!(!m("exact/name", "exact/name2"));
    }

    #[test]
    fn empty_allow_list_allows_all() {
        assert!(allowed(&[], "x/y"));
        let list = vec![RepoPattern::parse("library/*").unwrap()];
        assert!(allowed(&list, "library/alpine"));
        assert!(!allowed(&list, "evil/alpine"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "Upper/*", "a b", "a\\b", &"a".repeat(600)] {
            assert!(RepoPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
