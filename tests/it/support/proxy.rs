//! [`Proxy`]: the real proxy in the test process on 127.0.0.1:0, over a temporary filesystem
//! store or the in-process S3 server, and the configuration text tests start it with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pullthrough::cache::{Cache, Clock, Services};
use pullthrough::config::{Config, Settings};
use pullthrough::store::Store;

use super::fake_registry::{DOCKER_SCHEMA1_SIGNED, FakeRegistry, manifest_digest};
use super::s3::S3Server;
use super::{DOCKER_CLIENT_ACCEPT, files_under, no_redirects, sha256};

/// The config file text for a proxy whose default upstream is `upstream` under alias `local`,
/// with short timeouts so fault tests finish quickly.
pub fn local_config(upstream_url: &str) -> String {
    local_config_with(upstream_url, "")
}

/// [`local_config`] with extra top-level settings (lines before the `[[upstream]]` tables).
pub fn local_config_with(upstream_url: &str, extra: &str) -> String {
    format!(
        r#"{extra}
default_upstream = "local"
tag_ttl = "60s"
connect_timeout = "2s"
request_timeout = "2s"
read_timeout = "2s"

[[upstream]]
alias = "local"
url = "{upstream_url}"
insecure = true
"#
    )
}

/// [`local_config`] over `s3`, with `s3_extra` lines in its `[s3]` table.
pub fn local_s3_config(upstream_url: &str, s3: &S3Server, s3_extra: &str) -> String {
    format!(
        "{}{}",
        local_config(upstream_url),
        s3.config_table(s3_extra)
    )
}

/// A `[spill]` table: fills over S3 spill into `dir`; `extra` lines (e.g. `max_size`).
pub fn spill_table(dir: &Path, extra: &str) -> String {
    format!("\n[spill]\ndir = \"{}\"\n{extra}", dir.display())
}

