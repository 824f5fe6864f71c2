//! Telemetry: the access log, Prometheus metrics, traces.
//!
//! - [`access`]: one structured log line per request.
//! - [`metrics`]: the [`Metrics`] registry every component records into
//!   (built per running gateway, never global), rendered at `/metrics`.
//!
//! The tracing subscriber itself is installed by `main`.

pub mod access;
pub mod metrics;

pub use self::metrics::Metrics;
pub use access::AccessRecord;
