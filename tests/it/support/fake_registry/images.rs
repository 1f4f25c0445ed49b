//! Deterministic test content pushed into a fake registry: pseudo-random blobs, OCI and Docker
//! images, multi-arch indexes with an attestation, and artifacts with a subject.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::manifests::sha256_digest;
use super::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST, FakeRegistry, IN_TOTO,
    OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, SBOM_ARTIFACT,
};

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derive an independent seed from `seed` and a label.
fn sub_seed(seed: u64, label: u64) -> u64 {
    splitmix64(seed ^ splitmix64(label))
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for tens of
/// MiB even in debug builds.
pub fn blob_bytes(seed: u64, len: usize) -> Bytes {
    let mut state = splitmix64(seed) | 1;
    let mut out = vec![0u8; len];
    let mut chunks = out.chunks_exact_mut(8);
    for chunk in &mut chunks {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&v[..n]);
    }
    Bytes::from(out)
}

/// A manifest (or index) as pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Pushed {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// For an image manifest: the config digest followed by the layer
    /// digests. Empty for an index.
    pub fn blob_digests(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.bytes).unwrap_or_default();
        let mut out = Vec::new();
        if let Some(d) = v.pointer("/config/digest").and_then(|d| d.as_str()) {
            out.push(d.to_string());
        }
        if let Some(layers) = v.get("layers").and_then(|l| l.as_array()) {
            out.extend(
                layers
                    .iter()
                    .filter_map(|l| l.get("digest").and_then(|d| d.as_str()).map(str::to_string)),
            );
        }
        out
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, &self.digest, self.size())
    }
}

/// An OCI index (or Docker manifest list) and its children.
#[derive(Clone, Debug)]
pub struct MultiArch {
    pub index: Pushed,
    pub amd64: Pushed,
    pub arm64: Pushed,
    pub attestation: Pushed,
}

/// A Docker schema2 manifest list and its children.
#[derive(Clone, Debug)]
pub struct DockerList {
    pub index: Pushed,
    pub amd64: Pushed,
    pub arm64: Pushed,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn new(media_type: &str, digest: &str, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Clone)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

impl Platform {
    fn for_arch(arch: &str) -> Self {
        Platform {
            architecture: arch.to_string(),
            os: if arch == "unknown" {
                "unknown"
            } else {
                "linux"
            }
            .to_string(),
            variant: (arch == "arm64").then(|| "v8".to_string()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: u32,
    media_type: String,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    config: ContainerConfig,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cmd: Vec<String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn push_json(reg: &FakeRegistry, repo: &str, media_type: &str, value: &impl Serialize) -> Pushed {
    let bytes = Bytes::from(serde_json::to_vec_pretty(value).expect("serialize manifest"));
    let digest = reg.put_manifest(repo, media_type, bytes.clone());
    Pushed {
        digest,
        media_type: media_type.to_string(),
        bytes,
    }
}

/// Stores `bytes` as a manifest of `media_type` in `repo`, tagged `tag`.
pub fn push_tagged(
    reg: &FakeRegistry,
    repo: &str,
    tag: &str,
    media_type: &str,
    bytes: Bytes,
) -> Pushed {
    let digest = reg.put_manifest(repo, media_type, bytes.clone());
    reg.tag(repo, tag, &digest);
    Pushed {
        digest,
        media_type: media_type.to_string(),
        bytes,
    }
}

fn push_image(
    reg: &FakeRegistry,
    repo: &str,
    arch: &str,
    layers: usize,
    seed: u64,
    docker: bool,
) -> Pushed {
    let (manifest_mt, config_mt, layer_mt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let s = sub_seed(seed, 0x1000 + i as u64);
        let len = 1024 + (s % 3072) as usize;
        let bytes = blob_bytes(s, len);
        diff_ids.push(sha256_digest(&[b"diff:".as_slice(), &bytes].concat()));
        let size = bytes.len() as u64;
        let digest = reg.put_blob(repo, bytes);
        layer_descs.push(Descriptor::new(layer_mt, &digest, size));
    }
    let platform = Platform::for_arch(arch);
    let config = ImageConfig {
        architecture: platform.architecture,
        os: platform.os,
        variant: platform.variant,
        config: ContainerConfig {
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                format!("FAKE_SEED={seed}"),
            ],
            cmd: vec!["/bin/sh".to_string()],
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids,
        },
    };
    let config_bytes = Bytes::from(serde_json::to_vec(&config).expect("serialize config"));
    let config_size = config_bytes.len() as u64;
    let config_digest = reg.put_blob(repo, config_bytes);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: manifest_mt.to_string(),
        artifact_type: None,
        config: Descriptor::new(config_mt, &config_digest, config_size),
        layers: layer_descs,
        subject: None,
        annotations: BTreeMap::new(),
    };
    push_json(reg, repo, manifest_mt, &manifest)
}

/// An OCI image (config + `layers` small gzip-typed layers + manifest), all
/// pushed to `repo`, untagged. Returns the manifest.
pub fn push_oci_image(
    reg: &FakeRegistry,
    repo: &str,
    arch: &str,
    layers: usize,
    seed: u64,
) -> Pushed {
    push_image(reg, repo, arch, layers, seed, false)
}

/// Same as [`push_oci_image`] with Docker schema2 media types.
pub fn push_docker_image(
    reg: &FakeRegistry,
    repo: &str,
    arch: &str,
    layers: usize,
    seed: u64,
) -> Pushed {
    push_image(reg, repo, arch, layers, seed, true)
}

/// An OCI index with linux/amd64, linux/arm64/v8 and a BuildKit attestation
/// manifest for amd64, tagged `tag`.
pub fn push_oci_index(reg: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> MultiArch {
    let amd64 = push_oci_image(reg, repo, "amd64", 2, sub_seed(seed, 1));
    let arm64 = push_oci_image(reg, repo, "arm64", 2, sub_seed(seed, 2));

    // BuildKit-style attestation manifest.
    let statement = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{ "name": "pkg:docker/fake", "digest": { "sha256": amd64.digest.trim_start_matches("sha256:") } }],
        "predicate": { "buildType": "https://mobyproject.org/buildkit@v1", "seed": seed },
    }))
    .expect("serialize statement");
    let statement_size = statement.len() as u64;
    let statement_digest = reg.put_blob(repo, Bytes::from(statement));
    let att_config = ImageConfig {
        architecture: "unknown".to_string(),
        os: "unknown".to_string(),
        variant: None,
        config: ContainerConfig {
            env: Vec::new(),
            cmd: Vec::new(),
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![statement_digest.clone()],
        },
    };
    let att_config_bytes = Bytes::from(serde_json::to_vec(&att_config).expect("serialize"));
    let att_config_size = att_config_bytes.len() as u64;
    let att_config_digest = reg.put_blob(repo, att_config_bytes);
    let mut layer = Descriptor::new(IN_TOTO, &statement_digest, statement_size);
    layer.annotations.insert(
        "in-toto.io/predicate-type".to_string(),
        "https://slsa.dev/provenance/v0.2".to_string(),
    );
    let attestation = push_json(
        reg,
        repo,
        OCI_MANIFEST,
        &ImageManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_string(),
            artifact_type: None,
            config: Descriptor::new(OCI_CONFIG, &att_config_digest, att_config_size),
            layers: vec![layer],
            subject: None,
            annotations: BTreeMap::new(),
        },
    );

    let mut d_amd64 = amd64.descriptor();
    d_amd64.platform = Some(Platform::for_arch("amd64"));
    let mut d_arm64 = arm64.descriptor();
    d_arm64.platform = Some(Platform::for_arch("arm64"));
    let mut d_att = attestation.descriptor();
    d_att.platform = Some(Platform::for_arch("unknown"));
    d_att.annotations.insert(
        "vnd.docker.reference.type".to_string(),
        "attestation-manifest".to_string(),
    );
    d_att.annotations.insert(
        "vnd.docker.reference.digest".to_string(),
        amd64.digest.clone(),
    );
    let index = push_json(
        reg,
        repo,
        OCI_INDEX,
        &ImageIndex {
            schema_version: 2,
            media_type: OCI_INDEX.to_string(),
            manifests: vec![d_amd64, d_arm64, d_att],
        },
    );
    reg.tag(repo, tag, &index.digest);
    MultiArch {
        index,
        amd64,
        arm64,
        attestation,
    }
}

