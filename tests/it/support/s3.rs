//! An S3-compatible server in the test process: `s3s-fs` (real SigV4 checking of headers and
//! presigned URLs) served by hyper on 127.0.0.1:0, plain HTTP or HTTPS with a private CA.
//!
//! The `s3s-fs` backend is wrapped by [`Recorder`], which logs every operation that passed
//! authentication, injects S3 errors (503 SlowDown) on demand, tracks multipart uploads (and
//! answers ListMultipartUploads, which `s3s-fs` 0.14 does not implement) and measures how many
//! UploadPart calls run at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pullthrough::config::{Config, S3Settings, Settings};
use pullthrough::store::s3::{S3Options, S3Store};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "AKIDPULLTHROUGHTEST1";
pub const SECRET_KEY: &str = "pullthrough/test/secret/key/0123456789";
pub const REGION: &str = "us-east-1";
/// Short on purpose: s3s-fs 0.14 fails keys longer than ~155 bytes, bucket name included.
pub const BUCKET: &str = "ptc";
/// The store setting naming [`BUCKET`].
pub const STORE_URL: &str = "s3://ptc";

/// The test credentials and region as the real binary reads them from its environment (for S3
/// and for the fake AWS endpoint of [`super::lambda::FakeAws`] alike).
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ("AWS_REGION", REGION),
];

/// The real binary's store and config arguments over the test server:
/// `--store s3://ptc --config <config>` (its credentials and region: [`AWS_ENV`]).
pub fn binary_args(config: &Path) -> [&str; 4] {
    [
        "--store",
        STORE_URL,
        "--config",
        config.to_str().expect("a UTF-8 path"),
    ]
}

pub fn test_credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "pullthrough-tests")
}

/// One S3 operation as the server handled it (after authentication).
#[derive(Clone, Debug)]
pub struct S3Call {
    pub op: &'static str,
    pub key: String,
    /// `None` on success, else the S3 error code answered.
    pub error: Option<String>,
}

/// An error to answer instead of performing an operation.
#[derive(Clone, Debug)]
pub struct S3Fault {
    pub op: &'static str,
    pub code: S3ErrorCode,
    /// `None`: every time; `Some(n)`: the next n matching calls.
    pub times: Option<usize>,
}

