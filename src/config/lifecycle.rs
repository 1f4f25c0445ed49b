//! The settings of the cache's lifecycle: the admin API's token (`PULLTHROUGH_ADMIN_TOKEN`) and
//! gc's retention, grace, size bound and, in server mode, its period (the `[gc]` table and the
//! `PULLTHROUGH_GC_*` variables). The ranges of gc's values live here, once: the configuration,
//! the admin API's `POST /_pullthrough/gc` and Lambda's `{"gc": …}` event check them alike.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use super::parse::{FileSize, ValueError, parse_duration, parse_size};
use super::{ConfigError, MIB, Settings, err};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Retention: at least 2 h, because a last-pulled time is written at most once an hour, so an
/// image pulled a minute ago may carry a time up to an hour old.
pub const GC_OLDER_THAN: RangeInclusive<Duration> =
    Duration::from_secs(2 * 3600)..=DAY.saturating_mul(3650);
/// Grace of unreferenced blobs (a fill or a manifest write racing the sweep publishes its blob
/// before what references it). `0s` is for a store no server is using.
pub const GC_GRACE: RangeInclusive<Duration> = Duration::ZERO..=DAY.saturating_mul(30);
/// Period of server mode's gc.
pub const GC_INTERVAL: RangeInclusive<Duration> = Duration::from_secs(1)..=DAY.saturating_mul(30);
/// Smallest size bound.
pub const GC_MIN_MAX_SIZE: u64 = MIB;

/// The admin API's bearer token. Its `Debug` hides it, so a logged configuration never shows
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Checks `text`: 32 characters at least (a guessable token would open purge and gc to
    /// anyone), and only visible ASCII, since it travels in an `Authorization` header.
    pub fn parse(text: &str) -> Result<AdminToken, ConfigError> {
        if text.len() < 32 {
            return Err(err(format!(
                "PULLTHROUGH_ADMIN_TOKEN: {} characters is too short for the admin API's token; use at least 32 (e.g. the output of `openssl rand -hex 32`), or unset it to turn the admin API off",
                text.chars().count()
            )));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                "PULLTHROUGH_ADMIN_TOKEN: use visible ASCII characters only (no spaces): it is sent in an Authorization header",
            ));
        }
        Ok(AdminToken(text.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<hidden>)")
    }
}

/// gc's settings. `older_than`, `grace` and `max_size` are also the defaults of an admin API or
/// Lambda gc that does not name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcSettings {
    /// Server mode: run gc this often; `None` (the default): never on its own.
    pub interval: Option<Duration>,
    /// Roots not pulled within this time go (default 30 days).
    pub older_than: Duration,
    /// Unreferenced blobs younger than this stay (default 1 hour).
    pub grace: Duration,
    /// Evict least recently pulled roots until the blobs fit (default: no bound).
    pub max_size: Option<u64>,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            interval: None,
            older_than: DAY.saturating_mul(30),
            grace: HOUR,
            max_size: None,
        }
    }
}

/// A gc value that does not parse or lies outside its range; the caller names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GcValueError {
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error("{0:?} is out of range: {1}")]
    OutOfRange(String, &'static str),
}

fn in_range(
    text: &str,
    range: &RangeInclusive<Duration>,
    why: &'static str,
) -> Result<Duration, GcValueError> {
    let d = parse_duration(text)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(GcValueError::OutOfRange(text.to_owned(), why))
    }
}

/// A retention (`30d`), within `GC_OLDER_THAN`.
pub fn gc_older_than(text: &str) -> Result<Duration, GcValueError> {
    in_range(
        text,
        &GC_OLDER_THAN,
        "use 2h to 3650d (last-pulled times are written at most once an hour)",
    )
}

/// A grace (`1h`), within `GC_GRACE`.
pub fn gc_grace(text: &str) -> Result<Duration, GcValueError> {
    in_range(text, &GC_GRACE, "use 0s to 30d")
}

/// A period (`1d`), within `GC_INTERVAL`.
pub fn gc_interval(text: &str) -> Result<Duration, GcValueError> {
    in_range(text, &GC_INTERVAL, "use 1s to 30d, or leave it unset")
}

/// A size bound (`200GiB` or bytes), at least `GC_MIN_MAX_SIZE`.
pub fn gc_max_size(text: &str) -> Result<u64, GcValueError> {
    let n = parse_size(text)?;
    if n < GC_MIN_MAX_SIZE {
        return Err(GcValueError::OutOfRange(
            text.to_owned(),
            "use at least 1MiB",
        ));
    }
    Ok(n)
}

/// The `[gc]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGc {
    interval: Option<String>,
    older_than: Option<String>,
    grace: Option<String>,
    max_size: Option<FileSize>,
}

