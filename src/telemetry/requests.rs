//! What the request path records: per-route request counts, latencies and
//! bytes, refusals by reason, auth outcomes and rate-limit decisions.
//!
//! Every handle here is registered when a snapshot (or the gateway) is
//! built; the request path only adds to atomics. Series are labelled with
//! route, upstream and policy names from the config and with fixed sets
//! (method, status class, reason code); the per-consumer series of a route
//! that opts in are capped (see [`CounterSet`]).

use std::sync::{Arc, OnceLock};

use http::Method;

use super::metrics::{Counter, CounterSet, Gauge, Histogram, Metrics};

/// Methods with their own label value; anything else is `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// The label value of routes and upstreams that are not known (a request
/// that matched no route, a route that answers itself).
pub const NONE: &str = "-";

/// Requests on one route.
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    route: Arc<str>,
    upstream: Arc<str>,
    requests: [OnceLock<Counter>; METHODS.len() * CLASSES.len()],
    duration: Histogram,
    upstream_duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    incomplete: Counter,
    per_consumer: Option<Arc<CounterSet>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// The meters of `route` forwarding to `upstream` (or [`NONE`]);
    /// `per_consumer` caps the consumers counted by name on this route.
    pub fn new(
        metrics: &Arc<Metrics>,
        route: &str,
        upstream: Option<&str>,
        per_consumer: Option<usize>,
    ) -> RouteMetrics {
        let upstream = upstream.unwrap_or(NONE);
        let labels = [("route", route), ("upstream", upstream)];
        RouteMetrics {
            metrics: metrics.clone(),
            route: route.into(),
            upstream: upstream.into(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            duration: metrics.histogram("gatehouse_request_duration_seconds", &labels),
            upstream_duration: metrics.histogram("gatehouse_upstream_duration_seconds", &labels),
            bytes_in: metrics.counter("gatehouse_request_bytes_total", &labels),
            bytes_out: metrics.counter("gatehouse_response_bytes_total", &labels),
            incomplete: metrics.counter("gatehouse_responses_incomplete_total", &labels),
            per_consumer: per_consumer.map(|cap| {
                metrics.counter_set(
                    "gatehouse_consumer_requests_total",
                    &[("route", route)],
                    "consumer",
                    cap,
                )
            }),
        }
    }

    /// The meters of requests that matched no route.
    pub fn unrouted(metrics: &Arc<Metrics>) -> RouteMetrics {
        RouteMetrics::new(metrics, NONE, None, None)
    }

    /// Counts a finished request.
    pub fn record(&self, done: &Finished<'_>) {
        let m = method_index(done.method);
        let c = class_index(done.status);
        let slot = m * CLASSES.len() + c;
        if let Some(counter) = self.requests.get(slot) {
            counter
                .get_or_init(|| {
                    self.metrics.counter(
                        "gatehouse_requests_total",
                        &[
                            ("route", &self.route),
                            ("upstream", &self.upstream),
                            ("method", METHODS[m]),
                            ("status_class", CLASSES[c]),
                        ],
                    )
                })
                .increment(1);
        }
        self.duration.record(done.seconds);
        self.bytes_in.increment(done.bytes_in);
        self.bytes_out.increment(done.bytes_out);
        if !done.complete {
            self.incomplete.increment(1);
        }
        if let (Some(set), Some(consumer)) = (&self.per_consumer, done.consumer) {
            set.add(consumer, 1);
        }
    }

    /// Records the time the upstream took to answer with its head.
    pub fn upstream_took(&self, seconds: f64) {
        self.upstream_duration.record(seconds);
    }
}

/// One finished request, as the meters see it.
#[derive(Debug)]
pub struct Finished<'a> {
    /// Its method.
    pub method: &'a Method,
    /// The status sent.
    pub status: u16,
    /// Seconds from arrival to the end of the response body.
    pub seconds: f64,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// The consumer, when authenticated.
    pub consumer: Option<&'a str>,
    /// Whether the response body was sent whole.
    pub complete: bool,
}

/// Meters of the whole gateway (not per route).
#[derive(Debug)]
pub struct GatewayMeters {
    /// Requests being handled (head received, response not finished).
    pub in_flight: Gauge,
    refusals: CounterSet,
    /// Auth outcomes by result, one set per method in [`AUTH_METHODS`].
    auth: [CounterSet; AUTH_METHODS.len()],
}

/// The `method` label values of `gatehouse_auth_total`: how the caller
/// authenticated, or what the route accepts when it failed.
pub const AUTH_METHODS: [&str; 4] = ["api_key", "jwt", "api_key_or_jwt", "none"];

/// How many distinct values the fixed-set counters may hold: refusal
/// codes and auth outcomes are enums, this only guards against a mistake.
const FIXED_SET_CAP: usize = 64;

impl GatewayMeters {
    /// Registers the gateway-wide meters.
    pub fn new(metrics: &Arc<Metrics>) -> GatewayMeters {
        GatewayMeters {
            in_flight: metrics.gauge("gatehouse_requests_in_flight", &[]),
            refusals: CounterSet::new(
                metrics,
                "gatehouse_refusals_total",
                &[],
                "reason",
                FIXED_SET_CAP,
            ),
            auth: AUTH_METHODS.map(|method| {
                CounterSet::new(
                    metrics,
                    "gatehouse_auth_total",
                    &[("method", method)],
                    "result",
                    FIXED_SET_CAP,
                )
            }),
        }
    }

