//! One [`Config`], built from defaults, an optional TOML file, environment variables and flags
//! (later ones win), and validated once at start-up with messages that say what to fix.

mod htpasswd;
mod pattern;

pub use htpasswd::{Htpasswd, HtpasswdError};
pub use pattern::{PatternError, RepoPattern, allowed};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

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

/// Server mode: the limits of client connections (see `crate::server`).
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

/// Raw settings as given on the command line or in the environment (clap fills both).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "PULLTHROUGH_LISTEN")]
    pub listen: Option<String>,
    /// Store: a directory for the embedded filesystem store, or s3://bucket/prefix.
    #[arg(long, env = "PULLTHROUGH_STORE")]
    pub store: Option<String>,
    /// TOML configuration file (upstreams, credentials, TTLs).
    #[arg(long, env = "PULLTHROUGH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The same TOML as text, for environments without a file (Lambda); not with --config.
    #[arg(long, env = "PULLTHROUGH_CONFIG_TOML", hide_env_values = true)]
    pub config_toml: Option<String>,
    /// Upstream used for names without a known prefix: an alias or an https:// URL.
    #[arg(long, env = "PULLTHROUGH_DEFAULT_UPSTREAM")]
    pub default_upstream: Option<String>,
    /// How long a tag is served without asking the upstream, e.g. 60s, 5m.
    #[arg(long, env = "PULLTHROUGH_TAG_TTL")]
    pub tag_ttl: Option<String>,
    /// Lifetime of presigned blob URLs (S3 store), e.g. 15m.
    #[arg(long, env = "PULLTHROUGH_PRESIGN_TTL")]
    pub presign_ttl: Option<String>,
    /// Client authentication: `none`, the path of an htpasswd file with bcrypt entries, or the
    /// ARN of a Secrets Manager secret holding such a file's text.
    #[arg(long, env = "PULLTHROUGH_AUTH")]
    pub auth: Option<String>,
    /// With users from a secret: how often the secret is read again, e.g. 5m (10s to 1d).
    #[arg(long, env = "PULLTHROUGH_AUTH_REFRESH")]
    pub auth_refresh: Option<String>,
    /// Key that signs client tokens (32+ characters); set the same on every instance so tokens
    /// are accepted by all. Random per process when unset.
    #[arg(long, env = "PULLTHROUGH_TOKEN_KEY", hide_env_values = true)]
    pub token_key: Option<String>,
    /// Lambda mode: how long a blob miss is copied while the client waits, e.g. 20s.
    #[arg(long, env = "PULLTHROUGH_FILL_DEADLINE")]
    pub fill_deadline: Option<String>,
    /// A request head must arrive whole within this time (default 10s).
    #[arg(long, env = "PULLTHROUGH_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// A connection idle between requests is closed after this time (default 60s).
    #[arg(long, env = "PULLTHROUGH_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// A client that stops reading a response is disconnected after this time (default 60s).
    #[arg(long, env = "PULLTHROUGH_WRITE_TIMEOUT")]
    pub write_timeout: Option<String>,
    /// Client connections served at once (default 4096); more are answered 503.
    #[arg(long, env = "PULLTHROUGH_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Largest request header, e.g. 16KiB (default); larger ones are answered 431.
    #[arg(long, env = "PULLTHROUGH_MAX_HEADER_SIZE")]
    pub max_header_size: Option<String>,
    /// Largest request head (all headers), e.g. 128KiB (default).
    #[arg(long, env = "PULLTHROUGH_MAX_HEAD_SIZE")]
    pub max_head_size: Option<String>,
    /// On SIGTERM/SIGINT, how long requests in flight may finish, e.g. 30s (default).
    #[arg(long, env = "PULLTHROUGH_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Password checks (bcrypt) run at once (default: the number of CPUs).
    #[arg(long, env = "PULLTHROUGH_BCRYPT_CONCURRENCY")]
    pub bcrypt_concurrency: Option<String>,
    /// Longest wait for a password check before the answer is 503, e.g. 5s (default).
    #[arg(long, env = "PULLTHROUGH_BCRYPT_WAIT")]
    pub bcrypt_wait: Option<String>,
    /// Failed logins allowed per client address and per user per minute (default 10).
    #[arg(long, env = "PULLTHROUGH_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    store: Option<String>,
    default_upstream: Option<String>,
    tag_ttl: Option<String>,
    presign_ttl: Option<String>,
    auth: Option<String>,
    auth_refresh: Option<String>,
    max_manifest_size: Option<u64>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    read_timeout: Option<String>,
    memory_cache_bytes: Option<usize>,
    fill_deadline: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_size: Option<FileSize>,
    max_head_size: Option<FileSize>,
    shutdown_grace: Option<String>,
    bcrypt_concurrency: Option<usize>,
    bcrypt_wait: Option<String>,
    auth_failures_per_minute: Option<u32>,
    #[serde(default)]
    upstream: Vec<FileUpstream>,
    s3: Option<FileS3>,
    spill: Option<FileSpill>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileS3 {
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    region: Option<String>,
    parts_in_flight: Option<usize>,
    part_size: Option<FileSize>,
    max_attempts: Option<u32>,
    stream_misses: Option<bool>,
    stream_hits: Option<bool>,
    fill_lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpill {
    dir: Option<PathBuf>,
    max_size: Option<FileSize>,
}

/// A size in the config file: a number of bytes, or a string such as `"16MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileSize {
    Bytes(u64),
    Text(String),
}

