//! The admin API under `/_pullthrough/` (DESIGN §10) and server mode's periodic gc: the API
//! exists only with `PULLTHROUGH_ADMIN_TOKEN`, refuses a missing or wrong token, bad bodies,
//! oversize bodies and wrong methods without changing anything, and runs purge, prefetch, gc
//! and ls for the right token. The outcome tests (purge makes the next pull go upstream,
//! prefetch makes it need none, a dry-run gc lists what would go, periodic gc removes what no
//! one pulled) need the lifecycle functions behind the API.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pullthrough::cache::{Cache, Clock, Services};
use pullthrough::config::{AdminToken, Config, Settings};
use pullthrough::store::Store;

use crate::support::*;

const TOKEN: &str = "admin-0123456789abcdef0123456789abcdef";
/// As long as [`TOKEN`], one character different.
const SAME_LENGTH: &str = "admin-0123456789abcdef0123456789abcdeF";
const MONTH: Duration = Duration::from_secs(31 * 86_400);

/// The real router and server over a temporary filesystem store or the S3 server, with the
/// admin token set (or not), and the cache behind it.
struct Admin {
    url: String,
    http: reqwest::Client,
    clock: Arc<Clock>,
    cache: Arc<Cache>,
    root: tempfile::TempDir,
    s3: Option<S3Server>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Admin {
    /// Over a filesystem store; `tables` (e.g. `[gc]`) follow the `[[upstream]]` table.
    async fn start(up: &FakeRegistry, token: Option<&str>, tables: &str) -> Admin {
        let root = tempfile::tempdir().expect("temp dir");
        let settings = Settings {
            store: Some(root.path().to_string_lossy().into_owned()),
            admin_token: token.map(str::to_owned),
            ..Settings::default()
        };
        let config = Config::from_toml(&settings, &format!("{}{tables}", local_config(&up.url())))
            .expect("test config is valid");
        let store = pullthrough::open_store(&config).await.expect("store opens");
        Admin::serve(config, store, root, None).await
    }

    async fn start_s3(up: &FakeRegistry) -> Admin {
        let s3 = S3Server::start().await;
        let (mut config, store) = s3
            .configured_store(&local_s3_config(&up.url(), &s3, ""))
            .await;
        config.admin_token = Some(AdminToken::parse(TOKEN).expect("token"));
        let root = tempfile::tempdir().expect("temp dir");
        Admin::serve(config, Arc::new(store), root, Some(s3)).await
    }

    async fn serve(
        config: Config,
        store: Arc<dyn Store>,
        root: tempfile::TempDir,
        s3: Option<S3Server>,
    ) -> Admin {
        let clock = Arc::new(Clock::default());
        let (router, cache) =
            pullthrough::build(config, store, Arc::clone(&clock), Services::default())
                .expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(pullthrough::serve(listener, router, async {
            let _ = rx.await;
        }));
        Admin {
            url,
            http: no_redirects(),
            clock,
            cache,
            root,
            s3,
            _shutdown: tx,
        }
    }

    /// `method path` with `Authorization: <authorization>` when given, and `body`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body.to_owned());
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        req.send().await.expect("proxy answers")
    }

