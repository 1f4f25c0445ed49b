//! The Prometheus text exposition format, version 0.0.4: per family a `# HELP` and a `# TYPE`
//! line, then one line per label set (histograms: cumulative `_bucket` lines up to `le="+Inf"`,
//! then `_sum` and `_count`). Label values are escaped (`\\`, `\"`, `\n`), help text too (`\\`,
//! `\n`).

use std::fmt::Write;

use super::registry::{Counter, Gauge, Histogram};
use super::{FAMILIES, Family};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every figure of the process, as Prometheus text.
pub fn render() -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in FAMILIES {
        match family {
            Family::Counter(c) => counter(&mut out, c),
            Family::Gauge(g) => gauge(&mut out, g),
            Family::Histogram(h) => histogram(&mut out, h),
        }
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, c: &Counter) {
    header(out, c.name, c.help, "counter");
    let mut samples = c.samples();
    // A family without labels always has its one line, 0 before anything was counted.
    if samples.is_empty() && c.labels.is_empty() {
        samples.push((Vec::new(), 0));
    }
    for (values, v) in samples {
        let _ = writeln!(out, "{}{} {v}", c.name, labels(c.labels, &values, None));
    }
}

fn gauge(out: &mut String, g: &Gauge) {
    header(out, g.name, g.help, "gauge");
    let _ = writeln!(out, "{} {}", g.name, g.get());
}

fn histogram(out: &mut String, h: &Histogram) {
    header(out, h.name, h.help, "histogram");
    for s in h.samples() {
        for (bound, n) in h.buckets.iter().zip(&s.cumulative) {
            let le = format_float(*bound);
            let _ = writeln!(
                out,
                "{}_bucket{} {n}",
                h.name,
                labels(h.labels, &s.values, Some(&le))
            );
        }
        let _ = writeln!(
            out,
            "{}_bucket{} {}",
            h.name,
            labels(h.labels, &s.values, Some("+Inf")),
            s.count
        );
        let plain = labels(h.labels, &s.values, None);
        let _ = writeln!(out, "{}_sum{plain} {}", h.name, format_float(s.sum));
        let _ = writeln!(out, "{}_count{plain} {}", h.name, s.count);
    }
}

/// `{a="x",b="y"}` (with `le` last for a bucket), or nothing without labels.
fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    if names.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let pairs = names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_value(value));
    }
    out.push('}');
    out
}

fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus writes it: integers without a fraction (`1`, not `1.0`, as the client
/// libraries write bucket bounds), others in Rust's shortest round-trip form.
fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v.is_nan() {
        return "NaN".to_owned();
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(
                &["a", "b"],
                &["x\"y".into(), "back\\slash\nnew".into()],
                None
            ),
            r#"{a="x\"y",b="back\\slash\nnew"}"#
        );
        assert_eq!(labels(&[], &[], None), "");
        assert_eq!(labels(&[], &[], Some("+Inf")), r#"{le="+Inf"}"#);
    }

    #[test]
    fn help_text_is_escaped() {
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
    }

    #[test]
    fn a_counter_renders_help_type_and_one_line_per_label_set() {
        static C: Counter = Counter::new("x_total", "Things.", &["kind"]);
        static PLAIN: Counter = Counter::new("y_total", "Other things.", &[]);
        C.add(&["b"], 2);
        C.add(&["a\"q"], 1);
        let mut out = String::new();
        counter(&mut out, &C);
        counter(&mut out, &PLAIN);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind=\"a\\\"q\"} 1\nx_total{kind=\"b\"} 2\n\
             # HELP y_total Other things.\n# TYPE y_total counter\ny_total 0\n"
        );
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_inf_sum_and_count() {
        static H: Histogram = Histogram::new("d_seconds", "Durations.", &["endpoint"], &[0.5, 1.0]);
        H.observe(&["blob"], 0.25);
        H.observe(&["blob"], 0.75);
        H.observe(&["blob"], 2.0);
        let mut out = String::new();
        histogram(&mut out, &H);
        assert_eq!(
            out,
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{endpoint=\"blob\",le=\"0.5\"} 1\n\
             d_seconds_bucket{endpoint=\"blob\",le=\"1\"} 2\n\
             d_seconds_bucket{endpoint=\"blob\",le=\"+Inf\"} 3\n\
             d_seconds_sum{endpoint=\"blob\"} 3\n\
             d_seconds_count{endpoint=\"blob\"} 3\n"
        );
    }

    #[test]
    fn every_family_is_rendered_with_its_type() {
        let text = render();
        for name in [
            "pullthrough_requests_total counter",
            "pullthrough_request_duration_seconds histogram",
            "pullthrough_cache_lookups_total counter",
            "pullthrough_upstream_requests_total counter",
            "pullthrough_upstream_bytes_total counter",
            "pullthrough_served_bytes_total counter",
            "pullthrough_redirects_total counter",
            "pullthrough_fills_in_flight gauge",
            "pullthrough_fills_total counter",
            "pullthrough_fill_duration_seconds histogram",
            "pullthrough_store_requests_total counter",
            "pullthrough_stale_served_total counter",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name}\n")),
                "{name}:\n{text}"
            );
        }
    }
}
