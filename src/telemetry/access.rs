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

use super::BodyStats;
use super::Telemetry;
use super::access_log::JsonLine;
use super::history::Sample;
use super::metrics::Gauge;
use super::requests::{Finished, RouteMetrics};
use super::trace::{RequestTrace, Tracer, Value};
use crate::usage::Seen;

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
    /// The API key's id, when an API key authenticated the caller (the
    /// usage meter counts per consumer and key).
    pub credential: Option<Arc<str>>,
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
    /// Set by [`AccessRecord::finish`]; a record dropped unfinished (the
    /// request's future was dropped: the client went away or reset the
    /// stream before the answer, or a panic unwound) finishes on drop.
    pub finished: bool,
}

/// The status logged for a request whose client left before the answer
/// was ready (nginx's convention; never sent).
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for AccessRecord {
    fn drop(&mut self) {
        if !self.finished {
            if self.status == 0 {
                self.status = CLIENT_CLOSED;
                self.error = Some("client_closed");
            }
            self.finish(0, false);
        }
    }
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
    fn end_trace(&self, tracer: &Tracer, trace: RequestTrace, bytes_out: u64, complete: bool) {
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
        if !complete {
            attributes.push((
                "gatehouse.response.complete",
                Value::Str("false".to_owned()),
            ));
        }
        tracer.finish(trace, name, attributes, self.status >= 500 || !complete);
    }

    /// Emits the log line. `complete` is false when the body stream ended
    /// early (client went away, upstream broke, deadline).
    pub fn finish(&mut self, bytes_out: u64, complete: bool) {
        self.finished = true;
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
            complete,
        });
        // Unsampled traces export nothing: build no attributes for them.
        if let Some(trace) = self.trace.take().filter(RequestTrace::sampled)
            && let Some(tracer) = &self.telemetry.tracer
        {
            self.end_trace(tracer, trace, bytes_out, complete);
        }
        let now = unix_now();
        if let Some(usage) = &self.telemetry.usage
            && let (Some(consumer), Some(key)) = (&self.consumer, &self.credential)
        {
            usage.record(&Seen {
                consumer,
                key,
                status: self.status,
                error: self.error,
                refused: self.refused,
                route: self.route.as_ref(),
                bytes_in,
                bytes_out,
                at: i64::try_from(now).unwrap_or(i64::MAX),
            });
        }
        self.telemetry.history.record(Sample {
            now,
            status: self.status,
            refused: self.refused,
            latency_us: duration_us,
        });
        self.log(&Logged {
            duration_us,
            bytes_in,
            bytes_out,
            complete,
        });
    }
}

/// The figures of a finished request that only the end knows.
#[derive(Debug, Clone, Copy)]
struct Logged {
    duration_us: u64,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
}

impl AccessRecord {
    /// Writes the access line: through the [`AccessLog`](super::access_log::AccessLog) writer when one is
    /// installed (`gatehouse serve` with JSON logs), else as a `tracing`
    /// event (text logs, tests). Either way only when the log filter
    /// enables `gatehouse::access` at `info`.
    fn log(&self, l: &Logged) {
        match &self.telemetry.access_log {
            Some(log) => {
                if tracing::enabled!(target: "gatehouse::access", tracing::Level::INFO) {
                    log.write_with(|line| self.json_line(line, l));
                }
            }
            None => self.tracing_event(l),
        }
    }

    /// The access line as JSON, with the keys tracing-subscriber's
    /// flattened JSON format gives the same event.
    fn json_line(&self, line: &mut JsonLine<'_>, l: &Logged) {
        line.display(
            "timestamp",
            humantime::format_rfc3339_micros(std::time::SystemTime::now()),
        );
        line.str("level", "INFO");
        line.str("message", "access");
        line.str("request_id", &self.request_id);
        line.str("method", self.method.as_str());
        line.str("path", &self.path);
        line.str("route", self.route.as_deref().unwrap_or("-"));
        line.str("upstream", self.upstream.as_deref().unwrap_or("-"));
        line.str("target_addr", self.target.as_deref().unwrap_or("-"));
        line.uint("status", u64::from(self.status));
        line.str("error", self.error.unwrap_or("-"));
        line.str("reason", self.reason.as_deref().unwrap_or("-"));
        line.str("consumer", self.consumer.as_deref().unwrap_or("-"));
        line.str("auth", self.auth.unwrap_or("-"));
        line.uint("duration_us", l.duration_us);
        line.uint("bytes_in", l.bytes_in);
        line.uint("bytes_out", l.bytes_out);
        line.bool("complete", l.complete);
        line.display("client", self.client);
        line.display("peer", self.peer);
        line.str("listener", &self.listener);
        line.str("tls", self.tls_version.unwrap_or("-"));
        line.str("http", version_text(self.http_version));
        line.str("trace_id", self.trace_id.as_deref().unwrap_or("-"));
        line.str("target", "gatehouse::access");
        line.end();
    }

    fn tracing_event(&self, l: &Logged) {
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
            duration_us = l.duration_us,
            bytes_in = l.bytes_in,
            bytes_out = l.bytes_out,
            complete = l.complete,
            client = %self.client,
            peer = %self.peer,
            listener = %self.listener,
            tls = self.tls_version.unwrap_or("-"),
            http = version_text(self.http_version),
            trace_id = self.trace_id.as_deref().unwrap_or("-"),
            "access"
        );
    }
}

/// `HTTP/1.1` and so on, as `Debug` prints them.
fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;

    fn record(telemetry: &Arc<Telemetry>, meters: &Arc<RouteMetrics>) -> AccessRecord {
        AccessRecord {
            request_id: "r1".into(),
            method: http::Method::GET,
            path: "/x".into(),
            route: Some("r".into()),
            upstream: Some("u".into()),
            target: None,
            status: 0,
            error: None,
            reason: None,
            started: Instant::now(),
            client: IpAddr::from([192, 0, 2, 1]),
            peer: "192.0.2.1:5000".parse().unwrap(),
            listener: "http".into(),
            tls_version: None,
            http_version: http::Version::HTTP_11,
            body: Arc::new(BodyStats::default()),
            consumer: None,
            auth: None,
            credential: None,
            refused: false,
            trace_id: None,
            meters: meters.clone(),
            telemetry: telemetry.clone(),
            in_flight: InFlight::new(&telemetry.meters.in_flight),
            trace: None,
            finished: false,
        }
    }

    #[test]
    fn a_record_dropped_unfinished_counts_as_client_closed() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let telemetry = Arc::new(Telemetry::new(metrics.clone(), None));
        let meters = Arc::new(RouteMetrics::new(&metrics, "r", Some("u"), None));
        let mut done = record(&telemetry, &meters);
        done.status = 200;
        done.finish(10, true);
        drop(done);
        let abandoned = record(&telemetry, &meters);
        assert_eq!(
            metrics
                .render()
                .lines()
                .find(|l| l.starts_with("gatehouse_requests_in_flight"))
                .map(str::to_owned),
            Some("gatehouse_requests_in_flight 1".to_owned())
        );
        drop(abandoned);
        let text = metrics.render();
        for want in [
            "gatehouse_requests_total{route=\"r\",upstream=\"u\",method=\"GET\",status_class=\"2xx\"} 1",
            "gatehouse_requests_total{route=\"r\",upstream=\"u\",method=\"GET\",status_class=\"4xx\"} 1",
            "gatehouse_responses_incomplete_total{route=\"r\",upstream=\"u\"} 1",
            "gatehouse_requests_in_flight 0",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
    }
}
