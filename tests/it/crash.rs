//! The proxy killed in the middle of a fill: after a restart the next request refills, and no
//! object under `blobs/` ever holds bytes whose hash differs from its name — which
//! `pullthrough verify` checks, and reports when it is not so.

use crate::support::*;

/// `pullthrough verify` over `args`: exit code and report.
fn verify(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let ran = run(&[&["verify"], args].concat(), env);
    (ran.code, ran.stdout)
}

/// `pullthrough verify` over the filesystem store `store`.
fn verify_dir(store: &std::path::Path) -> (Option<i32>, String) {
    verify(&["--store", store.to_str().unwrap()], &[])
}

/// GETs the blob `digest` from `server` and checks it whole.
async fn get_whole(http: &reqwest::Client, server: &ServerProcess, digest: &str, len: usize) {
    let body = http
        .get(format!("{}/v2/team/app/blobs/{digest}", server.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(sha256(&body), digest);
}

#[tokio::test]
async fn a_fill_killed_midway_leaves_nothing_and_the_next_request_refills() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(100, 64 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let small = up.put_blob("team/app", blob_bytes(101, 10_000));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let config = config_file(dir.path(), &local_config(&up.url()));
    let args = [
        "--store",
        store.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];

    let mut server = ServerProcess::start(&args).await;
    let http = reqwest::Client::new();
    // One complete blob, so verify has something good to read.
    let ok = http
        .get(format!("{}/v2/team/app/blobs/{small}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&ok.bytes().await.unwrap()), small);

    // Start the big fill and stop reading after the first chunk: the bounded tee holds the fill
    // back, so it is certainly unfinished when the process dies.
    let mut resp = http
        .get(format!("{}/v2/team/app/blobs/{d}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    server.kill();
    drop(resp);
    let (alg, hex) = d.split_once(':').unwrap();
    assert!(
        !store.join("blobs").join(alg).join(hex).exists(),
        "a half fill was published"
    );
    assert!(
        !files_under(&store.join(".tmp")).is_empty(),
        "the fill was not in progress"
    );

    // Restart on the same store: the leftovers go, and the blob is filled afresh.
    let server = ServerProcess::start(&args).await;
    assert!(
        files_under(&store.join(".tmp")).is_empty(),
        "temporary files survived a restart"
    );
    get_whole(&http, &server, &d, data.len()).await;

    let (code, out) = verify_dir(&store);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("checked 2 blobs"), "{out}");
    assert!(out.contains("0 bad"), "{out}");
}

#[test]
fn verify_reports_a_blob_whose_bytes_do_not_match_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let good = b"good bytes".to_vec();
    let good_digest = sha256(&good);
    let blobs = store.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(good_digest.trim_start_matches("sha256:")), &good).unwrap();
    // A signed schema1 manifest is named by its JWS payload, not by its bytes.
    let schema1 =
        std::fs::read("tests/fixtures/realworld-manifests/real/ci-v2s1-signed.json").unwrap();
    let payload_digest = manifest_digest(DOCKER_SCHEMA1_SIGNED, &schema1);
    assert_ne!(payload_digest, sha256(&schema1));
    std::fs::write(
        blobs.join(payload_digest.trim_start_matches("sha256:")),
        &schema1,
    )
    .unwrap();
    let (code, out) = verify_dir(&store);
    assert_eq!(code, Some(0), "{out}");

    let bad_name = sha256(b"what the name promises");
    std::fs::write(
        blobs.join(bad_name.trim_start_matches("sha256:")),
        b"something else",
    )
    .unwrap();
    std::fs::write(blobs.join("not-a-digest"), b"x").unwrap();
    let (code, out) = verify_dir(&store);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "BAD blobs/sha256/{}",
            bad_name.trim_start_matches("sha256:")
        )),
        "{out}"
    );
    assert!(out.contains(&sha256(b"something else")), "{out}");
    assert!(out.contains("STRANGE blobs/sha256/not-a-digest"), "{out}");
    assert!(out.contains("1 bad, 1 strange"), "{out}");
}

