//! The cluster rate limiter: one budget per key shared by every gateway
//! instance, kept in Redis.
//!
//! This module owns [`RedisLimiter`] (the decision, taken in one round trip
//! by an atomic Lua script), the `link` to Redis it shares with the quota
//! counter (a lazy `ConnectionManager` behind the shared circuit breaker,
//! [`BreakerState`]) and [`Fallback`], the wrapper that applies the
//! operator's chosen behaviour when Redis is unavailable. It does not choose
//! that behaviour, the limits or the keys: the caller does.
//!
//! # The decision
//!
//! GCRA, the same algorithm and the same numbers as the local (governor)
//! limiter: emission interval `T = limit.rate.interval()`, tolerance
//! `τ = T × (burst − 1)`, one theoretical arrival time (TAT) per key. A
//! request at `now` is allowed when `now ≥ TAT − τ`; it then moves the TAT
//! to `max(TAT, now) + T`. A refused request changes nothing and may retry
//! after `TAT − τ − now`. `remaining = ⌊(τ + T − (TAT − now)) / T⌋` and
//! `reset = TAT − now` (when the whole burst is available again).
//!
//! All of it runs inside Redis ([`GCRA_SCRIPT`]), with Redis's own `TIME`, so
//! the gateways' clocks do not matter and concurrent gateways cannot race.
//! The math is integer **microseconds** (exact in Lua's doubles: the epoch in
//! µs is ≈ 2^51, and `T × burst` is capped at 2^52 µs ≈ 142 years). The key
//! expires (`SET … PX`) exactly when its bucket is full again, so idle
//! clients cost no memory. The script writes after `TIME`, which needs effect
//! replication: the default from Redis 5 on (the script asks for it
//! explicitly on Redis 5 and 6).
//!
//! # Failure
//!
//! Connecting never blocks for long: [`RedisOptions::connect_timeout`]
//! bounds the first connection and, if Redis is down at start,
//! [`RedisLimiter::connect`] still returns a limiter whose calls fail fast
//! while it keeps reconnecting in the background. Every call is bounded by
//! [`RedisOptions::timeout`] (the connection manager has no response
//! timeout of its own, so a call that timed out keeps the connection).
//! After [`RedisOptions::breaker_failures`] consecutive failures the
//! breaker opens: calls return
//! [`LimitError::Unavailable`] at once without touching the network; after
//! [`RedisOptions::breaker_open_for`] one call is let through as a probe
//! (half-open) and closes the breaker if it succeeds; when it opens, the
//! connection is replaced (see `link`). Transitions are logged once each
//! (`tracing`, field `breaker = "redis_ratelimit"`).
//!
//! # Security
//!
//! The Redis URL may carry a password: it is never logged, and `Debug`
//! shows it redacted. Keys are stored as `key_prefix + key`; keys never
//! contain credentials (see the parent module).

mod fallback;
pub(crate) mod link;

pub use fallback::*;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{Client, Script};

use link::{Link, LinkOptions};

use super::{Decision, Limit, LimitError, Limiter};

/// The GCRA decision, atomic in Redis. See the module docs for the math.
///
/// `KEYS[1]`: the bucket. `ARGV[1]`: emission interval `T` in µs (≥ 1).
/// `ARGV[2]`: burst (≥ 1). Returns `{allowed (0|1), remaining,
/// retry_after_us, reset_us}`. Numbers are written with `%.0f`, because
/// Redis turns a Lua number into a string with only 14 significant digits.
pub const GCRA_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = t * (burst - 1)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = now
local stored = tonumber(redis.call('GET', KEYS[1]) or '')
if stored and stored > now then tat = stored end
local earliest = tat - tau
if now < earliest then
  return {0, 0, earliest - now, tat - now}
end
local new_tat = tat + t
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
local remaining = math.floor((tau + t - (new_tat - now)) / t)
return {1, remaining, 0, new_tat - now}
";

/// `T × burst` is capped at this many µs so the script's math stays exact.
const MAX_SPAN_US: u64 = 1 << 52;