impl FileSize {
    /// The size in bytes; `name` says which setting in an error.
    fn bytes(&self, name: &str) -> Result<u64, ConfigError> {
        match self {
            FileSize::Bytes(n) => Ok(*n),
            FileSize::Text(t) => parse_size(t).map_err(|e| err(format!("{name}: {e}"))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    alias: String,
    url: String,
    #[serde(default)]
    insecure: bool,
    username: Option<String>,
    password: Option<String>,
    secret_arn: Option<String>,
    tag_ttl: Option<String>,
    #[serde(default)]
    other_names: Vec<String>,
    library_prefix: Option<bool>,
    #[serde(default)]
    allow: Vec<String>,
}

const BUILTIN_UPSTREAMS: [(&str, &str, &[&str]); 7] = [
    (
        "docker.io",
        "https://registry-1.docker.io",
        &["index.docker.io", "registry-1.docker.io"],
    ),
    ("ghcr.io", "https://ghcr.io", &[]),
    ("quay.io", "https://quay.io", &[]),
    ("registry.k8s.io", "https://registry.k8s.io", &[]),
    ("gcr.io", "https://gcr.io", &[]),
    ("public.ecr.aws", "https://public.ecr.aws", &[]),
    ("mcr.microsoft.com", "https://mcr.microsoft.com", &[]),
];

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
            return Config::build(settings, file);
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
        Config::build(settings, file)
    }

    /// Parses a TOML document as the config file would be (used by tests and `load`).
    pub fn from_toml(settings: &Settings, toml_text: &str) -> Result<Config, ConfigError> {
        let file = toml::from_str::<FileConfig>(toml_text).map_err(|e| err(e.to_string()))?;
        Config::build(settings, file)
    }

    fn build(s: &Settings, file: FileConfig) -> Result<Config, ConfigError> {
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

        let store_text = s
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| "./pullthrough-data".into());
        let store = parse_store(&store_text)?;

        let dur =
            |name: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
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
        if presign_ttl < Duration::from_secs(1) || presign_ttl > Duration::from_secs(7 * 24 * 3600)
        {
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

        let mut upstreams: Vec<UpstreamConfig> = BUILTIN_UPSTREAMS
            .iter()
            .map(|(alias, url, others)| UpstreamConfig {
                alias: (*alias).into(),
                other_names: others.iter().map(|o| (*o).into()).collect(),
                url: Url::parse(url).expect("built-in upstream URLs are valid"),
                username: None,
                password: None,
                secret_arn: None,
                library_prefix: *alias == "docker.io",
                tag_ttl: None,
                allow: vec![],
            })
            .collect();
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

    pub fn upstream(&self, alias: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.alias == alias)
    }
}

/// A duration setting: the flag or environment variable, else the file, else `default`; it must
/// lie within `range`. `name` is `PULLTHROUGH_X/x`, as messages name it.
fn duration_setting(
    name: &str,
    flag: &Option<String>,
    file: &Option<String>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    default_text: &str,
) -> Result<Duration, ConfigError> {
    let d = match flag.as_ref().or(file.as_ref()) {
        None => default,
        Some(t) => parse_duration(t).map_err(|e| err(format!("{name}: {e}")))?,
    };
    if !range.contains(&d) {
        return Err(err(format!(
            "{name}: must be between {:?} and {:?} (default {default_text})",
            range.start(),
            range.end()
        )));
    }
    Ok(d)
}

/// A count setting: the flag or environment variable (text), else the file, else `default`.
fn count_setting<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    flag: &Option<String>,
    file: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let n = match flag {
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| err(format!("{name}: {t:?} is not a whole number")))?,
        None => file.unwrap_or(default),
    };
    if !range.contains(&n) {
        return Err(err(format!(
            "{name}: must be between {} and {} (default {default})",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

/// A size setting (`16KiB`, or bytes), bounded by `range`.
fn size_setting(
    name: &str,
    flag: &Option<String>,
    file: &Option<FileSize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    let n = match (flag, file) {
        (Some(t), _) => parse_size(t).map_err(|e| err(format!("{name}: {e}")))? as usize,
        (None, Some(size)) => size.bytes(name)? as usize,
        (None, None) => default,
    };
    if !range.contains(&n) {
        return Err(err(format!(
            "{name}: must be between {} and {} bytes (default {default})",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
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

fn upstream_from_file(u: FileUpstream) -> Result<UpstreamConfig, ConfigError> {
    let what = format!("[[upstream]] {:?}", u.alias);
    if !u.alias.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !u
            .alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b))
    {
        return Err(err(format!(
            "{what}: alias must be a lower-case host-like name such as ghcr.io or local"
        )));
    }
    let url = parse_upstream_url(&u.url, u.insecure, &what)?;
    if let Some(arn) = &u.secret_arn {
        if u.username.is_some() || u.password.is_some() {
            return Err(err(format!(
                "{what}: give secret_arn or username/password, not both"
            )));
        }
        check_secret_arn(arn).map_err(|e| err(format!("{what}: secret_arn {e}")))?;
    }
    if u.username.is_some() != u.password.is_some() {
        return Err(err(format!(
            "{what}: give both username and password, or neither"
        )));
    }
    let tag_ttl = match u.tag_ttl {
        Some(t) => Some(parse_duration(&t).map_err(|e| err(format!("{what} tag_ttl: {e}")))?),
        None => None,
    };
    let allow = u
        .allow
        .iter()
        .map(|p| RepoPattern::parse(p).map_err(|e| err(format!("{what} allow: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(UpstreamConfig {
        allow,
        library_prefix: u.library_prefix.unwrap_or(u.alias == "docker.io"),
        alias: u.alias,
        other_names: u.other_names,
        url,
        username: u.username,
        password: u.password,
        secret_arn: u.secret_arn,
        tag_ttl,
    })
}

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
fn credentials_from_env(
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
fn parse_client_auth(
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
        Htpasswd::parse(&text)
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

/// Checks the shape `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`.
pub fn check_secret_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    let ok = parts.len() == 7
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "secretsmanager"
        && !parts[3].is_empty()
        && parts[3]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5] == "secret"
        && !parts[6].is_empty()
        && !arn.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"
        ))
    }
}

/// The region named by a Secrets Manager ARN (checked by [`check_secret_arn`]).
pub fn secret_arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

fn s3_from_file(f: FileS3) -> Result<S3Settings, ConfigError> {
    let defaults = S3Settings::default();
    let endpoint = match f.endpoint {
        None => None,
        Some(text) => {
            let url = Url::parse(&text)
                .map_err(|e| err(format!("[s3] endpoint {text:?}: {e}; use e.g. https://s3.example.com or http://127.0.0.1:9000")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err(format!(
                    "[s3] endpoint {text:?}: use an http:// or https:// URL"
                )));
            }
            if url.host_str().is_none()
                || url.query().is_some()
                || url.fragment().is_some()
                || !matches!(url.path(), "" | "/")
            {
                return Err(err(format!(
                    "[s3] endpoint {text:?}: must be scheme://host[:port], without a path (the bucket comes from PULLTHROUGH_STORE)"
                )));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(err(
                    "[s3] endpoint: no credentials in the URL; they come from the AWS credential chain (AWS_ACCESS_KEY_ID, profiles, roles)",
                ));
            }
            Some(url)
        }
    };
    if let Some(r) = &f.region
        && (r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        return Err(err(format!(
            "[s3] region {r:?}: not a region name; use e.g. \"eu-west-1\""
        )));
    }
    let parts_in_flight = f.parts_in_flight.unwrap_or(defaults.parts_in_flight);
    if !(1..=64).contains(&parts_in_flight) {
        return Err(err(format!(
            "[s3] parts_in_flight = {parts_in_flight}: must be between 1 and 64 (default 4)"
        )));
    }
    let part_size = match &f.part_size {
        None => defaults.part_size,
        Some(size) => size.bytes("[s3] part_size")?,
    };
    if !(5 * MIB..=5 * 1024 * MIB).contains(&part_size) {
        return Err(err(format!(
            "[s3] part_size = {part_size} bytes: must be between 5 MiB (S3's minimum part size) and 5 GiB (default 8 MiB)"
        )));
    }
    let max_attempts = f.max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(err(format!(
            "[s3] max_attempts = {max_attempts}: must be between 1 (no retry) and 20 (default 5)"
        )));
    }
    let fill_lease = duration_setting(
        "[s3] fill_lease",
        &None,
        &f.fill_lease,
        defaults.fill_lease,
        Duration::from_secs(3)..=Duration::from_secs(3600),
        "60s",
    )?;
    Ok(S3Settings {
        fill_lease,
        endpoint,
        force_path_style: f.force_path_style,
        region: f.region,
        parts_in_flight,
        part_size,
        max_attempts,
        stream_misses: f.stream_misses.unwrap_or(defaults.stream_misses),
        stream_hits: f.stream_hits.unwrap_or(defaults.stream_hits),
    })
}

fn spill_from_file(f: FileSpill) -> Result<SpillSettings, ConfigError> {
    let defaults = SpillSettings::default();
    let dir = match f.dir {
        Some(d) if d.as_os_str().is_empty() => {
            return Err(err("[spill] dir: must name a directory"));
        }
        Some(d) => d,
        None => defaults.dir,
    };
    let max_bytes = match &f.max_size {
        None => defaults.max_bytes,
        Some(size) => size.bytes("[spill] max_size")?,
    };
    Ok(SpillSettings { dir, max_bytes })
}

/// Parses `1048576`, `512KiB`, `16MiB` or `1GiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{text:?} is not a size; use e.g. 8MiB, 16MiB or a number of bytes")
    })?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        _ => return Err(format!("{text:?}: unknown unit; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_upstream_url(text: &str, insecure: bool, what: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| err(format!("{what}: url {text:?}: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(err(format!(
                "{what}: {text} is plain http; set insecure = true in its [[upstream]] entry if that is intended"
            )));
        }
        other => return Err(err(format!("{what}: unsupported scheme {other:?}"))),
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(err(format!(
            "{what}: url {text:?} must be scheme://host[:port][/path]"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(format!(
            "{what}: put credentials in username/password, not in the URL"
        )));
    }
    Ok(url)
}

fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => url.to_string(),
    }
}

fn parse_store(text: &str) -> Result<StoreLocation, ConfigError> {
    if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(err(format!(
                "PULLTHROUGH_STORE: {bucket:?} is not a valid S3 bucket name"
            )));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|c| c == ".." || c == ".") {
            return Err(err(
                "PULLTHROUGH_STORE: the S3 prefix may not contain . or ..",
            ));
        }
        return Ok(StoreLocation::S3 {
            bucket: bucket.to_owned(),
            prefix,
        });
    }
    if text.contains("://") {
        return Err(err(format!(
            "PULLTHROUGH_STORE: {text:?}: use a directory path or s3://bucket/prefix"
        )));
    }
    if text.is_empty() {
        return Err(err("PULLTHROUGH_STORE: empty path"));
    }
    Ok(StoreLocation::Fs(PathBuf::from(text)))
}

