//! [`RedisQuotas`]: one counter per key and period in Redis, checked and
//! incremented by one atomic script (a cluster's shared count), over the
//! same [`Link`] as the cluster rate limiter: a lazy connection manager
//! behind a circuit breaker, so a dead Redis fails fast for quotas too.

use std::fmt;
use std::time::Duration;

use crate::auth::Timestamp;
use crate::ratelimit::redis::link::{
    DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_OPEN_FOR, Link, LinkError, LinkOptions,
};

use super::*;

/// Quotas counted in Redis: one count per key and period, shared by every
/// gateway that uses the same Redis.
///
/// Keys are `gatehouse:quota:<key>:<period id>` and expire a day after
/// their period ends (a day's grace for clocks that disagree).
#[derive(Clone)]
pub struct RedisQuotas {
    link: Link,
    script: redis::Script,
    timeout: Duration,
}

/// Prefix of every quota key in Redis.
pub(super) const REDIS_PREFIX: &str = "gatehouse:quota:";

/// Reads the count; refuses at the limit without counting; else counts and
/// (re)sets the expiry. KEYS[1] = counter, ARGV[1] = limit, ARGV[2] = expiry
/// (Unix seconds). Returns {allowed (0|1), used}.
pub(super) const CHARGE_SCRIPT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {1, used}
";

impl fmt::Debug for RedisQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotas")
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl RedisQuotas {
    /// Prepares a client for the Redis at `url` (`redis://…` or
    /// `rediss://…`), bounding every charge by `timeout`.
    ///
    /// The connection is made on the first charge, and made again after it
    /// is lost, so a gateway starts while Redis is down and its charges say
    /// [`QuotaError::Unavailable`] until Redis answers. Fails only for a URL
    /// that cannot be used (the error does not repeat it: it may hold a
    /// password).
    ///
    /// The circuit breaker opens after 5 consecutive failures, for 5 s
    /// (see [`RedisQuotas::connect_with_breaker`]).
    pub fn connect(url: &str, timeout: Duration) -> Result<RedisQuotas, QuotaError> {
        Self::connect_with_breaker(
            url,
            timeout,
            DEFAULT_BREAKER_FAILURES,
            DEFAULT_BREAKER_OPEN_FOR,
        )
    }

    /// [`RedisQuotas::connect`], with a circuit breaker that opens after
    /// `breaker_failures` consecutive failures: for `breaker_open_for`,
    /// charges fail at once ([`QuotaError::BreakerOpen`]) without touching
    /// the network; then one probe charge decides whether it closes.
    pub fn connect_with_breaker(
        url: &str,
        timeout: Duration,
        breaker_failures: u32,
        breaker_open_for: Duration,
    ) -> Result<RedisQuotas, QuotaError> {
        let client = redis::Client::open(url)
            .map_err(|_| QuotaError::Unavailable("invalid Redis URL".to_owned()))?;
        let link = Link::new(
            client,
            LinkOptions {
                name: "redis_quota",
                what: "redis quota counter",
                timeout,
                connect_timeout: timeout,
                response_timeout: Some(timeout),
                breaker_failures,
                breaker_open_for,
            },
        )
        .map_err(|err| QuotaError::Unavailable(format!("redis: {err}")))?;
        Ok(RedisQuotas {
            link,
            script: redis::Script::new(CHARGE_SCRIPT),
            timeout,
        })
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> crate::ratelimit::redis::BreakerState {
        self.link.breaker_state()
    }
}

#[async_trait::async_trait]
impl QuotaCounter for RedisQuotas {
    async fn charge(
        &self,
        key: &str,
        quota: &Quota,
        now: Timestamp,
    ) -> Result<QuotaDecision, QuotaError> {
        let resets_at = quota.resets_at(now);
        let redis_key = format!("{REDIS_PREFIX}{key}:{}", quota.period_id(now));
        let expire_at = resets_at.saturating_add(SECONDS_PER_DAY);
        let mut invocation = self.script.key(redis_key);
        invocation.arg(quota.count).arg(expire_at);
        let (allowed, used): (i64, u64) = self
            .link
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(|err| match err {
                LinkError::BreakerOpen => QuotaError::BreakerOpen,
                LinkError::Timeout(_) => QuotaError::Unavailable(format!(
                    "redis did not answer within {:?}",
                    self.timeout
                )),
                LinkError::Redis(err) => QuotaError::Unavailable(format!("redis: {err}")),
            })?;
        Ok(QuotaDecision {
            allowed: allowed == 1,
            limit: quota.count,
            used,
            remaining: quota.count.saturating_sub(used),
            resets_at,
        })
    }
}
