//! The forward step for Lambda functions: the request as an event, the
//! function's answer as the response.

use std::sync::atomic::Ordering;

use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{RequestBody, empty, full};
use crate::error::GatewayError;
use crate::proxy::{self};
use crate::route::Route;
use crate::validate::{self};

use super::*;

/// Steps 9–12 for a Lambda upstream: the same outgoing headers as
/// [`forward`], the buffered body (bounded by the route and Lambda's 6 MB),
/// the API Gateway event, one invocation (retried only while the function
/// has not run), and its answer mapped back to HTTP.
pub(super) async fn forward_lambda(
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
