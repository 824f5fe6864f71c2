//! The per-request pipeline (Tier B in DESIGN.md), top to bottom.
//!
//! [`Gateway::handle`] loads one config snapshot, then runs the steps in
//! order as plain functions over a `RequestCtx`: normalise and strictly
//! parse, route, check limits, authenticate (the per-client failure gate
//! first, so bad keys cannot burn argon2), authorise, rate-limit, rewrite,
//! forward, finish. Before any of it, a request beyond the global in-flight
//! limit is shed with a fast 503. A step that refuses
//! the request returns a [`GatewayError`]; the request is then answered with
//! the JSON error body and never forwarded. Every outcome is logged once,
//! when its response has been sent.

mod authn;
mod host;
mod http_upstream;
mod lambda_upstream;
mod limits;
mod refusals;
mod upstream_context;

use authn::*;
use host::*;
use http_upstream::*;
use lambda_upstream::*;
use limits::*;
use refusals::*;
use upstream_context::*;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::Clock;
use crate::auth::Principal;
use crate::auth::api_key::ApiKeyAuth;
use crate::body::{BodyStats, GwBody, ResponseBody};
pub use crate::conn::ConnInfo;
use crate::cors;
use crate::error::GatewayError;
use crate::proxy::{self};
use crate::ratelimit::Limiter;
use crate::ratelimit::quota::QuotaCounter;
use crate::route::{Action, Lookup, Route};
use crate::snapshot::Snapshot;
use crate::telemetry::access::InFlight;
use crate::telemetry::trace::{RequestTrace, Value as TraceValue};
use crate::telemetry::{AccessRecord, Telemetry};
use crate::validate::{self, Refusal};

/// The gateway: the current snapshot and what the pipeline needs.
#[derive(Debug, Clone)]
pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    api_keys: Arc<ApiKeyAuth>,
    limiter: Arc<dyn Limiter>,
    quotas: Arc<dyn QuotaCounter>,
    quota_fail_open: bool,
    clock: Arc<dyn Clock>,
    in_flight: Arc<tokio::sync::Semaphore>,
    telemetry: Arc<Telemetry>,
    tunnels: proxy::Tunnels,
}

/// What a [`Gateway`] is built from.
#[derive(Debug)]
pub struct GatewayDeps {
    /// The current config snapshot (swapped on reload).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// API-key checks.
    pub api_keys: Arc<ApiKeyAuth>,
    /// Rate-limit decisions.
    pub limiter: Arc<dyn Limiter>,
    /// Daily and monthly quotas.
    pub quotas: Arc<dyn QuotaCounter>,
    /// When the quota counter cannot answer: let the request pass (true)
    /// or answer 503 (false).
    pub quota_fail_open: bool,
    /// Quota periods follow this clock.
    pub clock: Arc<dyn Clock>,
    /// Requests handled at once; beyond it, 503 at once.
    pub max_in_flight: usize,
    /// Where requests are counted.
    pub telemetry: Arc<Telemetry>,
    /// Open upgrade tunnels (closed at shutdown's deadline).
    pub tunnels: proxy::Tunnels,
}

/// Per-request state carried through the steps.
#[derive(Debug)]
struct RequestCtx {
    snapshot: Arc<Snapshot>,
    request_id: HeaderValue,
    record: AccessRecord,
    /// The matched route, once known.
    route: Option<Arc<Route>>,
    /// The authenticated caller, once known.
    principal: Option<Principal>,
    /// `RateLimit-Policy` / `RateLimit` headers for the answer.
    rate_headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The request's trace, when tracing is on.
    trace: Option<RequestTrace>,
}

impl RequestCtx {
    /// The start time of a child span (0 when not recording).
    fn clock(&self) -> u64 {
        self.trace.as_ref().map_or(0, RequestTrace::clock)
    }

