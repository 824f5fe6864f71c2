//! [`Fallback`]: the operator's choice when Redis cannot decide (deny, or a
//! local limiter).

use std::sync::Arc;

use crate::ratelimit::{Decision, Limit, LimitError, Limiter};

use super::*;

/// Applies the operator's choice when Redis cannot decide: with
/// `deny_on_failure` the request gets [`LimitError::Unavailable`] (the
/// gateway answers 503, "deny"); otherwise the `fallback` limiter decides
/// ("local"). Note that a per-instance fallback gives every instance its own
/// budget, so while degraded the cluster as a whole allows up to N times the
/// limit unless the fallback's limits are scaled down.
#[derive(Debug)]
pub struct Fallback {
    /// The shared limiter.
    pub primary: RedisLimiter,
    /// Decides while the primary cannot (when `deny_on_failure` is false).
    pub fallback: Arc<dyn Limiter>,
    /// Refuse (Unavailable) instead of falling back.
    pub deny_on_failure: bool,
}

impl Fallback {
    /// Whether the primary's breaker is not closed: decisions are (mostly)
    /// taken by the fallback or refused. Single failures before the breaker
    /// opens do not count.
    pub fn degraded(&self) -> bool {
        self.primary.breaker_state() != BreakerState::Closed
    }
}

#[async_trait::async_trait]
impl Limiter for Fallback {
    async fn check(&self, key: &str, limit: &Limit) -> Result<Decision, LimitError> {
        match self.primary.check(key, limit).await {
            Ok(decision) => Ok(decision),
            Err(e) if self.deny_on_failure => Err(e),
            Err(_) => self.fallback.check(key, limit).await,
        }
    }
}
