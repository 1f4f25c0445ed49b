//! Hostile input and misbehaving upstreams: oversize requests get 4xx, redirect loops end, and
//! nothing is stored.

mod common;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use common::*;

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
