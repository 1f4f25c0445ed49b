//! `WWW-Authenticate` challenges and the bearer-token cache.

use std::time::{Duration, Instant};

use crate::bounded::BoundedMap;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// The registry token flow: fetch a token from `realm` with `service` and `scope`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Longest header value parsed; anything longer is ignored rather than parsed.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Parses a `WWW-Authenticate` value, returning the first challenge we can answer (Bearer with a
/// realm, or Basic). Unknown schemes and malformed parameters are skipped, never fatal.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (scheme, after) = split_token(rest);
        rest = after;
        let (params, after) = parse_params(rest);
        rest = after.trim_start_matches([',', ' ']);
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.clone())
                };
                if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                    return Some(Challenge::Bearer {
                        realm,
                        service: get("service"),
                        scope: get("scope"),
                    });
                }
            }
            "basic" => return Some(Challenge::Basic),
            "" => break,
            _ => {}
        }
    }
    None
}

fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s
        .find(|c: char| c.is_whitespace() || c == ',')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Parses `k=v` / `k="quoted, with \"escapes\""` pairs until a token that is not followed by `=`
/// (the start of the next challenge) or the end.
fn parse_params(mut s: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    loop {
        let trimmed = s.trim_start_matches([' ', ',', '\t']);
        let Some(eq) = trimmed.find('=') else {
            return (out, trimmed);
        };
        let key = &trimmed[..eq];
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == ',') {
            return (out, trimmed);
        }
        let after = &trimmed[eq + 1..];
        let (value, rest) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key.to_owned(), value));
        s = rest;
    }
}

/// Bearer tokens per (upstream, scope), kept until shortly before they expire.
pub struct TokenCache {
    tokens: BoundedMap<String, (String, Instant)>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            tokens: BoundedMap::new(MAX_TOKENS),
        }
    }
}

/// Tokens are dropped this long before their stated expiry, so a request never leaves with a
/// token that expires in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The distribution spec's default when a token response has no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Bounds the cache; on overflow the least recently used token goes (tokens are cheap to fetch
/// again).
const MAX_TOKENS: usize = 10_000;

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        self.tokens
            .get(scope)
            .filter(|(_, exp)| Instant::now() < *exp)
            .map(|(t, _)| t)
    }

    pub fn put(&self, scope: &str, token: String, lifetime: Duration) {
        let lifetime = lifetime.saturating_sub(EXPIRY_MARGIN);
        if lifetime.is_zero() {
            return;
        }
        self.tokens
            .insert(scope.to_owned(), (token, Instant::now() + lifetime));
    }

    pub fn forget(&self, scope: &str) {
        self.tokens.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn parses_unquoted_and_escaped_values_and_odd_spacing() {
        let c = parse_challenge(
            r#"bearer  realm=https://x/token , service="a\"b", scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://x/token".into(),
                service: Some("a\"b".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_basic_and_skips_unknown_schemes() {
        assert_eq!(
            parse_challenge(r#"Basic realm="r""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"Negotiate abc, Basic realm="r""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn survives_garbage() {
        for g in [
            "=",
            "Bearer =",
            "Bearer realm=\"unterminated",
            ",,,,",
            "Bearer realm",
        ] {
            let _ = parse_challenge(g);
        }
        assert_eq!(parse_challenge(&"a".repeat(MAX_HEADER_LEN + 1)), None);
        assert!(matches!(
            parse_challenge("Bearer realm=\"unterminated"),
            Some(Challenge::Bearer { .. })
        ));
    }

    #[test]
    fn token_cache_expires() {
        let c = TokenCache::default();
        c.put("s", "t".into(), Duration::from_secs(60));
        assert_eq!(c.get("s").as_deref(), Some("t"));
        c.put("short", "t".into(), Duration::from_secs(1));
        assert_eq!(c.get("short"), None);
        c.forget("s");
        assert_eq!(c.get("s"), None);
    }
}
