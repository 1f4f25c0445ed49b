//! The TOML file's schema (`PULLTHROUGH_CONFIG`, or its text in `PULLTHROUGH_CONFIG_TOML`) and
//! the checks of its tables: `[[upstream]]` entries, `[s3]` and `[spill]`, which only the file
//! sets. Unknown keys are refused (`deny_unknown_fields`), so a misspelt key is a start-up error,
//! not a silently ignored setting. This module never reads the file itself
//! ([`Config::load`](super::Config::load) does) nor the environment.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::RepoPattern;
use super::lifecycle::FileGc;
use super::parse::{
    FileSize, check_secret_arn, duration_setting, parse_duration, parse_upstream_url,
};
use super::{ConfigError, MIB, S3Settings, SpillSettings, UpstreamConfig, err};

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<String>,
    pub(super) store: Option<String>,
    pub(super) default_upstream: Option<String>,
    pub(super) tag_ttl: Option<String>,
    pub(super) presign_ttl: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) auth_refresh: Option<String>,
    pub(super) max_manifest_size: Option<u64>,
    pub(super) connect_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) read_timeout: Option<String>,
    pub(super) memory_cache_bytes: Option<usize>,
    pub(super) fill_deadline: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_header_size: Option<FileSize>,
    pub(super) max_head_size: Option<FileSize>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) bcrypt_concurrency: Option<usize>,
    pub(super) bcrypt_wait: Option<String>,
    pub(super) auth_failures_per_minute: Option<u32>,
    pub(super) metrics_listen: Option<String>,
    #[serde(default)]
    pub(super) upstream: Vec<FileUpstream>,
    pub(super) s3: Option<FileS3>,
    pub(super) spill: Option<FileSpill>,
    pub(super) gc: Option<FileGc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileS3 {
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    region: Option<String>,
    parts_in_flight: Option<usize>,
    part_size: Option<FileSize>,
    max_attempts: Option<u32>,
    stream_misses: Option<bool>,
    stream_hits: Option<bool>,
    fill_lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpill {
    dir: Option<PathBuf>,
    max_size: Option<FileSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    alias: String,
    url: String,
    #[serde(default)]
    insecure: bool,
    username: Option<String>,
    password: Option<String>,
    secret_arn: Option<String>,
    tag_ttl: Option<String>,
    #[serde(default)]
    other_names: Vec<String>,
    library_prefix: Option<bool>,
    #[serde(default)]
    allow: Vec<String>,
}

pub(super) fn upstream_from_file(u: FileUpstream) -> Result<UpstreamConfig, ConfigError> {
    let what = format!("[[upstream]] {:?}", u.alias);
    if !u.alias.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !u
            .alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b))
    {
        return Err(err(format!(
            "{what}: alias must be a lower-case host-like name such as ghcr.io or local"
        )));
    }
    let url = parse_upstream_url(&u.url, u.insecure, &what)?;
    if let Some(arn) = &u.secret_arn {
        if u.username.is_some() || u.password.is_some() {
            return Err(err(format!(
                "{what}: give secret_arn or username/password, not both"
            )));
        }
        check_secret_arn(arn).map_err(|e| err(format!("{what}: secret_arn {e}")))?;
    }
    if u.username.is_some() != u.password.is_some() {
        return Err(err(format!(
            "{what}: give both username and password, or neither"
        )));
    }
    let tag_ttl = match u.tag_ttl {
        Some(t) => Some(parse_duration(&t).map_err(|e| err(format!("{what} tag_ttl: {e}")))?),
        None => None,
    };
    let allow = u
        .allow
        .iter()
        .map(|p| RepoPattern::parse(p).map_err(|e| err(format!("{what} allow: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(UpstreamConfig {
        allow,
        library_prefix: u.library_prefix.unwrap_or(u.alias == "docker.io"),
        alias: u.alias,
        other_names: u.other_names,
        url,
        username: u.username,
        password: u.password,
        secret_arn: u.secret_arn,
        tag_ttl,
    })
}

pub(super) fn s3_from_file(f: FileS3) -> Result<S3Settings, ConfigError> {
    let defaults = S3Settings::default();
    let endpoint = match f.endpoint {
        None => None,
        Some(text) => {
            let url = Url::parse(&text)
                .map_err(|e| err(format!("[s3] endpoint {text:?}: {e}; use e.g. https://s3.example.com or http://127.0.0.1:9000")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err(format!(
                    "[s3] endpoint {text:?}: use an http:// or https:// URL"
                )));
            }
            if url.host_str().is_none()
                || url.query().is_some()
                || url.fragment().is_some()
                || !matches!(url.path(), "" | "/")
            {
                return Err(err(format!(
                    "[s3] endpoint {text:?}: must be scheme://host[:port], without a path (the bucket comes from PULLTHROUGH_STORE)"
                )));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(err(
                    "[s3] endpoint: no credentials in the URL; they come from the AWS credential chain (AWS_ACCESS_KEY_ID, profiles, roles)",
                ));
            }
            Some(url)
        }
    };
    if let Some(r) = &f.region
        && (r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        return Err(err(format!(
            "[s3] region {r:?}: not a region name; use e.g. \"eu-west-1\""
        )));
    }
    let parts_in_flight = f.parts_in_flight.unwrap_or(defaults.parts_in_flight);
    if !(1..=64).contains(&parts_in_flight) {
        return Err(err(format!(
            "[s3] parts_in_flight = {parts_in_flight}: must be between 1 and 64 (default 4)"
        )));
    }
    let part_size = match &f.part_size {
        None => defaults.part_size,
        Some(size) => size.bytes("[s3] part_size")?,
    };
    if !(5 * MIB..=5 * 1024 * MIB).contains(&part_size) {
        return Err(err(format!(
            "[s3] part_size = {part_size} bytes: must be between 5 MiB (S3's minimum part size) and 5 GiB (default 8 MiB)"
        )));
    }
    let max_attempts = f.max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(err(format!(
            "[s3] max_attempts = {max_attempts}: must be between 1 (no retry) and 20 (default 5)"
        )));
    }
    let fill_lease = duration_setting(
        "[s3] fill_lease",
        &None,
        &f.fill_lease,
        defaults.fill_lease,
        Duration::from_secs(3)..=Duration::from_secs(3600),
        "60s",
    )?;
    Ok(S3Settings {
        fill_lease,
        endpoint,
        force_path_style: f.force_path_style,
        region: f.region,
        parts_in_flight,
        part_size,
        max_attempts,
        stream_misses: f.stream_misses.unwrap_or(defaults.stream_misses),
        stream_hits: f.stream_hits.unwrap_or(defaults.stream_hits),
    })
}

