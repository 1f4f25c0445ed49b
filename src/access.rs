//! Who may pull what: client authentication (htpasswd users, our own short-lived tokens) and
//! per-upstream repository allow-lists.
//!
//! With client auth on, every `/v2/` request needs `Authorization: Basic` (a user of the
//! htpasswd file, or of the htpasswd text in a Secrets Manager secret) or `Authorization: Bearer`
//! (a token from our `/token` endpoint, which itself takes Basic). Unauthenticated requests get
//! 401 with a `WWW-Authenticate: Bearer` challenge naming that endpoint, which is the registry
//! token flow `docker login` and every other client follow. Tokens are
//! `base64url(claims).base64url(HMAC-SHA256(key, claims))`; the key comes from
//! `PULLTHROUGH_TOKEN_KEY` (to share tokens between instances), else, for users from a secret, is
//! derived from the secret's content ([`derive_token_key`]: the same on every instance), else is
//! random per process. Users from a secret are read on first use, never at start-up, and re-read
//! every refresh interval ([`ClientAuth::users`]); without users, nobody gets in.
//! Comparisons of secrets are constant-time; credentials, tokens and secrets are never logged.
//!
//! Password checks are bounded ([`Checks`]): a remembered credential costs no bcrypt; every other
//! Basic credential takes a failure token from its client address and from its user name (any
//! name, existing or not, so the answers tell nothing about which users exist) and gives it
//! back when it is right; with none left the answer is `429 TOOMANYREQUESTS` with `Retry-After`
//! and no bcrypt run. bcrypt runs at most `bcrypt_concurrency` at once, in order of arrival; a
//! check that waits longer than `bcrypt_wait` for its turn is answered `503` unchecked.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bounded::BoundedMap;
use crate::config::AuthLimits;
use crate::error::{Code, Error};
use crate::upstream::SecretSource;

/// The address a request came from, as a request extension: the TCP peer in server mode, the
/// API Gateway / function URL `sourceIp` in Lambda mode. Failed logins are limited per address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

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
/// After a failed read of the users' secret, how long the outcome stands (the last good users,
/// or the 503) before a request reads it again. Bounds the calls an outage or a stream of
/// requests can cause.
pub const SECRET_RETRY_SECS: u64 = 10;
/// Domain separation for the token key derived from a users' secret (see [`derive_token_key`]).
const DERIVED_KEY_LABEL: &[u8] = b"pullthrough/v1/client-token-key";

/// The users of an htpasswd file (bcrypt entries only).
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Parses htpasswd text: `user:$2y$NN$<53 characters>` lines, blank lines and `#` comments.
    /// Messages give line numbers, never a user's name or hash: they may reach clients when the
    /// text comes from a secret.
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
            if user.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            if !is_bcrypt_hash(hash) {
                return Err(format!(
                    "line {} is not a bcrypt entry (user:$2y$…; create entries with `htpasswd -B`)",
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

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost from 04 to 31, `$`, then 22 characters of salt and
/// 31 of hash in bcrypt's base64 alphabet.
fn is_bcrypt_hash(h: &str) -> bool {
    let b = h.as_bytes();
    b.len() == 60
        && ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p))
        && h.get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

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
    /// [`ClientAuth::check_basic`], which bounds the work).
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
    fn verify_token(&self, token: &str, now_ms: u64) -> Option<Principal> {
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

/// Client authentication, when enabled: fixed users (an htpasswd file read at start-up), or
/// users read from a secret on first use and re-read every refresh interval.
pub struct ClientAuth {
    source: Source,
    /// Bounds on password checks; shared by every set of users a secret has held.
    checks: Checks,
}

/// Most failure buckets kept per kind (addresses, user names); see [`Buckets::take`].
const MAX_BUCKETS: usize = 10_000;
/// Longest user name a bucket is keyed by (longer names share the bucket of their prefix).
const MAX_BUCKET_NAME: usize = 256;

/// Bounds on the password checks of one [`ClientAuth`] (see the module documentation).
pub struct Checks {
    /// bcrypt turns; tokio's semaphore serves waiters in order of arrival.
    bcrypt: Arc<tokio::sync::Semaphore>,
    wait: Duration,
    per_minute: u32,
    failures: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_addr: HashMap<IpAddr, Bucket>,
    by_user: HashMap<String, Bucket>,
}

/// A token bucket of failures: `per_minute` tokens at most, one back every `60 / per_minute` s.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn refill(&mut self, now_ms: u64, per_minute: u32) {
        let rate = f64::from(per_minute) / 60_000.0;
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(per_minute));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes a token, or says in how many seconds one will be there.
    fn take(&mut self, now_ms: u64, per_minute: u32) -> Result<(), u64> {
        self.refill(now_ms, per_minute);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let rate = f64::from(per_minute) / 60_000.0;
            Err((((1.0 - self.tokens) / rate) / 1000.0).ceil().max(1.0) as u64)
        }
    }
}

