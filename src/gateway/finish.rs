//! Step 12, the one finish for every outcome: an error becomes its JSON
//! answer (counted, and remembered for the status page), then every answer
//! gets the same headers (request id, rate limits, CORS, HSTS, the route's
//! response edits), and its body carries the access record, which is
//! logged once, when the last byte has been sent or the client went away.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body_util::BodyExt;

use crate::body::{GwBody, ResponseBody};
use crate::conn::StreamGuard;
use crate::error::GatewayError;
use crate::proxy;

use super::{ConnInfo, Gateway, RequestCtx};

/// Who made an answer: it decides which response headers the finish adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The gateway itself (a redirect, a CORS preflight).
    Gateway,
    /// The route's direct response.
    Direct,
    /// An upstream or a function: hop-by-hop headers go, ours come in.
    Upstream,
}

/// A step's successful answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) response: Response<GwBody>,
    /// The whole request's deadline, which the response body must meet.
    pub(super) deadline: Option<tokio::time::Instant>,
    pub(super) source: Source,
}

impl Answer {
    pub(super) fn new(response: Response<GwBody>, source: Source) -> Answer {
        Answer {
            response,
            deadline: None,
            source,
        }
    }
}

/// Step 12: the answer the client gets, for every outcome.
pub(super) fn finish(
    gw: &Gateway,
    mut ctx: RequestCtx,
    outcome: Result<Answer, GatewayError>,
    conn: &ConnInfo,
    leaves_http: bool,
    stream: StreamGuard,
) -> Response<GwBody> {
    let answer = match outcome {
        Ok(answer) => answer,
        Err(e) => refused(gw, &mut ctx, &e),
    };
    let Answer {
        mut response,
        deadline,
        source,
    } = answer;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if source == Source::Upstream {
        // The upstream's HTTP version is not the client's (hyper would
        // write `HTTP/1.0` back to a 1.1 client); HTTP/2 ignores it.
        *response.version_mut() = Version::HTTP_11;
        proxy::prepare_response_headers(response.headers_mut(), &ctx.request_id, switching);
    }
    if source != Source::Gateway
        && let Some(route) = &ctx.route
    {
        route.response_headers.apply(response.headers_mut());
    }
    finish_headers(&mut ctx, response.headers_mut(), conn);
    ctx.record.status = response.status().as_u16();
    if leaves_http && !switching {
        // The framing guard stops reading after an upgrade request:
        // nothing more may be read from this connection as HTTP.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ctx.record.trace = ctx.trace.take();
    response.map(|body| ResponseBody::new(body, deadline, ctx.record, stream).boxed())
}

/// A refused request: counted, remembered, answered with its JSON error.
fn refused(gw: &Gateway, ctx: &mut RequestCtx, e: &GatewayError) -> Answer {
    if let GatewayError::UpstreamFailed { source } = e {
        tracing::warn!(request_id = %ctx.record.request_id, error = %source, "upstream failed");
    }
    let code = e.code();
    ctx.record.error = Some(code);
    ctx.record.reason = Some(e.to_string());
    gw.telemetry.meters.refused(code);
    if !e.is_server_fault() {
        ctx.record.refused = true;
        gw.telemetry.history.refused(
            ctx.record.client,
            code,
            crate::telemetry::access::unix_now(),
        );
    }
    Answer::new(e.to_response(&ctx.record.request_id), Source::Gateway)
}

/// The headers every answer carries.
fn finish_headers(ctx: &mut RequestCtx, headers: &mut http::HeaderMap, conn: &ConnInfo) {
    headers.insert(proxy::X_REQUEST_ID.clone(), ctx.request_id.clone());
    for (name, value) in ctx.rate_headers.drain(..) {
        headers.insert(name, value);
    }
    if let Some(cors) = ctx.route.as_ref().and_then(|r| r.cors.as_ref()) {
        cors.apply(ctx.origin.as_ref(), headers);
    }
    if let Some(hsts) = &conn.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}
