//! The access log.
//!
//! One structured line per request, emitted through `tracing` on the
//! `gatehouse::access` target when the response has been sent (or the client
//! went away), so it carries the real byte count and duration. The record
//! holds no header values at all: credentials, cookies and API keys cannot
//! leak through it. The subscriber itself is installed by `main`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Telemetry;
use super::history::Sample;
use super::metrics::Gauge;
use super::requests::{Finished, RouteMetrics};
use super::trace::{RequestTrace, Tracer, Value};
use crate::body::BodyStats;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything the access log says about one request.
#[derive(Debug)]
pub struct AccessRecord {
    /// The request id sent back in `X-Request-Id`.
    pub request_id: String,
    /// The request method.
    pub method: http::Method,
    /// The normalised path (without query); the raw target when it was refused.
    pub path: String,
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    /// The upstream's name.
    pub upstream: Option<Arc<str>>,
    /// The upstream target the request went to.
    pub target: Option<String>,
    /// The response status.
    pub status: u16,
    /// The error code when the gateway answered itself.
    pub error: Option<&'static str>,
    /// Why, in words (gateway-written text, never a header value).
    pub reason: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// The client's address (through trusted proxies, if any).
    pub client: IpAddr,
    /// The socket peer (the client itself, or the last proxy).
    pub peer: SocketAddr,
    /// The listener that accepted it.
    pub listener: Arc<str>,
    /// `TLSv1.3`, `TLSv1.2`, or none for plain HTTP.
    pub tls_version: Option<&'static str>,
    /// HTTP version of the client's request.
    pub http_version: http::Version,
    /// Request body counters.
    pub body: Arc<BodyStats>,
    /// The authenticated consumer id or token subject.
    pub consumer: Option<Arc<str>>,
    /// How the caller authenticated (`api_key`, `jwt`).
    pub auth: Option<&'static str>,
    /// The gateway refused the request (its own error answer, not an
    /// upstream or internal fault).
    pub refused: bool,
    /// The W3C trace id, when the request is traced.
    pub trace_id: Option<String>,
    /// The meters of the matched route (or of unrouted requests).
    pub meters: Arc<RouteMetrics>,
    /// Gateway-wide meters and recent history.
    pub telemetry: Arc<Telemetry>,
    /// Counts the request in flight until the record is dropped.
    pub in_flight: InFlight,
    /// Its trace, ended with the record.
    pub trace: Option<RequestTrace>,
}

/// Holds one unit of the in-flight gauge.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl InFlight {
    /// Counts one more request in flight on `gauge`.
    pub fn new(gauge: &Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl AccessRecord {
    fn end_trace(&self, tracer: &Tracer, trace: RequestTrace, bytes_out: u64) {
        let mut attributes = vec![
            ("http.request.method", Value::Str(self.method.to_string())),
            ("url.path", Value::Str(self.path.clone())),
            (
                "http.response.status_code",
                Value::Int(i64::from(self.status)),
            ),
            ("client.address", Value::Str(self.client.to_string())),
            ("gatehouse.request_id", Value::Str(self.request_id.clone())),
            ("gatehouse.listener", Value::Str(self.listener.to_string())),
            (
                "http.response.body.size",
                Value::Int(i64::try_from(bytes_out).unwrap_or(i64::MAX)),
            ),
        ];
        if let Some(route) = &self.route {
            attributes.push(("http.route", Value::Str(route.to_string())));
        }
        if let Some(upstream) = &self.upstream {
            attributes.push(("gatehouse.upstream", Value::Str(upstream.to_string())));
        }
        if let Some(error) = self.error {
            attributes.push(("error.type", Value::Str(error.to_owned())));
        }
        if let Some(consumer) = &self.consumer {
            attributes.push(("gatehouse.consumer", Value::Str(consumer.to_string())));
        }
        let name = match &self.route {
            Some(route) => format!("{} {route}", self.method),
            None => self.method.to_string(),
        };
        tracer.finish(trace, name, attributes, self.status >= 500);
    }

    /// Emits the log line. `complete` is false when the body stream ended
    /// early (client went away, upstream broke, deadline).
    pub fn finish(&mut self, bytes_out: u64, complete: bool) {
        let elapsed = self.started.elapsed();
        let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bytes_in = self.body.bytes.load(Ordering::Relaxed);
        self.meters.record(&Finished {
            method: &self.method,
            status: self.status,
            seconds: elapsed.as_secs_f64(),
            bytes_in,
            bytes_out,
            consumer: self.consumer.as_deref(),
        });
        if let (Some(trace), Some(tracer)) = (self.trace.take(), &self.telemetry.tracer) {
            self.end_trace(tracer, trace, bytes_out);
        }
        self.telemetry.history.record(Sample {
            now: unix_now(),
            status: self.status,
            refused: self.refused,
            latency_us: duration_us,
        });
        tracing::info!(
            target: "gatehouse::access",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            target_addr = self.target.as_deref().unwrap_or("-"),
            status = self.status,
            error = self.error.unwrap_or("-"),
            reason = self.reason.as_deref().unwrap_or("-"),
            consumer = self.consumer.as_deref().unwrap_or("-"),
            auth = self.auth.unwrap_or("-"),
            duration_us,
            bytes_in,
            bytes_out,
            complete,
            client = %self.client,
            peer = %self.peer,
            listener = %self.listener,
            tls = self.tls_version.unwrap_or("-"),
            http = ?self.http_version,
            trace_id = self.trace_id.as_deref().unwrap_or("-"),
            "access"
        );
    }
}
