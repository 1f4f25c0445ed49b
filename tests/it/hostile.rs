//! Hostile input and misbehaving upstreams: oversize requests get 4xx, redirect loops end, and
//! nothing is stored.

use crate::support::*;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

#[tokio::test]
async fn oversize_headers_and_query_strings_get_4xx() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::start(&up).await;
    let huge = "a".repeat(512 * 1024);
    let resp = proxy
        .http
        .get(format!("{}/v2/", proxy.url))
        .header("x-filler", &huge)
        .send()
        .await;
    // hyper refuses the request head (431) or closes the connection; either way no 2xx.
    if let Ok(r) = resp {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let long_query = format!("/v2/team/app/tags/list?last={}", "x".repeat(10_000));
    let resp = proxy.get(&long_query, None).await;
    expect_oci_error(resp, 400, "UNSUPPORTED").await;
    let resp = proxy.get("/v2/team/app/tags/list?n=notanumber", None).await;
    expect_oci_error(resp, 400, "UNSUPPORTED").await;
    let many_accepts = vec![DOCKER_MANIFEST; 2000].join(", ");
    let resp = proxy
        .get("/v2/team/app/manifests/v1", Some(&many_accepts))
        .await;
    assert!(resp.status().is_client_error());
    assert!(
        up.requests()
            .iter()
            .all(|r| r.accept.as_deref().is_none_or(|a| a.len() < 2000))
    );
    assert!(proxy.all_files().is_empty());
}

/// An upstream whose blob endpoint redirects to itself forever.
async fn looping_upstream() -> String {
    let app = Router::new().route("/v2/", get(|| async { "{}" })).route(
        "/v2/{*rest}",
        get(|uri: axum::http::Uri| async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, uri.path().to_owned())],
            )
                .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_redirect_loop_ends_in_502_and_stores_nothing() {
    let url = looping_upstream().await;
    let proxy = Proxy::with_config(&local_config(&url)).await;
    let d = sha256(b"anything");
    let msg = expect_oci_error(
        proxy.get(&format!("/v2/team/app/blobs/{d}"), None).await,
        502,
        "UNAVAILABLE",
    )
    .await;
    assert!(msg.contains("redirects"), "{msg}");
    let msg = expect_oci_error(
        proxy.get("/v2/team/app/manifests/v1", None).await,
        502,
        "UNAVAILABLE",
    )
    .await;
    assert!(msg.contains("redirects"), "{msg}");
    assert!(proxy.all_files().is_empty());
}

// ---- Connections (server mode): head and idle timeouts, header sizes, the connection cap, the
// write timeout. Raw TCP against the real server, with short configured limits.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(proxy.url.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (EOF or reset) or `limit` passes; returns how
/// long that took, or `None` when the connection was still open at the limit.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

/// Reads one response head (up to the blank line) and returns it with whatever body bytes
/// came along.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return (head, got[end + 4..].to_vec());
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response head within 10 s")
            .expect("read");
        assert!(n > 0, "closed before a response head: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn limits_config(up: &FakeRegistry, limits: &str) -> String {
    local_config_with(&up.url(), limits)
}

#[tokio::test]
async fn request_heads_that_never_end_are_closed_after_the_header_read_timeout() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let proxy = Proxy::with_config(&limits_config(&up, "header_read_timeout = \"1s\"")).await;
    // Half-sent heads, and a connection that sends nothing at all.
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut c = connect(&proxy).await;
        if i > 0 {
            c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        conns.push(c);
    }
    let started = Instant::now();
    for c in &mut conns {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        assert!(
            closed_within(c, left).await.is_some(),
            "a connection with an unfinished request head was still open after 5 s"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(800));
    // A whole request on a fresh connection is still answered.
    assert_eq!(proxy.get("/v2/", None).await.status(), 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let limits = "header_read_timeout = \"30s\"\nidle_timeout = \"1s\"";
    let proxy = Proxy::with_config(&limits_config(&up, limits)).await;
    let mut c = connect(&proxy).await;
    for _ in 0..2 {
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"{}");
    }
    // Kept alive between requests, then closed once idle: well before the head timeout.
    let took = closed_within(&mut c, Duration::from_secs(5))
        .await
        .expect("an idle connection was still open after 5 s");
    assert!(took >= Duration::from_millis(800), "{took:?}");
}

