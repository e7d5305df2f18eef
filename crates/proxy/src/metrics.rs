//! Request metrics: counts by status class and a latency histogram, kept in
//! plain atomics so recording on the hot path is a handful of relaxed adds.
//!
//! Rendered by hand in the Prometheus text format: the whole exposition is
//! two metric families, and a registry (prometheus-client) would put a lock
//! and a label lookup on every request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds: the ones SLOs are
/// computed with (`tandem_core::slo::LATENCY_BOUNDS_US`).
pub const BUCKETS_US: [u64; 19] = tandem_core::slo::LATENCY_BOUNDS_US;

/// Counters for one route or one target.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// Index 0 = 1xx … 4 = 5xx.
    classes: [AtomicU64; 5],
    /// Non-cumulative; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A point-in-time copy, for tests and analysis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub classes: [u64; 5],
    pub buckets: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl Snapshot {
    pub fn total(&self) -> u64 {
        self.classes.iter().sum()
    }

    /// What was counted after `earlier`, a snapshot of the same counters.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }
}

impl RequestMetrics {
    pub fn record(&self, status: u16, latency: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.classes[class].fetch_add(1, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Adds counts recorded elsewhere: an agent taking over goes on from
    /// its predecessor's.
    pub fn add(&self, earlier: &Snapshot) {
        for (mine, theirs) in self.classes.iter().zip(earlier.classes) {
            mine.fetch_add(theirs, Relaxed);
        }
        for (mine, theirs) in self.buckets.iter().zip(earlier.buckets) {
            mine.fetch_add(theirs, Relaxed);
        }
        self.sum_us.fetch_add(earlier.sum_us, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            classes: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// Labels of one series, as `name="value"` pairs.
pub type Labels<'a> = Vec<(&'a str, &'a str)>;

/// Appends two whole metric families for `series` (each a label set and
/// its counters): `<name>_requests_total` by status class and the
/// histogram `<name>_request_duration_seconds`, each with its HELP and
/// TYPE once and all its samples together, as the text format wants.
pub fn render_families(
    out: &mut String,
    name: &str,
    what: &str,
    series: &[(Labels<'_>, Snapshot)],
) {
    // Each series' labels, then the family's own one after a comma.
    let labels = |pairs: &Labels<'_>| match pairs.is_empty() {
        true => String::new(),
        false => format!("{},", label_list(pairs)),
    };
    let _ = writeln!(
        out,
        "# HELP {name}_requests_total Requests by status class, per {what}."
    );
    let _ = writeln!(out, "# TYPE {name}_requests_total counter");
    for (pairs, snap) in series {
        let base = labels(pairs);
        for (i, count) in snap.classes.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_requests_total{{{base}class=\"{}xx\"}} {count}",
                i + 1
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP {name}_request_duration_seconds Time to response headers, per {what}."
    );
    let _ = writeln!(out, "# TYPE {name}_request_duration_seconds histogram");
    for (pairs, snap) in series {
        let base = labels(pairs);
        let mut cumulative = 0;
        for (i, count) in snap.buckets.iter().enumerate() {
            cumulative += count;
            let le = BUCKETS_US
                .get(i)
                .map(|us| format!("{}", *us as f64 / 1e6))
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "{name}_request_duration_seconds_bucket{{{base}le=\"{le}\"}} {cumulative}"
            );
        }
        let bare = base.trim_end_matches(',');
        let _ = writeln!(
            out,
            "{name}_request_duration_seconds_sum{{{bare}}} {}",
            snap.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{name}_request_duration_seconds_count{{{bare}}} {cumulative}"
        );
    }
}

/// One unlabelled gauge with its HELP/TYPE header.
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: usize) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// One counter family: HELP/TYPE, then a sample per label set.
pub fn render_counter(out: &mut String, name: &str, help: &str, samples: &[(Labels<'_>, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (pairs, value) in samples {
        let _ = match pairs.is_empty() {
            true => writeln!(out, "{name} {value}"),
            false => writeln!(out, "{name}{{{}}} {value}", label_list(pairs)),
        };
    }
}

/// `k="v",k="v"`, values escaped.
fn label_list(pairs: &Labels<'_>) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_class_and_bucket_exactly() {
        let m = RequestMetrics::default();
        m.record(200, Duration::from_micros(400));
        m.record(204, Duration::from_millis(3));
        m.record(503, Duration::from_secs(60));
        let s = m.snapshot();
        assert_eq!(s.classes, [0, 2, 0, 0, 1]);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[3], 1);
        assert_eq!(s.buckets[BUCKETS_US.len()], 1);
        assert_eq!(s.total(), 3);
    }

    #[test]
    fn what_was_counted_since_a_snapshot_adds_up_to_the_whole() {
        let m = RequestMetrics::default();
        m.record(200, Duration::from_micros(400));
        let earlier = m.snapshot();
        m.record(502, Duration::from_millis(3));
        m.record(200, Duration::from_millis(3));
        let later = m.snapshot().since(&earlier);
        assert_eq!(later.classes, [0, 1, 0, 0, 1]);
        assert_eq!(later.buckets[3], 2);
        assert_eq!(later.sum_us, 6000);
        let whole = RequestMetrics::default();
        whole.add(&earlier);
        whole.add(&later);
        assert_eq!(whole.snapshot(), m.snapshot());
    }

    #[test]
    fn renders_cumulative_buckets_with_each_familys_samples_together() {
        let shop = RequestMetrics::default();
        shop.record(200, Duration::from_micros(400));
        shop.record(200, Duration::from_millis(3));
        let cart = RequestMetrics::default();
        cart.record(500, Duration::from_millis(1));
        let series = [
            (vec![("service", "shop")], shop.snapshot()),
            (vec![("service", "cart")], cart.snapshot()),
        ];
        let mut out = String::new();
        render_families(&mut out, "tandem_route", "service route", &series);
        for line in [
            "tandem_route_requests_total{service=\"shop\",class=\"2xx\"} 2",
            "tandem_route_requests_total{service=\"cart\",class=\"5xx\"} 1",
            "tandem_route_request_duration_seconds_bucket{service=\"shop\",le=\"0.005\"} 2",
            "tandem_route_request_duration_seconds_bucket{service=\"shop\",le=\"+Inf\"} 2",
            "tandem_route_request_duration_seconds_count{service=\"shop\"} 2",
            "tandem_route_request_duration_seconds_count{service=\"cart\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        // A family's samples follow its TYPE line, none of another's
        // between them (two services used to interleave).
        let families: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split('{').next().unwrap_or(l) {
                n if n.starts_with("tandem_route_request_duration_seconds") => "duration",
                _ => "requests",
            })
            .collect();
        let changes = families.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes, 1, "{out}");
    }
}
