//! The proxy killed in the middle of a fill: after a restart the next request refills, and no
//! object under `blobs/` ever holds bytes whose hash differs from its name — which
//! `pullthrough verify` checks, and reports when it is not so.

mod common;

use std::process::Command;

use common::*;

fn verify(store: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pullthrough"))
        .args(["verify", "--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_fill_killed_midway_leaves_nothing_and_the_next_request_refills() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(100, 64 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let small = up.put_blob("team/app", blob_bytes(101, 10_000));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let config = dir.path().join("pullthrough.toml");
    std::fs::write(&config, local_config(&up.url())).unwrap();
    let args = [
        "--store",
        store.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];

    let mut server = ServerProcess::start(&args);
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
    let server = ServerProcess::start(&args);
    assert!(
        files_under(&store.join(".tmp")).is_empty(),
        "temporary files survived a restart"
    );
    let body = http
        .get(format!("{}/v2/team/app/blobs/{d}", server.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), data.len());
    assert_eq!(sha256(&body), d);

    let (code, out) = verify(&store);
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
    let (code, out) = verify(&store);
    assert_eq!(code, Some(0), "{out}");

    let bad_name = sha256(b"what the name promises");
    std::fs::write(
        blobs.join(bad_name.trim_start_matches("sha256:")),
        b"something else",
    )
    .unwrap();
    std::fs::write(blobs.join("not-a-digest"), b"x").unwrap();
    let (code, out) = verify(&store);
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