    /// Records a child span from `start` to now.
    fn span(&mut self, name: &'static str, start: u64, outcome: Result<(), &GatewayError>) {
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

/// Host as routed on (lower case, no port) and as received.
#[derive(Debug)]
struct Host {
    name: String,
    authority: Option<String>,
}

impl Gateway {
    /// A gateway from its parts.
    pub fn new(deps: GatewayDeps) -> Gateway {
        Gateway {
            snapshot: deps.snapshot,
            api_keys: deps.api_keys,
            limiter: deps.limiter,
            quotas: deps.quotas,
            quota_fail_open: deps.quota_fail_open,
            clock: deps.clock,
            in_flight: Arc::new(tokio::sync::Semaphore::new(deps.max_in_flight)),
            telemetry: deps.telemetry,
            tunnels: deps.tunnels,
        }
    }

    /// Handles one request from start to finish. Never fails: every error
    /// becomes a JSON answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<GwBody> {
        let started = Instant::now();
        let stream = conn.activity.start();
        let snapshot = self.snapshot.load_full();
        let request_id = request_id(req.headers());
        let trace = self
            .telemetry
            .tracer
            .as_ref()
            .map(|t| t.start(req.headers()));
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
            auth: None,
            refused: false,
            trace_id: trace.as_ref().map(RequestTrace::trace_id),
            meters: self.telemetry.unrouted.clone(),
            telemetry: self.telemetry.clone(),
            in_flight: InFlight::new(&self.telemetry.meters.in_flight),
            trace: None,
            finished: false,
        };
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut ctx = RequestCtx {
            snapshot,
            request_id,
            record,
            route: None,
            principal: None,
            rate_headers: Vec::new(),
            trace,
        };
        // Exactly the guard's rule: after any `Upgrade` header or CONNECT it
        // stops reading the connection as HTTP.
        let leaves_http = conn.verdicts.is_some()
            && (req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE));
        let index = conn.requests.fetch_add(1, Ordering::Relaxed);
        let refused = conn.verdicts.as_ref().and_then(|v| v.refused(index));
        // Load shedding: beyond the in-flight limit, answer at once. A
        // request counts until its response head is ready: the work that
        // queues (auth, limits, waiting for the upstream). Response bodies
        // then stream under the connection limit and the request deadline;
        // holding the permit for them would let clients that never read
        // their answers fill the limit.
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        let outcome = match (refused, &permit) {
            (Some(why), _) => Err(refusal_error(why)),
            (None, None) => Err(GatewayError::Overloaded),
            (None, Some(_)) => process(req, &conn, &mut ctx, self).await,
        };
        drop(permit);
        let (mut response, deadline) = match outcome {
            Ok(done) => done,
            Err(e) => {
                if let GatewayError::UpstreamFailed { source } = &e {
                    tracing::warn!(request_id = %ctx.record.request_id, error = %source, "upstream failed");
                }
                let code = e.code();
                ctx.record.error = Some(code);
                ctx.record.reason = Some(e.to_string());
                self.telemetry.meters.refused(code);
                if !e.is_server_fault() {
                    ctx.record.refused = true;
                    self.telemetry.history.refused(
                        ctx.record.client,
                        code,
                        crate::telemetry::access::unix_now(),
                    );
                }
                (e.to_response(&ctx.record.request_id), None)
            }
        };
        response
            .headers_mut()
            .insert(proxy::X_REQUEST_ID.clone(), ctx.request_id.clone());
        for (name, value) in ctx.rate_headers.drain(..) {
            response.headers_mut().insert(name, value);
        }
        if let Some(cors) = ctx.route.as_ref().and_then(|r| r.cors.as_ref()) {
            cors.apply(origin.as_ref(), response.headers_mut());
        }
        if let Some(hsts) = &conn.hsts {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        ctx.record.status = response.status().as_u16();
        if leaves_http && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The framing guard stops reading after an upgrade request:
            // nothing more may be read from this connection as HTTP.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        ctx.record.trace = ctx.trace.take();
        response.map(|body| ResponseBody::new(body, deadline, ctx.record, stream).boxed())
    }
}

