//! The authentication settings: who may pull (`PULLTHROUGH_AUTH`: none, an htpasswd file, or a
//! Secrets Manager secret holding one) and what the proxy presents to an upstream when the
//! environment gives it (`PULLTHROUGH_UPSTREAM_<ALIAS>_USERNAME`/`_PASSWORD`). An htpasswd file
//! is read and checked here, at start-up; a secret is only named (its shape checked), never
//! read: that is the authentication layer's job, on first use.

use std::time::Duration;

use super::parse::{check_secret_arn, parse_duration};
use super::{ClientAuthSetting, ConfigError, DEFAULT_AUTH_REFRESH, UpstreamConfig, err};

/// The environment variable prefix for an upstream's credentials:
/// `PULLTHROUGH_UPSTREAM_<ALIAS>_` with the alias upper-cased and every character other than a
/// letter or digit replaced by `_` (`ghcr.io` → `PULLTHROUGH_UPSTREAM_GHCR_IO_`).
pub fn credentials_env_prefix(alias: &str) -> String {
    let name: String = alias
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PULLTHROUGH_UPSTREAM_{name}_")
}

/// `PULLTHROUGH_UPSTREAM_<ALIAS>_USERNAME` and `_PASSWORD` (both or neither) replace the file's
/// credentials for a configured upstream. They are read here, at start-up, without I/O.
pub(super) fn credentials_from_env(
    u: &mut UpstreamConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let prefix = credentials_env_prefix(&u.alias);
    let user = env(&format!("{prefix}USERNAME")).filter(|v| !v.is_empty());
    let pass = env(&format!("{prefix}PASSWORD")).filter(|v| !v.is_empty());
    match (user, pass) {
        (None, None) => Ok(()),
        (Some(user), Some(pass)) => {
            u.username = Some(user);
            u.password = Some(pass);
            u.secret_arn = None;
            Ok(())
        }
        _ => Err(err(format!(
            "{prefix}USERNAME and {prefix}PASSWORD: set both or neither"
        ))),
    }
}