impl Buckets {
    fn bucket<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, Bucket>,
        key: K,
        now_ms: u64,
        per_minute: u32,
    ) -> &mut Bucket {
        if map.len() >= MAX_BUCKETS && !map.contains_key(&key) {
            // Forget buckets that are full again; if that is not enough, forget them all
            // (memory stays bounded; an attacker with that many names or addresses resets the
            // limits, which per-address limits and the bcrypt cap still bound).
            map.retain(|_, b| {
                b.refill(now_ms, per_minute);
                b.tokens < f64::from(per_minute)
            });
            if map.len() >= MAX_BUCKETS {
                map.clear();
            }
        }
        map.entry(key).or_insert(Bucket {
            tokens: f64::from(per_minute),
            at_ms: now_ms,
        })
    }
}

impl Checks {
    pub fn new(limits: &AuthLimits) -> Checks {
        Checks {
            bcrypt: Arc::new(tokio::sync::Semaphore::new(
                limits.bcrypt_concurrency.max(1),
            )),
            wait: limits.bcrypt_wait,
            per_minute: limits.failures_per_minute.max(1),
            failures: Mutex::new(Buckets::default()),
        }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn user_key(user: &str) -> String {
        let mut end = user.len().min(MAX_BUCKET_NAME);
        while !user.is_char_boundary(end) {
            end -= 1;
        }
        user[..end].to_owned()
    }

    /// Takes a failure token from the address and the user, or answers 429. The same answer
    /// whichever ran out, and whether the user exists or not.
    fn reserve(&self, client: Option<IpAddr>, user: &str, now_ms: u64) -> Result<(), Error> {
        let per_minute = self.per_minute;
        let mut b = self.buckets();
        let b = &mut *b;
        if let Some(addr) = client
            && let Err(secs) =
                Buckets::bucket(&mut b.by_addr, addr, now_ms, per_minute).take(now_ms, per_minute)
        {
            return Err(too_many_failures(secs));
        }
        let by_user = Buckets::bucket(&mut b.by_user, Self::user_key(user), now_ms, per_minute);
        if let Err(secs) = by_user.take(now_ms, per_minute) {
            if let Some(addr) = client
                && let Some(a) = b.by_addr.get_mut(&addr)
            {
                a.tokens = (a.tokens + 1.0).min(f64::from(per_minute));
            }
            return Err(too_many_failures(secs));
        }
        Ok(())
    }

    /// Gives back the tokens of a check that succeeded or did not happen.
    fn refund(&self, client: Option<IpAddr>, user: &str) {
        let max = f64::from(self.per_minute);
        let mut b = self.buckets();
        if let Some(addr) = client
            && let Some(a) = b.by_addr.get_mut(&addr)
        {
            a.tokens = (a.tokens + 1.0).min(max);
        }
        if let Some(u) = b.by_user.get_mut(&Self::user_key(user)) {
            u.tokens = (u.tokens + 1.0).min(max);
        }
    }
}

fn too_many_failures(retry_after: u64) -> Error {
    let mut e = Error::new(
        StatusCode::TOO_MANY_REQUESTS,
        Code::TooManyRequests,
        format!("too many failed logins; retry in {retry_after} s"),
    );
    e.retry_after = Some(retry_after);
    e
}

enum Source {
    Fixed(Arc<Users>),
    Secret(SecretUsers),
}

/// Users held by a Secrets Manager secret.
struct SecretUsers {
    arn: String,
    secrets: Arc<dyn SecretSource>,
    refresh_ms: u64,
    /// `PULLTHROUGH_TOKEN_KEY`; `None`: derived from the secret's content.
    key: Option<Vec<u8>>,
    state: Mutex<SecretState>,
    /// Held by the one request reading the secret; a first read is waited for by the others.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SecretState {
    /// The last good users, and the sha256 of the text they came from.
    current: Option<(Arc<Users>, [u8; 32])>,
    /// When the secret is due to be read again (ms): a refresh interval after a good read,
    /// [`SECRET_RETRY_SECS`] after a failed one; 0 before the first.
    next_read_ms: u64,
    /// Reads finished so far: a request that waited while another read uses that outcome.
    reads: u64,
    /// The client's message for the last failed read, while no users are known.
    error: Option<String>,
}

impl SecretState {
    fn answer(&self, arn: &str) -> Result<Arc<Users>, Error> {
        match (&self.current, &self.error) {
            (Some((users, _)), _) => Ok(Arc::clone(users)),
            (None, Some(message)) => Err(unavailable(message.clone())),
            (None, None) => Err(unavailable(format!(
                "client authentication is unavailable: the client-auth secret {arn} has not been read yet"
            ))),
        }
    }
}

fn unavailable(message: String) -> Error {
    let mut e = Error::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message);
    e.retry_after = Some(SECRET_RETRY_SECS);
    e
}

