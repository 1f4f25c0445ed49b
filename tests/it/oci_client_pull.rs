//! An independent client (the `oci-client` crate) pulls a multi-arch image through the proxy;
//! every digest it reports is checked against the upstream's.

use crate::support::*;
use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        ..ClientConfig::default()
    })
}

#[tokio::test]
async fn oci_client_pulls_a_multi_arch_index_through_the_proxy() {
    let up = FakeRegistry::start(FakeOptions::default()).await;
    let img = push_oci_index(&up, "team/app", "v1", 50);
    let proxy = Proxy::start(&up).await;
    let host = proxy.url.trim_start_matches("http://").to_owned();
    let c = client();
    let auth = RegistryAuth::Anonymous;

    let by_tag: Reference = format!("{host}/team/app:v1").parse().unwrap();
    let (manifest, digest) = c.pull_manifest(&by_tag, &auth).await.expect("pull index");
    assert_eq!(digest, img.index.digest);
    let OciManifest::ImageIndex(index) = manifest else {
        panic!("expected an image index");
    };
    assert_eq!(index.manifests.len(), 3);

    for child in [&img.amd64, &img.arm64, &img.attestation] {
        let by_digest: Reference = format!("{host}/team/app@{}", child.digest).parse().unwrap();
        let (raw, d) = c
            .pull_manifest_raw(&by_digest, &auth, &[OCI_MANIFEST])
            .await
            .expect("pull child by digest");
        assert_eq!(d, child.digest);
        assert_eq!(raw, child.bytes.to_vec());
    }

    let image = c
        .pull(
            &by_tag,
            &auth,
            vec!["application/vnd.oci.image.layer.v1.tar+gzip"],
        )
        .await
        .expect("pull image");
    assert_eq!(image.digest.as_deref(), Some(img.amd64.digest.as_str()));
    let manifest = image.manifest.expect("manifest");
    // oci-client collects layers in completion order, so compare as sets.
    let mut expected: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    let mut got: Vec<String> = image.layers.iter().map(|l| sha256(&l.data)).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(sha256(&image.config.data), manifest.config.digest);
}
