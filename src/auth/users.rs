//! One set of client users: password checks (with a memory of verified ones), and the tokens
//! our `/token` endpoint issues and verifies. Knows nothing of HTTP or of where users come from.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::sync::OnceLock;

use crate::bounded::BoundedMap;
use crate::config::Htpasswd;

/// Lifetime of the tokens our `/token` endpoint issues.
pub const TOKEN_LIFETIME_SECS: u64 = 300;
/// How long a verified Basic credential is remembered, so bcrypt runs once per client, not per
/// request.
const BASIC_CACHE_MS: u64 = 5 * 60 * 1000;
const MAX_BASIC_CACHE: usize = 10_000;
/// Domain separation for the token key derived from a users' secret (see [`derive_token_key`]).
const DERIVED_KEY_LABEL: &[u8] = b"pullthrough/v1/client-token-key";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Who a request is from.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal(pub String);

/// One set of users and what goes with it: the key that signs and verifies tokens, and the
/// memory of verified passwords. When a secret's content changes, a new `Users` replaces the old
/// one as a whole, so a rotated password stops working at once, remembered or not.
pub struct Users {
    htpasswd: Htpasswd,
    key: Vec<u8>,
    /// sha256 of verified `user:password` pairs → expiry (ms). Holds hashes, never passwords.
    verified: BoundedMap<[u8; 32], u64>,
    /// A hash of the users' bcrypt cost that no password matches, verified for unknown users so
    /// their answer takes as long as a known user's. Made on first use (it costs a bcrypt run).
    dummy: OnceLock<String>,
}

impl Users {
    pub fn new(htpasswd: Htpasswd, key: Vec<u8>) -> Users {
        Users {
            htpasswd,
            key,
            verified: BoundedMap::new(MAX_BASIC_CACHE),
            dummy: OnceLock::new(),
        }
    }

    /// Whether this `user:password` pair was verified recently (no bcrypt).
    pub fn remembered(&self, user: &str, password: &str, now_ms: u64) -> bool {
        let fingerprint: [u8; 32] = Sha256::digest(format!("{user}:{password}")).into();
        self.verified
            .get(&fingerprint)
            .is_some_and(|exp| exp > now_ms)
    }

    /// Checks a `user:password` pair (bcrypt: call it off the async workers, through
    /// [`ClientAuth::check_basic`](super::ClientAuth::check_basic), which bounds the work).
    pub fn check_password(&self, user: &str, password: &str, now_ms: u64) -> bool {
        if self.remembered(user, password, now_ms) {
            return true;
        }
        let fingerprint: [u8; 32] = Sha256::digest(format!("{user}:{password}")).into();
        let ok = match self.htpasswd.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let dummy = self.dummy.get_or_init(|| {
                    let cost = self
                        .htpasswd
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
            self.verified.insert(fingerprint, now_ms + BASIC_CACHE_MS);
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

    /// A token of ours, unexpired, for a user who is still one of these users.
    pub(crate) fn verify_token(&self, token: &str, now_ms: u64) -> Option<Principal> {
        if token.len() > 4096 {
            return None;
        }
        let (payload, sig) = token.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        // Constant-time comparison of the signature.
        self.mac(payload.as_bytes()).verify_slice(&sig).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.exp > now_ms / 1000 && self.htpasswd.users.contains_key(&claims.sub))
            .then_some(Principal(claims.sub))
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        m.update(data);
        m
    }
}

/// The token key of users read from a secret when no `PULLTHROUGH_TOKEN_KEY` is set:
/// `HMAC-SHA256(key = "pullthrough/v1/client-token-key", message = SecretString)`.
///
/// Every instance that reads the same secret version derives the same key, so a token from one
/// Lambda instance (or server replica) is accepted by all, with no second secret to create, pass
/// or grant; rotating the secret changes the key, which revokes every token issued before. The
/// label keeps this key apart from any other use of the same text. The text is secret (whoever
/// can read it can sign tokens) and carries at least one random 128-bit bcrypt salt per user.
pub fn derive_token_key(secret_string: &str) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(DERIVED_KEY_LABEL)
        .expect("HMAC accepts keys of any length");
    m.update(secret_string.as_bytes());
    m.finalize().into_bytes().to_vec()
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
