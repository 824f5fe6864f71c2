//! Telemetry: the access log, Prometheus metrics, traces.
//!
//! - [`access`]: one structured log line per request; [`access_log`]: the
//!   writer thread those lines go through.
//! - [`metrics`]: the [`Metrics`] registry every component records into
//!   (built per running gateway, never global), rendered at `/metrics`.
//! - [`requests`]: the meters the request path adds to.
//! - [`process`]: TLS handshakes, reloads, certificates, build info.
//! - [`trace`]: OpenTelemetry spans, exported over OTLP/HTTP.
//! - [`history`]: the last fifteen minutes in memory, for the status page.
//!
//! The tracing subscriber itself is installed by `main`.

pub mod access;
pub mod access_log;
mod body_stats;
pub mod history;
pub mod metrics;
pub mod process;
pub mod requests;
pub mod trace;

use std::sync::Arc;

pub use self::metrics::Metrics;
pub use access::AccessRecord;
pub use body_stats::BodyStats;

/// What the request path records into, built once per running gateway.
#[derive(Debug)]
pub struct Telemetry {
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// Gateway-wide meters.
    pub meters: requests::GatewayMeters,
    /// Meters of requests that matched no route.
    pub unrouted: Arc<requests::RouteMetrics>,
    /// The last fifteen minutes, for the status page.
    pub history: history::History,
    /// Reloads, generation, certificates, build info.
    pub config: process::ConfigMeters,
    /// Spans, when tracing is on.
    pub tracer: Option<trace::Tracer>,
    /// The access log's writer; without one, access lines are `tracing`
    /// events.
    pub access_log: Option<access_log::AccessLog>,
    /// Usage per consumer and key, when `[usage] enabled`.
    pub usage: Option<Arc<crate::usage::UsageMeter>>,
}

impl Telemetry {
    /// Telemetry recording into `metrics`, tracing with `tracer`.
    pub fn new(metrics: Arc<Metrics>, tracer: Option<trace::Tracer>) -> Telemetry {
        requests::describe(&metrics);
        process::describe(&metrics);
        Telemetry {
            config: process::ConfigMeters::new(&metrics),
            tracer,
            access_log: None,
            usage: None,
            meters: requests::GatewayMeters::new(&metrics),
            unrouted: Arc::new(requests::RouteMetrics::unrouted(&metrics)),
            history: history::History::default(),
            metrics,
        }
    }
}
