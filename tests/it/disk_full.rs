//! The filesystem store on a full disk: the fill fails with an OCI error, leaves no partial
//! object and no temporary file, and the proxy keeps serving what fits. Uses a 4 MiB tmpfs, so
//! it runs as root (as CI does); it fails loudly otherwise.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

/// A mounted tmpfs; the temp dir holding the mount point lives as long as it.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&point)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Tmpfs(point, dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_fill_cleanly_and_the_proxy_goes_on() {
    let disk = Tmpfs::mount("4m");
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let big = up.put_blob("team/app", blob_bytes(200, 8 * 1024 * 1024));
    let small_data = blob_bytes(201, 100_000);
    let small = up.put_blob("team/app", small_data.clone());
    let store = disk.0.join("store");
    let settings = pullthrough::config::Settings {
        store: Some(store.to_string_lossy().into_owned()),
        ..Default::default()
    };
    let config =
        pullthrough::config::Config::from_toml(&settings, &local_config(&up.url())).unwrap();
    let proxy_store = pullthrough::open_store(&config).await.unwrap();
    let router = pullthrough::app(config, proxy_store, Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(pullthrough::serve(listener, router, std::future::pending()));
    let http = reqwest::Client::new();

    // Requests stream the fill from its spill file (the store's temporary file): the one
    // reading the whole blob is cut off instead of completed when the disk fills up.
    let resp = http
        .get(format!("{url}/v2/team/app/blobs/{big}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status() != 200 || resp.bytes().await.is_err());
    // A range gets its bytes if they were written before the disk filled, else an error: never
    // anything else.
    let resp = http
        .get(format!("{url}/v2/team/app/blobs/{big}"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    if resp.status() == 206 {
        if let Ok(b) = resp.bytes().await {
            assert_eq!(b, blob_bytes(200, 8 * 1024 * 1024).slice(0..10));
        }
    } else {
        let msg = expect_oci_error(resp, 503, "UNAVAILABLE").await;
        assert!(msg.contains("spill") || msg.contains("store"), "{msg}");
    }

    let (alg, hex) = big.split_once(':').unwrap();
    assert!(!store.join("blobs").join(alg).join(hex).exists());
    // The range request's fill may still be failing: it goes within seconds.
    let deadline = Deadline::after(std::time::Duration::from_secs(10));
    while !files_under(&store.join(".tmp")).is_empty() {
        deadline
            .pause("a temporary file was left on the full disk")
            .await;
    }

    // What fits is still filled and served.
    let body = http
        .get(format!("{url}/v2/team/app/blobs/{small}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, small_data);
}
