//! One [`Config`], built from defaults, an optional TOML file, environment variables and flags
//! (later ones win), and validated once at start-up with messages that say what to fix.
//!
//! This module owns the validated configuration every other layer reads (the types below),
//! and how it is made:
//! - `cli`: the raw flags and environment variables ([`Settings`], filled by clap);
//! - `file`: the TOML schema and its tables (`[[upstream]]`, `[s3]`, `[spill]`);
//! - `builtins`: the upstreams known without any configuration (`docker.io`, `ghcr.io`, …);
//! - `auth`: client authentication and upstream credentials from the environment;
//! - `lifecycle`: the admin API's token and gc's settings (`[gc]`), and the ranges of gc's values;
//! - `resolve`: defaults, then the file, then the settings, checked into one [`Config`];
//! - `parse`: the value grammars (sizes, durations, store locations, URLs, secret ARNs).
//!
//! It never does network I/O (a secret is named here, read by the layer that uses it), never
//! reads a file other than the config file and an htpasswd file, and holds no running state:
//! a [`Config`] is plain data, built once at start-up.

mod auth;
mod builtins;
mod cli;
mod file;
mod htpasswd;
mod lifecycle;
mod parse;
mod pattern;
mod resolve;

pub use auth::credentials_env_prefix;
pub use cli::Settings;
pub use htpasswd::{Htpasswd, HtpasswdError};
pub use lifecycle::{
    AdminToken, GC_OLDER_THAN, GcSettings, GcValueError, gc_grace, gc_interval, gc_max_size,
    gc_older_than,
};
pub use parse::{ValueError, check_secret_arn, parse_duration, parse_size, secret_arn_region};
pub use pattern::{PatternError, RepoPattern, allowed};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use file::FileConfig;

/// Where the cache keeps its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded filesystem store rooted at this directory.
    Fs(PathBuf),
    /// An S3 bucket and an optional key prefix (no leading or trailing slash).
    S3 { bucket: String, prefix: String },
}

/// One upstream registry the proxy may fetch from. Upstreams come only from configuration, never
/// from a request, so the proxy cannot be aimed at an arbitrary host.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The name clients use: `?ns=<alias>` and `/v2/<alias>/<repo>/...`; also the first component
    /// of every store key for this upstream.
    pub alias: String,
    /// Other names that mean the same upstream (`index.docker.io` for `docker.io`).
    pub other_names: Vec<String>,
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<String>,
    /// An AWS Secrets Manager secret holding `{"username":..,"password":..}` for this upstream,
    /// read on first use (never at start-up) and then kept for the life of the process.
    pub secret_arn: Option<String>,
    /// Docker Hub keeps official images under `library/`: `alpine` means `library/alpine`.
    pub library_prefix: bool,
    /// Per-upstream tag freshness; the global `tag_ttl` when unset.
    pub tag_ttl: Option<Duration>,
    /// Repositories that may be pulled from this upstream (globs); empty means all.
    pub allow: Vec<RepoPattern>,
}

/// Client authentication as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuthSetting {
    None,
    /// The text of an htpasswd file (validated: bcrypt entries only).
    Htpasswd(String),
    /// An AWS Secrets Manager secret whose `SecretString` is htpasswd text. Read on the first
    /// request that needs a user (never at start-up), then again every `refresh`.
    Secret {
        arn: String,
        refresh: Duration,
    },
}

