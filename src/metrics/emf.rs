//! Lambda mode's figures: after each invocation, what changed since the previous one, as one
//! CloudWatch embedded-metric-format (EMF) log line in the namespace `Pullthrough`. CloudWatch
//! Logs turns such a line into metrics; nothing is sent anywhere else.
//!
//! An EMF line gives each dimension one value, so the labels of a figure cannot all be
//! dimensions of one line (one invocation can count a tag hit and a manifest miss). The line
//! therefore has no dimensions, and the label values are part of the metric's name:
//!
//! - a counter's change per label set: `cache_lookups_total.tag.hit`,
//!   `upstream_requests_total.docker.io.GET.200` (the family's name without `pullthrough_`,
//!   then the label values in order);
//! - a labelled counter's total change: `requests_total`, `cache_lookups_total`;
//! - for a family with a `status` label, the change per status class: `requests_total.5xx`
//!   (what an alarm on server errors watches), `upstream_requests_total.error`;
//! - a histogram's mean over the invocation's observations, in seconds:
//!   `request_duration_seconds.manifest`, `fill_duration_seconds`;
//! - the gauge's value when it changed: `fills_in_flight`.
//!
//! Counters are cumulative per instance, so the change is taken against the previous line of
//! this process ([`since_last`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use super::{FAMILIES, Family};

/// The CloudWatch namespace of every figure.
pub const NAMESPACE: &str = "Pullthrough";

/// CloudWatch takes at most this many metrics per directive: more go in further directives of
/// the same line, so no figure is ever dropped.
const MAX_METRICS: usize = 100;

/// One figure's cumulative state: a counter's value, or a histogram's count and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Figure {
    value: f64,
    /// Histograms: the observations' sum (seconds); `value` is their count.
    sum: f64,
    unit: Unit,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Unit {
    #[default]
    Count,
    Bytes,
    /// A histogram of seconds.
    Seconds,
    /// The gauge: its value, not a change.
    Level,
}

type Figures = BTreeMap<String, Figure>;

/// The figures as of the last line written.
static LAST: Mutex<Option<Figures>> = Mutex::new(None);

/// The EMF line of what changed since the previous call (the first call: since the process
/// started); `None` when nothing did.
pub fn since_last() -> Option<String> {
    let now = current();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let line = line(last.as_ref().unwrap_or(&Figures::new()), &now, timestamp);
    *last = Some(now);
    line
}

/// Every figure of the registry, flattened to EMF names.
fn current() -> Figures {
    let mut out = Figures::new();
    for family in FAMILIES {
        match family {
            Family::Counter(c) => {
                let short = short(c.name);
                let unit = if short.contains("bytes") {
                    Unit::Bytes
                } else {
                    Unit::Count
                };
                for (values, v) in c.samples() {
                    let v = v as f64;
                    if !values.is_empty() {
                        add(&mut out, short.to_owned(), v, unit);
                    }
                    if let Some(i) = c.labels.iter().position(|l| *l == "status") {
                        add(&mut out, format!("{short}.{}", class(&values[i])), v, unit);
                    }
                    add(&mut out, name(short, &values), v, unit);
                }
            }
            Family::Gauge(g) => {
                out.insert(
                    short(g.name).to_owned(),
                    Figure {
                        value: g.get() as f64,
                        sum: 0.0,
                        unit: Unit::Level,
                    },
                );
            }
            Family::Histogram(h) => {
                for s in h.samples() {
                    out.insert(
                        name(short(h.name), &s.values),
                        Figure {
                            value: s.count as f64,
                            sum: s.sum,
                            unit: Unit::Seconds,
                        },
                    );
                }
            }
        }
    }
    out
}

fn add(out: &mut Figures, name: String, v: f64, unit: Unit) {
    let f = out.entry(name).or_insert(Figure {
        unit,
        ..Figure::default()
    });
    f.value += v;
}

fn short(name: &str) -> &str {
    name.strip_prefix("pullthrough_").unwrap_or(name)
}

fn name(short: &str, values: &[String]) -> String {
    std::iter::once(short)
        .chain(values.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".")
}