    /// `POST path` with the right token.
    async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.call(
            reqwest::Method::POST,
            path,
            Some(&format!("Bearer {TOKEN}")),
            body,
        )
        .await
    }

    /// A 200 JSON answer's body.
    async fn post_ok(&self, path: &str, body: &str) -> serde_json::Value {
        let resp = self.post(path, body).await;
        assert_eq!(resp.status(), 200, "POST {path} {body}");
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        resp.json().await.expect("a JSON report")
    }

    /// Pulls `img` as a client does: the index by tag, the amd64 manifest, its config and layers
    /// (over S3 through the presigned redirect).
    async fn pull(&self, repo: &str, tag: &str, img: &MultiArch) {
        self.pull_references(repo, [tag, img.amd64.digest.as_str()], img)
            .await
    }

    /// [`Admin::pull`] with the index by digest: no tag to revalidate, so a cached image costs
    /// no upstream request whatever the clock says.
    async fn pull_by_digest(&self, repo: &str, img: &MultiArch) {
        self.pull_references(
            repo,
            [img.index.digest.as_str(), img.amd64.digest.as_str()],
            img,
        )
        .await
    }

    async fn pull_references(&self, repo: &str, references: [&str; 2], img: &MultiArch) {
        for (reference, expected) in references.into_iter().zip([&img.index, &img.amd64]) {
            let resp = self
                .http
                .get(format!("{}/v2/{repo}/manifests/{reference}", self.url))
                .header("accept", DOCKER_CLIENT_ACCEPT)
                .send()
                .await
                .expect("proxy answers");
            assert_manifest(resp, expected).await;
        }
        for d in img.amd64.blob_digests() {
            let mut resp = self
                .http
                .get(format!("{}/v2/{repo}/blobs/{d}", self.url))
                .send()
                .await
                .expect("proxy answers");
            if self.s3.is_some() {
                assert_eq!(resp.status(), 307, "blob {d}");
                let location = header(&resp, "location").expect("Location").to_owned();
                resp = reqwest::get(location).await.expect("S3 answers");
            }
            assert_eq!(resp.status(), 200, "blob {d}");
            assert_eq!(sha256(&resp.bytes().await.expect("body")), d);
        }
    }

    /// The store's files (filesystem store), temporary area aside.
    fn files(&self) -> BTreeSet<PathBuf> {
        files_under(self.root.path())
            .into_iter()
            .filter(|p| !p.starts_with(self.root.path().join(".tmp")))
            .collect()
    }

    fn has_blob(&self, digest: &str) -> bool {
        let (alg, hex) = digest.split_once(':').expect("a digest");
        self.root.path().join("blobs").join(alg).join(hex).exists()
    }
}

/// An upstream with `team/app:v1` (an OCI index: amd64, arm64, an attestation).
async fn upstream_with_image() -> (FakeRegistry, MultiArch) {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 12);
    (up, img)
}

/// Pulls `team/app:v1`, then checks that a second pull needs no upstream request.
async fn pull_warm(a: &Admin, up: &FakeRegistry, img: &MultiArch) {
    a.pull("team/app", "v1", img).await;
    up.clear_requests();
    a.pull("team/app", "v1", img).await;
    assert_eq!(up.request_lines(), Vec::<String>::new(), "a warm pull");
}

const ADMIN_PATHS: [&str; 4] = [
    "/_pullthrough/purge",
    "/_pullthrough/prefetch",
    "/_pullthrough/gc",
    "/_pullthrough/ls",
];

#[tokio::test]
async fn admin_paths_exist_only_with_an_admin_token() {
    let (up, _img) = upstream_with_image().await;
    let off = Admin::start(&up, None, "").await;
    let bearer = format!("Bearer {TOKEN}");
    for path in ADMIN_PATHS.iter().copied().chain([
        "/_pullthrough",
        "/_pullthrough/",
        "/_pullthrough/nothing",
    ]) {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            for auth in [None, Some(bearer.as_str())] {
                let resp = off.call(method.clone(), path, auth, "{}").await;
                let message = expect_oci_error(resp, 404, "UNSUPPORTED").await;
                assert!(message.contains("/v2/"), "the router's own 404: {message}");
            }
        }
    }
    let on = Admin::start(&up, Some(TOKEN), "").await;
    let resp = on
        .call(reqwest::Method::GET, "/_pullthrough/ls", Some(&bearer), "")
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<serde_json::Value>().await.unwrap().is_object());
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_and_changes_nothing() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start(&up, Some(TOKEN), "").await;
    pull_warm(&a, &up, &img).await;
    a.clock.advance(MONTH);
    let before = a.files();
    let wrong = [
        None,
        Some(format!("Bearer {SAME_LENGTH}")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer  {TOKEN}")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer".to_owned()),
    ];
    let bodies = [
        (
            reqwest::Method::POST,
            "/_pullthrough/purge",
            r#"{"refs":["team/app"]}"#,
        ),
        (
            reqwest::Method::POST,
            "/_pullthrough/gc",
            r#"{"dryRun":false}"#,
        ),
        (
            reqwest::Method::POST,
            "/_pullthrough/prefetch",
            r#"{"refs":["team/app:v1"]}"#,
        ),
        (reqwest::Method::GET, "/_pullthrough/ls", ""),
        // Without the token, an unknown admin path or a wrong method is a 401 too.
        (reqwest::Method::GET, "/_pullthrough/nothing", ""),
        (reqwest::Method::GET, "/_pullthrough/gc", ""),
    ];
    for auth in &wrong {
        for (method, path, body) in &bodies {
            let resp = a.call(method.clone(), path, auth.as_deref(), body).await;
            assert_eq!(
                header(&resp, "www-authenticate"),
                Some("Bearer realm=\"pullthrough admin\""),
                "{method} {path} with {auth:?}"
            );
            expect_oci_error(resp, 401, "UNAUTHORIZED").await;
        }
    }
    assert_eq!(a.files(), before, "a refused request changed the store");
    up.clear_requests();
    a.pull_by_digest("team/app", &img).await;
    assert_eq!(
        up.request_lines(),
        Vec::<String>::new(),
        "after refused purges the image is still cached"
    );
}

