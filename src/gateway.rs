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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::Clock;
use crate::auth::Principal;
use crate::auth::api_key::{ApiKeyAuth, ApiKeyError};
use crate::auth::jwt::JwtError;
use crate::auth::policy::{self, Presented, PresentedError, RouteAuth};
use crate::body::{BodyStats, GwBody, RequestBody, ResponseBody, empty, full};
pub use crate::conn::ConnInfo;
use crate::cors;
use crate::error::{Challenge, GatewayError};
use crate::proxy::{self, ForwardError, ForwardedFor};
use crate::ratelimit::quota::QuotaCounter;
use crate::ratelimit::{self, Decision, Limit, Limiter};
use crate::route::{Action, Lookup, Route};
use crate::snapshot::Snapshot;
use crate::telemetry::access::InFlight;
use crate::telemetry::trace::{Kind as SpanKind, RequestTrace, Value as TraceValue};
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
        if let (Some(route), Some(origin)) = (&ctx.route, &origin)
            && let Some(cors) = &route.cors
        {
            cors.decorate(origin, response.headers_mut());
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

/// The credential kinds a route accepts, as the auth metric names them.
fn accepted_methods(auth: &RouteAuth) -> &'static str {
    match (auth.api_key, auth.jwt) {
        (true, true) => "api_key_or_jwt",
        (true, false) => "api_key",
        (false, true) => "jwt",
        (false, false) => "none",
    }
}

/// Steps 5–6: who is calling. `None` for a route without authentication.
async fn authenticate(
    headers: &http::HeaderMap,
    auth: &RouteAuth,
    snapshot: &Snapshot,
    api_keys: &ApiKeyAuth,
    client: std::net::IpAddr,
) -> Result<Option<Principal>, GatewayError> {
    if !auth.required() {
        return Ok(None);
    }
    let challenge = Challenge {
        api_key_header: auth.api_key.then(|| auth.key_header.clone()),
    };
    let presented = match policy::presented(auth, headers) {
        Ok(Some(p)) => p,
        Ok(None) => return Err(GatewayError::MissingCredentials { challenge }),
        // RFC 6750 §3.1: another scheme is no Bearer credential at all,
        // so the challenge carries no error code.
        Err(PresentedError::Scheme) => return Err(GatewayError::MissingCredentials { challenge }),
        Err(e) => {
            let why = match e {
                PresentedError::Duplicate => "credential header sent more than once",
                PresentedError::NotText | PresentedError::Scheme => {
                    "credential header is not valid text"
                }
            };
            return Err(GatewayError::InvalidCredentials { challenge, why });
        }
    };
    let principal = match presented {
        Presented::ApiKey(key) => api_keys
            .authenticate(key, client)
            .await
            .map_err(|e| api_key_refusal(e, challenge.clone()))?,
        Presented::Jwt(token) => snapshot
            .jwt
            .verify(token, auth.issuers.as_deref())
            .await
            .map_err(|e| jwt_refusal(&e, challenge.clone()))?,
    };
    Ok(Some(principal))
}