#[tokio::test]
async fn an_oversize_header_is_answered_431_with_an_oci_error() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    // Default limits: 16 KiB per header, 128 KiB per head.
    let proxy = Proxy::start(&up).await;
    let resp = proxy
        .http
        .get(format!("{}/v2/", proxy.url))
        .header("authorization", format!("Basic {}", "A".repeat(64 * 1024)))
        .send()
        .await
        .unwrap();
    let msg = expect_oci_error(resp, 431, "UNSUPPORTED").await;
    assert!(
        msg.contains("authorization") && msg.contains("16384"),
        "{msg}"
    );
    // Under the limit: served as before.
    let resp = proxy
        .http
        .get(format!("{}/v2/", proxy.url))
        .header("x-filler", "a".repeat(15 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A head over the total limit, made of headers each under the per-header one.
    let mut c = connect(&proxy).await;
    let mut req = String::from("GET /v2/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        req.push_str(&format!("x-filler-{i}: {}\r\n", "a".repeat(10 * 1024)));
    }
    req.push_str("\r\n");
    let _ = c.write_all(req.as_bytes()).await;
    let (head, _) = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test]
async fn a_connection_over_the_cap_gets_a_clear_503_and_is_closed() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let limits = "max_connections = 2\nheader_read_timeout = \"30s\"";
    let proxy = Proxy::with_config(&limits_config(&up, limits)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&proxy).await;
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(c);
    }
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let started = Instant::now();
    let resp = fresh()
        .get(format!("{}/v2/", proxy.url))
        .send()
        .await
        .expect("an answer, not a hang or a reset");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    let msg = expect_oci_error(resp, 503, "UNAVAILABLE").await;
    assert!(msg.contains("too many connections"), "{msg}");
    // A held connection goes: the next client is served.
    held.pop();
    let deadline = Deadline::after(Duration::from_secs(5));
    loop {
        let resp = fresh()
            .get(format!("{}/v2/", proxy.url))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        deadline.check("the freed slot was not reused");
    }
}

/// The state of the server's side of the TCP connection from `client_port` to `server_port`,
/// as /proc/net/tcp says (`01` is ESTABLISHED); `None` once it is gone.
fn server_side_state(server_port: u16, client_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port))
            .then(|| f[3].to_owned())
    })
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_write_timeout_and_others_are_served() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(7, 48 * 1024 * 1024);
    let d = up.put_blob("team/app", data.clone());
    let proxy = Proxy::with_config(&limits_config(&up, "write_timeout = \"1s\"")).await;
    let path = format!("/v2/team/app/blobs/{d}");
    // Stored first: the slow reader below reads from the filesystem store.
    let body = proxy.get(&path, None).await.bytes().await.unwrap();
    assert_eq!(sha256(&body), d);

    let mut slow = connect(&proxy).await;
    let client_port = slow.local_addr().unwrap().port();
    let server_port = slow.peer_addr().unwrap().port();
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, mut got) = read_head(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Now it stops reading. Another client is served meanwhile, in full.
    let other = proxy.get(&path, None).await.bytes().await.unwrap();
    assert_eq!(sha256(&other), d);
    // The server gives up on the stalled one: its side of the connection leaves ESTABLISHED.
    let deadline = Deadline::after(Duration::from_secs(10));
    while server_side_state(server_port, client_port).as_deref() == Some("01") {
        deadline
            .pause("the server still held the connection of a client that stopped reading")
            .await;
    }
    // What was already in flight arrives, then the connection ends: the body is short.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the cut connection did not end"),
        }
    }
    assert!(got.len() < data.len(), "the whole blob arrived");
    assert_eq!(proxy.get("/v2/", None).await.status(), 200);
}

#[tokio::test]
async fn http2_without_tls_is_still_served_under_the_limits() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let data = blob_bytes(8, 3 * 1024 * 1024);
    let d = up.put_blob("team/app", data);
    let proxy = Proxy::with_config(&limits_config(&up, "write_timeout = \"1s\"")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(format!("{}/v2/", proxy.url)).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    for _ in 0..2 {
        let resp = h2
            .get(format!("{}/v2/team/app/blobs/{d}", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(sha256(&resp.bytes().await.unwrap()), d);
    }
    let resp = h2
        .get(format!("{}/v2/", proxy.url))
        .header("x-filler", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    expect_oci_error(resp, 431, "UNSUPPORTED").await;
}
