//! Manifest media types, the client's `Accept` header, and the one place that builds the
//! upstream `Accept` header.

use serde::Deserialize;

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every modern manifest type. Upstream manifest requests always ask for all of them: a registry
/// that holds an OCI index answers 404 (Docker Hub) or a different document with a different
/// digest when the index type is missing from `Accept`.
pub const MODERN_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Longest media type we pass on; longer values are dropped, not forwarded.
const MAX_MEDIA_TYPE_LEN: usize = 255;

pub fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

pub fn is_list(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// What the client said it accepts, from all of its `Accept` headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAccept {
    /// Media types in the order given, parameters (`;q=`) stripped, lower-cased, deduplicated.
    types: Vec<String>,
    /// `*/*` or `application/*` was listed, or no `Accept` header was sent at all.
    any: bool,
}

impl ClientAccept {
    /// Parses the values of every `Accept` header the client sent. No header at all means "any":
    /// plain HTTP clients (curl) send none and expect the document as stored.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> ClientAccept {
        let mut accept = ClientAccept::default();
        let mut saw_header = false;
        for value in values {
            saw_header = true;
            for item in value.split(',') {
                let media = item.split(';').next().unwrap_or("").trim();
                if media.is_empty() || media.len() > MAX_MEDIA_TYPE_LEN || !is_token(media) {
                    continue;
                }
                let media = media.to_ascii_lowercase();
                if media == "*/*" || media == "application/*" {
                    accept.any = true;
                } else if !accept.types.contains(&media) {
                    accept.types.push(media);
                }
            }
        }
        // No header, or headers that name nothing usable: the document as stored.
        if !saw_header || accept.types.is_empty() {
            accept.any = true;
        }
        accept
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.any
            || self
                .types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type))
    }

    /// True when the client asks only for schema1 (and no modern type, no wildcard): the one case
    /// in which its `Accept` is forwarded as is and the answer passed through uncached by tag.
    pub fn wants_schema1_only(&self) -> bool {
        !self.any
            && self.types.iter().any(|t| is_schema1(t))
            && !self
                .types
                .iter()
                .any(|t| MODERN_TYPES.contains(&t.as_str()))
    }

    /// The upstream `Accept` header: every modern manifest type, then anything else the client
    /// listed, except schema1 (never requested: it is a different document with another digest).
    pub fn upstream_header(&self) -> String {
        let mut out: Vec<&str> = MODERN_TYPES.to_vec();
        for t in &self.types {
            if !is_schema1(t) && !out.contains(&t.as_str()) {
                out.push(t);
            }
        }
        out.join(", ")
    }

    /// The client's own list, for the schema1 pass-through.
    pub fn forwarded_header(&self) -> String {
        self.types.join(", ")
    }
}

/// A media type is a `type/subtype` of visible ASCII without separators that would break a header.
fn is_token(s: &str) -> bool {
    s.contains('/')
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'"' | b'\\'))
}

/// The fields of a manifest or index that the proxy reads. Never used to re-serialise: the bytes
/// served are always the bytes received.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFields {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub schema_version: Option<i64>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// The media type of a manifest document: the upstream's `Content-Type` when it is a concrete
/// type, else the document's own `mediaType` field, else a guess from its shape.
pub fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> String {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
    if let Some(ct) = ct {
        return ct;
    }
    let fields: ManifestFields = serde_json::from_slice(body).unwrap_or_default();
    if let Some(mt) = fields.media_type.filter(|m| is_token(m)) {
        return mt;
    }
    if fields.schema_version == Some(1) {
        // Schema1 has no `mediaType` field; registries may send it as `application/json`.
        return if super::schema1::is_signed(body) {
            DOCKER_SCHEMA1_SIGNED.to_owned()
        } else {
            DOCKER_SCHEMA1.to_owned()
        };
    }
    if !fields.manifests.is_empty() {
        OCI_INDEX.to_owned()
    } else {
        OCI_MANIFEST.to_owned()
    }
}

