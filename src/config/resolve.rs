//! How the layers become one [`Config`]: each value is the flag or environment variable, else
//! the file's, else the default, and is checked here, once, with a message that names the
//! setting both ways (`PULLTHROUGH_TAG_TTL/tag_ttl`) and what would do. The defaults of the
//! top-level settings live here; those of a table live with its type in the parent module.
//! Nothing here reads a file or the network (the environment only for upstream credentials).

use std::time::Duration;

use super::auth::{credentials_from_env, parse_client_auth};
use super::file::{FileConfig, s3_from_file, spill_from_file, upstream_from_file};
use super::lifecycle::gc_settings;
use super::parse::{
    count_setting, duration_setting, host_port, parse_duration, parse_store, parse_upstream_url,
    size_setting,
};
use super::{
    AdminToken, AuthLimits, Config, ConfigError, ConnectionLimits, S3Settings, Settings,
    SpillSettings, UpstreamConfig, builtins, err,
};

/// The configuration from `s` (flags and environment) over `file` over the defaults.
pub(super) fn resolve(s: &Settings, mut file: FileConfig) -> Result<Config, ConfigError> {
    let connections = connection_limits(s, &file)?;
    let auth_limits = auth_limits(s, &file)?;
    let listen_text = s
        .listen
        .clone()
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:5000".into());
    let listen = listen_text.parse().map_err(|_| {
            err(format!(
                "PULLTHROUGH_LISTEN/--listen: {listen_text:?} is not a socket address; use e.g. 127.0.0.1:5000 or 0.0.0.0:5000"
            ))
        })?;

    let metrics_listen = match s.metrics_listen.clone().or(file.metrics_listen) {
        None => None,
        Some(t) if t.trim().is_empty() => None,
        Some(t) => Some(t.trim().parse().map_err(|_| {
            err(format!(
                "PULLTHROUGH_METRICS_LISTEN/metrics_listen: {t:?} is not a socket address; use e.g. 127.0.0.1:9090"
            ))
        })?),
    };
    let log_format = super::LogFormat::from_settings(s)?;

    let store_text = s
        .store
        .clone()
        .or(file.store)
        .unwrap_or_else(|| "./pullthrough-data".into());
    let store = parse_store(&store_text)?;

    let dur = |name: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(t) => parse_duration(&t).map_err(|e| err(format!("{name}: {e}"))),
        }
    };
    let tag_ttl = dur(
        "PULLTHROUGH_TAG_TTL/tag_ttl",
        s.tag_ttl.clone().or(file.tag_ttl),
        Duration::from_secs(60),
    )?;
    let presign_ttl = dur(
        "PULLTHROUGH_PRESIGN_TTL/presign_ttl",
        s.presign_ttl.clone().or(file.presign_ttl),
        Duration::from_secs(15 * 60),
    )?;
    if presign_ttl < Duration::from_secs(1) || presign_ttl > Duration::from_secs(7 * 24 * 3600) {
        return Err(err(
            "PULLTHROUGH_PRESIGN_TTL: must be between 1s and 7 days (the SigV4 presigning limit)",
        ));
    }
    let connect_timeout = dur(
        "connect_timeout",
        file.connect_timeout,
        Duration::from_secs(5),
    )?;
    let request_timeout = dur(
        "request_timeout",
        file.request_timeout,
        Duration::from_secs(30),
    )?;
    let read_timeout = dur("read_timeout", file.read_timeout, Duration::from_secs(30))?;
    let fill_deadline = dur(
        "PULLTHROUGH_FILL_DEADLINE/fill_deadline",
        s.fill_deadline.clone().or(file.fill_deadline),
        Duration::from_secs(20),
    )?;
    if fill_deadline < Duration::from_millis(100) || fill_deadline > Duration::from_secs(28) {
        return Err(err(
            "PULLTHROUGH_FILL_DEADLINE: must be between 100ms and 28s (API Gateway ends a request after 30s; default 20s)",
        ));
    }
    for (name, d) in [
        ("connect_timeout", connect_timeout),
        ("request_timeout", request_timeout),
        ("read_timeout", read_timeout),
    ] {
        if d.is_zero() {
            return Err(err(format!("{name}: must be greater than zero")));
        }
    }

    let auth = parse_client_auth(
        &s.auth
            .clone()
            .or(file.auth)
            .unwrap_or_else(|| "none".into()),
        s.auth_refresh.clone().or(file.auth_refresh),
    )?;
    let token_key = s.token_key.clone();
    if token_key.as_ref().is_some_and(|k| k.len() < 32) {
        return Err(err("PULLTHROUGH_TOKEN_KEY: use at least 32 characters"));
    }
    // Empty means unset: a template may pass an empty parameter through.
    let admin_token = match s.admin_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(AdminToken::parse(t)?),
        None => None,
    };
    let gc = gc_settings(s, file.gc.take())?;

    let mut upstreams: Vec<UpstreamConfig> = builtins::upstreams();
    for u in file.upstream {
        let parsed = upstream_from_file(u)?;
        upstreams.retain(|existing| existing.alias != parsed.alias);
        upstreams.push(parsed);
    }

    let default_text = s
        .default_upstream
        .clone()
        .or(file.default_upstream)
        .unwrap_or_else(|| "docker.io".into());
    let default_upstream = if default_text.contains("://") {
        let url = parse_upstream_url(&default_text, false, "PULLTHROUGH_DEFAULT_UPSTREAM")?;
        let alias = host_port(&url);
        upstreams.retain(|u| u.alias != alias);
        upstreams.push(UpstreamConfig {
            alias: alias.clone(),
            other_names: vec![],
            url,
            username: None,
            password: None,
            secret_arn: None,
            library_prefix: false,
            tag_ttl: None,
            allow: vec![],
        });
        alias
    } else {
        let found = upstreams
            .iter()
            .find(|u| u.alias == default_text || u.other_names.contains(&default_text));
        match found {
            Some(u) => u.alias.clone(),
            None => {
                let known: Vec<&str> = upstreams.iter().map(|u| u.alias.as_str()).collect();
                return Err(err(format!(
                    "PULLTHROUGH_DEFAULT_UPSTREAM: {default_text:?} is neither a configured alias ({}) nor an https:// URL",
                    known.join(", ")
                )));
            }
        }
    };

    for u in &mut upstreams {
        credentials_from_env(u, |name| std::env::var(name).ok())?;
    }

    let mut names = std::collections::HashSet::new();
    for u in &upstreams {
        for n in std::iter::once(&u.alias).chain(&u.other_names) {
            if !names.insert(n.clone()) {
                return Err(err(format!(
                    "upstream name {n:?} is used by more than one [[upstream]] entry"
                )));
            }
        }
    }

    let max_manifest_size = file.max_manifest_size.unwrap_or(4 * 1024 * 1024);
    if !(1024..=64 * 1024 * 1024).contains(&max_manifest_size) {
        return Err(err(
            "max_manifest_size: must be between 1 KiB and 64 MiB (default 4 MiB)",
        ));
    }

    Ok(Config {
        listen,
        metrics_listen,
        log_format,
        store,
        default_upstream,
        upstreams,
        tag_ttl,
        presign_ttl,
        max_manifest_size,
        connect_timeout,
        request_timeout,
        read_timeout,
        memory_cache_bytes: file.memory_cache_bytes.unwrap_or(64 * 1024 * 1024),
        auth,
        token_key,
        admin_token,
        gc,
        fill_deadline,
        connections,
        auth_limits,
        s3: match file.s3 {
            Some(f) => s3_from_file(f)?,
            None => S3Settings::default(),
        },
        spill: match file.spill {
            Some(f) => spill_from_file(f)?,
            None => SpillSettings::default(),
        },
    })
}