/// Step 8: charges the request to every rate-limit policy of the route.
/// The strictest refusal decides (the longest wait); shadow policies only
/// log what they would refuse. Sets the `RateLimit` headers for the answer,
/// refused or not.
async fn rate_limit(
    headers: &http::HeaderMap,
    route: &Route,
    ctx: &mut RequestCtx,
    limiter: &dyn Limiter,
    client: std::net::IpAddr,
) -> Result<(), GatewayError> {
    if route.rate_limits.is_empty() {
        return Ok(());
    }
    let principal = ctx.principal.as_ref();
    let mut decisions: Vec<(&str, &Limit, Decision)> = Vec::with_capacity(route.rate_limits.len());
    let mut refused: Option<(&Arc<str>, u64)> = None;
    for policy in &route.rate_limits {
        let limit = policy.limit_for(principal);
        let key = policy.key(&route.name, principal, client, headers);
        let decision = match limiter.check(&key, limit).await {
            Ok(d) => d,
            Err(e) if policy.shadow => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %ctx.record.request_id, policy = %policy.name, error = %e, "rate limiter unavailable for a shadow policy; ignoring it");
                continue;
            }
            Err(e) => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %ctx.record.request_id, policy = %policy.name, error = %e, "rate limiter unavailable; refusing");
                return Err(GatewayError::RateLimiterUnavailable);
            }
        };
        if decision.allowed {
            policy.meters.allowed.increment(1);
        } else {
            let secs = ratelimit::retry_after_secs(&decision);
            if policy.shadow {
                policy.meters.shadow_limited.increment(1);
                log_shadow_refusal(ctx, policy, route, client, "rate", secs);
            } else {
                policy.meters.limited.increment(1);
                if refused.is_none_or(|(_, s)| secs > s) {
                    refused = Some((&policy.name, secs));
                }
            }
        }
        if !policy.shadow {
            decisions.push((&policy.name, limit, decision));
        }
    }
    let view: Vec<(&str, &Limit, &Decision)> =
        decisions.iter().map(|(n, l, d)| (*n, *l, d)).collect();
    ctx.rate_headers = ratelimit::headers(&view);
    match refused {
        Some((policy, retry_after_secs)) => Err(GatewayError::RateLimited {
            policy: policy.clone(),
            retry_after_secs,
        }),
        None => Ok(()),
    }
}

/// The log line of a shadow policy that would have refused a request
/// (`limit` is `rate` or `quota`).
fn log_shadow_refusal(
    ctx: &RequestCtx,
    policy: &crate::ratelimit::policy::RatePolicy,
    route: &Route,
    client: std::net::IpAddr,
    limit: &'static str,
    retry_after_secs: u64,
) {
    tracing::info!(
        target: "gatehouse::ratelimit",
        request_id = %ctx.record.request_id,
        policy = %policy.name,
        limit,
        route = %route.name,
        consumer = ctx.principal.as_ref().map_or("-", |p| &*p.subject),
        client = %client,
        retry_after_secs,
        "shadow rate limit would refuse"
    );
}

/// Step 8 (quotas): charges the request to every daily or monthly quota of
/// the route's policies, once it passed the rate limits.
async fn charge_quotas(
    headers: &http::HeaderMap,
    route: &Route,
    ctx: &RequestCtx,
    gw: &Gateway,
    client: std::net::IpAddr,
) -> Result<(), GatewayError> {
    let principal = ctx.principal.as_ref();
    for policy in &route.rate_limits {
        let Some(quota) = &policy.quota else {
            continue;
        };
        // A consumer's quota: unauthenticated callers have none.
        if principal.is_none() && policy.key == crate::ratelimit::policy::KeyKind::Consumer {
            continue;
        }
        let key = policy.key(&route.name, principal, client, headers);
        let now = gw.clock.now();
        match gw.quotas.charge(&key, quota, now).await {
            Ok(d) if d.allowed => {}
            Ok(d) => {
                let retry_after_secs = u64::try_from(d.resets_at.saturating_sub(now))
                    .unwrap_or(1)
                    .max(1);
                if policy.shadow {
                    policy.meters.shadow_quota_exceeded.increment(1);
                    log_shadow_refusal(ctx, policy, route, client, "quota", retry_after_secs);
                    continue;
                }
                policy.meters.quota_exceeded.increment(1);
                return Err(GatewayError::QuotaExceeded {
                    policy: policy.name.clone(),
                    retry_after_secs,
                });
            }
            Err(e) if gw.quota_fail_open || policy.shadow => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %ctx.record.request_id, policy = %policy.name, error = %e, "quota counter unavailable; letting the request pass");
            }
            Err(e) => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %ctx.record.request_id, policy = %policy.name, error = %e, "quota counter unavailable; refusing");
                return Err(GatewayError::RateLimiterUnavailable);
            }
        }
    }
    Ok(())
}