/// The child Docker Hub would answer for a list the client cannot take: linux/amd64, and only if
/// the client accepts that child's type.
pub fn default_platform_child(list: &[u8], accept: &ClientAccept) -> Option<(Digest, String)> {
    let fields: ManifestFields = serde_json::from_slice(list).ok()?;
    fields.manifests.into_iter().find_map(|d| {
        let p = d.platform.as_ref()?;
        let mt = d.media_type.clone()?;
        if p.os == "linux" && p.architecture == "amd64" && accept.accepts(&mt) {
            Some((Digest::parse(&d.digest).ok()?, mt))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_accept_means_any() {
        let a = ClientAccept::parse(std::iter::empty());
        assert!(a.accepts(OCI_INDEX));
        assert!(!a.wants_schema1_only());
    }

    #[test]
    fn parses_several_headers_lists_and_parameters() {
        let a = ClientAccept::parse([
            "application/vnd.docker.distribution.manifest.v2+json; q=0.9, Application/Vnd.OCI.Image.Manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]);
        assert!(a.accepts(DOCKER_MANIFEST));
        assert!(a.accepts(OCI_MANIFEST));
        assert!(!a.accepts(OCI_INDEX));
        assert_eq!(a.types.len(), 2);
    }

    #[test]
    fn wildcards_accept_everything() {
        assert!(ClientAccept::parse(["*/*"]).accepts(OCI_INDEX));
        assert!(ClientAccept::parse(["text/html, application/*;q=0.1"]).accepts(DOCKER_LIST));
    }

    #[test]
    fn upstream_accept_always_has_the_full_union_and_never_schema1() {
        let a = ClientAccept::parse([
            "application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v2+json, application/vnd.example.thing+json",
        ]);
        let h = a.upstream_header();
        for t in MODERN_TYPES {
            assert!(h.contains(t), "{h} lacks {t}");
        }
        assert!(h.contains("application/vnd.example.thing+json"));
        assert!(!h.contains("v1+prettyjws"));
        assert!(!a.wants_schema1_only());
    }

    #[test]
    fn schema1_only_clients_are_recognised() {
        let a = ClientAccept::parse([DOCKER_SCHEMA1_SIGNED]);
        assert!(a.wants_schema1_only());
        assert_eq!(a.forwarded_header(), DOCKER_SCHEMA1_SIGNED);
    }

    #[test]
    fn hostile_accept_values_are_dropped() {
        let a = ClientAccept::parse(["\"x/y\", a/b\\c, nocolon, ".repeat(3).as_str(), "a/b"]);
        assert_eq!(a.types, vec!["a/b".to_owned()]);
        let long = format!("application/{}", "x".repeat(300));
        let l = ClientAccept::parse([long.as_str(), "a/b"]);
        assert_eq!(l.types, vec!["a/b".to_owned()]);
        // Nothing usable at all: treated like no header.
        assert!(ClientAccept::parse([""]).accepts(OCI_INDEX));
    }

    #[test]
    fn media_type_comes_from_content_type_then_body() {
        assert_eq!(manifest_media_type(Some(OCI_INDEX), b"{}"), OCI_INDEX);
        let body = br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            manifest_media_type(Some("application/json"), body),
            DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type(None, br#"{"manifests":[{"digest":"x"}]}"#),
            OCI_INDEX
        );
        assert_eq!(manifest_media_type(None, b"{}"), OCI_MANIFEST);
        assert_eq!(
            manifest_media_type(
                Some("application/json"),
                br#"{"schemaVersion":1,"signatures":[{}]}"#
            ),
            DOCKER_SCHEMA1_SIGNED
        );
        assert_eq!(
            manifest_media_type(None, br#"{"schemaVersion":1}"#),
            DOCKER_SCHEMA1
        );
    }

    #[test]
    fn picks_the_linux_amd64_child_the_client_accepts() {
        let amd = format!("sha256:{}", "a".repeat(64));
        let list = format!(
            r#"{{"manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"sha256:{}","platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{amd}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            "b".repeat(64)
        );
        let a = ClientAccept::parse([DOCKER_MANIFEST]);
        let (d, mt) = default_platform_child(list.as_bytes(), &a).unwrap();
        assert_eq!(d.to_string(), amd);
        assert_eq!(mt, DOCKER_MANIFEST);
        assert!(
            default_platform_child(list.as_bytes(), &ClientAccept::parse([OCI_MANIFEST])).is_none()
        );
    }
}
