//! Step 9: the request body. Read whole (bounded) when the route checks it
//! against a schema or its action needs it whole (a Lambda event), and then
//! checked; otherwise it streams on, counted, capped and paced.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::body::{ClientBody, RequestBody};
use crate::error::GatewayError;
use crate::proxy::lambda;
use crate::route::{Action, Route};

use super::RequestCtx;

/// A request body after step 9.
pub(super) enum ReadBody<B> {
    /// Read whole and checked.
    Whole(Bytes),
    /// Still streaming from the client.
    Streaming(RequestBody<B>),
}

/// The most body the route's action accepts: the route's limit, and
/// Lambda's payload limit for a function.
pub(super) fn body_limit(route: &Route) -> u64 {
    match &route.action {
        Action::Invoke(_) => route.max_body.min(lambda::PAYLOAD_LIMIT),
        Action::Forward(_) | Action::Respond(_) => route.max_body,
    }
}

/// Step 9: wraps the body in the route's limits, reads it when it has to be
/// whole, and checks it against the route's schema.
pub(super) async fn read_body<B: ClientBody>(
    body: B,
    headers: &http::HeaderMap,
    route: &Route,
    ctx: &RequestCtx,
) -> Result<ReadBody<B>, GatewayError> {
    let limit = body_limit(route);
    let body = RequestBody::new(body, limit, ctx.snapshot.body_pace, ctx.record.body.clone());
    let whole = match route.action {
        Action::Invoke(_) => true,
        Action::Forward(_) => route.buffers_body(),
        // A direct answer never reads the body.
        Action::Respond(_) => false,
    };
    if !whole {
        return Ok(ReadBody::Streaming(body));
    }
    let bytes = read_whole(body, limit, ctx).await?;
    if route.buffers_body() {
        route.check_body(headers, &bytes)?;
    }
    Ok(ReadBody::Whole(bytes))
}

/// Reads a capped body to its end; a body error becomes the client's
/// answer (413 over the limit, 408 too slow, else 400).
pub(super) async fn read_whole<B: ClientBody>(
    body: RequestBody<B>,
    limit: u64,
    ctx: &RequestCtx,
) -> Result<Bytes, GatewayError> {
    let stats = &ctx.record.body;
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) if stats.too_large.load(Ordering::Relaxed) => {
            Err(GatewayError::PayloadTooLarge { limit })
        }
        Err(_) if stats.timed_out.load(Ordering::Relaxed) => Err(GatewayError::RequestTimeout),
        Err(_) => Err(GatewayError::MalformedRequest("incomplete request body")),
    }
}