/// Step 7: may this caller use the route (scopes, roles).
fn authorize(auth: &RouteAuth, principal: &Principal) -> Result<(), GatewayError> {
    if let Some(scope) = policy::missing_scope(auth, principal) {
        return Err(GatewayError::InsufficientScope {
            challenge: Challenge {
                api_key_header: auth.api_key.then(|| auth.key_header.clone()),
            },
            scope: scope.to_owned(),
        });
    }
    if !policy::has_role(auth, principal) {
        return Err(GatewayError::RoleRequired);
    }
    Ok(())
}

fn api_key_refusal(e: ApiKeyError, challenge: Challenge) -> GatewayError {
    let why = match e {
        ApiKeyError::Malformed => "malformed API key",
        ApiKeyError::Invalid => "invalid API key",
        ApiKeyError::Expired => "API key expired",
        ApiKeyError::Revoked => "API key revoked",
        ApiKeyError::ConsumerDisabled => "consumer disabled",
        ApiKeyError::Throttled { retry_after_secs } => {
            return GatewayError::AuthThrottled { retry_after_secs };
        }
        ApiKeyError::Busy => return GatewayError::AuthUnavailable,
        ApiKeyError::Internal(cause) => {
            tracing::error!(error = %cause, "API key check failed");
            return GatewayError::Internal("API key check failed");
        }
    };
    GatewayError::InvalidCredentials { challenge, why }
}

fn jwt_refusal(e: &JwtError, challenge: Challenge) -> GatewayError {
    match e {
        JwtError::KeysUnavailable => GatewayError::AuthUnavailable,
        other => GatewayError::InvalidCredentials {
            challenge,
            why: other.public_description(),
        },
    }
}

fn path_error_text(e: validate::PathError) -> &'static str {
    match e {
        validate::PathError::NotAbsolute => "path must start with /",
        validate::PathError::BadEscape => "malformed percent-escape",
        validate::PathError::EncodedSlash => "encoded slash or backslash",
        validate::PathError::Backslash => "backslash in path",
        validate::PathError::ControlChar => "control character in path",
        validate::PathError::InvalidUtf8 => "path is not valid UTF-8",
        validate::PathError::AboveRoot => "path climbs above the root",
        validate::PathError::DotSegmentParams => {
            "dot segment with path parameters (such as ..;) is not accepted"
        }
    }
}

/// The routing host. HTTP/1.1 needs exactly one Host; an absolute-form
/// target or an h2 `:authority` must agree with it.
fn host_of<B>(req: &Request<B>) -> Result<Host, GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::InvalidHost("more than one Host header"));
    }
    let header_host = match header_host {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| GatewayError::InvalidHost("Host is not ASCII"))?,
        ),
        None => None,
    };
    let uri_host = req.uri().authority().map(|a| a.as_str());
    let authority = match (header_host, uri_host) {
        (Some(h), Some(u)) => {
            if !h.eq_ignore_ascii_case(u) {
                return Err(GatewayError::InvalidHost(
                    "Host differs from the request target",
                ));
            }
            Some(h)
        }
        (Some(h), None) => Some(h),
        (None, Some(u)) => Some(u),
        (None, None) => {
            if req.version() == Version::HTTP_11 {
                return Err(GatewayError::InvalidHost("missing Host header"));
            }
            None
        }
    };
    let Some(authority) = authority else {
        return Ok(Host {
            name: String::new(),
            authority: None,
        });
    };
    if !validate::valid_authority(authority) {
        return Err(GatewayError::InvalidHost("Host is not a valid host[:port]"));
    }
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|_| GatewayError::InvalidHost("Host is not a valid host[:port]"))?;
    let name = parsed.host().trim_end_matches('.').to_ascii_lowercase();
    Ok(Host {
        name,
        authority: Some(authority.to_owned()),
    })
}

