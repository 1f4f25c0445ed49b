//! The process's figures: counters, one gauge and histograms, all named `pullthrough_…`
//! (docs/operations.md lists them with their meaning), rendered as Prometheus text ([`render`])
//! for `/metrics` and as CloudWatch embedded-metric-format lines in Lambda mode ([`emf`]).
//!
//! One global registry, because the figures describe the process: every layer counts with a
//! plain function call (`metrics::cache_lookup(LookupKind::Tag, Lookup::Hit)`), nothing is
//! passed around. Each label set's figure is an atomic, found in a map under a read lock; a
//! write lock is taken only the first time a label set is seen. Labels are bounded by
//! construction: route kinds (never paths), configured upstream aliases, a fixed list of
//! methods, HTTP status codes, store operation names; and each family holds at most
//! [`MAX_SERIES`] label sets, further ones being counted under `other`.
//!
//! [`request`](mod@request) is the other half: what the layers below the edge tell the edge about the
//! request they work for (which upstream, hit or miss), through a task-local, so the request log
//! line can say it without the cache knowing HTTP.
//!
//! A leaf: imports no other module of the crate.

pub mod emf;
mod registry;
mod render;
pub mod request;

use std::time::{Duration, Instant};

pub use registry::MAX_SERIES;
use registry::{Counter, Gauge, Histogram};
pub use render::{CONTENT_TYPE, render};

/// Latency buckets of requests, in seconds (time to the response head).
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Duration buckets of blob fills, in seconds (upstream GET to stored).
const FILL_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

static REQUESTS: Counter = Counter::new(
    "pullthrough_requests_total",
    "Requests answered, by route kind, method and status.",
    &["endpoint", "method", "status"],
);
static REQUEST_DURATION: Histogram = Histogram::new(
    "pullthrough_request_duration_seconds",
    "Time from a request's arrival to its response head, by route kind.",
    &["endpoint"],
    REQUEST_BUCKETS,
);
static CACHE_LOOKUPS: Counter = Counter::new(
    "pullthrough_cache_lookups_total",
    "Cache decisions: manifests by digest, tags and blobs; hit, miss (asked the upstream), stale (served on an upstream failure) or revalidated (the upstream confirmed an expired tag).",
    &["kind", "result"],
);
static UPSTREAM_REQUESTS: Counter = Counter::new(
    "pullthrough_upstream_requests_total",
    "HTTP requests sent to upstream registries (tokens and redirect hops included), by status; error for transport failures.",
    &["upstream", "method", "status"],
);
static UPSTREAM_BYTES: Counter = Counter::new(
    "pullthrough_upstream_bytes_total",
    "Body bytes received from upstream registries.",
    &["upstream"],
);
static SERVED_BYTES: Counter = Counter::new(
    "pullthrough_served_bytes_total",
    "Response body bytes sent to clients (redirected blobs are not included: the store sends them).",
    &[],
);
static REDIRECTS: Counter = Counter::new(
    "pullthrough_redirects_total",
    "Responses that redirected the client (S3 presigned blob URLs).",
    &[],
);
static FILLS_IN_FLIGHT: Gauge = Gauge::new(
    "pullthrough_fills_in_flight",
    "Blob fills (upstream to store copies) running now.",
);
static FILLS: Counter = Counter::new(
    "pullthrough_fills_total",
    "Blob fills ended, by result: ok, error, or cancelled (stopped before its end).",
    &["result"],
);
static FILL_DURATION: Histogram = Histogram::new(
    "pullthrough_fill_duration_seconds",
    "Duration of blob fills that ended, from the upstream request to the stored object.",
    &[],
    FILL_BUCKETS,
);
static STORE_REQUESTS: Counter = Counter::new(
    "pullthrough_store_requests_total",
    "Store calls, by operation and result (ok or error).",
    &["op", "result"],
);
static STALE_SERVED: Counter = Counter::new(
    "pullthrough_stale_served_total",
    "Tags answered from the cache because their upstream could not be asked.",
    &["upstream"],
);

