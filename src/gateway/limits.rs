//! Step 4 (size and head rules) and step 8 (rate limits and quotas, with
//! shadow-mode refusals logged but not enforced).

use std::sync::Arc;

use crate::error::GatewayError;
use crate::ratelimit::{self, Decision, Limit, Limiter};
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

/// Step 8: charges the request to every rate-limit policy of the route.
/// The strictest refusal decides (the longest wait); shadow policies only
/// log what they would refuse. Sets the `RateLimit` headers for the answer,
/// refused or not.
pub(super) async fn rate_limit(
    headers: &http::HeaderMap,
    route: &Route,
    ctx: &mut RequestCtx,
    limiter: &dyn Limiter,
) -> Result<(), GatewayError> {
    let client = ctx.record.client;
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
pub(super) fn log_shadow_refusal(
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
pub(super) async fn charge_quotas(
    headers: &http::HeaderMap,
    route: &Route,
    ctx: &RequestCtx,
    gw: &Gateway,
) -> Result<(), GatewayError> {
    let client = ctx.record.client;
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