fn connection_limits(s: &Settings, f: &FileConfig) -> Result<ConnectionLimits, ConfigError> {
    let d = ConnectionLimits::default();
    let ms = Duration::from_millis;
    let hour = Duration::from_secs(3600);
    let limits = ConnectionLimits {
        header_read_timeout: duration_setting(
            "PULLTHROUGH_HEADER_READ_TIMEOUT/header_read_timeout",
            &s.header_read_timeout,
            &f.header_read_timeout,
            d.header_read_timeout,
            ms(100)..=hour,
            "10s",
        )?,
        idle_timeout: duration_setting(
            "PULLTHROUGH_IDLE_TIMEOUT/idle_timeout",
            &s.idle_timeout,
            &f.idle_timeout,
            d.idle_timeout,
            ms(100)..=hour,
            "60s",
        )?,
        write_timeout: duration_setting(
            "PULLTHROUGH_WRITE_TIMEOUT/write_timeout",
            &s.write_timeout,
            &f.write_timeout,
            d.write_timeout,
            ms(100)..=hour,
            "60s",
        )?,
        max_connections: count_setting(
            "PULLTHROUGH_MAX_CONNECTIONS/max_connections",
            &s.max_connections,
            f.max_connections,
            d.max_connections,
            1..=1_000_000,
        )?,
        max_header_size: size_setting(
            "PULLTHROUGH_MAX_HEADER_SIZE/max_header_size",
            &s.max_header_size,
            &f.max_header_size,
            d.max_header_size,
            1024..=1024 * 1024,
        )?,
        max_head_size: size_setting(
            "PULLTHROUGH_MAX_HEAD_SIZE/max_head_size",
            &s.max_head_size,
            &f.max_head_size,
            d.max_head_size,
            // The HTTP/1 parser needs at least 8 KiB.
            8192..=16 * 1024 * 1024,
        )?,
        shutdown_grace: duration_setting(
            "PULLTHROUGH_SHUTDOWN_GRACE/shutdown_grace",
            &s.shutdown_grace,
            &f.shutdown_grace,
            d.shutdown_grace,
            Duration::ZERO..=hour,
            "30s",
        )?,
    };
    if limits.max_head_size < limits.max_header_size {
        return Err(err(
            "PULLTHROUGH_MAX_HEAD_SIZE: must be at least PULLTHROUGH_MAX_HEADER_SIZE (defaults 128KiB and 16KiB)",
        ));
    }
    Ok(limits)
}