fn redirect_to_https(
    host: &Host,
    port: u16,
    path: &str,
    query: Option<&str>,
) -> Result<Response<GwBody>, GatewayError> {
    if host.name.is_empty() {
        return Err(GatewayError::InvalidHost("missing Host header"));
    }
    let host_part = if host.name.contains(':') {
        format!("[{}]", host.name.trim_matches(['[', ']']))
    } else {
        host.name.clone()
    };
    let mut location = if port == 443 {
        format!("https://{host_part}{path}")
    } else {
        format!("https://{host_part}:{port}{path}")
    };
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let location = HeaderValue::from_str(&location)
        .map_err(|_| GatewayError::InvalidHost("malformed Host"))?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

fn respond_directly(
    route: &Route,
    direct: &crate::route::DirectResponse,
    method: &Method,
) -> Response<GwBody> {
    let body = if method == Method::HEAD {
        empty()
    } else {
        full(direct.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = direct.status;
    for (k, v) in &direct.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    route.response_headers.apply(resp.headers_mut());
    resp
}

/// Where a routed request goes: its host, normalised path, template
/// parameters, and whether it is an upgrade the route tunnels.
#[derive(Debug, Clone, Copy)]
struct Way<'a> {
    host: &'a Host,
    path: &'a str,
    params: &'a [(String, String)],
    upgrade: bool,
}

async fn forward(
    mut req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    ctx: &mut RequestCtx,
    route: &Route,
    upstream: &proxy::Upstream,
    way: Way<'_>,
    tunnels: &proxy::Tunnels,
) -> Result<Done, GatewayError> {
    let Way {
        host,
        path,
        params,
        upgrade,
    } = way;
    // 10. Rewrite.
    let upstream_path = route.upstream_path(path, params);
    // A place for the tunnel, taken before the upstream sees the request.
    let tunnel_place = if upgrade {
        Some(
            route
                .tunnels
                .clone()
                .try_acquire_owned()
                .map_err(|_| GatewayError::TunnelLimit)?,
        )
    } else {
        None
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let hash = upstream.hash_key(&parts.headers, ctx.record.client);
    let set_hint = upstream.set_hint(&parts.headers);
    outgoing_headers(
        &mut parts.headers,
        conn,
        ctx,
        route,
        host,
        upstream.preserve_host,
    );
    let upstream_span = inject_trace_context(ctx, &mut parts.headers);
    let stats = ctx.record.body.clone();
    let body = RequestBody::new(body, route.max_body, ctx.snapshot.body_pace, stats.clone());
    // 9. Body schema: only routes with one buffer the body (bounded by
    // their limit). Bodies that may be retried are buffered too, when small
    // (`retry.buffer_limit`); every other body streams and is sent once.
    let retry_method = upstream.retry.attempts > 1
        && !upgrade
        && (route.retry_non_idempotent || proxy::is_idempotent(&parts.method));
    let small = http_body::Body::is_end_stream(&body)
        || validate::content_length(&parts.headers)
            .is_some_and(|len| len <= upstream.retry.buffer_limit.0);
    let body = if route.buffers_body() || (retry_method && small) {
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) if stats.too_large.load(Ordering::Relaxed) => {
                return Err(GatewayError::PayloadTooLarge {
                    limit: route.max_body,
                });
            }
            Err(_) if stats.timed_out.load(Ordering::Relaxed) => {
                return Err(GatewayError::RequestTimeout);
            }
            Err(_) => return Err(GatewayError::MalformedRequest("incomplete request body")),
        };
        if route.buffers_body() {
            route.check_body(&parts.headers, &bytes)?;
        }
        proxy::OutBody::Buffered(bytes)
    } else {
        proxy::OutBody::Streaming(body.boxed())
    };
    let outgoing = proxy::Outgoing {
        method: parts.method,
        headers: parts.headers,
        path: upstream_path,
        query: parts.uri.query().map(str::to_owned),
        body,
    };

    // 11. Forward.
    let started = tokio::time::Instant::now();
    let span_started = ctx.clock();
    let request_timeout = route.request_timeout.unwrap_or(upstream.request_timeout);
    let deadline = started + request_timeout;
    let first_byte = route
        .first_byte_timeout
        .unwrap_or(upstream.first_byte_timeout)
        .min(request_timeout);
    let plan = proxy::Plan {
        connect_timeout: route.connect_timeout,
        first_byte,
        deadline,
        retry_method,
        hash,
        set_hint,
    };
    let mut tried = None;
    let result = upstream.forward(outgoing, plan, &stats, &mut tried).await;
    if tried.is_some() {
        // Only when a target was tried: a breaker or an empty set answers
        // without any upstream time.
        route.meters.upstream_took(started.elapsed().as_secs_f64());
    }
    record_upstream_span(
        ctx,
        upstream_span,
        span_started,
        tried.as_deref().unwrap_or("-"),
        &upstream.name,
        match &result {
            Ok(f) => Ok((f.response.status().as_u16(), f.attempts)),
            Err(e) => Err(e.to_string()),
        },
    );
    ctx.record.target = tried.map(|t| t.to_string());
    let forwarded = result.map_err(|e| match e {
        ForwardError::Timeout => GatewayError::UpstreamTimeout,
        ForwardError::BodyTooLarge => GatewayError::PayloadTooLarge {
            limit: route.max_body,
        },
        ForwardError::BodyTimeout => GatewayError::RequestTimeout,
        ForwardError::Failed(source) => GatewayError::UpstreamFailed { source },
        ForwardError::NoTarget => GatewayError::NoTarget,
        ForwardError::Unavailable { retry_after } => GatewayError::UpstreamUnavailable {
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        },
        ForwardError::InvalidPath => GatewayError::InvalidPath("path cannot be forwarded"),
    })?;
    let mut resp = forwarded.response;
    if let Some(operation) = &route.openapi {
        resp = operation.observe_response(resp);
    }

    // 12. Finish.
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match (client_upgrade, tunnel_place) {
            (Some(client), Some(route_place)) => {
                let upstream_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(proxy::tunnel(
                    client,
                    upstream_side,
                    ctx.record.request_id.clone(),
                    tunnels.clone(),
                    proxy::TunnelPlaces {
                        conn: conn.hold.clone(),
                        route: route_place,
                    },
                    route.tunnel_idle_timeout,
                ));
            }
            _ => {
                return Err(GatewayError::UpstreamFailed {
                    source: "upstream switched protocols without an upgrade request".into(),
                });
            }
        }
    }
    // The upstream's HTTP version is not the client's (hyper would write
    // `HTTP/1.0` back to a 1.1 client); HTTP/2 ignores this field.
    *resp.version_mut() = Version::HTTP_11;
    proxy::prepare_response_headers(resp.headers_mut(), &ctx.request_id, switching);
    route.response_headers.apply(resp.headers_mut());
    Ok((resp, (!switching).then_some(deadline)))
}