#[tokio::test]
async fn the_right_token_answers_each_operation_with_a_json_report() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start(&up, Some(TOKEN), "").await;
    a.pull("team/app", "v1", &img).await;
    for (path, body) in [
        (
            "/_pullthrough/gc",
            r#"{"olderThan":"30d","grace":"1h","maxSize":"200GiB","dryRun":true}"#,
        ),
        (
            "/_pullthrough/gc",
            r#"{"dryRun":true,"maxSize":1073741824}"#,
        ),
        ("/_pullthrough/gc", ""),
        (
            "/_pullthrough/prefetch",
            r#"{"refs":["team/app:v1"],"platforms":"all"}"#,
        ),
        (
            "/_pullthrough/prefetch",
            r#"{"refs":["team/app:v1"],"platforms":"linux/amd64,linux/arm64/v8"}"#,
        ),
        ("/_pullthrough/purge", r#"{"refs":["team/app:v1"]}"#),
    ] {
        let report = a.post_ok(path, body).await;
        assert!(report.is_object(), "{path}: {report}");
    }
    for query in ["", "?repo=team/app", "?repo=local%2Fteam%2Fapp"] {
        let resp = a
            .call(
                reqwest::Method::GET,
                &format!("/_pullthrough/ls{query}"),
                Some(&format!("bearer {TOKEN}")),
                "",
            )
            .await;
        assert_eq!(resp.status(), 200, "ls{query}");
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        assert!(resp.json::<serde_json::Value>().await.unwrap().is_object());
    }
}

