//! The real binary: `pullthrough serve` starts, answers, and refuses bad configuration with a
//! message that says what to fix.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn serve_starts_with_the_filesystem_store_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let server = ServerProcess::start(&["--store", store.to_str().unwrap()]).await;
    let resp = reqwest::get(format!("{}/v2/", server.url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert!(
        store.join(".tmp").is_dir(),
        "the store directory was created"
    );
}

/// Logs written to a file or a pipe (systemd, `docker logs`, `> pullthrough.log`) are plain text:
/// no terminal colour codes.
#[tokio::test]
async fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let (mut server, log) = ServerProcess::start_logged(
        &["--store", store.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    )
    .await;
    let resp = reqwest::get(format!("{}/v2/", server.url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    server.kill();
    let log = log.join().unwrap();
    assert!(
        log.contains("request"),
        "no request line in the log:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log:?}"
    );
}

#[test]
fn bad_configuration_stops_with_a_message_naming_the_setting() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["serve", "--tag-ttl", "soon"], &[], "PULLTHROUGH_TAG_TTL"),
        (
            &["serve"],
            &[("PULLTHROUGH_LISTEN", "not-an-address")],
            "PULLTHROUGH_LISTEN",
        ),
        (&["serve", "--store", "ftp://x"], &[], "PULLTHROUGH_STORE"),
        (
            &["serve", "--config", "/nonexistent/pullthrough.toml"],
            &[],
            "cannot read config file",
        ),
    ];
    for (args, env, expected) in cases {
        let out = run(args, env);
        assert_eq!(out.code, Some(2), "{args:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
}

/// The config for a server in front of `up` (alias `local`) with a shutdown grace of `grace`,
/// and upstream timeouts long enough that only the shutdown ends a held-back fill.
fn shutdown_config(up: &FakeRegistry, grace: &str) -> String {
    format!(
        r#"default_upstream = "local"
shutdown_grace = "{grace}"
connect_timeout = "2s"
request_timeout = "30s"
read_timeout = "60s"

[[upstream]]
alias = "local"
url = "{}"
insecure = true
"#,
        up.url()
    )
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_cuts_the_rest_after_the_grace_and_exits_0() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let big = blob_bytes(200, 64 * 1024 * 1024);
    let slow = up.put_blob("team/app", big.clone());
    let quick = up.put_blob("team/app", blob_bytes(201, 100_000));
    let quick_hex = quick.trim_start_matches("sha256:").to_owned();
    // The quick request is still waiting for the upstream when the signal comes.
    up.add_fault(FaultRule::new(Fault::Stall(Duration::from_secs(1))).path(&quick_hex));
    // The slow fill gets half of its bytes, then nothing (the upstream holds the rest).
    up.add_fault(
        FaultRule::new(Fault::Hold { at: big.len() / 2 })
            .method("GET")
            .path(slow.trim_start_matches("sha256:")),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let config = config_file(dir.path(), &shutdown_config(&up, "3s"));
    let mut server = ServerProcess::start(&[
        "--store",
        store.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let http = reqwest::Client::new();

    // A fill held back by its upstream, with a client streaming it.
    let mut held = http
        .get(format!("{}/v2/team/app/blobs/{slow}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let mut held_bytes = held.chunk().await.unwrap().map_or(0, |c| c.len());
    let in_flight = tokio::spawn({
        let url = format!("{}/v2/team/app/blobs/{quick}", server.url);
        async move { reqwest::get(url).await?.bytes().await }
    });
    let deadline = Deadline::after(Duration::from_secs(10));
    while up.count("GET", &quick_hex) == 0 {
        deadline
            .pause("the quick request never reached the upstream")
            .await;
    }

    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());

    // The request in flight is finished, with the right bytes.
    let body = in_flight
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(sha256(&body), quick);
    // No new connections once the signal has come.
    let addr = server.url.trim_start_matches("http://").to_owned();
    let deadline = Deadline::after(Duration::from_secs(5));
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        deadline.pause("still accepting after SIGTERM").await;
    }
    // The held-back fill outlives the grace period: the server cuts it and exits 0.
    let deadline = Deadline::after(Duration::from_secs(20));
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        deadline.pause("still running 20 s after SIGTERM").await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(2500),
        "exited before the grace period: {:?}",
        signalled.elapsed()
    );
    while let Ok(Some(c)) = held.chunk().await {
        held_bytes += c.len();
    }
    assert!(held_bytes < big.len(), "the held-back response was not cut");

    // Nothing half-published: the finished blob is whole, the cut one absent, no temp files.
    let (alg, hex) = slow.split_once(':').unwrap();
    assert!(!store.join("blobs").join(alg).join(hex).exists());
    let (alg, hex) = quick.split_once(':').unwrap();
    let stored = std::fs::read(store.join("blobs").join(alg).join(hex)).unwrap();
    assert_eq!(sha256(&stored), quick);
    assert!(
        files_under(&store.join(".tmp")).is_empty(),
        "temporary files left"
    );
}
