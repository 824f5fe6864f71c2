//! Step 1: the per-request context every later step reads and fills in —
//! one config snapshot, the request id, the access record, and what the
//! steps learn (route, caller, rate-limit headers, trace).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};

use crate::auth::Principal;
use crate::body::BodyStats;
use crate::error::GatewayError;
use crate::route::Route;
use crate::snapshot::Snapshot;
use crate::telemetry::AccessRecord;
use crate::telemetry::access::InFlight;
use crate::telemetry::trace::{RequestTrace, Value as TraceValue};
use crate::validate;

use super::{ConnInfo, Gateway};

/// Per-request state carried through the steps.
#[derive(Debug)]
pub(super) struct RequestCtx {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) request_id: HeaderValue,
    pub(super) record: AccessRecord,
    /// The client's `Origin`, for the route's CORS policy at the finish.
    pub(super) origin: Option<HeaderValue>,
    /// The matched route, once known.
    pub(super) route: Option<Arc<Route>>,
    /// The authenticated caller, once known.
    pub(super) principal: Option<Principal>,
    /// `RateLimit-Policy` / `RateLimit` headers for the answer.
    pub(super) rate_headers: Vec<(HeaderName, HeaderValue)>,
    /// The request's trace, when tracing is on.
    pub(super) trace: Option<RequestTrace>,
}

impl RequestCtx {
    /// Step 1: one snapshot for the whole request, and the access record
    /// every outcome is logged with.
    pub(super) fn start<B>(gw: &Gateway, req: &Request<B>, conn: &ConnInfo) -> RequestCtx {
        let started = Instant::now();
        let snapshot = gw.snapshot.load_full();
        let request_id = request_id(req.headers());
        let trace = gw.telemetry.tracer.as_ref().map(|t| t.start(req.headers()));
        let record = AccessRecord {
            request_id: request_id.to_str().unwrap_or("-").to_owned(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            route: None,
            upstream: None,
            target: None,
            status: 0,
            error: None,
            reason: None,
            started,
            client: validate::client_ip(conn.peer.ip(), req.headers(), &snapshot.trusted_proxies),
            // The socket's peer: a PROXY protocol balancer, when there is one.
            peer: conn.proxied_by.unwrap_or(conn.peer),
            listener: conn.listener.clone(),
            tls_version: conn.tls_version,
            http_version: req.version(),
            body: Arc::new(BodyStats::default()),
            consumer: None,
            credential: None,
            auth: None,
            refused: false,
            trace_id: trace.as_ref().map(RequestTrace::trace_id),
            meters: gw.telemetry.unrouted.clone(),
            telemetry: gw.telemetry.clone(),
            in_flight: InFlight::new(&gw.telemetry.meters.in_flight),
            trace: None,
            finished: false,
        };
        RequestCtx {
            snapshot,
            request_id,
            record,
            origin: req.headers().get(header::ORIGIN).cloned(),
            route: None,
            principal: None,
            rate_headers: Vec::new(),
            trace,
        }
    }

    /// The route found at step 3: its name and meters go on the record.
    pub(super) fn routed(&mut self, route: &Arc<Route>) {
        self.record.route = Some(route.name.clone());
        self.record.meters = route.meters.clone();
        self.route = Some(route.clone());
    }

    /// The start time of a child span (0 when not recording).
    pub(super) fn clock(&self) -> u64 {
        self.trace.as_ref().map_or(0, RequestTrace::clock)
    }

    /// Records a child span from `start` to now.
    pub(super) fn span(
        &mut self,
        name: &'static str,
        start: u64,
        outcome: Result<(), &GatewayError>,
    ) {
        if let Some(trace) = &mut self.trace
            && trace.sampled()
        {
            let attributes = match outcome {
                Ok(()) => Vec::new(),
                Err(e) => vec![("error.type", TraceValue::Str(e.code().to_owned()))],
            };
            trace.child(name, start, attributes, outcome.is_err());
        }
    }
}

/// Whether this request makes the connection stop being HTTP: exactly the
/// framing guard's rule (after any `Upgrade` header or a CONNECT it stops
/// reading the connection as HTTP/1).
pub(super) fn leaves_http<B>(req: &http::Request<B>, conn: &ConnInfo) -> bool {
    conn.verdicts.is_some()
        && (req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE))
}

/// The framing guard's verdict on this request's head, if it refused it.
pub(super) fn framing_refusal(conn: &ConnInfo) -> Result<(), GatewayError> {
    let index = conn.requests.fetch_add(1, Ordering::Relaxed);
    match conn.verdicts.as_ref().and_then(|v| v.refused(index)) {
        None => Ok(()),
        Some(why) => Err(why.into()),
    }
}

/// Whether a client's `X-Request-Id` is kept: 1 to 128 characters of
/// `[A-Za-z0-9._:-]` (anything else could forge log lines or headers).
fn is_valid_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// A new random request id: 32 hex digits.
fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The client's `X-Request-Id` when it is well-formed, otherwise a new
/// random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    match headers.get("x-request-id") {
        Some(v) if is_valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}