/// The same crash over the S3 store: the real binary is killed while a multipart upload of a
/// blob is under way. Nothing appears under `blobs/` (the unfinished upload stays until the
/// bucket's lifecycle rule aborts it), a restarted process takes the dead one's fill lease over
/// once it expires and fills the blob afresh, and
/// `pullthrough verify` over the bucket finds everything good, then flags a bad object.
/// (Multi-threaded: the S3 server runs on this runtime while a thread waits for the child.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_killed_midway_over_s3_publishes_nothing_and_the_next_request_refills() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(102, 40 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let small = up.put_blob("team/app", blob_bytes(103, 10_000));
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spill_dir = dir.path().join("spill");
    let s3_extra = "part_size = \"8MiB\"\nparts_in_flight = 1\nfill_lease = \"3s\"";
    let config = config_file(
        dir.path(),
        &format!(
            "{}{}",
            local_s3_config(&up.url(), &s3, s3_extra),
            spill_table(&spill_dir, "")
        ),
    );
    let args = s3::binary_args(&config);
    let env = s3::AWS_ENV;
    let http = reqwest::Client::new(); // follows the 307 to S3

    let mut server = ServerProcess::start_with_env(&args, &env).await;
    let ok = http
        .get(format!("{}/v2/team/app/blobs/{small}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&ok.bytes().await.unwrap()), small);

    // The client of a cold blob over S3 streams it from the fill's spill file while the
    // upload runs; kill the process once the first part is stored.
    let pending = tokio::spawn({
        let (http, url) = (
            http.clone(),
            format!("{}/v2/team/app/blobs/{d}", server.url),
        );
        async move { http.get(url).send().await?.bytes().await }
    });
    s3.wait_for("a stored part", |calls| {
        calls
            .iter()
            .any(|c| c.op == "UploadPart" && c.error.is_none())
    })
    .await;
    server.kill();
    // The client got the verified bytes (released once the digest matched, before the upload
    // ended) or was cut off: never anything else.
    if let Ok(body) = pending.await.unwrap() {
        assert_eq!(sha256(&body), d, "a client got wrong bytes");
    }
    assert_eq!(
        files_under(&spill_dir).len(),
        1,
        "the dead process's spill file is left behind"
    );
    let (alg, hex) = d.split_once(':').unwrap();
    assert!(!s3.has_blob(&d).await, "a half fill was published");
    assert_eq!(
        s3.multipart_uploads().await.len(),
        1,
        "the fill was not in progress when the process died"
    );
    // The dead process's fill lease is left behind too (it can no longer release it).
    let lease = format!("leases/blobs/{alg}/{hex}");
    assert_eq!(s3.object_keys("leases/").await, vec![lease.clone()]);

    // A new process waits for that lease to expire (3 s here, `[s3] fill_lease`: a live owner
    // would have renewed it), takes it over and fills the blob afresh.
    let server = ServerProcess::start_with_env(&args, &env).await;
    assert!(
        files_under(&spill_dir).is_empty(),
        "a new process removes the spill files of dead ones at start-up"
    );
    get_whole(&http, &server, &d, data.len()).await;
    // The client has its bytes once they are verified; the upload, then the lease's release,
    // follow.
    s3.wait_for("the lease released", |calls| {
        calls
            .iter()
            .any(|c| c.op == "DeleteObject" && c.key == lease && c.error.is_none())
    })
    .await;
    assert_eq!(s3.object_keys("leases/").await, Vec::<String>::new());

    let (code, out) = verify(&args, &env);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("checked 2 blobs"), "{out}");
    assert!(out.contains("0 bad"), "{out}");

    // An object whose bytes do not match its name (written behind the proxy's back) is reported.
    let bad_name = sha256(b"what the name promises");
    s3.admin
        .put_object()
        .bucket(&s3.bucket)
        .key(format!(
            "blobs/sha256/{}",
            bad_name.trim_start_matches("sha256:")
        ))
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"something else",
        ))
        .send()
        .await
        .unwrap();
    let (code, out) = verify(&args, &env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&sha256(b"something else")), "{out}");
    assert!(out.contains("1 bad"), "{out}");
}

#[test]
fn verify_of_a_missing_store_directory_is_an_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let out = run(&["verify", "--store", typo.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2));
    let stderr = out.stderr;
    assert!(
        stderr.contains(&format!(
            "pullthrough: store directory {} does not exist",
            typo.display()
        )),
        "{stderr}"
    );
    assert!(!typo.exists(), "verify created the directory");
}

#[tokio::test]
async fn verify_and_a_second_server_leave_a_live_servers_temporary_files_alone() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(110, 64 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let config = config_file(dir.path(), &local_config(&up.url()));
    let args = [
        "--store",
        store.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let server = ServerProcess::start(&args).await;
    // A fill in flight, held back by a client that pauses after the first chunk.
    let mut resp = reqwest::get(format!("{}/v2/team/app/blobs/{d}", server.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().unwrap().to_vec();
    let tmp = files_under(&store.join(".tmp"));
    assert!(!tmp.is_empty(), "the fill was not in progress");

    let (code, out) = verify_dir(&store);
    assert_eq!(code, Some(0), "{out}");
    // A second server on the same directory starts and serves, but leaves .tmp alone too.
    let second = ServerProcess::start(&args).await;
    let ok = reqwest::get(format!("{}/v2/", second.url)).await.unwrap();
    assert_eq!(ok.status(), 200);
    for f in &tmp {
        assert!(
            f.exists(),
            "{} was removed under the live server",
            f.display()
        );
    }

    // The first server's fill completes and is published whole.
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), d);
    let (alg, hex) = d.split_once(':').unwrap();
    let deadline = Deadline::after(std::time::Duration::from_secs(10));
    while !store.join("blobs").join(alg).join(hex).exists() {
        deadline.pause("the fill was not published").await;
    }
    let (code, out) = verify_dir(&store);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("checked 1 blobs"), "{out}");
}