/// Settings for [`RedisLimiter::connect`].
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`. May hold a secret: never logged.
    pub url: String,
    /// Bound on each decision (one script call), default 50 ms.
    pub timeout: Duration,
    /// Bound on each connection attempt, default 2 s.
    pub connect_timeout: Duration,
    /// Prepended to every key, default `"gatehouse:rl:"`.
    pub key_prefix: String,
    /// Consecutive failures that open the breaker, default 5.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one half-open probe, default 5 s.
    pub breaker_open_for: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            key_prefix: "gatehouse:rl:".to_owned(),
            breaker_failures: link::DEFAULT_BREAKER_FAILURES,
            breaker_open_for: link::DEFAULT_BREAKER_OPEN_FOR,
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open_for", &self.breaker_open_for)
            .finish()
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
use crate::config::redact_url;

/// The state of the Redis circuit breaker, for metrics and status pages.
pub use crate::breaker::State as BreakerState;

/// A rate limiter whose budgets live in Redis and are shared by every
/// gateway instance. Cheap to clone (clones share the connection and the
/// breaker).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    script: Script,
    timeout: Duration,
    key_prefix: String,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("key_prefix", &self.inner.key_prefix)
            .field("timeout", &self.inner.timeout)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Builds the limiter and tries to connect, for at most
    /// `opts.connect_timeout`. A bad URL is an error; Redis being down is
    /// not: the limiter is returned anyway, its calls fail fast (and open
    /// the breaker) while it reconnects in the background.
    pub async fn connect(opts: RedisOptions) -> Result<RedisLimiter, LimitError> {
        // The redis error for a bad URL does not repeat the URL.
        let client = Client::open(opts.url.as_str())
            .map_err(|e| LimitError::Unavailable(format!("invalid redis url: {e}")))?;
        let link = Link::new(
            client,
            LinkOptions {
                name: "redis_ratelimit",
                what: "redis rate limiter",
                timeout: opts.timeout,
                connect_timeout: opts.connect_timeout,
                // Our own timeout bounds each call; a timed-out call is not
                // a reason to drop the (multiplexed) connection.
                response_timeout: None,
                breaker_failures: opts.breaker_failures,
                breaker_open_for: opts.breaker_open_for,
            },
        )
        .map_err(|e| LimitError::Unavailable(format!("redis: {e}")))?;
        link.connect_now().await;
        Ok(RedisLimiter {
            inner: Arc::new(Inner {
                link,
                script: Script::new(GCRA_SCRIPT),
                timeout: opts.timeout,
                key_prefix: opts.key_prefix,
            }),
        })
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.link.breaker_state()
    }
}

/// Turns the script's `{allowed, remaining, retry_after_us, reset_us}` into
/// a [`Decision`].
fn decision_from_reply(reply: &[i64], burst: u32) -> Result<Decision, LimitError> {
    let &[allowed, remaining, retry_after_us, reset_us] = reply else {
        return Err(LimitError::Unavailable(format!(
            "redis: unexpected script reply with {} values",
            reply.len()
        )));
    };
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let allowed = allowed == 1;
    Ok(Decision {
        allowed,
        limit: burst,
        remaining: u32::try_from(remaining.clamp(0, i64::from(burst))).unwrap_or(0),
        reset: micros(reset_us),
        retry_after: (!allowed).then(|| micros(retry_after_us)),
    })
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, key: &str, limit: &Limit) -> Result<Decision, LimitError> {
        let inner = &self.inner;
        let burst = limit.burst.max(1);
        let interval_us = u64::try_from(limit.rate.interval().as_micros()).unwrap_or(u64::MAX);
        let t_us = interval_us.clamp(1, MAX_SPAN_US / u64::from(burst));
        let full_key = format!("{}{}", inner.key_prefix, key);
        let mut invocation = inner.script.key(&full_key);
        invocation.arg(t_us).arg(burst);
        // A reply of the wrong shape counts as a failure for the breaker.
        let decision = inner
            .link
            .call(|mut conn| async move {
                let reply = invocation.invoke_async::<Vec<i64>>(&mut conn).await?;
                decision_from_reply(&reply, burst).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "gcra script",
                        e.to_string(),
                    ))
                })
            })
            .await
            .map_err(|e| LimitError::Unavailable(format!("redis: {e}")))?;
        Ok(decision)
    }
}

#[cfg(test)]
mod tests;
