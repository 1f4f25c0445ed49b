//! Property tests: the hand-written parsers agree with the spec's regular expressions, and no
//! input, however hostile, makes a parser panic or let a path escape.

use proptest::prelude::*;
use pullthrough::http::path::{self, Endpoint};
use pullthrough::oci::media::ClientAccept;
use pullthrough::oci::{Digest, Reference, RepoName, Tag};
use pullthrough::upstream::auth::parse_challenge;

const NAME_RE: &str = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
const TAG_RE: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";
const DIGEST_RE: &str = r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn repo_names_match_the_oci_grammar(s in "[a-z0-9._/-]{0,40}") {
        let re = regex::Regex::new(NAME_RE).unwrap();
        prop_assert_eq!(RepoName::parse(&s).is_ok(), re.is_match(&s), "{:?}", s);
    }

    #[test]
    fn tags_match_the_oci_grammar(s in "[a-zA-Z0-9._/:-]{0,130}") {
        let re = regex::Regex::new(TAG_RE).unwrap();
        prop_assert_eq!(Tag::parse(&s).is_ok(), re.is_match(&s), "{:?}", s);
    }

    #[test]
    fn digests_match_the_grammar(s in "(sha256|sha512|md5|SHA256)?:?[a-fA-F0-9g]{0,130}") {
        let re = regex::Regex::new(DIGEST_RE).unwrap();
        prop_assert_eq!(Digest::parse(&s).is_ok(), re.is_match(&s), "{:?}", s);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in "\\PC{0,300}") {
        let _ = RepoName::parse(&s);
        let _ = Tag::parse(&s);
        let _ = Digest::parse(&s);
        let _ = Reference::parse(&s);
        let _ = parse_challenge(&s);
        let accept = ClientAccept::parse([s.as_str()]);
        let upstream = accept.upstream_header();
        prop_assert!(upstream.contains("application/vnd.oci.image.index.v1+json"));
        prop_assert!(!upstream.contains("v1+prettyjws"));
        prop_assert!(!upstream.contains(['\r', '\n']));
    }

    #[test]
    fn manifest_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), json in "\\{\"(mediaType|manifests|platform|digest)\":[\\[\\{\"a-z0-9:,\\]\\}]{0,200}") {
        let accept = ClientAccept::parse(["application/vnd.oci.image.manifest.v1+json"]);
        for doc in [bytes.as_slice(), json.as_bytes()] {
            prop_assert!(!pullthrough::oci::media::manifest_media_type(None, doc).is_empty());
            let _ = pullthrough::oci::media::default_platform_child(doc, &accept);
        }
    }

    #[test]
    fn parsed_paths_never_hold_traversal(s in "[a-z0-9./%:_-]{0,20}(/[a-z0-9./%:_-]{0,20}){0,6}") {
        let parsed = path::parse(&s);
        if let Ok(ep) = parsed {
            let name = match ep {
                Endpoint::Manifest(n, _) | Endpoint::Blob(n, _) | Endpoint::TagsList(n)
                | Endpoint::Referrers(n, _) => n,
                Endpoint::Upload => return Ok(()),
            };
            let n = name.as_str();
            prop_assert!(!n.starts_with('/'));
            prop_assert!(n.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            prop_assert!(!n.contains('%'));
        }
    }
}

#[test]
fn www_authenticate_round_trips_realistic_challenges() {
    for (realm, service, scope) in [
        (
            "https://auth.docker.io/token",
            "registry.docker.io",
            "repository:library/alpine:pull",
        ),
        (
            "https://ghcr.io/token",
            "ghcr.io",
            "repository:org/img:pull",
        ),
        (
            "http://127.0.0.1:1/token",
            "a \"quoted\" service",
            "repository:a/b:pull,push",
        ),
    ] {
        let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        let header = format!(
            "Bearer realm=\"{}\",service=\"{}\",scope=\"{}\"",
            esc(realm),
            esc(service),
            esc(scope)
        );
        match parse_challenge(&header) {
            Some(pullthrough::upstream::auth::Challenge::Bearer {
                realm: r,
                service: s,
                scope: sc,
            }) => {
                assert_eq!(r, realm);
                assert_eq!(s.as_deref(), Some(service));
                assert_eq!(sc.as_deref(), Some(scope));
            }
            other => panic!("{header}: {other:?}"),
        }
    }
}
