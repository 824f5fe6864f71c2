//! Charging one request to its route's policies (step 8): every rate limit,
//! then every quota. The strictest refusal decides (the longest wait);
//! shadow policies are charged and only log what they would refuse; a
//! limiter that cannot answer refuses the request, and a quota counter that
//! cannot answer refuses it or lets it pass as configured. The answer's
//! `RateLimit-Policy` / `RateLimit` headers come from the enforced policies,
//! refused or not.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::policy::{KeyKind, RatePolicy};
use super::quota::QuotaCounter;
use super::{Decision, Limit, Limiter};
use crate::auth::{Principal, Timestamp};

/// Why step 8 refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A rate limit is spent.
    #[error("rate limit `{policy}` exceeded")]
    Limited {
        /// The policy that decided (the longest wait).
        policy: Arc<str>,
        /// Whole seconds until a request may pass.
        retry_after_secs: u64,
    },
    /// A daily or monthly quota is spent.
    #[error("quota `{policy}` exceeded")]
    QuotaExceeded {
        /// The policy whose quota is spent.
        policy: Arc<str>,
        /// Whole seconds until the next period.
        retry_after_secs: u64,
    },
    /// The limiter or the quota counter could not answer, and the request
    /// is refused rather than let through.
    #[error("rate limiter unavailable")]
    Unavailable,
}

/// One request as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The route's name (part of every key).
    pub route: &'a str,
    /// The route's policies.
    pub policies: &'a [Arc<RatePolicy>],
    /// The authenticated caller, if any.
    pub principal: Option<&'a Principal>,
    /// The client address (from the socket or trusted proxies).
    pub client: IpAddr,
    /// The request's headers (`header:NAME` keys).
    pub headers: &'a HeaderMap,
    /// For the log lines.
    pub request_id: &'a str,
}

/// The rate limits: `Ok` or the strictest refusal, and the headers for the
/// answer either way.
pub async fn rate_limits(
    charge: &Charge<'_>,
    limiter: &dyn Limiter,
) -> (Result<(), Refused>, Vec<(HeaderName, HeaderValue)>) {
    let mut enforced: Vec<(&str, &Limit, Decision)> = Vec::with_capacity(charge.policies.len());
    let mut refused: Option<(&Arc<str>, u64)> = None;
    for policy in charge.policies {
        let limit = policy.limit_for(charge.principal);
        let key = policy.key(
            charge.route,
            charge.principal,
            charge.client,
            charge.headers,
        );
        let decision = match limiter.check(&key, limit).await {
            Ok(d) => d,
            Err(e) if policy.shadow => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %charge.request_id, policy = %policy.name, error = %e, "rate limiter unavailable for a shadow policy; ignoring it");
                continue;
            }
            Err(e) => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %charge.request_id, policy = %policy.name, error = %e, "rate limiter unavailable; refusing");
                return (Err(Refused::Unavailable), Vec::new());
            }
        };
        if decision.allowed {
            policy.meters.allowed.increment(1);
        } else {
            let secs = super::retry_after_secs(&decision);
            if policy.shadow {
                policy.meters.shadow_limited.increment(1);
                log_shadow_refusal(charge, policy, "rate", secs);
            } else {
                policy.meters.limited.increment(1);
                if refused.is_none_or(|(_, s)| secs > s) {
                    refused = Some((&policy.name, secs));
                }
            }
        }
        if !policy.shadow {
            enforced.push((&policy.name, limit, decision));
        }
    }
    let view: Vec<(&str, &Limit, &Decision)> =
        enforced.iter().map(|(n, l, d)| (*n, *l, d)).collect();
    let headers = super::headers(&view);
    let outcome = match refused {
        Some((policy, retry_after_secs)) => Err(Refused::Limited {
            policy: policy.clone(),
            retry_after_secs,
        }),
        None => Ok(()),
    };
    (outcome, headers)
}

/// The quotas, once the rate limits passed. `fail_open`: a counter that
/// cannot answer lets the request pass (and logs) instead of refusing it.
pub async fn quotas(
    charge: &Charge<'_>,
    counter: &dyn QuotaCounter,
    now: Timestamp,
    fail_open: bool,
) -> Result<(), Refused> {
    for policy in charge.policies {
        let Some(quota) = &policy.quota else {
            continue;
        };
        // A consumer's quota: unauthenticated callers have none.
        if charge.principal.is_none() && policy.key == KeyKind::Consumer {
            continue;
        }
        let key = policy.key(
            charge.route,
            charge.principal,
            charge.client,
            charge.headers,
        );
        match counter.charge(&key, quota, now).await {
            Ok(d) if d.allowed => {}
            Ok(d) => {
                let retry_after_secs = u64::try_from(d.resets_at.saturating_sub(now))
                    .unwrap_or(1)
                    .max(1);
                if policy.shadow {
                    policy.meters.shadow_quota_exceeded.increment(1);
                    log_shadow_refusal(charge, policy, "quota", retry_after_secs);
                    continue;
                }
                policy.meters.quota_exceeded.increment(1);
                return Err(Refused::QuotaExceeded {
                    policy: policy.name.clone(),
                    retry_after_secs,
                });
            }
            Err(e) if fail_open || policy.shadow => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %charge.request_id, policy = %policy.name, error = %e, "quota counter unavailable; letting the request pass");
            }
            Err(e) => {
                policy.meters.errors.increment(1);
                tracing::warn!(request_id = %charge.request_id, policy = %policy.name, error = %e, "quota counter unavailable; refusing");
                return Err(Refused::Unavailable);
            }
        }
    }
    Ok(())
}

/// The log line of a shadow policy that would have refused a request
/// (`limit` is `rate` or `quota`).
fn log_shadow_refusal(
    charge: &Charge<'_>,
    policy: &RatePolicy,
    limit: &'static str,
    retry_after_secs: u64,
) {
    tracing::info!(
        target: "gatehouse::ratelimit",
        request_id = %charge.request_id,
        policy = %policy.name,
        limit,
        route = %charge.route,
        consumer = charge.principal.map_or("-", |p| &*p.subject),
        client = %charge.client,
        retry_after_secs,
        "shadow rate limit would refuse"
    );
}

#[cfg(test)]
#[path = "charge_tests.rs"]
mod tests;
