//! The grammars of setting values: sizes (`16MiB`), durations (`90s`), store locations
//! (`s3://bucket/prefix`), upstream URLs and Secrets Manager ARNs, and the bounded settings
//! built on them (a flag, else the file, else the default, within a range). A value's own
//! mistakes are a [`ValueError`]; the caller says which setting it was. Nothing here reads a
//! file, the environment or the network.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{ConfigError, MIB, StoreLocation, err};

/// A value that does not follow its grammar. The message quotes the text and says what would
/// do; it does not name the setting (the caller knows which one it was reading).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a size; use e.g. 8MiB, 16MiB or a number of bytes")]
    NotASize(String),
    #[error("{0:?}: unknown unit; use B, KiB, MiB or GiB")]
    UnknownSizeUnit(String),
    #[error("{0:?} is too large")]
    SizeTooLarge(String),
    #[error("{0:?} is not a duration; use e.g. 500ms, 60s, 15m, 1h")]
    NotADuration(String),
    #[error("{0:?}: unknown unit; use ms, s, m, h or d")]
    UnknownDurationUnit(String),
    #[error(
        "{0:?} is not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"
    )]
    NotASecretArn(String),
}

/// Parses `1048576`, `512KiB`, `16MiB` or `1GiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ValueError::NotASize(text.to_owned()))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        _ => return Err(ValueError::UnknownSizeUnit(text.to_owned())),
    };
    n.checked_mul(factor)
        .ok_or_else(|| ValueError::SizeTooLarge(text.to_owned()))
}

/// Parses `500ms`, `60s`, `15m`, `1h`, `1d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ValueError::NotADuration(text.to_owned()))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return Err(ValueError::UnknownDurationUnit(text.to_owned())),
    };
    Ok(d)
}

/// A size in the config file: a number of bytes, or a string such as `"16MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileSize {
    Bytes(u64),
    Text(String),
}

impl FileSize {
    /// The size in bytes; `name` says which setting in an error.
    pub(super) fn bytes(&self, name: &str) -> Result<u64, ConfigError> {
        match self {
            FileSize::Bytes(n) => Ok(*n),
            FileSize::Text(t) => parse_size(t).map_err(|e| err(format!("{name}: {e}"))),
        }
    }
}

/// A duration setting: the flag or environment variable, else the file, else `default`; it must
/// lie within `range`. `name` is `PULLTHROUGH_X/x`, as messages name it.
pub(super) fn duration_setting(
    name: &str,
    flag: &Option<String>,
    file: &Option<String>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    default_text: &str,
) -> Result<Duration, ConfigError> {
    let d = match flag.as_ref().or(file.as_ref()) {
        None => default,
        Some(t) => parse_duration(t).map_err(|e| err(format!("{name}: {e}")))?,
    };
    if !range.contains(&d) {
        return Err(err(format!(
            "{name}: must be between {:?} and {:?} (default {default_text})",
            range.start(),
            range.end()
        )));
    }
    Ok(d)
}

/// A count setting: the flag or environment variable (text), else the file, else `default`.
pub(super) fn count_setting<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    flag: &Option<String>,
    file: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let n = match flag {
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| err(format!("{name}: {t:?} is not a whole number")))?,
        None => file.unwrap_or(default),
    };
    if !range.contains(&n) {
        return Err(err(format!(
            "{name}: must be between {} and {} (default {default})",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

/// A size setting (`16KiB`, or bytes), bounded by `range`.
pub(super) fn size_setting(
    name: &str,
    flag: &Option<String>,
    file: &Option<FileSize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    let n = match (flag, file) {
        (Some(t), _) => parse_size(t).map_err(|e| err(format!("{name}: {e}")))? as usize,
        (None, Some(size)) => size.bytes(name)? as usize,
        (None, None) => default,
    };
    if !range.contains(&n) {
        return Err(err(format!(
            "{name}: must be between {} and {} bytes (default {default})",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

pub(super) fn parse_upstream_url(
    text: &str,
    insecure: bool,
    what: &str,
) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| err(format!("{what}: url {text:?}: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(err(format!(
                "{what}: {text} is plain http; set insecure = true in its [[upstream]] entry if that is intended"
            )));
        }
        other => return Err(err(format!("{what}: unsupported scheme {other:?}"))),
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(err(format!(
            "{what}: url {text:?} must be scheme://host[:port][/path]"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(format!(
            "{what}: put credentials in username/password, not in the URL"
        )));
    }
    Ok(url)
}

pub(super) fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => url.to_string(),
    }
}

pub(super) fn parse_store(text: &str) -> Result<StoreLocation, ConfigError> {
    if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(err(format!(
                "PULLTHROUGH_STORE: {bucket:?} is not a valid S3 bucket name"
            )));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|c| c == ".." || c == ".") {
            return Err(err(
                "PULLTHROUGH_STORE: the S3 prefix may not contain . or ..",
            ));
        }
        return Ok(StoreLocation::S3 {
            bucket: bucket.to_owned(),
            prefix,
        });
    }
    if text.contains("://") {
        return Err(err(format!(
            "PULLTHROUGH_STORE: {text:?}: use a directory path or s3://bucket/prefix"
        )));
    }
    if text.is_empty() {
        return Err(err("PULLTHROUGH_STORE: empty path"));
    }
    Ok(StoreLocation::Fs(PathBuf::from(text)))
}

/// Checks the shape `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`.
pub fn check_secret_arn(arn: &str) -> Result<(), ValueError> {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    let ok = parts.len() == 7
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "secretsmanager"
        && !parts[3].is_empty()
        && parts[3]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5] == "secret"
        && !parts[6].is_empty()
        && !arn.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ValueError::NotASecretArn(arn.to_owned()))
    }
}

/// The region named by a Secrets Manager ARN (checked by [`check_secret_arn`]).
pub fn secret_arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_locations() {
        assert_eq!(
            parse_store("s3://my-bucket/cache/x/").unwrap(),
            StoreLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "cache/x".into()
            }
        );
        assert!(parse_store("s3://B").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 * MIB);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1GiB").unwrap(), 1024 * MIB);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("8MB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("").is_err());
    }
}