/// A Docker schema2 manifest list (linux/amd64 + linux/arm64/v8), tagged `tag`.
pub fn push_docker_list(reg: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> DockerList {
    let amd64 = push_docker_image(reg, repo, "amd64", 2, sub_seed(seed, 1));
    let arm64 = push_docker_image(reg, repo, "arm64", 2, sub_seed(seed, 2));
    let mut d_amd64 = amd64.descriptor();
    d_amd64.platform = Some(Platform::for_arch("amd64"));
    let mut d_arm64 = arm64.descriptor();
    d_arm64.platform = Some(Platform::for_arch("arm64"));
    let index = push_json(
        reg,
        repo,
        DOCKER_LIST,
        &ImageIndex {
            schema_version: 2,
            media_type: DOCKER_LIST.to_string(),
            manifests: vec![d_amd64, d_arm64],
        },
    );
    reg.tag(repo, tag, &index.digest);
    DockerList {
        index,
        amd64,
        arm64,
    }
}

/// An OCI artifact manifest (artifactType [`SBOM_ARTIFACT`], empty config,
/// one layer) whose `subject` is `subject`. Untagged.
pub fn push_artifact_with_subject(
    reg: &FakeRegistry,
    repo: &str,
    subject: &Pushed,
    seed: u64,
) -> Pushed {
    let empty_digest = reg.put_blob(repo, Bytes::from_static(b"{}"));
    let sbom = serde_json::to_vec(&serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "name": format!("sbom-{seed}"),
        "subject": subject.digest,
    }))
    .expect("serialize sbom");
    let sbom_size = sbom.len() as u64;
    let sbom_digest = reg.put_blob(repo, Bytes::from(sbom));
    let mut annotations = BTreeMap::new();
    annotations.insert("org.example.seed".to_string(), seed.to_string());
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        "2024-01-01T00:00:00Z".to_string(),
    );
    push_json(
        reg,
        repo,
        OCI_MANIFEST,
        &ImageManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_string(),
            artifact_type: Some(SBOM_ARTIFACT.to_string()),
            config: Descriptor::new(OCI_EMPTY, &empty_digest, 2),
            layers: vec![Descriptor::new(
                "application/spdx+json",
                &sbom_digest,
                sbom_size,
            )],
            subject: Some(subject.descriptor()),
            annotations,
        },
    )
}