#[derive(Default)]
struct State {
    calls: Vec<S3Call>,
    faults: Vec<S3Fault>,
    /// Multipart uploads created and neither completed nor aborted: upload id → key.
    uploads: BTreeMap<String, String>,
    parts_running: usize,
    parts_peak: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every recorded call, so tests can wait for one without sleeping.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_fault(&self, op: &str) -> Option<S3Error> {
        let mut st = self.lock();
        let i = st.faults.iter().position(|f| f.op == op)?;
        let code = st.faults[i].code.clone();
        match &mut st.faults[i].times {
            Some(1) => {
                st.faults.remove(i);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(S3Error::with_message(code, "injected by the test"))
    }

    fn record(&self, op: &'static str, key: &str, error: Option<String>) {
        self.lock().calls.push(S3Call {
            op,
            key: key.to_owned(),
            error,
        });
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The `s3s-fs` backend with recording, fault injection and multipart bookkeeping.
struct Recorder {
    fs: s3s_fs::FileSystem,
    shared: Arc<Shared>,
}

impl Recorder {
    async fn around<T>(
        &self,
        op: &'static str,
        key: &str,
        call: impl Future<Output = S3Result<T>>,
    ) -> S3Result<T> {
        if let Some(e) = self.shared.take_fault(op) {
            self.shared
                .record(op, key, Some(e.code().as_str().to_owned()));
            return Err(e);
        }
        let result = call.await;
        let error = result.as_ref().err().map(|e| e.code().as_str().to_owned());
        self.shared.record(op, key, error);
        result
    }
}

#[async_trait::async_trait]
impl S3 for Recorder {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let key = req.input.bucket.clone();
        self.around("CreateBucket", &key, self.fs.create_bucket(req))
            .await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let key = req.input.bucket.clone();
        self.around("HeadBucket", &key, self.fs.head_bucket(req))
            .await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let key = req.input.key.clone();
        self.around("GetObject", &key, self.fs.get_object(req))
            .await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let key = req.input.key.clone();
        self.around("HeadObject", &key, self.fs.head_object(req))
            .await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let key = req.input.key.clone();
        self.around("PutObject", &key, self.fs.put_object(req))
            .await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let key = req.input.key.clone();
        self.around("DeleteObject", &key, self.fs.delete_object(req))
            .await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let key = req.input.prefix.clone().unwrap_or_default();
        self.around("ListObjectsV2", &key, self.fs.list_objects_v2(req))
            .await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let key = req.input.key.clone();
        let resp = self
            .around(
                "CreateMultipartUpload",
                &key,
                self.fs.create_multipart_upload(req),
            )
            .await?;
        if let Some(id) = &resp.output.upload_id {
            self.shared.lock().uploads.insert(id.clone(), key);
        }
        Ok(resp)
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let key = req.input.key.clone();
        {
            let mut st = self.shared.lock();
            st.parts_running += 1;
            st.parts_peak = st.parts_peak.max(st.parts_running);
        }
        let result = self
            .around("UploadPart", &key, self.fs.upload_part(req))
            .await;
        self.shared.lock().parts_running -= 1;
        result
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let key = req.input.key.clone();
        let id = req.input.upload_id.clone();
        let resp = self
            .around(
                "CompleteMultipartUpload",
                &key,
                self.fs.complete_multipart_upload(req),
            )
            .await?;
        self.shared.lock().uploads.remove(&id);
        Ok(resp)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let key = req.input.key.clone();
        let id = req.input.upload_id.clone();
        let resp = self
            .around(
                "AbortMultipartUpload",
                &key,
                self.fs.abort_multipart_upload(req),
            )
            .await?;
        self.shared.lock().uploads.remove(&id);
        Ok(resp)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let uploads: Vec<MultipartUpload> = self
            .shared
            .lock()
            .uploads
            .iter()
            .filter(|(_, key)| key.starts_with(&prefix))
            .map(|(id, key)| MultipartUpload {
                key: Some(key.clone()),
                upload_id: Some(id.clone()),
                ..Default::default()
            })
            .collect();
        self.shared.record("ListMultipartUploads", &prefix, None);
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(req.input.bucket),
            prefix: req.input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}

/// A private CA and a certificate for 127.0.0.1 / localhost signed by it.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl TestCa {
    /// A TLS acceptor presenting this CA's certificate (for 127.0.0.1 and localhost).
    pub fn tls_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .expect("TLS server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    pub fn generate() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pullthrough test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "pullthrough test S3");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("leaf certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_der: leaf_cert.der().to_vec(),
            key_der: leaf_key.serialize_der(),
        }
    }
}

/// A running S3-compatible server with one bucket ([`BUCKET`]). Dropping it stops accepting.
pub struct S3Server {
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    /// The s3s-fs root directory.
    pub root: tempfile::TempDir,
    /// For an HTTPS server: the CA that signed its certificate, and a file holding it.
    pub ca: Option<(TestCa, PathBuf)>,
    /// A client with the test credentials, for looking at the bucket directly.
    pub admin: aws_sdk_s3::Client,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl S3Server {
    /// Plain HTTP.
    pub async fn start() -> S3Server {
        S3Server::start_inner(false).await
    }

    /// HTTPS with a certificate from a fresh private CA ([`S3Server::ca_file`]).
    pub async fn start_tls() -> S3Server {
        S3Server::start_inner(true).await
    }

    async fn start_inner(tls: bool) -> S3Server {
        let root = tempfile::tempdir().expect("s3 root");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
        });
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(Recorder {
                fs,
                shared: Arc::clone(&shared),
            });
            b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
        let addr = listener.local_addr().expect("s3 addr");
        let ca = tls.then(|| {
            let ca = TestCa::generate();
            let path = root.path().join("test-ca.pem");
            std::fs::write(&path, &ca.ca_pem).expect("write CA file");
            (ca, path)
        });
        let acceptor = ca.as_ref().map(|(ca, _)| ca.tls_acceptor());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(socket), service)
                                .await;
                        }
                        Some(acceptor) => {
                            // A failed handshake (an untrusting client) just ends the connection.
                            if let Ok(tls) = acceptor.accept(socket).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://{addr}");
        let admin = S3Store::open(S3Options {
            ca_bundle: ca.as_ref().map(|(_, p)| p.clone()),
            ..options_for(&endpoint, "", S3Settings::default())
        })
        .await
        .expect("admin client")
        .client()
        .clone();
        admin
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create bucket");
        S3Server {
            endpoint,
            bucket: BUCKET.to_owned(),
            root,
            ca,
            admin,
            shared,
            accept,
        }
    }

    /// The CA file of an HTTPS server.
    pub fn ca_file(&self) -> &Path {
        &self.ca.as_ref().expect("an HTTPS server").1
    }

