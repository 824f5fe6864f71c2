//! The metrics registry: Prometheus counters, gauges and histograms.
//!
//! A [`Metrics`] is built once per running gateway and handed to whatever
//! records (the request path, upstreams, limiters, reloads): it is a
//! dependency like the logger, never a global, so two gateways in one
//! process (the tests) count apart.
//!
//! Recording costs no lock: handles ([`Counter`], [`Gauge`], [`Histogram`])
//! are registered once — when a snapshot is built, or on first use behind a
//! `OnceLock` — and are atomics from then on. Registering takes the
//! registry's lock, so nothing registers per request.
//!
//! Label values come from configuration names (route, upstream, policy,
//! target) and small fixed sets (method, status class, reason code), never
//! from paths, keys or client addresses: the number of series is bounded by
//! the config.

use std::fmt;

use metrics::{Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub use metrics::{Counter, Gauge, Histogram};

/// Latency buckets for a proxy: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the metrics registry")]
pub struct MetricsError(#[source] metrics_exporter_prometheus::BuildError);

/// The registry of one running gateway.
pub struct Metrics {
    /// `None` when metrics are off: every handle is a no-op.
    inner: Option<(PrometheusRecorder, PrometheusHandle)>,
    /// Counter sets by metric and fixed labels, kept across config
    /// reloads so that their caps hold for the process, not per snapshot.
    sets: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<CounterSet>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const METADATA: Metadata<'static> = Metadata::new("gatehouse", Level::INFO, Some("gatehouse"));

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// An empty registry with gatehouse's histogram buckets: every metric
    /// whose name ends in `_seconds` gets [`LATENCY_BUCKETS`].
    pub fn new() -> Result<Metrics, MetricsError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map_err(MetricsError)?
            .build_recorder();
        let handle = recorder.handle();
        Ok(Metrics {
            inner: Some((recorder, handle)),
            sets: std::sync::Mutex::default(),
        })
    }

    /// A registry that records nothing (`GATEHOUSE_METRICS=off`): every
    /// handle is a no-op and `/metrics` is empty. For measuring what
    /// metrics cost.
    pub fn disabled() -> Metrics {
        Metrics {
            inner: None,
            sets: std::sync::Mutex::default(),
        }
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The counter `name{labels}` (created on first registration; the same
    /// series on every later one).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        match &self.inner {
            Some((r, _)) => r.register_counter(&key(name, labels), &METADATA),
            None => Counter::noop(),
        }
    }

    /// The gauge `name{labels}`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        match &self.inner {
            Some((r, _)) => r.register_gauge(&key(name, labels), &METADATA),
            None => Gauge::noop(),
        }
    }

    /// The histogram `name{labels}` (values in seconds for `_seconds`
    /// names, bytes for `_bytes`).
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        match &self.inner {
            Some((r, _)) => r.register_histogram(&key(name, labels), &METADATA),
            None => Histogram::noop(),
        }
    }

    /// Sets the `# HELP` text of a counter.
    pub fn describe_counter(&self, name: &'static str, help: &'static str) {
        if let Some((r, _)) = &self.inner {
            r.describe_counter(name.into(), None, SharedString::const_str(help));
        }
    }

    /// Sets the `# HELP` text of a gauge.
    pub fn describe_gauge(&self, name: &'static str, help: &'static str) {
        if let Some((r, _)) = &self.inner {
            r.describe_gauge(name.into(), None, SharedString::const_str(help));
        }
    }

    /// Sets the `# HELP` text of a histogram.
    pub fn describe_histogram(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        if let Some((r, _)) = &self.inner {
            r.describe_histogram(name.into(), unit, SharedString::const_str(help));
        }
    }

    /// The [`CounterSet`] of `name{fixed…}` by `label`, the same one for
    /// every caller in this process (called when snapshots are built, not
    /// per request).
    pub fn counter_set(
        self: &std::sync::Arc<Self>,
        name: &'static str,
        fixed: &[(&'static str, &str)],
        label: &'static str,
        cap: usize,
    ) -> std::sync::Arc<CounterSet> {
        let mut id = String::from(name);
        for (k, v) in fixed {
            id.push('|');
            id.push_str(k);
            id.push('=');
            id.push_str(v);
        }
        let mut sets = self
            .sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sets.entry(id)
            .or_insert_with(|| std::sync::Arc::new(CounterSet::new(self, name, fixed, label, cap)))
            .clone()
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        self.inner
            .as_ref()
            .map(|(_, h)| h.render())
            .unwrap_or_default()
    }

    /// Folds recorded histogram samples into their buckets. Run it every
    /// few seconds (a scrape does it too) so samples do not pile up.
    pub fn upkeep(&self) {
        if let Some((_, h)) = &self.inner {
            h.run_upkeep();
        }
    }
}

/// Counters of one metric keyed by a label value, registered on first use
/// and read without a lock afterwards (an `ArcSwap` of the map, replaced
/// whole on the rare insert). At most `cap` distinct values get their own
/// series; later ones share the `other` series, so a flood of new values
/// cannot grow the exposition.
pub struct CounterSet {
    /// Weak: the registry keeps its counter sets.
    metrics: std::sync::Weak<Metrics>,
    name: &'static str,
    label: &'static str,
    fixed: Vec<(&'static str, String)>,
    cap: usize,
    map: arc_swap::ArcSwap<std::collections::HashMap<String, Counter>>,
}

impl fmt::Debug for CounterSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterSet")
            .field("name", &self.name)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// The label value that values past a [`CounterSet`]'s cap share.
pub const OTHER: &str = "other";

impl CounterSet {
    /// Counters `name{fixed…, label=value}`, at most `cap` values.
    pub fn new(
        metrics: &std::sync::Arc<Metrics>,
        name: &'static str,
        fixed: &[(&'static str, &str)],
        label: &'static str,
        cap: usize,
    ) -> CounterSet {
        CounterSet {
            metrics: std::sync::Arc::downgrade(metrics),
            name,
            label,
            fixed: fixed.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            cap,
            map: arc_swap::ArcSwap::from_pointee(std::collections::HashMap::new()),
        }
    }

    /// Adds `n` to the series of `value`.
    pub fn add(&self, value: &str, n: u64) {
        if let Some(c) = self.map.load().get(value) {
            c.increment(n);
            return;
        }
        self.insert(value).increment(n);
    }

    fn insert(&self, value: &str) -> Counter {
        let map = self.map.load();
        let value = if map.len() >= self.cap && value != OTHER {
            if let Some(c) = map.get(OTHER) {
                return c.clone();
            }
            OTHER
        } else {
            value
        };
        let mut labels: Vec<(&'static str, &str)> =
            self.fixed.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels.push((self.label, value));
        let counter = match self.metrics.upgrade() {
            Some(m) => m.counter(self.name, &labels),
            None => Counter::noop(),
        };
        let value = value.to_owned();
        self.map.rcu(|m| {
            let mut m = std::collections::HashMap::clone(m);
            m.entry(value.clone()).or_insert_with(|| counter.clone());
            m
        });
        counter
    }
}

/// The Prometheus text exposition rewritten as OpenMetrics text 1.0:
/// counter families are named without their `_total` suffix in `# TYPE`
/// and `# HELP` lines, blank lines are dropped, and the text ends with
/// `# EOF`. (Prometheus asks for OpenMetrics first.)
pub fn to_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    // OpenMetrics has no blank lines between families.
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rewritten = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let is_counter_type = *prefix == "# TYPE " && tail == "counter";
            let base = name.strip_suffix("_total")?;
            let is_counter_help =
                *prefix == "# HELP " && text.contains(&format!("# TYPE {name} counter"));
            (is_counter_type || is_counter_help).then(|| format!("{prefix}{base} {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counter_sets_cap_their_series() {
        let m = Arc::new(Metrics::new().unwrap());
        let set = CounterSet::new(&m, "gatehouse_test_total", &[("route", "r")], "who", 2);
        for (who, n) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("d", 5)] {
            set.add(who, n);
        }
        let text = m.render();
        let series = |who: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "gatehouse_test_total{{route=\"r\",who=\"{who}\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(series("a").as_deref(), Some("4"));
        assert_eq!(series("b").as_deref(), Some("2"));
        assert_eq!(
            series("other").as_deref(),
            Some("9"),
            "c and d share `other`"
        );
        assert_eq!(series("c"), None);
    }

    #[test]
    fn openmetrics_conversion() {
        let cases = [
            (
                "counter",
                "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\n\n",
                "# HELP x Things.\n# TYPE x counter\nx_total{a=\"1\"} 3\n# EOF\n",
            ),
            (
                "gauge kept",
                "# TYPE g gauge\ng 1\n",
                "# TYPE g gauge\ng 1\n# EOF\n",
            ),
            (
                "gauge named _total is not a counter",
                "# HELP g_total G.\n# TYPE g_total gauge\ng_total 1\n",
                "# HELP g_total G.\n# TYPE g_total gauge\ng_total 1\n# EOF\n",
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(to_openmetrics(input), want, "{name}");
        }
    }
}
