//! The upstreams known without any configuration: the public registries most images come from,
//! so that `docker.io/library/alpine` or `ghcr.io/org/app` work out of the box. An
//! `[[upstream]]` entry with the same alias replaces one. Nothing here is read from outside.

use url::Url;

use super::UpstreamConfig;

/// Alias, URL and other names of each built-in upstream.
const BUILTIN_UPSTREAMS: [(&str, &str, &[&str]); 7] = [
    (
        "docker.io",
        "https://registry-1.docker.io",
        &["index.docker.io", "registry-1.docker.io"],
    ),
    ("ghcr.io", "https://ghcr.io", &[]),
    ("quay.io", "https://quay.io", &[]),
    ("registry.k8s.io", "https://registry.k8s.io", &[]),
    ("gcr.io", "https://gcr.io", &[]),
    ("public.ecr.aws", "https://public.ecr.aws", &[]),
    ("mcr.microsoft.com", "https://mcr.microsoft.com", &[]),
];

/// The built-in upstreams, anonymous and unrestricted; only `docker.io` keeps official images
/// under `library/`.
pub(super) fn upstreams() -> Vec<UpstreamConfig> {
    BUILTIN_UPSTREAMS
        .iter()
        .map(|(alias, url, others)| UpstreamConfig {
            alias: (*alias).into(),
            other_names: others.iter().map(|o| (*o).into()).collect(),
            url: Url::parse(url).expect("built-in upstream URLs are valid"),
            username: None,
            password: None,
            secret_arn: None,
            library_prefix: *alias == "docker.io",
            tag_ttl: None,
            allow: vec![],
        })
        .collect()
}