/// Default of `PULLTHROUGH_AUTH_REFRESH`: how long users read from a secret are used before the
/// secret is read again.
pub const DEFAULT_AUTH_REFRESH: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreLocation,
    /// Alias of the upstream used when neither `?ns=` nor a path prefix names one.
    pub default_upstream: String,
    pub upstreams: Vec<UpstreamConfig>,
    /// How long a tag pointer is trusted without asking the upstream.
    pub tag_ttl: Duration,
    /// Lifetime of presigned blob URLs (S3 store).
    pub presign_ttl: Duration,
    /// Largest manifest accepted from an upstream.
    pub max_manifest_size: u64,
    /// Upstream TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request limit for small upstream requests (manifests, tags, tokens, HEADs).
    pub request_timeout: Duration,
    /// Longest silence tolerated while streaming a blob body from an upstream.
    pub read_timeout: Duration,
    /// Budget of the in-memory cache of immutable manifests by digest.
    pub memory_cache_bytes: usize,
    /// Client authentication.
    pub auth: ClientAuthSetting,
    /// Signing key for client tokens (`PULLTHROUGH_TOKEN_KEY`).
    pub token_key: Option<String>,
    /// The admin API's bearer token (`PULLTHROUGH_ADMIN_TOKEN`); `None`: no admin API (every
    /// `/_pullthrough/` path is 404).
    pub admin_token: Option<AdminToken>,
    /// gc's retention, grace and size bound, and server mode's period (the `[gc]` table).
    pub gc: GcSettings,
    /// How to reach the bucket of an `s3://` store (the `[s3]` table); unused by the filesystem
    /// store.
    pub s3: S3Settings,
    /// Lambda mode: how long a blob miss is copied while the client waits, before the copy is
    /// handed to an asynchronous invocation (API Gateway gives up after 30 s).
    pub fill_deadline: Duration,
    /// Server mode: where blob fills over S3 spill the bytes their clients stream from (the
    /// `[spill]` table).
    pub spill: SpillSettings,
    /// Server mode: what one client connection may hold and for how long, and the shutdown grace.
    pub connections: ConnectionLimits,
    /// Bounds on password checks (bcrypt) with client auth on.
    pub auth_limits: AuthLimits,
    /// Server mode: serve `/metrics` on this address only (not on `listen`); `None` serves it
    /// beside the API.
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines are written; `None`: the mode's default (text for the server, JSON in
    /// Lambda). `main` reads it with [`LogFormat::from_settings`] before the rest is loaded, so
    /// that configuration errors are logged in the chosen format too.
    pub log_format: Option<LogFormat>,
}

/// `PULLTHROUGH_LOG_FORMAT`: how log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event (`key=value` fields), coloured only on a terminal.
    Text,
    /// One JSON object per line, fields at the top level (CloudWatch Logs Insights, Loki, jq).
    Json,
}

impl LogFormat {
    /// The format `settings` ask for, `None` when they name none; an error for anything but
    /// `text` or `json`.
    pub fn from_settings(settings: &Settings) -> Result<Option<LogFormat>, ConfigError> {
        match settings.log_format.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) if t.eq_ignore_ascii_case("text") => Ok(Some(LogFormat::Text)),
            Some(t) if t.eq_ignore_ascii_case("json") => Ok(Some(LogFormat::Json)),
            Some(t) => Err(err(format!(
                "PULLTHROUGH_LOG_FORMAT/--log-format: {t:?} is not a log format; use text or json"
            ))),
        }
    }
}

/// What the start-up log line says about a configuration: enough to tell which store,
/// upstreams, client auth and TTLs a process runs with, and never a secret (no passwords, no
/// token key, no user entries, no credentials inside URLs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub store: String,
    /// `alias=origin` per upstream, with `(tag_ttl=…)` where it has its own, comma-separated;
    /// credentials appear as `+credentials` or `+secret`, never their values.
    pub upstreams: String,
    pub default_upstream: String,
    /// `none`, `htpasswd (N users)` or `secret <ARN>`.
    pub auth: String,
    pub tag_ttl: String,
    pub presign_ttl: String,
    /// `on` when `PULLTHROUGH_ADMIN_TOKEN` is set (never the token), else `off`.
    pub admin_api: String,
    /// Server mode's periodic gc: `every <interval>, older than <retention>`, or `off`.
    pub gc: String,
}

/// Where a process runs, for its start-up line ([`Summary::log`]).
pub enum Running<'a> {
    /// `serve`: the bound API address, and where `/metrics` is served.
    Server { listen: &'a str, metrics: &'a str },
    /// A Lambda function, by name (its gc runs on the template's schedule, not here).
    Lambda { function: &'a str },
}

