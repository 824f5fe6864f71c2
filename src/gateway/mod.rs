//! The per-request pipeline (Tier B in DESIGN.md), top to bottom.
//!
//! [`Gateway::handle`] is the steps of DESIGN.md in their order, each a call
//! into the module that owns its work: 1 the context (one config snapshot),
//! 2 normalise and strictly parse, 3 route, 4 limits, 5–7 authenticate
//! (the per-client failure gate first, so bad keys cannot burn argon2) and
//! authorise, 8 rate limits and quotas, 9 the body and its schema,
//! 10 rewrite, 11 the route's action (forward to an upstream, invoke a
//! function, or answer directly), 12 finish. A step that refuses the
//! request returns a [`GatewayError`]; the request is then answered with the
//! JSON error body and never forwarded. Every outcome goes through the one
//! [`finish`](finish::finish) and is logged once, when its response has been
//! sent.
//!
//! Before step 1, a request beyond the in-flight limit is shed with a fast
//! 503. The rest of generic HTTP (sensitive headers, panics) is Tier A, in
//! `server::service` around this.
//! `handle` is generic over the request body, so tests drive it in-process.

mod authn;
mod ctx;
mod finish;
mod forward_http;
mod forward_lambda;
mod host;
mod limits;
mod refusals;
mod request_body;
mod upstream_context;

use ctx::RequestCtx;
use finish::{Answer, Source};
use host::*;
use limits::*;
use refusals::*;
use request_body::ReadBody;
use upstream_context::*;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};

use crate::auth::Clock;
use crate::auth::api_key::ApiKeyAuth;
use crate::body::{ClientBody, GwBody};
pub(crate) use crate::conn::ConnInfo;
use crate::cors;
use crate::error::GatewayError;
use crate::proxy;
use crate::ratelimit::Limiter;
use crate::ratelimit::quota::QuotaCounter;
use crate::route::{Action, Lookup};
use crate::snapshot::Snapshot;
use crate::telemetry::Telemetry;
use crate::validate;

/// The gateway: the current snapshot and what the pipeline needs.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
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
pub(crate) struct GatewayDeps {
    /// The current config snapshot (swapped on reload).
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    /// API-key checks.
    pub(crate) api_keys: Arc<ApiKeyAuth>,
    /// Rate-limit decisions.
    pub(crate) limiter: Arc<dyn Limiter>,
    /// Daily and monthly quotas.
    pub(crate) quotas: Arc<dyn QuotaCounter>,
    /// When the quota counter cannot answer: let the request pass (true)
    /// or answer 503 (false).
    pub(crate) quota_fail_open: bool,
    /// Quota periods follow this clock.
    pub(crate) clock: Arc<dyn Clock>,
    /// Requests handled at once, across all listeners; beyond it, 503 at
    /// once.
    pub(crate) max_in_flight: usize,
    /// Where requests are counted.
    pub(crate) telemetry: Arc<Telemetry>,
    /// Open upgrade tunnels (closed at shutdown's deadline).
    pub(crate) tunnels: proxy::Tunnels,
}

/// Host as routed on (lower case, no port) and as received.
#[derive(Debug)]
struct Host {
    name: String,
    authority: Option<String>,
}