/// `5xx` for `503`; a status that is not a number (`error`) is its own class.
fn class(status: &str) -> String {
    match status.as_bytes() {
        [d @ b'1'..=b'5', _, _] if status.parse::<u16>().is_ok() => format!("{}xx", *d as char),
        _ => status.to_owned(),
    }
}

/// The EMF document of the changes from `prev` to `now`, or `None` when nothing changed.
fn line(prev: &Figures, now: &Figures, timestamp_ms: u64) -> Option<String> {
    let mut root = Map::new();
    let mut metrics = Vec::new();
    for (name, f) in now {
        let before = prev.get(name).copied().unwrap_or_default();
        let (value, unit) = match f.unit {
            Unit::Level if f.value != before.value => (f.value, "Count"),
            Unit::Seconds if f.value > before.value => {
                ((f.sum - before.sum) / (f.value - before.value), "Seconds")
            }
            Unit::Count if f.value > before.value => (f.value - before.value, "Count"),
            Unit::Bytes if f.value > before.value => (f.value - before.value, "Bytes"),
            _ => continue,
        };
        metrics.push(json!({ "Name": name, "Unit": unit }));
        root.insert(name.clone(), json!(value));
    }
    if metrics.is_empty() {
        return None;
    }
    root.insert(
        "_aws".to_owned(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": metrics
                .chunks(MAX_METRICS)
                .map(|chunk| json!({
                    "Namespace": NAMESPACE,
                    "Dimensions": [[]],
                    "Metrics": chunk,
                }))
                .collect::<Vec<_>>(),
        }),
    );
    Some(Value::Object(root).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(value: f64, unit: Unit) -> Figure {
        Figure {
            value,
            sum: 0.0,
            unit,
        }
    }

    #[test]
    fn only_changes_are_written_with_their_units() {
        let mut prev = Figures::new();
        prev.insert("requests_total".into(), fig(3.0, Unit::Count));
        prev.insert("served_bytes_total".into(), fig(10.0, Unit::Bytes));
        prev.insert(
            "request_duration_seconds.blob".into(),
            Figure {
                value: 1.0,
                sum: 0.5,
                unit: Unit::Seconds,
            },
        );
        let mut now = prev.clone();
        now.insert("requests_total".into(), fig(5.0, Unit::Count));
        now.insert(
            "requests_total.manifest.GET.200".into(),
            fig(2.0, Unit::Count),
        );
        now.insert(
            "request_duration_seconds.blob".into(),
            Figure {
                value: 3.0,
                sum: 1.5,
                unit: Unit::Seconds,
            },
        );
        let text = line(&prev, &now, 42).expect("a line");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["requests_total"], 2.0);
        assert_eq!(v["requests_total.manifest.GET.200"], 2.0);
        assert_eq!(v["request_duration_seconds.blob"], 0.5);
        assert!(v.get("served_bytes_total").is_none(), "unchanged: {v}");
        let aws = &v["_aws"];
        assert_eq!(aws["Timestamp"], 42);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Pullthrough");
        assert_eq!(directive["Dimensions"], json!([[]]));
        let names: Vec<&str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "request_duration_seconds.blob",
                "requests_total",
                "requests_total.manifest.GET.200"
            ]
        );
        assert!(line(&now, &now, 43).is_none());
    }

    #[test]
    fn more_than_a_directive_holds_go_in_further_directives() {
        let now: Figures = (0..250)
            .map(|i| {
                (
                    format!("store_requests_total.op{i:03}.ok"),
                    fig(1.0, Unit::Count),
                )
            })
            .collect();
        let v: Value = serde_json::from_str(&line(&Figures::new(), &now, 1).unwrap()).unwrap();
        let sizes: Vec<usize> = v["_aws"]["CloudWatchMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Metrics"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(
            v["store_requests_total.op249.ok"], 1.0,
            "the last figure is there"
        );
    }

    #[test]
    fn statuses_are_classed() {
        assert_eq!(class("503"), "5xx");
        assert_eq!(class("200"), "2xx");
        assert_eq!(class("error"), "error");
        assert_eq!(class("5000"), "5000");
    }
}
