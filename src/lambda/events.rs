//! The two kinds of events: HTTP (API Gateway HTTP API 2.0 / function URL, whose stage is kept
//! out of the path) and `{"fill": …}`.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cache::FillJob;

/// `{"fill": …}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FillEvent {
    pub(super) fill: FillJob,
}

pub(super) fn is_fill_event(event: &str) -> bool {
    // Only the top-level keys matter: an HTTP event never has a `fill` key.
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        fill: Option<&'a RawValue>,
    }
    serde_json::from_str::<Probe>(event).is_ok_and(|p| p.fill.is_some())
}

/// The path without the API Gateway stage, when the event's path carries one. With the
/// `$default` stage (what `infra/template.yaml` deploys) and function URLs there is none. A
/// named stage appears as `/<stage>/v2/...` in an HTTP API's `rawPath`, and `lambda_http` adds
/// it to paths that lack it unless `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set; either way
/// only `/v2/...` reaches the router.
pub fn strip_stage(path: &str, stage: Option<&str>) -> Option<String> {
    let stage = stage.filter(|s| !s.is_empty() && *s != "$default")?;
    let rest = path.strip_prefix('/')?.strip_prefix(stage)?;
    (rest == "/v2" || rest.starts_with("/v2/")).then(|| rest.to_owned())
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
    }
}