fn auth_limits(s: &Settings, f: &FileConfig) -> Result<AuthLimits, ConfigError> {
    let d = AuthLimits::default();
    Ok(AuthLimits {
        bcrypt_concurrency: count_setting(
            "PULLTHROUGH_BCRYPT_CONCURRENCY/bcrypt_concurrency",
            &s.bcrypt_concurrency,
            f.bcrypt_concurrency,
            d.bcrypt_concurrency,
            1..=1024,
        )?,
        bcrypt_wait: duration_setting(
            "PULLTHROUGH_BCRYPT_WAIT/bcrypt_wait",
            &s.bcrypt_wait,
            &f.bcrypt_wait,
            d.bcrypt_wait,
            Duration::from_millis(100)..=Duration::from_secs(60),
            "5s",
        )?,
        failures_per_minute: count_setting(
            "PULLTHROUGH_AUTH_FAILURES_PER_MINUTE/auth_failures_per_minute",
            &s.auth_failures_per_minute,
            f.auth_failures_per_minute,
            d.failures_per_minute,
            1..=100_000,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreLocation;

    #[test]
    fn settings_override_the_file() {
        let s = Settings {
            tag_ttl: Some("5m".into()),
            ..Settings::default()
        };
        let c = Config::from_toml(&s, "tag_ttl = \"10s\"\nstore = \"/tmp/x\"").unwrap();
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        assert_eq!(c.store, StoreLocation::Fs("/tmp/x".into()));
    }

    #[test]
    fn clear_messages_for_bad_values() {
        let bad = |s: Settings, toml: &str| Config::from_toml(&s, toml).unwrap_err().to_string();
        assert!(
            bad(
                Settings {
                    tag_ttl: Some("abc".into()),
                    ..Default::default()
                },
                ""
            )
            .contains("PULLTHROUGH_TAG_TTL")
        );
        assert!(
            bad(
                Settings {
                    listen: Some("nope".into()),
                    ..Default::default()
                },
                ""
            )
            .contains("PULLTHROUGH_LISTEN")
        );
        assert!(
            bad(
                Settings {
                    store: Some("ftp://x".into()),
                    ..Default::default()
                },
                ""
            )
            .contains("PULLTHROUGH_STORE")
        );
        assert!(
            bad(
                Settings {
                    default_upstream: Some("nowhere".into()),
                    ..Default::default()
                },
                ""
            )
            .contains("PULLTHROUGH_DEFAULT_UPSTREAM")
        );
        assert!(bad(Settings::default(), "unknown_key = 1").contains("unknown"));
        assert!(
            bad(
                Settings {
                    auth: Some("htpasswd".into()),
                    ..Default::default()
                },
                ""
            )
            .contains("PULLTHROUGH_AUTH")
        );
    }

    #[test]
    fn default_upstream_may_be_a_url() {
        let s = Settings {
            default_upstream: Some("https://registry.example:8443".into()),
            ..Default::default()
        };
        let c = Config::load(&s).unwrap();
        assert_eq!(c.default_upstream, "registry.example:8443");
        assert!(c.upstream("registry.example:8443").is_some());
    }

    #[test]
    fn file_entries_override_builtins() {
        let toml = "[[upstream]]\nalias = \"docker.io\"\nurl = \"https://mirror.example\"\n";
        let c = Config::from_toml(&Settings::default(), toml).unwrap();
        let d = c.upstream("docker.io").unwrap();
        assert_eq!(d.url.as_str(), "https://mirror.example/");
        assert!(d.library_prefix);
        assert_eq!(
            c.upstreams
                .iter()
                .filter(|u| u.alias == "docker.io")
                .count(),
            1
        );
    }

    #[test]
    fn connection_and_password_limits() {
        let c = Config::load(&Settings::default()).unwrap();
        assert_eq!(c.connections, ConnectionLimits::default());
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.connections.max_header_size, 16 * 1024);
        assert_eq!(c.auth_limits.failures_per_minute, 10);
        let toml = "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nwrite_timeout = \"3s\"\nmax_connections = 5\nmax_header_size = \"2KiB\"\nmax_head_size = 9000\nshutdown_grace = \"0s\"\nbcrypt_concurrency = 3\nbcrypt_wait = \"1s\"\nauth_failures_per_minute = 4\n";
        let c = Config::from_toml(&Settings::default(), toml).unwrap();
        assert_eq!(
            c.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(2),
                write_timeout: Duration::from_secs(3),
                max_connections: 5,
                max_header_size: 2048,
                max_head_size: 9000,
                shutdown_grace: Duration::ZERO,
            }
        );
        assert_eq!(
            c.auth_limits,
            AuthLimits {
                bcrypt_concurrency: 3,
                bcrypt_wait: Duration::from_secs(1),
                failures_per_minute: 4,
            }
        );
        // Flags and the environment win over the file.
        let s = Settings {
            max_connections: Some("7".into()),
            write_timeout: Some("500ms".into()),
            ..Settings::default()
        };
        let c = Config::from_toml(&s, toml).unwrap();
        assert_eq!(c.connections.max_connections, 7);
        assert_eq!(c.connections.write_timeout, Duration::from_millis(500));
        let bad = |s: Settings, toml: &str| Config::from_toml(&s, toml).unwrap_err().to_string();
        let e = bad(
            Settings {
                max_connections: Some("0".into()),
                ..Settings::default()
            },
            "",
        );
        assert!(e.contains("PULLTHROUGH_MAX_CONNECTIONS"), "{e}");
        let e = bad(Settings::default(), "header_read_timeout = \"10ms\"");
        assert!(e.contains("PULLTHROUGH_HEADER_READ_TIMEOUT"), "{e}");
        let e = bad(Settings::default(), "max_head_size = \"4KiB\"");
        assert!(e.contains("PULLTHROUGH_MAX_HEAD_SIZE"), "{e}");
        let e = bad(
            Settings::default(),
            "max_header_size = \"64KiB\"\nmax_head_size = \"32KiB\"",
        );
        assert!(e.contains("at least PULLTHROUGH_MAX_HEADER_SIZE"), "{e}");
        let e = bad(
            Settings {
                auth_failures_per_minute: Some("many".into()),
                ..Settings::default()
            },
            "",
        );
        assert!(e.contains("PULLTHROUGH_AUTH_FAILURES_PER_MINUTE"), "{e}");
    }

    #[test]
    fn metrics_listen_and_log_format() {
        let c = Config::from_toml(&Settings::default(), "").unwrap();
        assert_eq!((c.metrics_listen, c.log_format), (None, None));
        let c =
            Config::from_toml(&Settings::default(), "metrics_listen = \"127.0.0.1:9090\"").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        let s = Settings {
            metrics_listen: Some("0.0.0.0:9100".into()),
            log_format: Some("JSON".into()),
            ..Settings::default()
        };
        let c = Config::from_toml(&s, "metrics_listen = \"127.0.0.1:9090\"").unwrap();
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(c.log_format, Some(crate::config::LogFormat::Json));
        let bad = |s: Settings| Config::from_toml(&s, "").unwrap_err().to_string();
        let e = bad(Settings {
            metrics_listen: Some("9090".into()),
            ..Settings::default()
        });
        assert!(e.contains("PULLTHROUGH_METRICS_LISTEN"), "{e}");
        let e = bad(Settings {
            log_format: Some("xml".into()),
            ..Settings::default()
        });
        assert!(e.contains("PULLTHROUGH_LOG_FORMAT"), "{e}");
    }
}