/// Steps 9–12 for a Lambda upstream: the same outgoing headers as
/// [`forward`], the buffered body (bounded by the route and Lambda's 6 MB),
/// the API Gateway event, one invocation (retried only while the function
/// has not run), and its answer mapped back to HTTP.
async fn forward_lambda(
    req: Request<Incoming>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    route: &Route,
    invoke: &crate::route::Invoke,
    way: Way<'_>,
) -> Result<Done, GatewayError> {
    let Way {
        host, path, params, ..
    } = way;
    use crate::proxy::lambda::{self, LambdaError};
    let function = &invoke.function;
    ctx.record.target = Some(function.label().to_owned());
    let limit = route.max_body.min(lambda::PAYLOAD_LIMIT);
    if validate::content_length(req.headers()).is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let version = req.version();
    let (mut parts, body) = req.into_parts();
    // The client's Host stays: API Gateway events carry it, and functions
    // (lambda_http) build the request URI from it.
    outgoing_headers(&mut parts.headers, conn, ctx, route, host, true);
    let upstream_span = inject_trace_context(ctx, &mut parts.headers);
    let stats = ctx.record.body.clone();
    let body = RequestBody::new(body, limit, ctx.snapshot.body_pace, stats.clone());
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) if stats.too_large.load(Ordering::Relaxed) => {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        Err(_) if stats.timed_out.load(Ordering::Relaxed) => {
            return Err(GatewayError::RequestTimeout);
        }
        Err(_) => return Err(GatewayError::MalformedRequest("incomplete request body")),
    };
    if route.buffers_body() {
        route.check_body(&parts.headers, &bytes)?;
    }
    let function_path = route.upstream_path(path, params);
    let event = lambda::event(&lambda::EventInput {
        format: function.format,
        method: &parts.method,
        path: &function_path,
        query: parts.uri.query(),
        headers: &parts.headers,
        resource: &invoke.resource,
        params,
        principal: ctx.principal.as_ref(),
        request_id: &ctx.record.request_id,
        source_ip: ctx.record.client,
        host: host.authority.as_deref(),
        protocol: match version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        body: &bytes,
        now: std::time::SystemTime::now(),
    });
    let payload = serde_json::to_vec(&event)
        .map_err(|_| GatewayError::Internal("cannot encode the Lambda event"))?;
    if payload.len() as u64 > lambda::PAYLOAD_LIMIT {
        return Err(GatewayError::PayloadTooLarge {
            limit: lambda::PAYLOAD_LIMIT,
        });
    }
    let failed = |e: LambdaError| GatewayError::UpstreamFailed {
        source: Box::new(e),
    };
    let started = tokio::time::Instant::now();
    let span_started = ctx.clock();
    let deadline = started + function.request_timeout;
    let invoked = tokio::time::timeout_at(deadline, function.invoke(payload.into())).await;
    route.meters.upstream_took(started.elapsed().as_secs_f64());
    // The function's answer, parsed once: the span records its status.
    let parsed = match &invoked {
        Ok(Ok(i)) if i.function_error.is_none() => {
            Some(lambda::answer(function.format, &i.payload))
        }
        _ => None,
    };
    record_upstream_span(
        ctx,
        upstream_span,
        span_started,
        function.label(),
        &function.name,
        match (&invoked, &parsed) {
            (_, Some(Ok(a))) => Ok((a.status.as_u16(), 1)),
            (_, Some(Err(_))) => Err("malformed answer".to_owned()),
            (Ok(Ok(_)), None) => Err("function error".to_owned()),
            (Ok(Err(e)), None) => Err(e.to_string()),
            (Err(_), None) => Err("timed out".to_owned()),
        },
    );
    let invoked = invoked
        .map_err(|_| GatewayError::UpstreamTimeout)?
        .map_err(|e| match e {
            LambdaError::Throttled { retry_after_secs } => {
                tracing::warn!(request_id = %ctx.record.request_id, upstream = %function.name, retry_after_secs, "Lambda throttled the function");
                GatewayError::UpstreamThrottled { retry_after_secs }
            }
            LambdaError::Timeout => GatewayError::UpstreamTimeout,
            LambdaError::PayloadTooLarge => GatewayError::PayloadTooLarge {
                limit: lambda::PAYLOAD_LIMIT,
            },
            other => failed(other),
        })?;
    let request_id = invoked.request_id;
    if let Some(kind) = invoked.function_error {
        return Err(failed(LambdaError::Function { kind, request_id }));
    }
    let answer = parsed
        .unwrap_or_else(|| lambda::answer(function.format, &invoked.payload))
        .map_err(|why| {
            failed(LambdaError::Malformed {
                why,
                request_id: request_id.clone(),
            })
        })?;
    tracing::debug!(request_id = %ctx.record.request_id, lambda_request_id = request_id.as_deref().unwrap_or("-"), "function answered");
    let body = if parts.method == Method::HEAD {
        empty()
    } else {
        full(answer.body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    proxy::prepare_response_headers(resp.headers_mut(), &ctx.request_id, false);
    route.response_headers.apply(resp.headers_mut());
    Ok((resp, None))
}

/// Trace context for the backend: ours, naming the upstream call's span as
/// the parent, replaces whatever the client sent. The span's id, when
/// tracing.
fn inject_trace_context(ctx: &RequestCtx, headers: &mut http::HeaderMap) -> Option<[u8; 8]> {
    let trace = ctx.trace.as_ref()?;
    let (id, traceparent, tracestate) = trace.outgoing();
    match traceparent {
        Some(v) => headers.insert("traceparent", v),
        None => headers.remove("traceparent"),
    };
    match tracestate {
        Some(v) => headers.insert("tracestate", v),
        None => headers.remove("tracestate"),
    };
    Some(id)
}

/// Records the upstream call's span: the status it answered, or why it
/// failed.
fn record_upstream_span(
    ctx: &mut RequestCtx,
    id: Option<[u8; 8]>,
    started: u64,
    target: &str,
    upstream: &str,
    outcome: Result<(u16, u32), String>,
) {
    let (Some(trace), Some(id)) = (&mut ctx.trace, id) else {
        return;
    };
    let mut attributes = vec![
        ("server.address", TraceValue::Str(target.to_owned())),
        ("gatehouse.upstream", TraceValue::Str(upstream.to_owned())),
    ];
    let failed = match outcome {
        Ok((status, attempts)) => {
            attributes.push((
                "http.response.status_code",
                TraceValue::Int(i64::from(status)),
            ));
            if attempts > 1 {
                attributes.push((
                    "gatehouse.upstream.attempts",
                    TraceValue::Int(i64::from(attempts)),
                ));
            }
            status >= 500
        }
        Err(why) => {
            attributes.push(("error.type", TraceValue::Str(why)));
            true
        }
    };
    trace.child_with_id(
        "upstream",
        SpanKind::Client,
        id,
        started,
        attributes,
        failed,
    );
}

/// The outgoing request headers of a forwarded request (to an upstream or
/// a function; hop-by-hop headers were removed right after routing):
/// `X-Forwarded-*`, `X-Real-IP`, the request id, the route's edits, identity headers
/// (the client's own removed) and credentials stripped unless the route
/// forwards them. Identity headers are the gateway's to set: a client's own
/// are removed on every route, then the authenticated caller's are added.
fn outgoing_headers(
    headers: &mut http::HeaderMap,
    conn: &ConnInfo,
    ctx: &RequestCtx,
    route: &Route,
    host: &Host,
    preserve_host: bool,
) {
    let peer = validate::canonical(conn.peer.ip());
    let trusted_peer = ctx
        .snapshot
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer));
    let chain = if trusted_peer {
        forwarded_chain(headers)
    } else {
        None
    };
    let fwd = ForwardedFor {
        client: ctx.record.client,
        peer,
        chain: chain.as_deref(),
        proto: conn.proto(),
        host: host.authority.as_deref(),
    };
    proxy::prepare_request_headers(headers, &fwd, &ctx.request_id, preserve_host);
    route.request_headers.apply(headers);
    for name in &ctx.snapshot.identity_headers {
        headers.remove(name);
    }
    if let Some(principal) = &ctx.principal {
        if !route.auth.forward_authorization {
            headers.remove(header::AUTHORIZATION);
            headers.remove(&route.auth.key_header);
        }
        for (name, value) in policy::identity_headers(principal) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests;
