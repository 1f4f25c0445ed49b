//! Client authentication: htpasswd users (from a file, or from a Secrets Manager secret
//! refreshed in the background of requests), our own short-lived tokens, and the bounds on
//! password checks. It answers "who is this, or why not" with an [`AuthError`]; the HTTP edge
//! turns that into a 401/429/503, and no module below the edge depends on this one.
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

mod limits;
mod secret;
mod users;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use limits::Checks;
pub use users::{Principal, TOKEN_LIFETIME_SECS, Users, decode_basic, derive_token_key};

use crate::config::{AuthLimits, Htpasswd};
use crate::secrets::SecretSource;
use secret::{SecretState, SecretUsers};

/// After a failed read of the users' secret, how long the outcome stands (the last good users,
/// or the 503) before a request reads it again. Bounds the calls an outage or a stream of
/// requests can cause.
pub const SECRET_RETRY_SECS: u64 = 10;

/// The address a request came from, as a request extension: the TCP peer in server mode, the
/// API Gateway / function URL `sourceIp` in Lambda mode. Failed logins are limited per address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Why a request could not be authenticated, beyond wrong credentials (which are `Ok(false)` or
/// `None`): each is answered without a password check.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Too many failed logins from this address or for this user name.
    #[error("too many failed logins; retry in {retry_after} s")]
    TooManyFailures { retry_after: u64 },
    /// No bcrypt turn came within `bcrypt_wait`.
    #[error("too many password checks in progress; retry shortly")]
    Busy,
    /// The users' secret could not be read (and no users are known).
    #[error("{message}")]
    Unavailable { message: String },
}

/// Client authentication that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("PULLTHROUGH_TOKEN_KEY: use at least 32 characters")]
    ShortKey,
    #[error("cannot draw a random token key from /dev/urandom: {0}")]
    RandomKey(std::io::Error),
}

/// Client authentication, when enabled: fixed users (an htpasswd file read at start-up), or
/// users read from a secret on first use and re-read every refresh interval.
pub struct ClientAuth {
    source: Source,
    /// Bounds on password checks; shared by every set of users a secret has held.
    checks: Checks,
}

enum Source {
    Fixed(Arc<Users>),
    Secret(SecretUsers),
}

impl ClientAuth {
    /// Fixed users. `key`: the token signing key; `None` draws a random one.
    pub fn new(users: Htpasswd, key: Option<Vec<u8>>) -> Result<ClientAuth, AuthSetupError> {
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
    ) -> Result<bool, AuthError> {
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
                    return Err(AuthError::Busy);
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
    ) -> Result<ClientAuth, AuthSetupError> {
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
    pub async fn users(&self, now_ms: u64) -> Result<Arc<Users>, AuthError> {
        match &self.source {
            Source::Fixed(users) => Ok(Arc::clone(users)),
            Source::Secret(s) => s.users(now_ms).await,
        }
    }
}

fn checked_key(k: Vec<u8>) -> Result<Vec<u8>, AuthSetupError> {
    if k.len() >= 32 {
        Ok(k)
    } else {
        Err(AuthSetupError::ShortKey)
    }
}

fn random_key() -> Result<Vec<u8>, AuthSetupError> {
    use std::io::Read;
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(AuthSetupError::RandomKey)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::Code;
    use crate::secrets::SecretError;
    use axum::http::StatusCode;
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use sha2::{Digest as _, Sha256};

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
    fn a_short_token_key_is_refused() {
        let good = hash("pw");
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
        async fn secret_string(&self, _arn: &str) -> Result<String, SecretError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _permit = self.gate.acquire().await.unwrap();
            self.value
                .lock()
                .unwrap()
                .clone()
                .map_err(SecretError::Read)
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
    ) -> Vec<Result<Arc<Users>, AuthError>> {
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
            // As the HTTP edge answers it.
            let e = crate::http::error::Error::from(o.err().expect("no users, nobody in"));
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
}
