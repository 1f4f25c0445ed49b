//! Names, tags, references and digests: never panic; whatever parses is safe in a store key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pullthrough::oci::{Digest, Reference, RepoName, Tag};

fuzz_target!(|data: &str| {
    if let Ok(n) = RepoName::parse(data) {
        assert!(n.as_str().split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
        assert!(!n.as_str().contains(['%', '\\', ':']));
    }
    if let Ok(t) = Tag::parse(data) {
        assert!(!t.as_str().contains('/') && t.as_str() != "." && t.as_str() != "..");
    }
    if let Ok(d) = Digest::parse(data) {
        assert_eq!(d.to_string(), data);
    }
    let _ = Reference::parse(data);
});