impl ClientAuth {
    /// Fixed users. `key`: the token signing key; `None` draws a random one.
    pub fn new(users: Htpasswd, key: Option<Vec<u8>>) -> Result<ClientAuth, String> {
        let key = match key {
            Some(k) => checked_key(k)?,
            None => random_key()?,
        };
        Ok(ClientAuth {
            source: Source::Fixed(Arc::new(Users::new(users, key))),
            checks: Checks::new(&AuthLimits::default()),
        })
    }

    /// The same, with these bounds on password checks.
    pub fn with_limits(mut self, limits: &AuthLimits) -> ClientAuth {
        self.checks = Checks::new(limits);
        self
    }

    /// Checks Basic credentials against `users`, within the bounds of [`Checks`]: `Ok(true)` for a
    /// right password, `Ok(false)` for a wrong one, `Err` (429, or 503 when no bcrypt turn came
    /// in time) without a check.
    pub async fn check_basic(
        &self,
        users: Arc<Users>,
        user: String,
        password: String,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<bool, Error> {
        if users.remembered(&user, &password, now_ms) {
            return Ok(true);
        }
        let checks = &self.checks;
        checks.reserve(client, &user, now_ms)?;
        let turn =
            match tokio::time::timeout(checks.wait, Arc::clone(&checks.bcrypt).acquire_owned())
                .await
            {
                Ok(Ok(turn)) => turn,
                _ => {
                    checks.refund(client, &user);
                    let mut e = Error::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Code::Unavailable,
                        "too many password checks in progress; retry shortly",
                    );
                    e.retry_after = Some(1);
                    return Err(e);
                }
            };
        let (u, p) = (user.clone(), password);
        // bcrypt is deliberately slow: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || {
            let ok = users.check_password(&u, &p, now_ms);
            drop(turn);
            ok
        })
        .await
        .unwrap_or(false);
        if ok {
            checks.refund(client, &user);
        }
        Ok(ok)
    }

    /// Users from the secret `arn` (htpasswd text), read through `secrets` on the first request
    /// that needs them, never here, and again once `refresh` has passed. `key`: the token signing
    /// key; `None` derives it from the secret's content ([`derive_token_key`]).
    pub fn from_secret(
        arn: String,
        secrets: Arc<dyn SecretSource>,
        refresh: Duration,
        key: Option<Vec<u8>>,
    ) -> Result<ClientAuth, String> {
        let key = key.map(checked_key).transpose()?;
        Ok(ClientAuth {
            source: Source::Secret(SecretUsers {
                arn,
                secrets,
                refresh_ms: refresh.as_millis() as u64,
                key,
                state: Mutex::new(SecretState::default()),
                reading: tokio::sync::Mutex::new(()),
            }),
            checks: Checks::new(&AuthLimits::default()),
        })
    }

    /// The users to check a request against at `now_ms`. With a secret: the cached users while
    /// fresh; when due, one request reads the secret while others go on with the cached users
    /// (or, before the first good read, wait for that read and share its outcome). A failed read
    /// keeps the last good users; with none, the answer is `503 UNAVAILABLE`, so nobody gets in.
    pub async fn users(&self, now_ms: u64) -> Result<Arc<Users>, Error> {
        match &self.source {
            Source::Fixed(users) => Ok(Arc::clone(users)),
            Source::Secret(s) => s.users(now_ms).await,
        }
    }
}