/// Parses `500ms`, `60s`, `15m`, `1h`, `1d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use e.g. 500ms, 60s, 15m, 1h"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return Err(format!("{text:?}: unknown unit; use ms, s, m, h or d")),
    };
    Ok(d)
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
    fn plain_http_needs_insecure() {
        let toml = "[[upstream]]\nalias = \"local\"\nurl = \"http://127.0.0.1:5001\"\n";
        let e = Config::from_toml(&Settings::default(), toml).unwrap_err();
        assert!(e.to_string().contains("insecure = true"), "{e}");
        let ok = format!("{toml}insecure = true\n");
        let c = Config::from_toml(&Settings::default(), &ok).unwrap();
        assert_eq!(
            c.upstream("local").unwrap().url.as_str(),
            "http://127.0.0.1:5001/"
        );
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
    fn s3_locations() {
        assert_eq!(
            parse_store("s3://my-bucket/cache/x/").unwrap(),
            StoreLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "cache/x".into()
            }
        );
        assert!(parse_store("s3://B").is_err());
    }

    #[test]
    fn s3_table_defaults() {
        let c = Config::from_toml(&Settings::default(), "").unwrap();
        assert_eq!(c.s3, S3Settings::default());
        assert_eq!(c.s3.part_size, 8 * MIB);
        assert_eq!(c.s3.parts_in_flight, 4);
        assert_eq!(c.s3.max_attempts, 5);
        assert_eq!(c.s3.endpoint, None);
        assert_eq!(c.s3.force_path_style, None);
        assert_eq!(c.s3.region, None);
        assert!(c.s3.stream_misses, "cold blobs stream by default");
        assert!(!c.s3.stream_hits);
        assert_eq!(c.spill, SpillSettings::default());
    }

    #[test]
    fn s3_table_is_read() {
        let toml = r#"
store = "s3://my-bucket/cache"
[s3]
endpoint = "http://127.0.0.1:9000"
force_path_style = false
region = "eu-west-1"
parts_in_flight = 2
part_size = "16MiB"
max_attempts = 3
stream_misses = false
stream_hits = true
fill_lease = "90s"

[spill]
dir = "/var/cache/pullthrough-spill"
max_size = "2GiB"
"#;
        let c = Config::from_toml(&Settings::default(), toml).unwrap();
        assert_eq!(
            c.store,
            StoreLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "cache".into()
            }
        );
        assert_eq!(
            c.s3,
            S3Settings {
                endpoint: Some(Url::parse("http://127.0.0.1:9000").unwrap()),
                force_path_style: Some(false),
                region: Some("eu-west-1".into()),
                parts_in_flight: 2,
                part_size: 16 * MIB,
                max_attempts: 3,
                stream_misses: false,
                stream_hits: true,
                fill_lease: Duration::from_secs(90),
            }
        );
        assert_eq!(
            c.spill,
            SpillSettings {
                dir: "/var/cache/pullthrough-spill".into(),
                max_bytes: 2048 * MIB,
            }
        );
        let c = Config::from_toml(&Settings::default(), "[s3]\npart_size = 6291456\n").unwrap();
        assert_eq!(c.s3.part_size, 6 * MIB);
    }

    #[test]
    fn s3_table_mistakes_are_explained() {
        let bad = |toml: &str| {
            Config::from_toml(&Settings::default(), &format!("[s3]\n{toml}\n"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("part_size = \"4MiB\"").contains("5 MiB"));
        assert!(bad("part_size = \"8 parsecs\"").contains("unknown unit"));
        assert!(bad("parts_in_flight = 0").contains("parts_in_flight"));
        assert!(bad("max_attempts = 0").contains("max_attempts"));
        assert!(bad("endpoint = \"ftp://x\"").contains("http:// or https://"));
        assert!(bad("endpoint = \"http://h:9000/bucket\"").contains("without a path"));
        assert!(bad("endpoint = \"http://k:s@h:9000\"").contains("credential chain"));
        assert!(bad("region = \"EU West\"").contains("region"));
        assert!(bad("bucket = \"x\"").contains("unknown field"));
    }

    #[test]
    fn secret_arns_are_read_and_checked() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:pullthrough/ghcr-AbCdEf";
        let toml = format!(
            "[[upstream]]\nalias = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nsecret_arn = \"{arn}\"\n"
        );
        let c = Config::from_toml(&Settings::default(), &toml).unwrap();
        let u = c.upstream("ghcr.io").unwrap();
        assert_eq!(u.secret_arn.as_deref(), Some(arn));
        assert_eq!(u.username, None);
        assert_eq!(secret_arn_region(arn), Some("eu-west-1"));

        let both = format!("{toml}username = \"u\"\npassword = \"p\"\n");
        let e = Config::from_toml(&Settings::default(), &both).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        for bad in [
            "arn:aws:s3:::bucket",
            "arn:aws:secretsmanager:eu-west-1:123:secret:x",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
            "not an arn",
        ] {
            let toml = format!(
                "[[upstream]]\nalias = \"x\"\nurl = \"https://x.example\"\nsecret_arn = \"{bad}\"\n"
            );
            let e = Config::from_toml(&Settings::default(), &toml).unwrap_err();
            assert!(
                e.to_string().contains("Secrets Manager secret ARN"),
                "{bad}: {e}"
            );
        }
    }

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
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 * MIB);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1GiB").unwrap(), 1024 * MIB);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("8MB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("").is_err());
    }
}
