//! Client users held by a Secrets Manager secret: read on first use, shared by concurrent
//! first requests, re-read every refresh interval, the last good users kept when a read fails.

use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::users::{Users, derive_token_key};
use super::{AuthError, SECRET_RETRY_SECS};
use crate::config::Htpasswd;
use crate::secrets::SecretSource;

/// Users held by a Secrets Manager secret.
pub(super) struct SecretUsers {
    pub(super) arn: String,
    pub(super) secrets: Arc<dyn SecretSource>,
    pub(super) refresh_ms: u64,
    /// `PULLTHROUGH_TOKEN_KEY`; `None`: derived from the secret's content.
    pub(super) key: Option<Vec<u8>>,
    pub(super) state: Mutex<SecretState>,
    /// Held by the one request reading the secret; a first read is waited for by the others.
    pub(super) reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub(super) struct SecretState {
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
    fn answer(&self, arn: &str) -> Result<Arc<Users>, AuthError> {
        match (&self.current, &self.error) {
            (Some((users, _)), _) => Ok(Arc::clone(users)),
            (None, Some(message)) => Err(AuthError::Unavailable {
                message: message.clone(),
            }),
            (None, None) => Err(AuthError::Unavailable {
                message: format!(
                    "client authentication is unavailable: the client-auth secret {arn} has not been read yet"
                ),
            }),
        }
    }
}

impl SecretUsers {
    fn state(&self) -> std::sync::MutexGuard<'_, SecretState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn users(&self, now_ms: u64) -> Result<Arc<Users>, AuthError> {
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
            Err(ReadError(message)) => {
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
    async fn read(&self) -> Result<(Htpasswd, [u8; 32], Vec<u8>), ReadError> {
        let arn = &self.arn;
        let text = self.secrets.secret_string(arn).await.map_err(|e| {
            tracing::warn!(secret = %arn, error = %e, "cannot read the client-auth secret");
            format!(
                "client authentication is unavailable: the client-auth secret {arn} could not be read (the proxy's log says why)"
            )
        }).map_err(ReadError)?;
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
            ReadError(message)
        })?;
        let key = self.key.clone().unwrap_or_else(|| derive_token_key(&text));
        Ok((htpasswd, Sha256::digest(text.as_bytes()).into(), key))
    }
}

/// A failed read of the users' secret: the client's message (it names the secret and what is
/// wrong, never its content).
struct ReadError(String);
