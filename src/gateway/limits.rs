//! Step 4 (size and head rules) and step 8 (rate limits and quotas, whose
//! policy logic is `ratelimit::charge`'s).

use crate::error::GatewayError;
use crate::ratelimit::charge::{self, Charge};
use crate::route::Route;

use super::*;

/// Step 4: the declared body size, path parameters, the route's head rules
/// and its OpenAPI operation's parameters.
pub(super) fn check_head<B: http_body::Body>(
    req: &http::Request<B>,
    route: &Route,
    params: &[(String, String)],
    path: &str,
) -> Result<(), GatewayError> {
    let limit = request_body::body_limit(route);
    if validate::content_length(req.headers()).is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    validate::check_path_params(path, route.allow_path_params)?;
    let has_body = !req.body().is_end_stream();
    route
        .rules
        .check_head(req.headers(), req.uri().query(), has_body)?;
    if let Some(operation) = &route.openapi {
        operation.check_head(params, req.uri().query(), req.headers(), has_body)?;
    }
    Ok(())
}

/// Step 8: charges the request to the route's rate limits, then to its
/// quotas (see [`crate::ratelimit::charge`]); the `RateLimit` headers go on
/// the answer, refused or not.
pub(super) async fn rate_limit(
    headers: &http::HeaderMap,
    route: &Route,
    ctx: &mut RequestCtx,
    gw: &Gateway,
) -> Result<(), GatewayError> {
    let charge = Charge {
        route: &route.name,
        policies: &route.rate_limits,
        principal: ctx.principal.as_ref(),
        client: ctx.record.client,
        headers,
        request_id: &ctx.record.request_id,
    };
    let (limited, rate_headers) = charge::rate_limits(&charge, gw.limiter.as_ref()).await;
    let outcome = match limited {
        Ok(()) => {
            charge::quotas(
                &charge,
                gw.quotas.as_ref(),
                gw.clock.now(),
                gw.quota_fail_open,
            )
            .await
        }
        refused => refused,
    };
    ctx.rate_headers = rate_headers;
    Ok(outcome?)
}