/// `[gc]` under the `PULLTHROUGH_GC_*` settings, checked.
pub(super) fn gc_settings(s: &Settings, f: Option<FileGc>) -> Result<GcSettings, ConfigError> {
    let f = f.unwrap_or_default();
    let d = GcSettings::default();
    let named = |name: &str, e: GcValueError| err(format!("{name}: {e}"));
    let interval = match s.gc_interval.as_ref().or(f.interval.as_ref()) {
        None => None,
        Some(t) if matches!(t.trim(), "" | "off") => None,
        Some(t) => {
            Some(gc_interval(t).map_err(|e| named("PULLTHROUGH_GC_INTERVAL/[gc] interval", e))?)
        }
    };
    let older_than = match s.gc_older_than.as_ref().or(f.older_than.as_ref()) {
        None => d.older_than,
        Some(t) => {
            gc_older_than(t).map_err(|e| named("PULLTHROUGH_GC_OLDER_THAN/[gc] older_than", e))?
        }
    };
    let grace = match s.gc_grace.as_ref().or(f.grace.as_ref()) {
        None => d.grace,
        Some(t) => gc_grace(t).map_err(|e| named("PULLTHROUGH_GC_GRACE/[gc] grace", e))?,
    };
    let name = "PULLTHROUGH_GC_MAX_SIZE/[gc] max_size";
    let max_size = match (&s.gc_max_size, &f.max_size) {
        (Some(t), _) => Some(gc_max_size(t).map_err(|e| named(name, e))?),
        (None, Some(FileSize::Text(t))) => Some(gc_max_size(t).map_err(|e| named(name, e))?),
        (None, Some(FileSize::Bytes(n))) => {
            Some(gc_max_size(&n.to_string()).map_err(|e| named(name, e))?)
        }
        (None, None) => None,
    };
    Ok(GcSettings {
        interval,
        older_than,
        grace,
        max_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn gc_defaults_and_the_table() {
        let c = Config::load(&Settings::default()).unwrap();
        assert_eq!(c.gc, GcSettings::default());
        assert_eq!(c.gc.interval, None, "periodic gc is off by default");
        assert_eq!(c.gc.older_than, Duration::from_secs(30 * 86_400));
        assert_eq!(c.gc.grace, Duration::from_secs(3600));
        assert!(c.admin_token.is_none());

        let toml = "[gc]\ninterval = \"6h\"\nolder_than = \"14d\"\ngrace = \"2h\"\nmax_size = \"200GiB\"\n";
        let c = Config::from_toml(&Settings::default(), toml).unwrap();
        assert_eq!(
            c.gc,
            GcSettings {
                interval: Some(Duration::from_secs(6 * 3600)),
                older_than: Duration::from_secs(14 * 86_400),
                grace: Duration::from_secs(7200),
                max_size: Some(200 * 1024 * MIB),
            }
        );
        // The environment and flags win over the file.
        let s = Settings {
            gc_interval: Some("off".into()),
            gc_max_size: Some("1GiB".into()),
            ..Settings::default()
        };
        let c = Config::from_toml(&s, toml).unwrap();
        assert_eq!(c.gc.interval, None);
        assert_eq!(c.gc.max_size, Some(1024 * MIB));
        let c = Config::from_toml(&Settings::default(), "[gc]\nmax_size = 1073741824\n").unwrap();
        assert_eq!(c.gc.max_size, Some(1024 * MIB));
    }

    #[test]
    fn gc_mistakes_are_explained() {
        let bad = |toml: &str| {
            Config::from_toml(&Settings::default(), &format!("[gc]\n{toml}\n"))
                .unwrap_err()
                .to_string()
        };
        for (toml, expected) in [
            ("interval = \"0s\"", "[gc] interval"),
            ("interval = \"soon\"", "not a duration"),
            ("older_than = \"1h\"", "2h to 3650d"),
            ("older_than = \"30x\"", "unknown unit"),
            ("grace = \"31d\"", "0s to 30d"),
            ("max_size = \"1KiB\"", "at least 1MiB"),
            ("max_size = \"lots\"", "[gc] max_size"),
            ("retention = \"30d\"", "unknown field"),
        ] {
            let e = bad(toml);
            assert!(e.contains(expected), "{toml}: {e}");
        }
        let e = Config::load(&Settings {
            gc_older_than: Some("5m".into()),
            ..Settings::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("PULLTHROUGH_GC_OLDER_THAN"), "{e}");
    }

    #[test]
    fn the_admin_token_is_long_visible_ascii_and_never_printed() {
        let with = |t: &str| {
            Config::load(&Settings {
                admin_token: Some(t.into()),
                ..Settings::default()
            })
        };
        let e = with("short").unwrap_err().to_string();
        assert!(
            e.contains("PULLTHROUGH_ADMIN_TOKEN") && e.contains("at least 32"),
            "{e}"
        );
        let e = with(&format!("{} x", "a".repeat(32)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("visible ASCII"), "{e}");
        let token = "0123456789abcdef0123456789abcdef";
        let c = with(token).unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().as_bytes(), token.as_bytes());
        assert!(!format!("{c:?}").contains(token), "Debug shows the token");
    }
}
