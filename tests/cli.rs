//! The real binary: `pullthrough serve` starts, answers, and refuses bad configuration with a
//! message that says what to fix.

mod common;

use std::process::Command;

use common::ServerProcess;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pullthrough"))
}

#[tokio::test]
async fn serve_starts_with_the_filesystem_store_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let server = ServerProcess::start(&["--store", store.to_str().unwrap()]);
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
        let out = bin().args(args).envs(env.iter().copied()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
