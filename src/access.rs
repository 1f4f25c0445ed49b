//! Who may pull what: client authentication (htpasswd users, our own short-lived tokens) and
//! per-upstream repository allow-lists.
//!
//! With client auth on, every `/v2/` request needs `Authorization: Basic` (a user of the
//! htpasswd file) or `Authorization: Bearer` (a token from our `/token` endpoint, which itself
//! takes Basic). Unauthenticated requests get 401 with a `WWW-Authenticate: Bearer` challenge
//! naming that endpoint, which is the registry token flow `docker login` and every other client
//! follow. Tokens are `base64url(claims).base64url(HMAC-SHA256(key, claims))`; the key comes from
//! `PULLTHROUGH_TOKEN_KEY` (to share tokens between instances) or is random per process.
//! Comparisons of secrets are constant-time; credentials and tokens are never logged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A repository glob: `*` matches within one path component, `**` matches across components
/// (also none: `myorg/**` matches `myorg/a` and `myorg/a/b`), `?` matches one character other
/// than `/`. Everything else matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoPattern(String);

impl RepoPattern {
    pub fn parse(s: &str) -> Result<RepoPattern, String> {
        let ok = !s.is_empty()
            && s.len() <= 512
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*?".contains(&b));
        if !ok {
            return Err(format!(
                "{s:?} is not a repository pattern (lower-case names with *, ** and ?)"
            ));
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

/// Lifetime of the tokens our `/token` endpoint issues.
pub const TOKEN_LIFETIME_SECS: u64 = 300;
/// How long a verified Basic credential is remembered, so bcrypt runs once per client, not per
/// request.
const BASIC_CACHE_MS: u64 = 5 * 60 * 1000;
const MAX_BASIC_CACHE: usize = 10_000;

/// The users of an htpasswd file (bcrypt entries only).
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:bcrypt-hash", n + 1))?;
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {}: user {user:?} does not have a bcrypt hash (create entries with `htpasswd -B`)",
                    n + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(Htpasswd { users })
    }
}

/// Client authentication, when enabled.
pub struct ClientAuth {
    users: Htpasswd,
    key: Vec<u8>,
    /// sha256 of verified `user:password` pairs → expiry (ms). Holds hashes, never passwords.
    verified: Mutex<HashMap<[u8; 32], u64>>,
    /// A hash of the users' bcrypt cost that no password matches, verified for unknown users so
    /// their answer takes as long as a known user's. Made on first use (it costs a bcrypt run).
    dummy: std::sync::OnceLock<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Who a request is from.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal(pub String);

impl ClientAuth {
    /// `key`: the token signing key; `None` draws a random one.
    pub fn new(users: Htpasswd, key: Option<Vec<u8>>) -> Result<ClientAuth, String> {
        let key = match key {
            Some(k) if k.len() >= 32 => k,
            Some(_) => return Err("PULLTHROUGH_TOKEN_KEY: use at least 32 characters".into()),
            None => random_key()?,
        };
        Ok(ClientAuth {
            users,
            key,
            verified: Mutex::new(HashMap::new()),
            dummy: std::sync::OnceLock::new(),
        })
    }

    /// Checks a `user:password` pair against the htpasswd users.
    pub fn check_password(&self, user: &str, password: &str, now_ms: u64) -> bool {
        let fingerprint: [u8; 32] = Sha256::digest(format!("{user}:{password}")).into();
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.get(&fingerprint).is_some_and(|exp| *exp > now_ms) {
                return true;
            }
        }
        let ok = match self.users.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let dummy = self.dummy.get_or_init(|| {
                    let cost = self
                        .users
                        .users
                        .values()
                        .next()
                        .and_then(|h| h.get(4..6))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(bcrypt::DEFAULT_COST);
                    bcrypt::hash("not a password", cost).unwrap_or_default()
                });
                let _ = bcrypt::verify(password, dummy);
                false
            }
        };
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_BASIC_CACHE {
                cache.clear();
            }
            cache.insert(fingerprint, now_ms + BASIC_CACHE_MS);
        }
        ok
    }

    /// Checks an `Authorization` header value (Basic or Bearer).
    pub fn authenticate(&self, authorization: Option<&str>, now_ms: u64) -> Option<Principal> {
        let value = authorization?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (user, password) = decode_basic(rest.trim())?;
                self.check_password(&user, &password, now_ms)
                    .then_some(Principal(user))
            }
            "bearer" => self.verify_token(rest.trim(), now_ms),
            _ => None,
        }
    }

    pub fn issue_token(&self, user: &str, now_ms: u64) -> String {
        let claims = Claims {
            sub: user.to_owned(),
            exp: now_ms / 1000 + TOKEN_LIFETIME_SECS,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let sig = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    fn verify_token(&self, token: &str, now_ms: u64) -> Option<Principal> {
        if token.len() > 4096 {
            return None;
        }
        let (payload, sig) = token.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        // Constant-time comparison of the signature.
        self.mac(payload.as_bytes()).verify_slice(&sig).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.exp > now_ms / 1000).then_some(Principal(claims.sub))
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        m.update(data);
        m
    }
}

/// Decodes the value of `Authorization: Basic <value>` into user and password.
pub fn decode_basic(value: &str) -> Option<(String, String)> {
    if value.len() > 4096 {
        return None;
    }
    let raw = STANDARD.decode(value).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn random_key() -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("cannot draw a random token key from /dev/urandom: {e}"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ClientAuth {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Htpasswd::parse(&format!("# comment\nalice:{hash}\n")).unwrap();
        ClientAuth::new(users, Some(vec![7; 32])).unwrap()
    }

    fn basic(u: &str, p: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{u}:{p}")))
    }

    #[test]
    fn basic_credentials_are_checked() {
        let a = auth();
        assert_eq!(
            a.authenticate(Some(&basic("alice", "s3cret")), 0),
            Some(Principal("alice".into()))
        );
        assert_eq!(a.authenticate(Some(&basic("alice", "wrong")), 0), None);
        assert_eq!(a.authenticate(Some(&basic("bob", "s3cret")), 0), None);
        assert_eq!(a.authenticate(Some("Basic !!!"), 0), None);
        assert_eq!(a.authenticate(None, 0), None);
        assert!(a.check_password("alice", "s3cret", 1_000));
    }

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let a = auth();
        let t = a.issue_token("alice", 1_000_000);
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {t}")), 1_000_000),
            Some(Principal("alice".into()))
        );
        let later = 1_000_000 + (TOKEN_LIFETIME_SECS + 1) * 1000;
        assert_eq!(a.authenticate(Some(&format!("Bearer {t}")), later), None);
        let (payload, sig) = t.split_once('.').unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"root","exp":99999999999}"#);
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {forged_claims}.{sig}")), 0),
            None
        );
        let mut bad_sig = sig.to_owned();
        bad_sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {payload}.{bad_sig}")), 0),
            None
        );
        let other = ClientAuth::new(
            Htpasswd::parse("x:$2b$04$abcdefghijklmnopqrstuu").unwrap(),
            Some(vec![8; 32]),
        )
        .unwrap();
        assert_eq!(
            other.authenticate(Some(&format!("Bearer {t}")), 1_000_000),
            None
        );
    }

    #[test]
    fn htpasswd_files_must_be_bcrypt() {
        assert!(Htpasswd::parse("alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("alice:$apr1$abc").is_err());
        assert!(Htpasswd::parse("nocolon").is_err());
        assert!(Htpasswd::parse("\n# only comments\n").is_err());
        assert!(ClientAuth::new(Htpasswd::parse("a:$2y$05$x").unwrap(), Some(vec![1; 8])).is_err());
    }

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