    /// Store options for this server: test credentials, `[s3]` settings `settings` with this
    /// endpoint, and the server's CA as the bundle for HTTPS.
    /// For plain HTTP the bundle is the process's `AWS_CA_BUNDLE`, as in production (set on these
    /// machines, so every S3 test also runs with it honoured).
    pub fn options(&self, prefix: &str, settings: S3Settings) -> S3Options {
        let ca_bundle = match &self.ca {
            Some((_, path)) => Some(path.clone()),
            None => std::env::var_os("AWS_CA_BUNDLE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        S3Options {
            ca_bundle,
            ..options_for(&self.endpoint, prefix, settings)
        }
    }

    pub async fn store(&self, prefix: &str, settings: S3Settings) -> S3Store {
        S3Store::open(self.options(prefix, settings))
            .await
            .expect("S3 store opens")
    }

    /// The `[s3]` table of a config file for this server, with `extra` lines in it.
    pub fn config_table(&self, extra: &str) -> String {
        format!(
            "\n[s3]\nendpoint = \"{}\"\nregion = \"{REGION}\"\n{extra}\n",
            self.endpoint
        )
    }

    /// The store a proxy configured by `toml` (which should hold [`Self::config_table`]) opens
    /// over this server, bucket [`BUCKET`] and no prefix: options from the config as in
    /// production (`AWS_CA_BUNDLE` included), credentials the test server's.
    pub async fn configured_store(&self, toml: &str) -> (Config, S3Store) {
        let settings = Settings {
            store: Some(format!("s3://{}", self.bucket)),
            ..Settings::default()
        };
        let config = Config::from_toml(&settings, toml).expect("test config is valid");
        let options = S3Options {
            credentials: Some(test_credentials()),
            ..S3Options::from_config(&config).expect("an s3 store")
        };
        let store = S3Store::open(options).await.expect("S3 store opens");
        (config, store)
    }

    /// Asserts that a client without credentials following `location` (a presigned URL) gets
    /// `digest`'s bytes.
    pub async fn assert_serves(&self, location: &str, digest: &str) {
        let resp = self.plain_client().get(location).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{location}");
        assert_eq!(super::sha256(&resp.bytes().await.unwrap()), digest);
    }

    /// A client that follows presigned URLs: no credentials, trusts this server's CA.
    pub fn plain_client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some((ca, _)) = &self.ca {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).expect("CA pem"),
            );
        }
        b.build().expect("client")
    }

    /// Every object key in the bucket under `prefix` (recursively), sorted.
    pub async fn object_keys(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .admin
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list objects");
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_owned),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.sort();
        out
    }

    /// Object keys under `<prefix>blobs/`.
    pub async fn blob_keys(&self, prefix: &str) -> Vec<String> {
        self.object_keys(&format!("{prefix}blobs/")).await
    }

    /// Whether the blob `digest` is stored (no prefix).
    pub async fn has_blob(&self, digest: &str) -> bool {
        let key = format!("blobs/{}", digest.replace(':', "/"));
        self.blob_keys("").await.contains(&key)
    }

    /// Multipart uploads in progress, as (key, upload id), asked of the server with
    /// ListMultipartUploads.
    pub async fn multipart_uploads(&self) -> Vec<(String, String)> {
        let out = self
            .admin
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("list multipart uploads");
        out.uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap_or_default().to_owned(),
                    u.upload_id().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Files s3s-fs keeps for unfinished uploads (`.upload-<id>.json`, `.upload_id-<id>.part-N`,
    /// per-upload metadata): none may outlive an upload.
    pub fn upload_files(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .expect("s3 root")
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.starts_with(".upload") || n.contains(".upload-"))
            .collect()
    }

    /// Asserts no multipart upload is in progress, by the server's account and on its disk.
    pub async fn assert_no_uploads(&self) {
        assert_eq!(
            self.multipart_uploads().await,
            vec![],
            "multipart uploads left"
        );
        assert_eq!(
            self.upload_files(),
            Vec::<String>::new(),
            "upload files left"
        );
    }

    pub fn calls(&self) -> Vec<S3Call> {
        self.shared.lock().calls.clone()
    }

    pub fn count(&self, op: &str) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .count()
    }

    pub fn clear_calls(&self) {
        self.shared.lock().calls.clear();
    }

    pub fn add_fault(&self, op: &'static str, code: S3ErrorCode, times: Option<usize>) {
        self.shared.lock().faults.push(S3Fault { op, code, times });
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// The most UploadPart calls seen running at once.
    pub fn parts_peak(&self) -> usize {
        self.shared.lock().parts_peak
    }

    /// Waits (up to 30 s, then panics) until the recorded calls satisfy `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[S3Call]) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if pred(&self.shared.lock().calls) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {what}: {:?}",
            self.calls()
        );
    }
}

fn options_for(endpoint: &str, prefix: &str, settings: S3Settings) -> S3Options {
    S3Options {
        bucket: BUCKET.to_owned(),
        prefix: prefix.to_owned(),
        settings: S3Settings {
            endpoint: Some(endpoint.parse().expect("endpoint URL")),
            region: Some(REGION.to_owned()),
            ..settings
        },
        presign_ttl: Duration::from_secs(900),
        ca_bundle: None,
        credentials: Some(test_credentials()),
    }
}