    /// Counts a request the gateway answered itself with error `code`.
    pub fn refused(&self, code: &'static str) {
        self.refusals.add(code, 1);
    }

    /// Counts an authentication outcome: `method` (one of
    /// [`AUTH_METHODS`]) and `result` (`success` or the error code).
    pub fn auth(&self, method: &str, result: &'static str) {
        let i = AUTH_METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(AUTH_METHODS.len() - 1);
        if let Some(set) = self.auth.get(i) {
            set.add(result, 1);
        }
    }
}

/// The decisions of one rate-limit policy.
#[derive(Debug, Clone)]
pub struct PolicyMeters {
    /// Requests it let through.
    pub allowed: Counter,
    /// Requests it refused (rate).
    pub limited: Counter,
    /// Requests a shadow policy would have refused (rate).
    pub shadow_limited: Counter,
    /// Requests refused by its quota.
    pub quota_exceeded: Counter,
    /// Requests a shadow quota would have refused.
    pub shadow_quota_exceeded: Counter,
    /// Checks that failed (limiter or quota counter unavailable).
    pub errors: Counter,
}

impl PolicyMeters {
    /// Registers the meters of policy `name`.
    pub fn new(metrics: &Metrics, name: &str) -> PolicyMeters {
        let c = |decision: &str| {
            metrics.counter(
                "gatehouse_ratelimit_decisions_total",
                &[("policy", name), ("decision", decision)],
            )
        };
        PolicyMeters {
            allowed: c("allowed"),
            limited: c("limited"),
            shadow_limited: c("shadow_limited"),
            quota_exceeded: c("quota_exceeded"),
            shadow_quota_exceeded: c("shadow_quota_exceeded"),
            errors: c("error"),
        }
    }
}

/// `# HELP` texts of the request-path metrics.
pub fn describe(metrics: &Metrics) {
    use metrics::Unit;
    metrics.describe_counter(
        "gatehouse_requests_total",
        "Requests answered, by route, upstream, method and status class.",
    );
    metrics.describe_histogram(
        "gatehouse_request_duration_seconds",
        Some(Unit::Seconds),
        "Time from the request head to the end of the response body.",
    );
    metrics.describe_histogram(
        "gatehouse_upstream_duration_seconds",
        Some(Unit::Seconds),
        "Time from sending a request upstream to its response head.",
    );
    metrics.describe_counter(
        "gatehouse_request_bytes_total",
        "Request body bytes read from clients.",
    );
    metrics.describe_counter(
        "gatehouse_response_bytes_total",
        "Response body bytes sent to clients.",
    );
    metrics.describe_counter(
        "gatehouse_responses_incomplete_total",
        "Requests whose response did not finish: the body broke, hit the deadline, or the client left first (logged with status 499).",
    );
    metrics.describe_counter(
        "gatehouse_consumer_requests_total",
        "Requests per consumer on routes that opt in (capped; the rest count as `other`).",
    );
    metrics.describe_gauge(
        "gatehouse_requests_in_flight",
        "Requests whose response has not finished.",
    );
    metrics.describe_counter(
        "gatehouse_refusals_total",
        "Requests the gateway answered itself with an error, by error code.",
    );
    metrics.describe_counter(
        "gatehouse_auth_total",
        "Authentication outcomes by method (how the caller authenticated, or what the route accepts) and result (success or the error code).",
    );
    metrics.describe_counter(
        "gatehouse_ratelimit_decisions_total",
        "Rate-limit and quota decisions by policy, shadow ones included.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_methods() {
        let cases = [
            ("ok", 200, 1),
            ("switching", 101, 0),
            ("redirect", 308, 2),
            ("not found", 404, 3),
            ("bad gateway", 502, 4),
            ("out of range low", 0, 0),
            ("out of range high", 999, 4),
        ];
        for (name, status, want) in cases {
            assert_eq!(class_index(status), want, "{name}");
        }
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        let odd = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(METHODS[method_index(&odd)], "OTHER");
    }

    #[test]
    fn route_meters_count_by_method_and_class() {
        let m = Arc::new(Metrics::new().unwrap());
        let r = RouteMetrics::new(&m, "orders", Some("api"), Some(10));
        let done = |method: &'static Method, status| Finished {
            method,
            status,
            seconds: 0.002,
            bytes_in: 10,
            bytes_out: 100,
            consumer: Some("c1"),
            complete: status != 502,
        };
        r.record(&done(&Method::GET, 200));
        r.record(&done(&Method::GET, 204));
        r.record(&done(&Method::POST, 502));
        let text = m.render();
        let want = [
            "gatehouse_requests_total{route=\"orders\",upstream=\"api\",method=\"GET\",status_class=\"2xx\"} 2",
            "gatehouse_requests_total{route=\"orders\",upstream=\"api\",method=\"POST\",status_class=\"5xx\"} 1",
            "gatehouse_response_bytes_total{route=\"orders\",upstream=\"api\"} 300",
            "gatehouse_consumer_requests_total{route=\"orders\",consumer=\"c1\"} 3",
            "gatehouse_request_duration_seconds_count{route=\"orders\",upstream=\"api\"} 3",
            "gatehouse_responses_incomplete_total{route=\"orders\",upstream=\"api\"} 1",
            "gatehouse_request_duration_seconds_bucket{route=\"orders\",upstream=\"api\",le=\"0.0025\"} 3",
            "gatehouse_request_duration_seconds_bucket{route=\"orders\",upstream=\"api\",le=\"0.001\"} 0",
        ];
        for line in want {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