/// The client's `X-Request-Id` when it is well-formed (1 to 128 characters
/// of `[A-Za-z0-9._:-]`), otherwise a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            return v.clone();
        }
    }
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The `X-Forwarded-For` chain a trusted proxy sent, joined on one line.
fn forwarded_chain(headers: &http::HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn refusal_error(why: Refusal) -> GatewayError {
    match why {
        Refusal::Malformed(what) => GatewayError::MalformedRequest(what),
        Refusal::Ambiguous(what) => GatewayError::AmbiguousFraming(what),
        Refusal::UriTooLong => GatewayError::UriTooLong,
        Refusal::HeadTooLarge => GatewayError::HeadersTooLarge,
    }
}

type Done = (Response<GwBody>, Option<tokio::time::Instant>);

async fn process(
    mut req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    ctx: &mut RequestCtx,
    gw: &Gateway,
) -> Result<Done, GatewayError> {
    // 2. Normalise and strictly parse.
    validate::check_method(req.method())?;
    validate::check_framing(req.headers())?;
    let host = host_of(&req)?;
    let path = validate::normalize_path(req.uri().path(), ctx.snapshot.merge_slashes)
        .map_err(|e| GatewayError::InvalidPath(path_error_text(e)))?;
    ctx.record.path.clone_from(&path);

    if let Some(port) = conn.redirect_https_port {
        return Ok((
            redirect_to_https(&host, port, &path, req.uri().query())?,
            None,
        ));
    }

    // Global client-address rules: cheap, before anything else is looked at.
    let client = ctx.record.client;
    ctx.snapshot.access.check(client)?;

    // 3. Route. A CORS preflight goes to the route with a CORS policy at
    // that path, whatever method it asks about; its policy decides.
    let snapshot = ctx.snapshot.clone();
    if let Some(p) = cors::preflight(req.method(), req.headers())
        && let Some(route) = snapshot.routes.lookup_cors(&host.name, &path)
        && let Some(policy) = &route.cors
    {
        ctx.record.route = Some(route.name.clone());
        ctx.record.meters = route.meters.clone();
        route.rules.ip.check(client)?;
        return Ok((policy.answer(&p, route.methods.as_deref())?, None));
    }
    let (route, params) = match snapshot.routes.lookup(&host.name, &path, req.method()) {
        Lookup::Found(route, params) => (route, params),
        Lookup::MethodNotAllowed(allow) => return Err(GatewayError::MethodNotAllowed { allow }),
        Lookup::NotFound => return Err(GatewayError::RouteNotFound),
    };
    ctx.record.route = Some(route.name.clone());
    ctx.record.meters = route.meters.clone();
    ctx.route = Some(route.clone());

    // Header hygiene for this route, before any check reads a header: what
    // the checks see is what is forwarded.
    let upgrade = route.headers.sanitize(req.version(), req.headers_mut())?;

    // 7 (address part). Route client-address rules.
    route.rules.ip.check(client)?;

    // 4. Limits and head rules.
    if let Some(len) = validate::content_length(req.headers())
        && len > route.max_body
    {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_body,
        });
    }
    validate::check_path_params(&path, route.allow_path_params)?;
    route.rules.check_head(
        req.headers(),
        req.uri().query(),
        !http_body::Body::is_end_stream(req.body()),
    )?;
    if let Some(operation) = &route.openapi {
        operation.check_head(
            &params,
            req.uri().query(),
            req.headers(),
            !http_body::Body::is_end_stream(req.body()),
        )?;
    }

    // 5–7. Authenticate and authorise. The per-client failure gate runs
    // inside the API-key check before any hashing.
    let auth_started = ctx.clock();
    let authenticated = authenticate(
        req.headers(),
        &route.auth,
        &ctx.snapshot,
        &gw.api_keys,
        client,
    )
    .await;
    if route.auth.api_key || route.auth.jwt {
        ctx.span("auth", auth_started, authenticated.as_ref().map(|_| ()));
    }
    let meters = &gw.telemetry.meters;
    match authenticated {
        Ok(Some(principal)) => {
            let method = principal.method.as_str();
            ctx.record.consumer = Some(principal.subject.clone());
            ctx.record.auth = Some(method);
            if let Err(e) = authorize(&route.auth, &principal) {
                meters.auth(method, e.code());
                return Err(e);
            }
            meters.auth(method, "success");
            ctx.principal = Some(principal);
        }
        Ok(None) => {}
        Err(e) => {
            meters.auth(accepted_methods(&route.auth), e.code());
            return Err(e);
        }
    }

    // 8. Rate limits: per consumer, else per client address.
    if !route.rate_limits.is_empty() {
        let started = ctx.clock();
        let mut limited = rate_limit(req.headers(), route, ctx, gw.limiter.as_ref(), client).await;
        if limited.is_ok() {
            limited = charge_quotas(req.headers(), route, ctx, gw, client).await;
        }
        ctx.span("rate_limit", started, limited.as_ref().map(|_| ()));
        limited?;
    }

    match &route.action {
        Action::Respond(direct) => Ok((respond_directly(route, direct, req.method()), None)),
        Action::Forward(upstream) => {
            ctx.record.upstream = Some(upstream.name.clone());
            let way = Way {
                host: &host,
                path: &path,
                params: &params,
                upgrade,
            };
            forward(req, conn, ctx, route, upstream, way, &gw.tunnels).await
        }
        Action::Invoke(invoke) => {
            ctx.record.upstream = Some(invoke.function.name.clone());
            let way = Way {
                host: &host,
                path: &path,
                params: &params,
                upgrade: false,
            };
            forward_lambda(req, conn, ctx, route, invoke, way).await
        }
    }
}

#[cfg(test)]
mod tests;
