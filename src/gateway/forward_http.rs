//! Step 11 for HTTP upstreams: the upstream call, an upgrade's tunnel,
//! streaming the answer back.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use crate::body::ClientBody;
use crate::error::GatewayError;
use crate::proxy::{self};
use crate::route::Route;
use crate::validate::{self};

use super::*;

/// Step 11 for an HTTP upstream: the call (balanced, retried, under the
/// breaker and timeouts), an upgrade's tunnel, the answer streamed back.
/// A streaming body that may be retried is read first when it is small
/// (`retry.buffer_limit`); every other streaming body is sent once.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<B: ClientBody>(
    mut req: Request<ReadBody<B>>,
    upgrade: bool,
    conn: &Arc<ConnInfo>,
    ctx: &mut RequestCtx,
    route: &Route,
    upstream: &proxy::Upstream,
    sent: Sent<'_>,
    tunnels: &proxy::Tunnels,
) -> Result<Answer, GatewayError> {
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

    let (parts, body) = req.into_parts();
    let hash = upstream.hash_key(&parts.headers, ctx.record.client);
    let set_hint = upstream.set_hint(&parts.headers);
    let stats = ctx.record.body.clone();
    let retry_method = upstream.retry.attempts > 1
        && !upgrade
        && (route.retry_non_idempotent || proxy::is_idempotent(&parts.method));
    let body = match body {
        ReadBody::Whole(bytes) => proxy::OutBody::Buffered(bytes),
        ReadBody::Streaming(body) => {
            let small = http_body::Body::is_end_stream(&body)
                || validate::content_length(&parts.headers)
                    .is_some_and(|len| len <= upstream.retry.buffer_limit.0);
            if retry_method && small {
                let limit = request_body::body_limit(route);
                proxy::OutBody::Buffered(request_body::read_whole(body, limit, ctx).await?)
            } else {
                proxy::OutBody::Streaming(body.boxed())
            }
        }
    };
    let outgoing = proxy::Outgoing {
        method: parts.method,
        headers: parts.headers,
        path: sent.path,
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
        sent.span,
        span_started,
        tried.as_deref().unwrap_or("-"),
        &upstream.name,
        match &result {
            Ok(f) => Ok((f.response.status().as_u16(), f.attempts)),
            Err(e) => Err(e.to_string()),
        },
    );
    ctx.record.target = tried.map(|t| t.to_string());
    let forwarded = result?;
    let mut resp = forwarded.response;
    if let Some(operation) = &route.openapi {
        resp = operation.observe_response(resp);
    }

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
    Ok(Answer {
        response: resp,
        deadline: (!switching).then_some(deadline),
        source: Source::Upstream,
    })
}