/// Every family, in the order they are rendered.
enum Family {
    Counter(&'static Counter),
    Gauge(&'static Gauge),
    Histogram(&'static Histogram),
}

const FAMILIES: &[Family] = &[
    Family::Counter(&REQUESTS),
    Family::Histogram(&REQUEST_DURATION),
    Family::Counter(&CACHE_LOOKUPS),
    Family::Counter(&UPSTREAM_REQUESTS),
    Family::Counter(&UPSTREAM_BYTES),
    Family::Counter(&SERVED_BYTES),
    Family::Counter(&REDIRECTS),
    Family::Gauge(&FILLS_IN_FLIGHT),
    Family::Counter(&FILLS),
    Family::Histogram(&FILL_DURATION),
    Family::Counter(&STORE_REQUESTS),
    Family::Counter(&STALE_SERVED),
];

/// What a cache lookup was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// A manifest by digest.
    Manifest,
    /// A manifest by tag.
    Tag,
    Blob,
}

impl LookupKind {
    fn as_str(self) -> &'static str {
        match self {
            LookupKind::Manifest => "manifest",
            LookupKind::Tag => "tag",
            LookupKind::Blob => "blob",
        }
    }
}

/// How a cache lookup was answered. Ordered by how much of the upstream it involved, so a
/// request with several lookups (a tag, then its platform's manifest) reports the most telling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lookup {
    /// From the store or memory, without asking the upstream.
    Hit,
    /// An expired tag the upstream confirmed (one HEAD).
    Revalidated,
    /// Fetched from the upstream.
    Miss,
    /// The upstream could not be asked: the last known answer was served.
    Stale,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Revalidated => "revalidated",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
        }
    }
}

/// Counts a cache decision, and tells the request it was made for (its log line).
pub fn cache_lookup(kind: LookupKind, result: Lookup) {
    CACHE_LOOKUPS.add(&[kind.as_str(), result.as_str()], 1);
    request::note_lookup(result);
}

/// A tag answered stale because `upstream` could not be asked.
pub fn stale_served(upstream: &str) {
    STALE_SERVED.add(&[upstream], 1);
}

/// One HTTP request sent to `upstream`: `status` is the answer's, `None` a transport failure.
pub fn upstream_request(upstream: &str, method: &str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    UPSTREAM_REQUESTS.add(&[upstream, method_label(method), &status], 1);
}

/// Body bytes received from `upstream`.
pub fn upstream_bytes(upstream: &str, bytes: u64) {
    UPSTREAM_BYTES.add(&[upstream], bytes);
}

/// One store call: `op` is the store method's name.
pub fn store_request(op: &'static str, ok: bool) {
    STORE_REQUESTS.add(&[op, if ok { "ok" } else { "error" }], 1);
}

/// A request answered: `endpoint` is its route kind (never its path), `elapsed` the time to its
/// response head.
pub fn request(endpoint: &'static str, method: &str, status: u16, elapsed: Duration) {
    REQUESTS.add(&[endpoint, method_label(method), &status.to_string()], 1);
    REQUEST_DURATION.observe(&[endpoint], elapsed.as_secs_f64());
    if (300..400).contains(&status) {
        REDIRECTS.add(&[], 1);
    }
}

/// Response body bytes sent to a client.
pub fn served_bytes(bytes: u64) {
    SERVED_BYTES.add(&[], bytes);
}

/// A method as a label: the registry's methods, anything else `other` (bounded cardinality).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// A blob fill in progress: counted in `fills_in_flight` while it lives. [`Fill::finish`] records
/// its result and duration; dropped unfinished (its task was cancelled), it counts as
/// `cancelled`.
#[must_use = "a fill is counted until it is finished or dropped"]
pub struct Fill {
    started: Instant,
    done: bool,
}

impl Fill {
    pub fn start() -> Fill {
        FILLS_IN_FLIGHT.add(1);
        Fill {
            started: Instant::now(),
            done: false,
        }
    }

    pub fn finish(mut self, ok: bool) {
        self.end(if ok { "ok" } else { "error" });
    }

    /// Records a failure now (where the fill's value cannot be moved into [`Fill::finish`]);
    /// later calls change nothing.
    pub fn failed(&mut self) {
        self.end("error");
    }

    fn end(&mut self, result: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        FILLS_IN_FLIGHT.add(-1);
        FILLS.add(&[result], 1);
        FILL_DURATION.observe(&[], self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.end("cancelled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_dropped_unfinished_counts_as_cancelled_and_leaves_flight() {
        // Other tests may run fills at the same time: counters only grow, so `>=` checks this
        // test's own effect.
        let before = FILLS.get(&["cancelled"]);
        let fill = Fill::start();
        assert!(FILLS_IN_FLIGHT.get() >= 1);
        drop(fill);
        assert!(FILLS.get(&["cancelled"]) > before);
        let ok = FILLS.get(&["ok"]);
        Fill::start().finish(true);
        assert!(FILLS.get(&["ok"]) > ok);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("GET"), "GET");
    }
}
