//! Client users in htpasswd text (bcrypt entries only), from a file or a secret: the format and
//! its checks. Pure data: passwords are checked by the `auth` module.

use std::collections::HashMap;

/// The users of an htpasswd file (bcrypt entries only).
pub struct Htpasswd {
    /// User name → bcrypt hash.
    pub(crate) users: HashMap<String, String>,
}

impl Htpasswd {
    /// Parses htpasswd text: `user:$2y$NN$<53 characters>` lines, blank lines and `#` comments.
    /// Messages give line numbers, never a user's name or hash: they may reach clients when the
    /// text comes from a secret.
    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or(HtpasswdError::NotAnEntry { line: n + 1 })?;
            if user.is_empty() {
                return Err(HtpasswdError::EmptyUser { line: n + 1 });
            }
            if !is_bcrypt_hash(hash) {
                return Err(HtpasswdError::NotBcrypt { line: n + 1 });
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if users.is_empty() {
            return Err(HtpasswdError::NoUsers);
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

/// What is wrong with htpasswd text. Messages give line numbers, never a user's name or hash.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("line {line}: expected user:bcrypt-hash")]
    NotAnEntry { line: usize },
    #[error("line {line}: empty user name")]
    EmptyUser { line: usize },
    #[error("line {line} is not a bcrypt entry (user:$2y$…; create entries with `htpasswd -B`)")]
    NotBcrypt { line: usize },
    #[error("no users")]
    NoUsers,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(password: &str) -> String {
        bcrypt::hash(password, 4).unwrap()
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
        let e = e.to_string();
        assert!(e.contains("line 2 is not a bcrypt entry"), "{e}");
        assert!(!e.contains("bob") && !e.contains("c2VjcmV0"), "{e}");
    }
}