impl Summary {
    /// Writes the start-up line: where the process runs, and with what.
    pub fn log(&self, running: Running<'_>) {
        use tracing::field::display;
        let (listen, metrics, function, gc, message) = match running {
            Running::Server { listen, metrics } => (
                Some(listen),
                Some(metrics),
                None,
                Some(self.gc.as_str()),
                "pullthrough serving",
            ),
            Running::Lambda { function } => (
                None,
                None,
                Some(function),
                None,
                "pullthrough Lambda configuration",
            ),
        };
        let (listen, metrics, function, gc) = (
            listen.map(display),
            metrics.map(display),
            function.map(display),
            gc.map(display),
        );
        tracing::info!(
            listen,
            metrics,
            function,
            store = %self.store,
            upstreams = %self.upstreams,
            default_upstream = %self.default_upstream,
            auth = %self.auth,
            tag_ttl = %self.tag_ttl,
            presign_ttl = %self.presign_ttl,
            admin_api = %self.admin_api,
            gc,
            "{message}"
        );
    }
}

impl Config {
    /// The start-up line's view of this configuration.
    pub fn summary(&self) -> Summary {
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                let mut s = format!("{}={}", u.alias, u.url.origin().ascii_serialization());
                if let Some(t) = u.tag_ttl {
                    s.push_str(&format!(" (tag_ttl={})", secs(t)));
                }
                if u.secret_arn.is_some() {
                    s.push_str(" +secret");
                } else if u.username.is_some() {
                    s.push_str(" +credentials");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ");
        let auth = match &self.auth {
            ClientAuthSetting::None => "none".to_owned(),
            ClientAuthSetting::Htpasswd(text) => format!(
                "htpasswd ({} users)",
                text.lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .count()
            ),
            ClientAuthSetting::Secret { arn, .. } => format!("secret {arn}"),
        };
        Summary {
            store: self.store.to_string(),
            upstreams,
            default_upstream: self.default_upstream.clone(),
            auth,
            tag_ttl: secs(self.tag_ttl),
            presign_ttl: secs(self.presign_ttl),
            admin_api: if self.admin_token.is_some() {
                "on"
            } else {
                "off"
            }
            .to_owned(),
            gc: match self.gc.interval {
                Some(every) => format!(
                    "every {}, older than {}",
                    secs(every),
                    secs(self.gc.older_than)
                ),
                None => "off".to_owned(),
            },
        }
    }
}

impl std::fmt::Display for StoreLocation {
    /// As configured: `s3://bucket/prefix` or the directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Fs(root) => write!(f, "{}", root.display()),
            StoreLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            StoreLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// The `[spill]` table: local disk between a cold blob's upstream and its readers (clients and
/// the S3 upload) in server mode over S3. The filesystem store spills into its own temporary
/// directory instead, and Lambda mode never streams blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpillSettings {
    /// The directory (created if missing; spill files of dead processes in it are removed at
    /// start-up).
    pub dir: PathBuf,
    /// Bytes all spill files may hold together. A fill that would pass it is not streamed: it
    /// is copied straight into S3 and its clients get the redirect afterwards.
    pub max_bytes: u64,
}

impl Default for SpillSettings {
    fn default() -> Self {
        SpillSettings {
            dir: std::env::temp_dir().join("pullthrough-spill"),
            max_bytes: 16 * 1024 * MIB,
        }
    }
}

/// Server mode: the limits of client connections (see `crate::http::server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head (from the connection's start, or from the first byte after the previous
    /// response) must arrive whole within this time, else the connection is closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and nothing received for this long is closed.
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress for this long (the client stopped reading)
    /// fails, which closes the connection and drops what its response was holding.
    pub write_timeout: Duration,
    /// Connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Largest single request header (name and value), answered `431` with an OCI JSON body.
    pub max_header_size: usize,
    /// Largest whole request head; a longer head is refused (`431`) by the HTTP parser itself.
    pub max_head_size: usize,
    /// On SIGTERM/SIGINT: how long requests in flight may go on before they are cut.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_header_size: 16 * 1024,
            max_head_size: 128 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Bounds on the work wrong passwords can cause (see `crate::auth::Checks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthLimits {
    /// bcrypt runs at once; others wait for a turn.
    pub bcrypt_concurrency: usize,
    /// Longest wait for a turn; after it the request is answered `503` without a check.
    pub bcrypt_wait: Duration,
    /// Failed password checks allowed per client address and per user name per minute (also the
    /// burst); checks in progress count until they succeed. Beyond it: `429 TOOMANYREQUESTS`.
    pub failures_per_minute: u32,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            bcrypt_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            bcrypt_wait: Duration::from_secs(5),
            failures_per_minute: 10,
        }
    }
}

/// The `[s3]` table. Credentials are never configured here: they come from the standard AWS
/// chain (environment, shared profile files, web identity, ECS or EC2 instance roles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint override (an S3-compatible server). `None` leaves the endpoint to the SDK:
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, else AWS S3.
    pub endpoint: Option<Url>,
    /// `None` means: path-style addressing when any endpoint override is in effect (config or
    /// environment), as S3-compatible servers usually need; virtual-hosted style on AWS.
    pub force_path_style: Option<bool>,
    /// `None` means `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile, then `us-east-1`. The
    /// EC2 instance metadata service is never asked, so start-up does no network I/O.
    pub region: Option<String>,
    /// Multipart parts uploaded concurrently by one blob fill; with `part_size`, bounds its
    /// memory to about `part_size × (parts_in_flight + 1)`.
    pub parts_in_flight: usize,
    /// Multipart part size in bytes (at least 5 MiB, S3's minimum). Grown for a blob whose length
    /// is known so that it never needs more than 10,000 parts.
    pub part_size: u64,
    /// Attempts per S3 request, first one included (SDK standard retry mode: exponential
    /// backoff with jitter; throttling such as 503 SlowDown and transient errors are retried).
    pub max_attempts: u32,
    /// Server mode: every request for a blob being filled streams it from the fill's spill file
    /// at its own pace (as with the filesystem store) instead of waiting for the upload and a
    /// 307. Cold pulls of big layers then take one transfer instead of two, at the price of those
    /// bytes passing through the proxy. On by default; off keeps blob bytes out of the proxy
    /// (copy, then redirect). Ignored in Lambda mode (responses there are at most 6 MB).
    pub stream_misses: bool,
    /// Server mode: stored blobs are streamed from S3 through the proxy instead of redirected
    /// to a presigned URL, for clients that cannot reach the bucket. Off by default; ignored in
    /// Lambda mode.
    pub stream_hits: bool,
    /// Server mode: how long a blob fill's lease in the bucket stays valid past its last renewal
    /// (renewed every third of it). A fill whose process died is taken over by another instance
    /// after this long.
    pub fill_lease: Duration,
}

pub const MIB: u64 = 1024 * 1024;

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            force_path_style: None,
            region: None,
            parts_in_flight: 4,
            part_size: 8 * MIB,
            max_attempts: 5,
            stream_misses: true,
            stream_hits: false,
            fill_lease: Duration::from_secs(60),
        }
    }
}

