//! The real binary: `pullthrough serve` starts, answers, and refuses bad configuration with a
//! message that says what to fix.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pullthrough"))
}

/// Kills the server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_starts_with_the_filesystem_store_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut child = Child(
        bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(&store)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("server exited before serving").unwrap();
        if let Some(u) = line.strip_prefix("pullthrough: serving on ") {
            break u.to_owned();
        }
    };
    let resp = reqwest::get(format!("{url}/v2/")).await.unwrap();
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
