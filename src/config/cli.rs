//! The raw settings of the command line and the environment, as clap reads them (the
//! `pullthrough` binary flattens [`Settings`] into its commands; Lambda mode reads the
//! environment alone). Everything here is text as given: this module never checks or
//! interprets a value; [`Config::load`](super::Config::load) does.

use std::path::PathBuf;

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
    /// Token of the admin API under /_pullthrough/ (32+ characters); the API is off when unset.
    #[arg(long, env = "PULLTHROUGH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Server mode: run gc this often, e.g. 1d (default: off).
    #[arg(long, env = "PULLTHROUGH_GC_INTERVAL")]
    pub gc_interval: Option<String>,
    /// gc's retention: images not pulled within it go, e.g. 30d (default).
    #[arg(long, env = "PULLTHROUGH_GC_OLDER_THAN")]
    pub gc_older_than: Option<String>,
    /// gc's grace for unreferenced blobs, e.g. 1h (default).
    #[arg(long, env = "PULLTHROUGH_GC_GRACE")]
    pub gc_grace: Option<String>,
    /// gc's size bound: evict least recently pulled images until the blobs fit, e.g. 200GiB.
    #[arg(long, env = "PULLTHROUGH_GC_MAX_SIZE")]
    pub gc_max_size: Option<String>,
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
    /// Log lines as `text` (the default of the server) or `json` (the default in Lambda).
    #[arg(long, env = "PULLTHROUGH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Serve `/metrics` on this address only (e.g. 127.0.0.1:9090) instead of on the main one.
    #[arg(long, env = "PULLTHROUGH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}