impl SecretUsers {
    fn state(&self) -> std::sync::MutexGuard<'_, SecretState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn users(&self, now_ms: u64) -> Result<Arc<Users>, Error> {
        let (seen, have_users) = {
            let st = self.state();
            if now_ms < st.next_read_ms {
                return st.answer(&self.arn);
            }
            (st.reads, st.current.is_some())
        };
        let _reading = if have_users {
            match self.reading.try_lock() {
                Ok(guard) => guard,
                // Someone is refreshing: carry on with the users we have.
                Err(_) => return self.state().answer(&self.arn),
            }
        } else {
            self.reading.lock().await
        };
        if self.state().reads != seen {
            // Another request read the secret while this one waited: share its outcome.
            return self.state().answer(&self.arn);
        }
        let read = self.read().await;
        let mut st = self.state();
        st.reads += 1;
        match read {
            Ok((htpasswd, text_hash, key)) => {
                st.next_read_ms = now_ms + self.refresh_ms;
                st.error = None;
                let unchanged = st.current.as_ref().is_some_and(|(_, h)| *h == text_hash);
                if !unchanged {
                    if st.current.is_some() {
                        tracing::info!(secret = %self.arn, users = htpasswd.users.len(), "client users changed in their secret; now in use");
                    } else {
                        tracing::info!(secret = %self.arn, users = htpasswd.users.len(), "client users read from Secrets Manager");
                    }
                    st.current = Some((Arc::new(Users::new(htpasswd, key)), text_hash));
                }
            }
            Err(message) => {
                st.next_read_ms = now_ms + (SECRET_RETRY_SECS * 1000).min(self.refresh_ms);
                if st.current.is_some() {
                    tracing::warn!(secret = %self.arn, error = %message, retry_in_s = SECRET_RETRY_SECS, "cannot refresh the client users; keeping the last good ones");
                } else {
                    st.error = Some(message);
                }
            }
        }
        st.answer(&self.arn)
    }

    /// Reads and parses the secret: the users, the sha256 of the text, the token key. The error
    /// is the client's message: it names the secret and what is wrong, never its content.
    async fn read(&self) -> Result<(Htpasswd, [u8; 32], Vec<u8>), String> {
        let arn = &self.arn;
        let text = self.secrets.secret_string(arn).await.map_err(|e| {
            tracing::warn!(secret = %arn, error = %e, "cannot read the client-auth secret");
            format!(
                "client authentication is unavailable: the client-auth secret {arn} could not be read (the proxy's log says why)"
            )
        })?;
        let htpasswd = Htpasswd::parse(&text).map_err(|e| {
            let hint = if text.trim_start().starts_with('{') {
                " (it holds JSON: store the htpasswd lines themselves as the secret's plaintext value)"
            } else {
                ""
            };
            let message = format!(
                "client authentication is unavailable: the client-auth secret {arn} is not htpasswd text with bcrypt entries: {e}{hint}"
            );
            tracing::warn!(secret = %arn, "{message}");
            message
        })?;
        let key = self.key.clone().unwrap_or_else(|| derive_token_key(&text));
        Ok((htpasswd, Sha256::digest(text.as_bytes()).into(), key))
    }
}

