//! The kinds of events: HTTP (API Gateway HTTP API 2.0 / function URL, whose stage is kept out
//! of the path), `{"fill": …}` (a blob copy this function handed to itself), and the scheduled
//! operations `{"gc": …}` and `{"prefetch": …}` (EventBridge rules of `infra/template.yaml`),
//! whose bodies are those of the admin API (`crate::http::admin`).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cache::FillJob;
use crate::http::admin::{GcRequest, PrefetchRequest};

/// `{"fill": …}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FillEvent {
    pub(super) fill: FillJob,
}

/// `{"gc": {"olderThan":"30d","grace":"1h","maxSize":"200GiB","dryRun":false}}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GcEvent {
    pub(super) gc: GcRequest,
}

/// `{"prefetch": {"refs":[…],"platforms":"all"}}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PrefetchEvent {
    pub(super) prefetch: PrefetchRequest,
}

/// What an event is, from its top-level keys alone (an HTTP event has none of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Http,
    Fill,
    Gc,
    Prefetch,
}

pub(super) fn kind(event: &str) -> Kind {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        fill: Option<&'a RawValue>,
        #[serde(borrow)]
        gc: Option<&'a RawValue>,
        #[serde(borrow)]
        prefetch: Option<&'a RawValue>,
    }
    match serde_json::from_str::<Probe>(event) {
        Ok(p) if p.fill.is_some() => Kind::Fill,
        Ok(p) if p.gc.is_some() => Kind::Gc,
        Ok(p) if p.prefetch.is_some() => Kind::Prefetch,
        _ => Kind::Http,
    }
}

/// The path without the API Gateway stage, when the event's path carries one. With the
/// `$default` stage (what `infra/template.yaml` deploys) and function URLs there is none. A
/// named stage appears as `/<stage>/v2/...` in an HTTP API's `rawPath`, and `lambda_http` adds
/// it to paths that lack it unless `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set; either way
/// only `/v2/...` (or the admin API's `/_pullthrough/...`) reaches the router.
pub fn strip_stage(path: &str, stage: Option<&str>) -> Option<String> {
    let stage = stage.filter(|s| !s.is_empty() && *s != "$default")?;
    let rest = path.strip_prefix('/')?.strip_prefix(stage)?;
    let under =
        |root: &str| rest == root || rest.strip_prefix(root).is_some_and(|r| r.starts_with('/'));
    (under("/v2") || under("/_pullthrough")).then(|| rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_stripped_only_before_v2() {
        assert_eq!(strip_stage("/v2/x", None), None);
        assert_eq!(strip_stage("/v2/x", Some("$default")), None);
        assert_eq!(
            strip_stage("/prod/v2/library/alpine/manifests/3", Some("prod")).as_deref(),
            Some("/v2/library/alpine/manifests/3")
        );
        assert_eq!(
            strip_stage("/prod/v2", Some("prod")).as_deref(),
            Some("/v2")
        );
        assert_eq!(strip_stage("/v2/prod/x", Some("prod")), None);
        assert_eq!(strip_stage("/production/v2/x", Some("prod")), None);
        assert_eq!(
            strip_stage("/prod/_pullthrough/gc", Some("prod")).as_deref(),
            Some("/_pullthrough/gc")
        );
        assert_eq!(strip_stage("/prod/_pullthroughx", Some("prod")), None);
    }

    #[test]
    fn events_are_told_apart_by_their_top_level_key() {
        assert_eq!(kind(r#"{"fill":{}}"#), Kind::Fill);
        assert_eq!(kind(r#"{"gc":{"dryRun":true}}"#), Kind::Gc);
        assert_eq!(kind(r#"{"prefetch":{"refs":["a:b"]}}"#), Kind::Prefetch);
        assert_eq!(
            kind(r#"{"rawPath":"/v2/","body":"{\"gc\":1}"}"#),
            Kind::Http
        );
        assert_eq!(kind("not json"), Kind::Http);
    }
}
