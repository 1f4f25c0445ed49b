//! Request paths: never panic; a parsed name never carries traversal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pullthrough::http::path::{Endpoint, parse};

fuzz_target!(|data: &str| {
    if let Ok(ep) = parse(data) {
        let name = match ep {
            Endpoint::Manifest(n, _) | Endpoint::Blob(n, _) | Endpoint::TagsList(n) | Endpoint::Referrers(n, _) => n,
            Endpoint::Upload => return,
        };
        assert!(name.as_str().split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    }
});
