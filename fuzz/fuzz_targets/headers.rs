//! `WWW-Authenticate`, `Accept`, `Range` and `Authorization` parsing: never panic; the upstream
//! Accept always holds the full union and never a control character.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pullthrough::oci::media::ClientAccept;
use pullthrough::http::range::parse_range;
use pullthrough::upstream::auth::parse_challenge;

fuzz_target!(|data: &str| {
    let _ = parse_challenge(data);
    let a = ClientAccept::parse(data.split('\n'));
    let h = a.upstream_header();
    assert!(h.contains("application/vnd.oci.image.index.v1+json"));
    assert!(!h.bytes().any(|b| b.is_ascii_control()));
    if let Some(r) = parse_range(data) {
        if let Some(b) = r.resolve(1000) {
            assert!(b.first <= b.last && b.last < 1000);
        }
    }
    let _ = pullthrough::auth::decode_basic(data);
});