impl Gateway {
    /// A gateway from its parts.
    pub(crate) fn new(deps: GatewayDeps) -> Gateway {
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
    pub(crate) async fn handle<B: ClientBody>(
        &self,
        req: Request<B>,
        conn: Arc<ConnInfo>,
    ) -> Response<GwBody> {
        let stream = conn.activity.start();
        // 1. One config snapshot for the whole request, and its record.
        let mut ctx = RequestCtx::start(self, &req, &conn);
        let leaves_http = ctx::leaves_http(&req, &conn);
        let refused = ctx::framing_refusal(&conn);
        // Load shedding (Tier A, here so that a shed request is finished
        // like every refusal): beyond the in-flight limit, answer at once.
        // A request holds its place until its response head is ready: the
        // work that queues (auth, limits, waiting for the upstream).
        // Bodies then stream under the connection limit and the request
        // deadline; holding the place for them would let clients that never
        // read their answers fill the limit.
        let place = self.in_flight.clone().try_acquire_owned();
        let outcome = match (refused, &place) {
            (Err(why), _) => Err(why),
            (Ok(()), Err(_)) => Err(GatewayError::Overloaded),
            (Ok(()), Ok(_)) => self.steps(req, &conn, &mut ctx).await,
        };
        drop(place);
        // 12. Finish, for every outcome.
        finish::finish(self, ctx, outcome, &conn, leaves_http, stream)
    }

    /// Steps 2–11, in DESIGN.md's order. The first refusal ends the request.
    async fn steps<B: ClientBody>(
        &self,
        mut req: Request<B>,
        conn: &Arc<ConnInfo>,
        ctx: &mut RequestCtx,
    ) -> Result<Answer, GatewayError> {
        // 2. Normalise and strictly parse.
        validate::check_method(req.method())?;
        validate::check_framing(req.headers())?;
        let host = host_of(&req)?;
        let path = validate::normalize_path(req.uri().path(), ctx.snapshot.merge_slashes)?;
        ctx.record.path.clone_from(&path);
        if let Some(port) = conn.redirect_https_port {
            let to = redirect_to_https(&host, port, &path, req.uri().query())?;
            return Ok(Answer::new(to, Source::Gateway));
        }
        // Global client-address rules: cheap, before anything else is read.
        let client = ctx.record.client;
        ctx.snapshot.access.check(client)?;

        // 3. Route. A CORS preflight goes to the route with a CORS policy at
        // that path, whatever method it asks about; its policy decides.
        let snapshot = ctx.snapshot.clone();
        if let Some(p) = cors::preflight(req.method(), req.headers())
            && let Some(route) = snapshot.routes.lookup_cors(&host.name, &path)
            && let Some(policy) = &route.cors
        {
            // Counted on the route, but the answer is the policy's own: no
            // route headers, no CORS headers for an actual request.
            ctx.record.route = Some(route.name.clone());
            ctx.record.meters = route.meters.clone();
            route.rules.ip.check(client)?;
            let answer = policy.answer(&p, route.methods.as_deref())?;
            return Ok(Answer::new(answer, Source::Gateway));
        }
        let (route, params) = match snapshot.routes.lookup(&host.name, &path, req.method()) {
            Lookup::Found(route, params) => (route, params),
            Lookup::MethodNotAllowed(allow) => {
                return Err(GatewayError::MethodNotAllowed { allow });
            }
            Lookup::NotFound => return Err(GatewayError::RouteNotFound),
        };
        ctx.routed(route);
        // Header hygiene for this route, before any check reads a header:
        // what the checks see is what is forwarded.
        let upgrade = route.headers.sanitize(req.version(), req.headers_mut())?;
        // Route client-address rules (the address part of step 7): cheap.
        route.rules.ip.check(client)?;

        // 4. Limits and head rules.
        check_head(&req, route, &params, &path)?;

        // 5–7. The per-client failure gate, authenticate, authorise.
        let principal = self.authenticate(req.headers(), route, ctx).await?;
        ctx.principal = principal;

        // 8. Rate limits and quotas: per consumer, else per client address.
        if !route.rate_limits.is_empty() {
            let started = ctx.clock();
            let limited = rate_limit(req.headers(), route, ctx, self).await;
            ctx.span("rate_limit", started, limited.as_ref().map(|_| ()));
            limited?;
        }

        // 9. The body, and its schema for routes that have one.
        let (mut parts, body) = req.into_parts();
        let body = request_body::read_body(body, &parts.headers, route, ctx).await?;

        // 10. Rewrite: the outgoing path and headers, our trace context. A
        // route that answers directly has nothing to rewrite.
        let target = match &route.action {
            Action::Respond(direct) => {
                let answer = respond_directly(direct, &parts.method);
                return Ok(Answer::new(answer, Source::Direct));
            }
            Action::Forward(upstream) => Target::Upstream(upstream),
            Action::Invoke(invoke) => Target::Function(invoke),
        };
        let preserve_host = match target {
            Target::Upstream(upstream) => upstream.preserve_host,
            // API Gateway events carry the client's Host, and functions
            // (lambda_http) build the request URI from it.
            Target::Function(_) => true,
        };
        outgoing_headers(&mut parts.headers, conn, ctx, route, &host, preserve_host);
        let sent = Sent {
            path: route.upstream_path(&path, &params),
            span: inject_trace_context(ctx, &mut parts.headers),
            host: &host,
            params: &params,
        };

        // 11. Forward: to an upstream, or invoke the function.
        match target {
            Target::Upstream(upstream) => {
                ctx.record.upstream = Some(upstream.name.clone());
                let req = Request::from_parts(parts, body);
                let tunnels = &self.tunnels;
                forward_http::forward(req, upgrade, conn, ctx, route, upstream, sent, tunnels).await
            }
            Target::Function(invoke) => {
                ctx.record.upstream = Some(invoke.function.name.clone());
                forward_lambda::invoke(parts, body, ctx, invoke, sent).await
            }
        }
    }
}

/// Where step 11 sends a request.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Upstream(&'a Arc<proxy::Upstream>),
    Function(&'a crate::route::Invoke),
}

/// What step 10 made of the request for step 11.
#[derive(Debug)]
struct Sent<'a> {
    /// The path the upstream or function sees.
    path: String,
    /// The upstream call's span id, when tracing.
    span: Option<[u8; 8]>,
    host: &'a Host,
    params: &'a [(String, String)],
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pipeline;