/// A running proxy. Dropping it stops the server.
pub struct Proxy {
    pub url: String,
    pub store_dir: Arc<tempfile::TempDir>,
    pub clock: Arc<Clock>,
    /// The proxy's cache itself (the lifecycle functions take it; `flush_touches`).
    pub cache: Arc<Cache>,
    pub http: reqwest::Client,
    /// The S3-compatible server behind a proxy started with [`Proxy::start_s3`] (shared with
    /// its siblings).
    pub s3: Option<Arc<S3Server>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Proxy {
    /// A proxy in front of one fake upstream (alias `local`, also the default upstream).
    pub async fn start(upstream: &FakeRegistry) -> Proxy {
        Proxy::with_config(&local_config(&upstream.url())).await
    }

    pub async fn with_config(toml: &str) -> Proxy {
        Proxy::with_services(toml, Services::default()).await
    }

    /// A proxy configured by `toml` with `services` (e.g. a Secrets Manager client for the fake
    /// AWS endpoint of [`lambda::FakeAws`]).
    pub async fn with_services(toml: &str, services: Services) -> Proxy {
        let store_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Proxy::on_store(toml, store_dir, services).await
    }

    /// A second proxy process over the same store: what a restart, or another instance, sees.
    pub async fn sibling(&self, toml: &str) -> Proxy {
        Proxy::on_store(toml, Arc::clone(&self.store_dir), Services::default()).await
    }

    /// A second proxy over the same bucket (fresh memory, same S3 server): what another
    /// instance or a restarted one sees. `toml` should hold the server's `[s3]` table.
    pub async fn sibling_s3(&self, toml: &str) -> Proxy {
        Proxy::over_s3(
            toml,
            Arc::clone(self.s3.as_ref().expect("a proxy over S3")),
            Services::default(),
        )
        .await
    }

    /// [`Proxy::sibling`] with `services`.
    pub async fn sibling_with_services(&self, toml: &str, services: Services) -> Proxy {
        Proxy::on_store(toml, Arc::clone(&self.store_dir), services).await
    }

    async fn on_store(toml: &str, store_dir: Arc<tempfile::TempDir>, services: Services) -> Proxy {
        let settings = Settings {
            store: Some(store_dir.path().to_string_lossy().into_owned()),
            ..Settings::default()
        };
        let config = Config::from_toml(&settings, toml).expect("test config is valid");
        let store = pullthrough::open_store(&config).await.expect("store opens");
        Proxy::serve(config, store, store_dir, None, services).await
    }

    /// A proxy in front of one fake upstream (alias `local`) over a fresh S3-compatible server.
    pub async fn start_s3(upstream: &FakeRegistry) -> Proxy {
        Proxy::start_s3_with(upstream, "").await
    }

    /// [`Proxy::start_s3`] with extra lines in the `[s3]` table (e.g. `part_size = "8MiB"`).
    pub async fn start_s3_with(upstream: &FakeRegistry, s3_extra: &str) -> Proxy {
        let server = S3Server::start().await;
        let toml = local_s3_config(&upstream.url(), &server, s3_extra);
        Proxy::with_s3_config(&toml, server).await
    }

    /// [`Proxy::start_s3`] whose fills spill into `spill` (the `[spill]` table).
    pub async fn start_s3_spilling(upstream: &FakeRegistry, spill: &Path) -> Proxy {
        let server = S3Server::start().await;
        let toml = format!(
            "{}{}",
            local_s3_config(&upstream.url(), &server, ""),
            spill_table(spill, "")
        );
        Proxy::with_s3_config(&toml, server).await
    }

    /// A proxy over `server` (bucket [`s3::BUCKET`], no prefix) configured by `toml`, which
    /// should hold `server.config_table(..)`. Options come from the config as in production
    /// (`AWS_CA_BUNDLE` included), credentials are the test server's.
    pub async fn with_s3_config(toml: &str, server: S3Server) -> Proxy {
        Proxy::over_s3(toml, Arc::new(server), Services::default()).await
    }

    /// [`Proxy::with_s3_config`] with `services` (e.g. a shorter fill lease).
    pub async fn with_s3_services(toml: &str, server: S3Server, services: Services) -> Proxy {
        Proxy::over_s3(toml, Arc::new(server), services).await
    }

    async fn over_s3(toml: &str, server: Arc<S3Server>, services: Services) -> Proxy {
        let (config, store) = server.configured_store(toml).await;
        let store_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Proxy::serve(config, Arc::new(store), store_dir, Some(server), services).await
    }

    async fn serve(
        config: Config,
        store: Arc<dyn Store>,
        store_dir: Arc<tempfile::TempDir>,
        s3: Option<Arc<S3Server>>,
        services: Services,
    ) -> Proxy {
        let clock = Arc::new(Clock::default());
        let limits = config.connections.clone();
        let (router, cache) =
            pullthrough::build(config, store, Arc::clone(&clock), services).expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(pullthrough::serve_with(listener, router, limits, async {
            let _ = rx.await;
        }));
        Proxy {
            url,
            store_dir,
            clock,
            cache,
            http: no_redirects(),
            s3,
            shutdown: Some(tx),
        }
    }

    /// The S3 server of a proxy started with [`Proxy::start_s3`].
    pub fn s3(&self) -> &S3Server {
        self.s3.as_ref().expect("a proxy over S3")
    }

    pub fn root(&self) -> &Path {
        self.store_dir.path()
    }

    /// GET `/v2/<repo>/manifests/<reference>` as docker 20+ asks ([`DOCKER_CLIENT_ACCEPT`]).
    pub async fn manifest(&self, repo: &str, reference: &str) -> reqwest::Response {
        self.get(
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(DOCKER_CLIENT_ACCEPT),
        )
        .await
    }

    pub async fn get(&self, path: &str, accept: Option<&str>) -> reqwest::Response {
        self.request(reqwest::Method::GET, path, accept).await
    }

    pub async fn head(&self, path: &str, accept: Option<&str>) -> reqwest::Response {
        self.request(reqwest::Method::HEAD, path, accept).await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        req.send().await.expect("proxy answers")
    }

    /// Every file under `blobs/`, as (digest from its name, sha256 of its bytes).
    pub fn stored_blobs(&self) -> Vec<(String, String)> {
        files_under(&self.root().join("blobs"))
            .into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let alg = p
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (format!("{alg}:{name}"), sha256(&std::fs::read(&p).unwrap()))
            })
            .collect()
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        let (alg, hex) = digest.split_once(':').unwrap();
        self.root().join("blobs").join(alg).join(hex).exists()
    }

    /// Files in the store other than the temporary area.
    pub fn all_files(&self) -> Vec<PathBuf> {
        files_under(self.root())
            .into_iter()
            .filter(|p| !p.starts_with(self.root().join(".tmp")))
            .collect()
    }

    pub fn tmp_files(&self) -> Vec<PathBuf> {
        files_under(&self.root().join(".tmp"))
    }

    /// Asserts every stored blob holds exactly the bytes its name says (for a signed schema1
    /// manifest: its JWS payload).
    pub fn assert_store_consistent(&self) {
        for (name, actual) in self.stored_blobs() {
            if name.starts_with("sha256:") && name != actual {
                let (_, hex) = name.split_once(':').unwrap();
                let bytes = std::fs::read(self.root().join("blobs/sha256").join(hex)).unwrap();
                assert_eq!(
                    manifest_digest(DOCKER_SCHEMA1_SIGNED, &bytes),
                    name,
                    "a stored blob's bytes do not match its name"
                );
            }
        }
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}
