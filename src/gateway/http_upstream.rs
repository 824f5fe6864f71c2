//! The forward step for HTTP upstreams: body checks, the upstream call,
//! streaming the answer back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::RequestBody;
use crate::error::GatewayError;
use crate::proxy::{self, ForwardError};
use crate::route::Route;
use crate::validate::{self};

use super::*;

/// Where a routed request goes: its host, normalised path, template
/// parameters, and whether it is an upgrade the route tunnels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Way<'a> {
    pub(super) host: &'a Host,
    pub(super) path: &'a str,
    pub(super) params: &'a [(String, String)],
    pub(super) upgrade: bool,
}

pub(super) async fn forward(
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
