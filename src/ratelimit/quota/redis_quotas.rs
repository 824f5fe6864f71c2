//! [`RedisQuotas`]: one counter per key and period in Redis, checked and
//! incremented by one atomic script (a cluster's shared count).

use std::fmt;
use std::time::Duration;

use crate::auth::Timestamp;

use super::*;

/// Quotas counted in Redis: one count per key and period, shared by every
/// gateway that uses the same Redis.
///
/// Keys are `gatehouse:quota:<key>:<period id>` and expire a day after
/// their period ends (a day's grace for clocks that disagree).
#[derive(Clone)]
pub struct RedisQuotas {
    pub(super) conn: redis::aio::ConnectionManager,
    pub(super) script: redis::Script,
    pub(super) timeout: Duration,
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
    pub fn connect(url: &str, timeout: Duration) -> Result<RedisQuotas, QuotaError> {
        let client = redis::Client::open(url)
            .map_err(|_| QuotaError::Unavailable("invalid Redis URL".to_owned()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| QuotaError::Unavailable(format!("redis: {err}")))?;
        Ok(RedisQuotas {
            conn,
            script: redis::Script::new(CHARGE_SCRIPT),
            timeout,
        })
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
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(redis_key);
        invocation.arg(quota.count).arg(expire_at);
        let (allowed, used): (i64, u64) =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| {
                    QuotaError::Unavailable(format!(
                        "redis did not answer within {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|err| QuotaError::Unavailable(format!("redis: {err}")))?;
        Ok(QuotaDecision {
            allowed: allowed == 1,
            limit: quota.count,
            used,
            remaining: quota.count.saturating_sub(used),
            resets_at,
        })
    }
}