/// A configuration that cannot be used, and what to change.
///
/// A struct with a sentence, not an enum of kinds: the only reader of a configuration error is
/// the person starting the proxy (on the terminal, or in Lambda's init error), no caller acts
/// differently on one mistake than on another, and each message already names the setting
/// (`PULLTHROUGH_TAG_TTL/tag_ttl: …`) and the fix. Value grammars keep their kinds in
/// [`ValueError`], which the message quotes.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {message}")]
pub struct ConfigError {
    message: String,
}

/// A [`ConfigError`] saying `message`.
fn err(message: impl Into<String>) -> ConfigError {
    ConfigError {
        message: message.into(),
    }
}

impl Config {
    /// Builds the configuration: built-in defaults, then the TOML file named by
    /// `settings.config`, then the settings themselves (environment and flags).
    pub fn load(settings: &Settings) -> Result<Config, ConfigError> {
        if let (Some(_), Some(text)) = (&settings.config, &settings.config_toml)
            && !text.trim().is_empty()
        {
            return Err(err(
                "PULLTHROUGH_CONFIG and PULLTHROUGH_CONFIG_TOML are both set; use one",
            ));
        }
        if let Some(text) = settings
            .config_toml
            .as_deref()
            .filter(|t| !t.trim().is_empty())
        {
            let file = toml::from_str::<FileConfig>(text)
                .map_err(|e| err(format!("PULLTHROUGH_CONFIG_TOML: {e}")))?;
            return resolve::resolve(settings, file);
        }
        let file = match &settings.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err(format!(
                        "cannot read config file {} (PULLTHROUGH_CONFIG/--config): {e}",
                        path.display()
                    ))
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| err(format!("config file {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        resolve::resolve(settings, file)
    }

    /// Parses a TOML document as the config file would be (used by tests and `load`).
    pub fn from_toml(settings: &Settings, toml_text: &str) -> Result<Config, ConfigError> {
        let file = toml::from_str::<FileConfig>(toml_text).map_err(|e| err(e.to_string()))?;
        resolve::resolve(settings, file)
    }

    pub fn upstream(&self, alias: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.alias == alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::load(&Settings::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.store, StoreLocation::Fs("./pullthrough-data".into()));
        assert_eq!(c.default_upstream, "docker.io");
        assert_eq!(c.tag_ttl, Duration::from_secs(60));
        assert_eq!(c.presign_ttl, Duration::from_secs(900));
        assert_eq!(c.max_manifest_size, 4 * 1024 * 1024);
        assert!(c.upstream("docker.io").unwrap().library_prefix);
        assert!(!c.upstream("ghcr.io").unwrap().library_prefix);
    }

    #[test]
    fn fill_deadline_and_inline_toml() {
        let c = Config::load(&Settings::default()).unwrap();
        assert_eq!(c.fill_deadline, Duration::from_secs(20));
        let s = Settings {
            config_toml: Some("fill_deadline = \"1s\"\ntag_ttl = \"5m\"\n".into()),
            ..Settings::default()
        };
        let c = Config::load(&s).unwrap();
        assert_eq!(c.fill_deadline, Duration::from_secs(1));
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        // The one-line form of the SAM parameter UpstreamConfigToml.
        let s = Settings {
            config_toml: Some(
                r#"upstream = [{alias = "mirror.example", url = "https://mirror.example", tag_ttl = "5m"}]"#
                    .into(),
            ),
            default_upstream: Some("mirror.example".into()),
            ..Settings::default()
        };
        let c = Config::load(&s).unwrap();
        assert_eq!(c.default_upstream, "mirror.example");
        assert_eq!(
            c.upstream("mirror.example").unwrap().tag_ttl,
            Some(Duration::from_secs(300))
        );
        let s = Settings {
            fill_deadline: Some("29s".into()),
            ..Settings::default()
        };
        assert!(Config::load(&s).unwrap_err().to_string().contains("28s"));
        let s = Settings {
            config_toml: Some("bogus = 1".into()),
            ..Settings::default()
        };
        assert!(
            Config::load(&s)
                .unwrap_err()
                .to_string()
                .contains("PULLTHROUGH_CONFIG_TOML")
        );
        let s = Settings {
            config: Some("/nonexistent.toml".into()),
            config_toml: Some("tag_ttl = \"5m\"".into()),
            ..Settings::default()
        };
        assert!(
            Config::load(&s)
                .unwrap_err()
                .to_string()
                .contains("use one")
        );
    }

    #[test]
    fn the_start_up_summary_names_no_secret() {
        let toml = r#"
default_upstream = "local"
tag_ttl = "90s"
[[upstream]]
alias = "local"
url = "https://registry.example:8443/path"
username = "robot"
password = "s3cr3t-password"
tag_ttl = "5m"
[s3]
region = "eu-west-1"
"#;
        let s = Settings {
            store: Some("s3://bucket/prefix".into()),
            token_key: Some("k".repeat(40)),
            ..Settings::default()
        };
        let c = Config::from_toml(&s, toml).unwrap();
        let summary = c.summary();
        assert_eq!(summary.store, "s3://bucket/prefix");
        assert_eq!(summary.default_upstream, "local");
        assert_eq!(summary.auth, "none");
        assert_eq!(summary.tag_ttl, "90s");
        assert!(
            summary
                .upstreams
                .contains("local=https://registry.example:8443 (tag_ttl=300s) +credentials"),
            "{summary:?}"
        );
        let all = format!("{summary:?}");
        for secret in ["s3cr3t-password", "robot", "kkkk"] {
            assert!(!all.contains(secret), "{secret} in {all}");
        }
    }
}