#[tokio::test]
async fn bad_bodies_are_400_naming_the_problem_and_change_nothing() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start(&up, Some(TOKEN), "").await;
    pull_warm(&a, &up, &img).await;
    // Everything is a month old: a gc or purge that ran would remove it.
    a.clock.advance(MONTH);
    let before = a.files();
    for (path, body, says) in [
        ("/_pullthrough/purge", "refs=team/app", "bad JSON"),
        ("/_pullthrough/purge", "[]", "bad JSON"),
        ("/_pullthrough/purge", "{}", "refs"),
        ("/_pullthrough/purge", r#"{"refs":[]}"#, "at least one"),
        ("/_pullthrough/purge", r#"{"refs":"team/app"}"#, "bad JSON"),
        (
            "/_pullthrough/purge",
            r#"{"refs":["team/app"],"force":true}"#,
            "unknown field",
        ),
        (
            "/_pullthrough/purge",
            r#"{"refs":["team/app", "team app"]}"#,
            "team app",
        ),
        (
            "/_pullthrough/purge",
            r#"{"refs":["team/app",""]}"#,
            "not a reference",
        ),
        ("/_pullthrough/gc", r#"{"olderThan":"soon"}"#, "olderThan"),
        ("/_pullthrough/gc", r#"{"olderThan":"1m"}"#, "olderThan"),
        (
            "/_pullthrough/gc",
            r#"{"olderThan":"30d","grace":"31d"}"#,
            "grace",
        ),
        ("/_pullthrough/gc", r#"{"maxSize":"lots"}"#, "maxSize"),
        ("/_pullthrough/gc", r#"{"maxSize":"1KiB"}"#, "maxSize"),
        (
            "/_pullthrough/gc",
            r#"{"older_than":"30d"}"#,
            "unknown field",
        ),
        ("/_pullthrough/gc", r#"{"dryRun":"yes"}"#, "bad JSON"),
        ("/_pullthrough/gc", r#"{"olderThan":"30d""#, "bad JSON"),
        (
            "/_pullthrough/prefetch",
            r#"{"refs":["team/app:v1"],"platforms":5}"#,
            "bad JSON",
        ),
        (
            "/_pullthrough/prefetch",
            r#"{"refs":[],"platforms":"all"}"#,
            "at least one",
        ),
        (
            "/_pullthrough/prefetch",
            r#"{"refs":["team/app:v1"],"platform":"all"}"#,
            "unknown field",
        ),
    ] {
        let code = if says.contains("reference") || says == "team app" {
            "NAME_INVALID"
        } else {
            "UNSUPPORTED"
        };
        let resp = a.post(path, body).await;
        let message = expect_oci_error(resp, 400, code).await;
        assert!(message.contains(says), "{path} {body}: {message}");
    }
    let resp = a
        .call(
            reqwest::Method::GET,
            "/_pullthrough/ls?tag=v1",
            Some(&format!("Bearer {TOKEN}")),
            "",
        )
        .await;
    let message = expect_oci_error(resp, 400, "UNSUPPORTED").await;
    assert!(message.contains("tag"), "{message}");
    // A repository no pull could resolve is a bad reference, as for purge and prefetch.
    let resp = a
        .call(
            reqwest::Method::GET,
            "/_pullthrough/ls?repo=registry.example.com/team/app",
            Some(&format!("Bearer {TOKEN}")),
            "",
        )
        .await;
    let message = expect_oci_error(resp, 400, "NAME_INVALID").await;
    assert!(message.contains("no upstream named"), "{message}");
    assert_eq!(a.files(), before, "a refused request changed the store");
    up.clear_requests();
    a.pull_by_digest("team/app", &img).await;
    assert_eq!(up.request_lines(), Vec::<String>::new(), "still cached");
}

#[tokio::test]
async fn an_oversize_body_is_413_and_a_wrong_method_405() {
    let (up, _img) = upstream_with_image().await;
    let a = Admin::start(&up, Some(TOKEN), "").await;
    let big = format!(r#"{{"refs":["{}"]}}"#, "a".repeat(64 * 1024));
    for path in [
        "/_pullthrough/purge",
        "/_pullthrough/prefetch",
        "/_pullthrough/gc",
    ] {
        expect_oci_error(a.post(path, &big).await, 413, "UNSUPPORTED").await;
        // Without a Content-Length (chunked), counted as it arrives.
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..2)
            .map(|_| Ok(bytes::Bytes::from(vec![b' '; 40 * 1024])))
            .collect();
        let resp = a
            .http
            .post(format!("{}{path}", a.url))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .expect("proxy answers");
        expect_oci_error(resp, 413, "UNSUPPORTED").await;
    }
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, allow) in [
        (reqwest::Method::GET, "/_pullthrough/purge", "POST"),
        (reqwest::Method::PUT, "/_pullthrough/prefetch", "POST"),
        (reqwest::Method::GET, "/_pullthrough/gc", "POST"),
        (reqwest::Method::DELETE, "/_pullthrough/gc", "POST"),
        (reqwest::Method::POST, "/_pullthrough/ls", "GET, HEAD"),
    ] {
        let resp = a.call(method.clone(), path, Some(&bearer), "{}").await;
        assert_eq!(header(&resp, "allow"), Some(allow), "{method} {path}");
        expect_oci_error(resp, 405, "UNSUPPORTED").await;
    }
    // A listing is a GET, so a HEAD too: the same status and type, no body.
    let resp = a
        .call(reqwest::Method::HEAD, "/_pullthrough/ls", Some(&bearer), "")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = a
        .call(
            reqwest::Method::GET,
            "/_pullthrough/nothing",
            Some(&bearer),
            "",
        )
        .await;
    expect_oci_error(resp, 404, "UNSUPPORTED").await;
}

#[tokio::test]
async fn a_short_admin_token_or_a_bad_gc_setting_stops_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    for (env, says) in [
        (
            ("PULLTHROUGH_ADMIN_TOKEN", "too-short-a-token"),
            "at least 32",
        ),
        (("PULLTHROUGH_GC_INTERVAL", "0s"), "PULLTHROUGH_GC_INTERVAL"),
        (("PULLTHROUGH_GC_OLDER_THAN", "10m"), "2h to 3650d"),
        (("PULLTHROUGH_GC_GRACE", "forever"), "PULLTHROUGH_GC_GRACE"),
        (
            ("PULLTHROUGH_GC_MAX_SIZE", "12 parsecs"),
            "PULLTHROUGH_GC_MAX_SIZE",
        ),
    ] {
        let ran = run(
            &["serve", "--listen", "127.0.0.1:0", "--store", store],
            &[env],
        );
        assert_eq!(ran.code, Some(2), "{env:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{env:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(env.0), "{env:?}: {}", ran.stderr);
    }
    let config = config_file(dir.path(), "[gc]\ninterval = \"1d\"\nolder_than = \"1h\"\n");
    let ran = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("[gc] older_than"), "{}", ran.stderr);
}

#[tokio::test]
async fn periodic_gc_runs_on_its_interval_and_is_off_by_default() {
    let (up, _img) = upstream_with_image().await;
    let off = Admin::start(&up, None, "").await;
    assert!(pullthrough::app::periodic_gc(&off.cache).is_none());
    let on = Admin::start(&up, None, "[gc]\ninterval = \"1s\"\n").await;
    let gc = pullthrough::app::periodic_gc(&on.cache).expect("periodic gc is on");
    let runs = gc.runs();
    eventually("two periodic gc runs", Duration::from_secs(30), || {
        let n = *runs.borrow();
        async move { n >= 2 }
    })
    .await;
}

// ---- Outcomes: these need the lifecycle functions (gc, purge, prefetch) behind the API. ----

#[tokio::test]
async fn purge_over_http_makes_the_next_pull_go_upstream() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start(&up, Some(TOKEN), "").await;
    pull_warm(&a, &up, &img).await;
    a.post_ok("/_pullthrough/purge", r#"{"refs":["team/app:v1"]}"#)
        .await;
    up.clear_requests();
    a.pull("team/app", "v1", &img).await;
    assert!(
        up.count("GET", "/v2/team/app/manifests/v1") >= 1,
        "the purged tag was fetched again: {:?}",
        up.request_lines()
    );
}

#[tokio::test]
async fn prefetch_over_http_makes_the_next_pull_need_no_upstream_request_s3() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start_s3(&up).await;
    a.post_ok(
        "/_pullthrough/prefetch",
        r#"{"refs":["team/app:v1"],"platforms":"all"}"#,
    )
    .await;
    for d in img.amd64.blob_digests() {
        assert!(a.s3.as_ref().unwrap().has_blob(&d).await, "{d} prefetched");
    }
    up.clear_requests();
    a.pull("team/app", "v1", &img).await;
    assert_eq!(
        up.request_lines(),
        Vec::<String>::new(),
        "a pull after the prefetch needs no upstream"
    );
}

#[tokio::test]
async fn a_dry_run_gc_over_http_lists_what_would_go_and_changes_nothing() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start(&up, Some(TOKEN), "").await;
    pull_warm(&a, &up, &img).await;
    a.clock.advance(MONTH);
    let before = a.files();
    let report = a
        .post_ok("/_pullthrough/gc", r#"{"olderThan":"30d","dryRun":true}"#)
        .await
        .to_string();
    for d in img.amd64.blob_digests() {
        let hex = d.split_once(':').unwrap().1;
        assert!(report.contains(hex), "{d} would go: {report}");
    }
    assert_eq!(a.files(), before, "a dry run changed the store");
    up.clear_requests();
    a.pull_by_digest("team/app", &img).await;
    assert_eq!(up.request_lines(), Vec::<String>::new(), "still cached");
}

#[tokio::test]
async fn periodic_gc_removes_what_no_one_pulled_within_the_retention() {
    let (up, img) = upstream_with_image().await;
    let a = Admin::start(&up, None, "[gc]\ninterval = \"1s\"\n").await;
    pull_warm(&a, &up, &img).await;
    let layer = img.amd64.blob_digests().pop().expect("a layer");
    assert!(a.has_blob(&layer));
    a.clock.advance(MONTH);
    let _gc = pullthrough::app::periodic_gc(&a.cache).expect("periodic gc is on");
    let deadline = Deadline::after(Duration::from_secs(30));
    while a.has_blob(&layer) {
        deadline
            .pause("the periodic gc removes the expired image")
            .await;
    }
    up.clear_requests();
    a.pull("team/app", "v1", &img).await;
    assert!(
        up.count("GET", &layer) >= 1,
        "the collected layer was fetched again: {:?}",
        up.request_lines()
    );
}
