//! The three kinds of figures. A family maps its label values to an atomic (a counter's value,
//! a histogram's buckets); the map is read under a read lock and written only when a label set
//! is new, so counting from many tasks at once contends on nothing but the atomics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Label sets one family may hold; past it, new label sets are counted under `other` (every
/// label). Bounded label values make this unreachable in practice; it is the guarantee.
pub const MAX_SERIES: usize = 1000;

/// Separates label values in a map key (a value containing it still renders right: the key
/// only has to be unique, and values are kept apart from it).
const SEP: char = '\u{1f}';

/// One label set's values and its figure.
type Entry<T> = Arc<(Vec<String>, T)>;

/// Label values → one series, under a lock taken for writing only for a new label set.
struct Series<T> {
    map: RwLock<BTreeMap<String, Entry<T>>>,
}

impl<T: Default> Series<T> {
    const fn new() -> Series<T> {
        Series {
            map: RwLock::new(BTreeMap::new()),
        }
    }

    /// The series of `values`, created if new (or the `other` series when the family is full).
    fn get(&self, values: &[&str]) -> Entry<T> {
        let key = key(values);
        if let Some(s) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Arc::clone(s);
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let (key, values): (String, Vec<String>) = if map.len() >= MAX_SERIES {
            let other = vec!["other"; values.len()];
            (
                self::key(&other),
                other.iter().map(|v| (*v).to_owned()).collect(),
            )
        } else {
            (key, values.iter().map(|v| (*v).to_owned()).collect())
        };
        Arc::clone(
            map.entry(key)
                .or_insert_with(|| Arc::new((values, T::default()))),
        )
    }

    /// Every series, ordered by label values.
    fn snapshot(&self) -> Vec<Entry<T>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn key(values: &[&str]) -> String {
    let mut k = String::with_capacity(values.iter().map(|v| v.len() + 1).sum());
    for v in values {
        k.push_str(v);
        k.push(SEP);
    }
    k
}

/// A monotonic count per label set.
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    series: Series<AtomicU64>,
}

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Counter {
        Counter {
            name,
            help,
            labels,
            series: Series::new(),
        }
    }

    pub fn add(&self, values: &[&str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        self.series.get(values).1.fetch_add(n, Ordering::Relaxed);
    }

    /// The value of one label set (0 if never counted).
    #[cfg(test)]
    pub fn get(&self, values: &[&str]) -> u64 {
        self.series.get(values).1.load(Ordering::Relaxed)
    }

    /// `(label values, value)` of every label set counted so far.
    pub fn samples(&self) -> Vec<(Vec<String>, u64)> {
        self.series
            .snapshot()
            .iter()
            .map(|s| (s.0.clone(), s.1.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A value that goes up and down, without labels.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Gauge {
        Gauge {
            name,
            help,
            value: AtomicI64::new(0),
        }
    }

    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Observations in fixed buckets per label set, with their count and sum.
pub struct Histogram {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    /// Upper bounds, ascending; `+Inf` is implied.
    pub buckets: &'static [f64],
    series: Series<Buckets>,
}

/// One label set's histogram: a count per bucket (not cumulative), the observations' count and
/// their sum (an `f64`'s bits).
#[derive(Default)]
struct Buckets {
    counts: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    sum_bits: AtomicU64,
}

/// Most buckets a histogram may have.
const MAX_BUCKETS: usize = 16;

/// A histogram's figures for one label set, as rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    pub values: Vec<String>,
    /// Cumulative counts, one per bucket bound (`+Inf` is `count`).
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Histogram {
        assert!(buckets.len() <= MAX_BUCKETS);
        Histogram {
            name,
            help,
            labels,
            buckets,
            series: Series::new(),
        }
    }

    pub fn observe(&self, values: &[&str], v: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let series = self.series.get(values);
        let b = &series.1;
        if let Some(i) = self.buckets.iter().position(|bound| v <= *bound) {
            b.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = b
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        b.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn samples(&self) -> Vec<HistogramSample> {
        self.series
            .snapshot()
            .iter()
            .map(|s| {
                let mut total = 0;
                let cumulative = (0..self.buckets.len())
                    .map(|i| {
                        total += s.1.counts[i].load(Ordering::Relaxed);
                        total
                    })
                    .collect();
                HistogramSample {
                    values: s.0.clone(),
                    cumulative,
                    // At least the buckets' total: an observation may be half-recorded while
                    // read, and `+Inf` must never be below a finite bucket.
                    count: s.1.count.load(Ordering::Relaxed).max(total),
                    sum: f64::from_bits(s.1.sum_bits.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_counted_apart_and_bounded() {
        static C: Counter = Counter::new("t_total", "t", &["a", "b"]);
        C.add(&["x", "y"], 2);
        C.add(&["x", "y"], 3);
        C.add(&["xy", ""], 1);
        assert_eq!(C.get(&["x", "y"]), 5);
        assert_eq!(C.get(&["xy", ""]), 1);
        for i in 0..MAX_SERIES + 10 {
            C.add(&[&i.to_string(), "z"], 1);
        }
        let samples = C.samples();
        assert!(samples.len() <= MAX_SERIES + 1, "{}", samples.len());
        let other = samples
            .iter()
            .find(|(v, _)| v == &["other", "other"])
            .expect("the overflow is counted under other");
        assert!(other.1 >= 10);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        static H: Histogram = Histogram::new("t_seconds", "t", &[], &[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0] {
            H.observe(&[], v);
        }
        let s = &H.samples()[0];
        assert_eq!(s.cumulative, vec![2, 3]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 3.65).abs() < 1e-9);
    }
}
