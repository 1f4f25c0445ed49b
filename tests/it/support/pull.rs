//! What a client does and checks: a manifest answer (status, exact bytes, media type, digest),
//! a blob (following the 307 of an S3 store to its presigned URL), a whole image.

use bytes::Bytes;

use super::fake_registry::{MultiArch, Pushed, manifest_digest};
use super::{Proxy, header, sha256};

/// Asserts a manifest answer: status 200, exact bytes, media type and digest.
pub async fn assert_manifest(resp: reqwest::Response, expected: &Pushed) {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-type"),
        Some(expected.media_type.as_str())
    );
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(expected.digest.as_str())
    );
    assert_eq!(
        header(&resp, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let body = resp.bytes().await.expect("body");
    assert_eq!(body, expected.bytes, "bytes differ from the upstream's");
    assert_eq!(
        manifest_digest(&expected.media_type, &body),
        expected.digest,
        "digest is not that of the body"
    );
}

/// Pulls an image as a client does: the index by tag, the amd64 manifest by digest, then its
/// config and layers. With the filesystem store each blob is a 200 with its bytes; over S3 a
/// 307 to a presigned URL that serves them ([`follow_redirect`]).
pub async fn full_pull(proxy: &Proxy, repo: &str, tag: &str, img: &MultiArch) {
    for (reference, expected) in [(tag, &img.index), (img.amd64.digest.as_str(), &img.amd64)] {
        assert_manifest(proxy.manifest(repo, reference).await, expected).await;
    }
    for d in img.amd64.blob_digests() {
        let resp = proxy.get(&format!("/v2/{repo}/blobs/{d}"), None).await;
        if proxy.s3.is_some() {
            follow_redirect(proxy, resp, &d).await;
        } else {
            assert_eq!(resp.status(), 200, "blob {d}");
            assert_eq!(sha256(&resp.bytes().await.expect("body")), d);
        }
    }
}

/// GETs a blob through a proxy over S3, asserts a 307 to the S3 server, follows the Location
/// with a plain client (no Authorization) and checks the bytes hash to `digest`. Returns the
/// Location and the bytes.
pub async fn blob_via_redirect(proxy: &Proxy, repo: &str, digest: &str) -> (String, Bytes) {
    let resp = proxy.get(&format!("/v2/{repo}/blobs/{digest}"), None).await;
    follow_redirect(proxy, resp, digest).await
}

/// Asserts that `resp` is a 307 to the proxy's S3 server whose presigned URL serves `digest`'s
/// bytes to a client without credentials.
pub async fn follow_redirect(
    proxy: &Proxy,
    resp: reqwest::Response,
    digest: &str,
) -> (String, Bytes) {
    assert_eq!(resp.status(), 307, "blob {digest}");
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest));
    let location = header(&resp, "location").expect("Location").to_owned();
    assert!(
        location.starts_with(&format!("{}/{}/", proxy.s3().endpoint, proxy.s3().bucket)),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let client = proxy.s3().plain_client();
    let req = client.get(&location).build().expect("request");
    assert!(req.headers().get("authorization").is_none());
    let follow = client.execute(req).await.expect("S3 answers");
    assert_eq!(follow.status(), 200, "following {location}");
    let body = follow.bytes().await.expect("body");
    assert_eq!(sha256(&body), digest, "bytes behind the presigned URL");
    (location, body)
}

/// The `X-Pullthrough-Store-Calls` of an answer: how many store requests it cost.
pub fn store_calls(resp: &reqwest::Response) -> u32 {
    header(resp, "x-pullthrough-store-calls")
        .expect("X-Pullthrough-Store-Calls")
        .parse()
        .expect("a number")
}

/// The real-world manifests of `tests/fixtures/realworld-manifests` (at least 20, each checked
/// against the sha256 its index records): (tag, media type, bytes).
pub fn realworld_manifests() -> Vec<(String, String, Bytes)> {
    let dir = std::path::Path::new("tests/fixtures/realworld-manifests");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let docs = index["docs"].as_array().unwrap();
    assert!(docs.len() >= 20);
    docs.iter()
        .map(|d| {
            let bytes = Bytes::from(std::fs::read(dir.join(d["file"].as_str().unwrap())).unwrap());
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{}", d["sha256"].as_str().unwrap())
            );
            (
                d["tag"].as_str().unwrap().to_owned(),
                d["mediaType"].as_str().unwrap().to_owned(),
                bytes,
            )
        })
        .collect()
}