pub(super) fn spill_from_file(f: FileSpill) -> Result<SpillSettings, ConfigError> {
    let defaults = SpillSettings::default();
    let dir = match f.dir {
        Some(d) if d.as_os_str().is_empty() => {
            return Err(err("[spill] dir: must name a directory"));
        }
        Some(d) => d,
        None => defaults.dir,
    };
    let max_bytes = match &f.max_size {
        None => defaults.max_bytes,
        Some(size) => size.bytes("[spill] max_size")?,
    };
    Ok(SpillSettings { dir, max_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings, StoreLocation, secret_arn_region};

    #[test]
    fn plain_http_needs_insecure() {
        let toml = "[[upstream]]\nalias = \"local\"\nurl = \"http://127.0.0.1:5001\"\n";
        let e = Config::from_toml(&Settings::default(), toml).unwrap_err();
        assert!(e.to_string().contains("insecure = true"), "{e}");
        let ok = format!("{toml}insecure = true\n");
        let c = Config::from_toml(&Settings::default(), &ok).unwrap();
        assert_eq!(
            c.upstream("local").unwrap().url.as_str(),
            "http://127.0.0.1:5001/"
        );
    }

    #[test]
    fn s3_table_defaults() {
        let c = Config::from_toml(&Settings::default(), "").unwrap();
        assert_eq!(c.s3, S3Settings::default());
        assert_eq!(c.s3.part_size, 8 * MIB);
        assert_eq!(c.s3.parts_in_flight, 4);
        assert_eq!(c.s3.max_attempts, 5);
        assert_eq!(c.s3.endpoint, None);
        assert_eq!(c.s3.force_path_style, None);
        assert_eq!(c.s3.region, None);
        assert!(c.s3.stream_misses, "cold blobs stream by default");
        assert!(!c.s3.stream_hits);
        assert_eq!(c.spill, SpillSettings::default());
    }

    #[test]
    fn s3_table_is_read() {
        let toml = r#"
store = "s3://my-bucket/cache"
[s3]
endpoint = "http://127.0.0.1:9000"
force_path_style = false
region = "eu-west-1"
parts_in_flight = 2
part_size = "16MiB"
max_attempts = 3
stream_misses = false
stream_hits = true
fill_lease = "90s"

[spill]
dir = "/var/cache/pullthrough-spill"
max_size = "2GiB"
"#;
        let c = Config::from_toml(&Settings::default(), toml).unwrap();
        assert_eq!(
            c.store,
            StoreLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "cache".into()
            }
        );
        assert_eq!(
            c.s3,
            S3Settings {
                endpoint: Some(Url::parse("http://127.0.0.1:9000").unwrap()),
                force_path_style: Some(false),
                region: Some("eu-west-1".into()),
                parts_in_flight: 2,
                part_size: 16 * MIB,
                max_attempts: 3,
                stream_misses: false,
                stream_hits: true,
                fill_lease: Duration::from_secs(90),
            }
        );
        assert_eq!(
            c.spill,
            SpillSettings {
                dir: "/var/cache/pullthrough-spill".into(),
                max_bytes: 2048 * MIB,
            }
        );
        let c = Config::from_toml(&Settings::default(), "[s3]\npart_size = 6291456\n").unwrap();
        assert_eq!(c.s3.part_size, 6 * MIB);
    }

    #[test]
    fn s3_table_mistakes_are_explained() {
        let bad = |toml: &str| {
            Config::from_toml(&Settings::default(), &format!("[s3]\n{toml}\n"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("part_size = \"4MiB\"").contains("5 MiB"));
        assert!(bad("part_size = \"8 parsecs\"").contains("unknown unit"));
        assert!(bad("parts_in_flight = 0").contains("parts_in_flight"));
        assert!(bad("max_attempts = 0").contains("max_attempts"));
        assert!(bad("endpoint = \"ftp://x\"").contains("http:// or https://"));
        assert!(bad("endpoint = \"http://h:9000/bucket\"").contains("without a path"));
        assert!(bad("endpoint = \"http://k:s@h:9000\"").contains("credential chain"));
        assert!(bad("region = \"EU West\"").contains("region"));
        assert!(bad("bucket = \"x\"").contains("unknown field"));
    }

    #[test]
    fn secret_arns_are_read_and_checked() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:pullthrough/ghcr-AbCdEf";
        let toml = format!(
            "[[upstream]]\nalias = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nsecret_arn = \"{arn}\"\n"
        );
        let c = Config::from_toml(&Settings::default(), &toml).unwrap();
        let u = c.upstream("ghcr.io").unwrap();
        assert_eq!(u.secret_arn.as_deref(), Some(arn));
        assert_eq!(u.username, None);
        assert_eq!(secret_arn_region(arn), Some("eu-west-1"));

        let both = format!("{toml}username = \"u\"\npassword = \"p\"\n");
        let e = Config::from_toml(&Settings::default(), &both).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        for bad in [
            "arn:aws:s3:::bucket",
            "arn:aws:secretsmanager:eu-west-1:123:secret:x",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
            "not an arn",
        ] {
            let toml = format!(
                "[[upstream]]\nalias = \"x\"\nurl = \"https://x.example\"\nsecret_arn = \"{bad}\"\n"
            );
            let e = Config::from_toml(&Settings::default(), &toml).unwrap_err();
            assert!(
                e.to_string().contains("Secrets Manager secret ARN"),
                "{bad}: {e}"
            );
        }
    }
}
