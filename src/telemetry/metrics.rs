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
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
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
        Ok(Metrics { recorder, handle })
    }

    /// The counter `name{labels}` (created on first registration; the same
    /// series on every later one).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// The gauge `name{labels}`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name{labels}` (values in seconds for `_seconds`
    /// names, bytes for `_bytes`).
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// Sets the `# HELP` text of a counter.
    pub fn describe_counter(&self, name: &'static str, help: &'static str) {
        self.recorder
            .describe_counter(name.into(), None, SharedString::const_str(help));
    }

    /// Sets the `# HELP` text of a gauge.
    pub fn describe_gauge(&self, name: &'static str, help: &'static str) {
        self.recorder
            .describe_gauge(name.into(), None, SharedString::const_str(help));
    }

    /// Sets the `# HELP` text of a histogram.
    pub fn describe_histogram(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.recorder
            .describe_histogram(name.into(), unit, SharedString::const_str(help));
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets. Run it every
    /// few seconds (a scrape does it too) so samples do not pile up.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}