/// `PULLTHROUGH_AUTH` (`--auth`, `auth`): `none`, a Secrets Manager secret ARN (anything starting
/// with `arn:` is taken for one and must be well formed), else the path of an htpasswd file,
/// which is read and checked now. `refresh` (`PULLTHROUGH_AUTH_REFRESH`) applies to secrets only.
pub(super) fn parse_client_auth(
    auth: &str,
    refresh: Option<String>,
) -> Result<ClientAuthSetting, ConfigError> {
    if !auth.starts_with("arn:") {
        if refresh.is_some() {
            return Err(err(
                "PULLTHROUGH_AUTH_REFRESH: only applies when PULLTHROUGH_AUTH is a Secrets Manager secret ARN",
            ));
        }
        if auth == "none" {
            return Ok(ClientAuthSetting::None);
        }
        if auth.is_empty() {
            return Err(err(
                "PULLTHROUGH_AUTH: empty; give \"none\", an htpasswd file or a Secrets Manager secret ARN",
            ));
        }
        let text = std::fs::read_to_string(auth).map_err(|e| {
            err(format!(
                "PULLTHROUGH_AUTH: cannot read htpasswd file {auth:?}: {e} (use \"none\" to turn client auth off)"
            ))
        })?;
        super::Htpasswd::parse(&text)
            .map_err(|e| err(format!("PULLTHROUGH_AUTH: htpasswd file {auth:?}: {e}")))?;
        return Ok(ClientAuthSetting::Htpasswd(text));
    }
    check_secret_arn(auth).map_err(|e| {
        err(format!(
            "PULLTHROUGH_AUTH: {e}; give \"none\", an htpasswd file, or the ARN of the secret that holds the users"
        ))
    })?;
    let refresh = match &refresh {
        None => DEFAULT_AUTH_REFRESH,
        Some(t) => parse_duration(t).map_err(|e| err(format!("PULLTHROUGH_AUTH_REFRESH: {e}")))?,
    };
    if refresh < Duration::from_secs(10) || refresh > Duration::from_secs(86400) {
        return Err(err(
            "PULLTHROUGH_AUTH_REFRESH: must be between 10s and 1d (default 5m)",
        ));
    }
    Ok(ClientAuthSetting::Secret {
        arn: auth.to_owned(),
        refresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};

    #[test]
    fn client_auth_from_a_secret_arn() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:pullthrough/users-AbCdEf";
        let with = |auth: &str, refresh: Option<&str>| {
            Config::load(&Settings {
                auth: Some(auth.into()),
                auth_refresh: refresh.map(Into::into),
                ..Settings::default()
            })
        };
        // Start-up reads nothing: the ARN is only checked for its shape.
        assert_eq!(
            with(arn, None).unwrap().auth,
            ClientAuthSetting::Secret {
                arn: arn.into(),
                refresh: Duration::from_secs(300)
            }
        );
        assert_eq!(
            with(arn, Some("1m")).unwrap().auth,
            ClientAuthSetting::Secret {
                arn: arn.into(),
                refresh: Duration::from_secs(60)
            }
        );
        // Other partitions, and the same from the config file.
        let cn = "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:users-AbCdEf";
        let c = Config::from_toml(
            &Settings::default(),
            &format!("auth = \"{cn}\"\nauth_refresh = \"30s\"\n"),
        )
        .unwrap();
        assert_eq!(
            c.auth,
            ClientAuthSetting::Secret {
                arn: cn.into(),
                refresh: Duration::from_secs(30)
            }
        );
        assert_eq!(
            Config::load(&Settings::default()).unwrap().auth,
            ClientAuthSetting::None
        );
    }

    #[test]
    fn client_auth_mistakes_are_explained() {
        let bad = |auth: &str, refresh: Option<&str>| {
            Config::load(&Settings {
                auth: Some(auth.into()),
                auth_refresh: refresh.map(Into::into),
                ..Settings::default()
            })
            .unwrap_err()
            .to_string()
        };
        for arn in [
            "arn:aws:secretsmanager:eu-west-1:123:secret:x",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
            "arn:aws:s3:::bucket",
            "arn:aws:secretsmanager:eu-west-1:123456789012:parameter:x",
            "arn:aws:secretsmanager:EU:123456789012:secret:x",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:a b",
        ] {
            let e = bad(arn, None);
            assert!(
                e.contains("PULLTHROUGH_AUTH")
                    && e.contains("is not a Secrets Manager secret ARN")
                    && e.contains("arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME"),
                "{arn}: {e}"
            );
        }
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:users-AbCdEf";
        for refresh in ["1s", "2d", "soon"] {
            let e = bad(arn, Some(refresh));
            assert!(e.contains("PULLTHROUGH_AUTH_REFRESH"), "{refresh}: {e}");
        }
        let e = bad("none", Some("5m"));
        assert!(
            e.contains("PULLTHROUGH_AUTH_REFRESH") && e.contains("only applies"),
            "{e}"
        );
        assert!(bad("", None).contains("empty"));
        let e = bad("/nonexistent/htpasswd", None);
        assert!(e.contains("cannot read htpasswd file"), "{e}");
    }

    #[test]
    fn upstream_credentials_from_the_environment() {
        assert_eq!(
            credentials_env_prefix("ghcr.io"),
            "PULLTHROUGH_UPSTREAM_GHCR_IO_"
        );
        assert_eq!(
            credentials_env_prefix("registry.local:5000"),
            "PULLTHROUGH_UPSTREAM_REGISTRY_LOCAL_5000_"
        );
        let c = Config::from_toml(&Settings::default(), "").unwrap();
        let mut u = c.upstream("ghcr.io").unwrap().clone();
        let env = |name: &str| match name {
            "PULLTHROUGH_UPSTREAM_GHCR_IO_USERNAME" => Some("bot".to_owned()),
            "PULLTHROUGH_UPSTREAM_GHCR_IO_PASSWORD" => Some("ghp_x".to_owned()),
            _ => None,
        };
        credentials_from_env(&mut u, env).unwrap();
        assert_eq!(u.username.as_deref(), Some("bot"));
        assert_eq!(u.password.as_deref(), Some("ghp_x"));
        let half = |name: &str| {
            (name == "PULLTHROUGH_UPSTREAM_GHCR_IO_USERNAME").then(|| "bot".to_owned())
        };
        let e = credentials_from_env(&mut u, half).unwrap_err();
        assert!(e.to_string().contains("both or neither"), "{e}");
    }
}