fn checked_key(k: Vec<u8>) -> Result<Vec<u8>, String> {
    if k.len() >= 32 {
        Ok(k)
    } else {
        Err("PULLTHROUGH_TOKEN_KEY: use at least 32 characters".into())
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

    fn hash(password: &str) -> String {
        bcrypt::hash(password, 4).unwrap()
    }

    fn users(key: u8) -> Users {
        let users = Htpasswd::parse(&format!("# comment\nalice:{}\n", hash("s3cret"))).unwrap();
        Users::new(users, vec![key; 32])
    }

    fn basic(u: &str, p: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{u}:{p}")))
    }

    #[test]
    fn basic_credentials_are_checked() {
        let a = users(7);
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
        let a = users(7);
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
        // Another key: not ours.
        assert_eq!(
            users(8).authenticate(Some(&format!("Bearer {t}")), 1_000_000),
            None
        );
        // The same key, but alice is no longer a user: her token no longer counts.
        let without_alice = Users::new(
            Htpasswd::parse(&format!("bob:{}", hash("x"))).unwrap(),
            vec![7; 32],
        );
        assert_eq!(
            without_alice.authenticate(Some(&format!("Bearer {t}")), 1_000_000),
            None
        );
    }

    #[test]
    fn htpasswd_files_must_be_bcrypt() {
        let good = hash("pw");
        assert!(Htpasswd::parse(&format!("alice:{good}")).is_ok());
        for bad in [
            "alice:{SHA}abc".to_owned(),
            "alice:$apr1$abc".to_owned(),
            "alice:$2y$05$x".to_owned(),
            format!("alice:{}", &good[..59]),
            format!("alice:{good}x"),
            format!("alice:$2y$99{}", &good[6..]),
            format!("alice:{}!{}", &good[..30], &good[31..]),
            format!(":{good}"),
            "nocolon".to_owned(),
            "\n# only comments\n".to_owned(),
        ] {
            assert!(Htpasswd::parse(&bad).is_err(), "{bad:?}");
        }
        // Messages name the line, never the user or the hash (they can reach clients).
        let e = Htpasswd::parse(&format!("alice:{good}\nbob:{{SHA}}c2VjcmV0"))
            .err()
            .unwrap();
        assert!(e.contains("line 2 is not a bcrypt entry"), "{e}");
        assert!(!e.contains("bob") && !e.contains("c2VjcmV0"), "{e}");
        assert!(
            ClientAuth::new(
                Htpasswd::parse(&format!("a:{good}")).unwrap(),
                Some(vec![1; 8])
            )
            .is_err()
        );
    }

    /// A secret source whose reads wait for `gate` (when closed) and are counted.
    struct FakeSecrets {
        value: Mutex<Result<String, String>>,
        reads: std::sync::atomic::AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    impl FakeSecrets {
        fn new(value: Result<String, String>, open: bool) -> Arc<FakeSecrets> {
            Arc::new(FakeSecrets {
                value: Mutex::new(value),
                reads: Default::default(),
                gate: tokio::sync::Semaphore::new(if open { 1 << 20 } else { 0 }),
            })
        }
        fn set(&self, value: Result<String, String>) {
            *self.value.lock().unwrap() = value;
        }
        fn reads(&self) -> usize {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl SecretSource for FakeSecrets {
        async fn secret_string(&self, _arn: &str) -> Result<String, String> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _permit = self.gate.acquire().await.unwrap();
            self.value.lock().unwrap().clone()
        }
    }

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:users-AbCdEf";

    fn secret_auth(source: &Arc<FakeSecrets>, key: Option<Vec<u8>>) -> ClientAuth {
        ClientAuth::from_secret(
            ARN.into(),
            Arc::clone(source) as Arc<dyn SecretSource>,
            Duration::from_secs(300),
            key,
        )
        .unwrap()
    }

    /// Polls `n` first requests for the users once each before the read can finish (the gate
    /// opens only after all of them have been polled), and returns their outcomes.
    async fn concurrent_first_requests(
        auth: &ClientAuth,
        source: &FakeSecrets,
        n: usize,
    ) -> Vec<Result<Arc<Users>, Error>> {
        let requests = futures_util::future::join_all((0..n).map(|_| auth.users(0)));
        let open = async {
            source.gate.add_permits(1 << 20);
        };
        let (outcomes, ()) = futures_util::future::join(requests, open).await;
        outcomes
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_read() {
        let text = format!("alice:{}\n", hash("pw"));
        let source = FakeSecrets::new(Ok(text), false);
        let auth = secret_auth(&source, None);
        assert_eq!(
            source.reads(),
            0,
            "nothing is read before a request needs it"
        );
        let outcomes = concurrent_first_requests(&auth, &source, 8).await;
        assert_eq!(source.reads(), 1);
        for o in outcomes {
            assert!(o.unwrap().check_password("alice", "pw", 0));
        }
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_a_failed_read_and_are_refused() {
        let source = FakeSecrets::new(Err("AccessDeniedException".into()), false);
        let auth = secret_auth(&source, None);
        let outcomes = concurrent_first_requests(&auth, &source, 8).await;
        assert_eq!(source.reads(), 1);
        for o in outcomes {
            let e = o.err().expect("no users, nobody in");
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code, Code::Unavailable);
            assert!(e.message.contains(ARN) && e.message.contains("could not be read"));
            assert!(!e.message.contains("AccessDenied"), "{}", e.message);
        }
        // The failure stands for a short while, then the next request reads again.
        let later = SECRET_RETRY_SECS * 1000;
        assert!(auth.users(later - 1).await.is_err());
        assert_eq!(source.reads(), 1);
        source.set(Ok(format!("alice:{}\n", hash("pw"))));
        assert!(auth.users(later).await.is_ok());
        assert_eq!(source.reads(), 2);
    }

    #[tokio::test]
    async fn refresh_rotates_users_and_keys_and_a_failed_refresh_keeps_the_last_good_ones() {
        let source = FakeSecrets::new(Ok(format!("alice:{}\n", hash("old"))), true);
        let auth = secret_auth(&source, None);
        let first = auth.users(0).await.unwrap();
        assert!(first.check_password("alice", "old", 0));
        let token = first.issue_token("alice", 0);
        // Unchanged text: the same users (and remembered passwords) go on.
        let refresh = 300_000;
        let same = auth.users(refresh).await.unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        assert_eq!(source.reads(), 2);
        // A failed refresh keeps them, and is retried only after a while.
        source.set(Err("throttled".into()));
        let kept = auth.users(2 * refresh).await.unwrap();
        assert!(Arc::ptr_eq(&first, &kept));
        assert!(auth.users(2 * refresh + 1).await.is_ok());
        assert_eq!(source.reads(), 3);
        // So does a refresh that finds broken text.
        source.set(Ok("alice:{SHA}xyz".into()));
        let t = 2 * refresh + SECRET_RETRY_SECS * 1000;
        assert!(Arc::ptr_eq(&first, &auth.users(t).await.unwrap()));
        assert_eq!(source.reads(), 4);
        // Rotated: the new password works, the old one and the old tokens do not.
        source.set(Ok(format!("alice:{}\n", hash("new"))));
        let t = t + SECRET_RETRY_SECS * 1000;
        let rotated = auth.users(t).await.unwrap();
        assert_eq!(source.reads(), 5);
        assert!(rotated.check_password("alice", "new", t));
        assert!(!rotated.check_password("alice", "old", t));
        assert_eq!(rotated.verify_token(&token, 0), None);
    }

    #[tokio::test]
    async fn instances_reading_the_same_secret_accept_each_others_tokens() {
        let text = format!("alice:{}\n", hash("pw"));
        let a = secret_auth(&FakeSecrets::new(Ok(text.clone()), true), None);
        let b = secret_auth(&FakeSecrets::new(Ok(text), true), None);
        let token = a.users(0).await.unwrap().issue_token("alice", 0);
        assert_eq!(
            b.users(0).await.unwrap().verify_token(&token, 0),
            Some(Principal("alice".into()))
        );
        // Another secret (another deployment): another key.
        let other = format!("alice:{}\n", hash("pw"));
        let c = secret_auth(&FakeSecrets::new(Ok(other), true), None);
        assert_eq!(c.users(0).await.unwrap().verify_token(&token, 0), None);
        // An explicit PULLTHROUGH_TOKEN_KEY wins over the derived key.
        let d = secret_auth(
            &FakeSecrets::new(Ok(format!("alice:{}\n", hash("pw"))), true),
            Some(vec![9; 32]),
        );
        let token = d.users(0).await.unwrap().issue_token("alice", 0);
        assert_eq!(
            users(9).verify_token(&token, 0),
            Some(Principal("alice".into()))
        );
        assert_ne!(derive_token_key("x"), derive_token_key("y"));
        assert_ne!(derive_token_key("x"), Sha256::digest(b"x").to_vec());
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
