//! Manifest parsing: arbitrary bytes never panic the media-type sniffing or the platform pick.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pullthrough::oci::media::{ClientAccept, default_platform_child, manifest_media_type};

fuzz_target!(|data: &[u8]| {
    let mt = manifest_media_type(None, data);
    assert!(!mt.is_empty());
    let _ = manifest_media_type(Some("application/json"), data);
    let accept = ClientAccept::parse(["application/vnd.oci.image.manifest.v1+json"]);
    let _ = default_platform_child(data, &accept);
});
