//! The cluster rate limiter: one budget per key shared by every gateway
//! instance, kept in Redis.
//!
//! This module owns [`RedisLimiter`] (the decision, taken in one round trip
//! by an atomic Lua script), its connection to Redis (one multiplexed
//! connection, replaced in the background when it breaks), its circuit
//! breaker ([`BreakerState`]) and [`Fallback`], the wrapper that applies the
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
//! [`RedisOptions::timeout`]. After [`RedisOptions::breaker_failures`]
//! consecutive failures the breaker opens: calls return
//! [`LimitError::Unavailable`] at once without touching the network; after
//! [`RedisOptions::breaker_open_for`] one call is let through as a probe
//! (half-open) and closes the breaker if it succeeds. Transitions are logged
//! once each (`tracing`, field `breaker = "redis_ratelimit"`).
//!
//! # Security
//!
//! The Redis URL may carry a password: it is never logged, and `Debug`
//! shows it redacted. Keys are stored as `key_prefix + key`; keys never
//! contain credentials (see the parent module).

mod breaker;
mod fallback;

use breaker::*;
pub use fallback::*;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

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
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls fail at once without touching the network.
    Open,
    /// One probe call is in flight; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// A stable lower-case name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A rate limiter whose budgets live in Redis and are shared by every
/// gateway instance. Cheap to clone (clones share the connection and the
/// breaker).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn_config: AsyncConnectionConfig,
    /// The live connection; `None` while (re)connecting.
    conn: ArcSwapOption<MultiplexedConnection>,
    /// Whether a background reconnect task is running.
    reconnecting: AtomicBool,
    script: Script,
    timeout: Duration,
    connect_timeout: Duration,
    reconnect_max_delay: Duration,
    key_prefix: String,
    breaker: Breaker,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("key_prefix", &self.inner.key_prefix)
            .field("timeout", &self.inner.timeout)
            .field("breaker", &self.breaker_state())
            .field("connected", &self.inner.conn.load().is_some())
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
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            // Our own `tokio::time::timeout` bounds each call; a timed-out
            // call is not a reason to drop the (multiplexed) connection.
            .set_response_timeout(None);
        let open_for = opts.breaker_open_for;
        let inner = Arc::new(Inner {
            client,
            conn_config,
            conn: ArcSwapOption::empty(),
            reconnecting: AtomicBool::new(false),
            script: Script::new(GCRA_SCRIPT),
            timeout: opts.timeout,
            connect_timeout: opts.connect_timeout,
            // Reconnect at least twice per open period, so that the
            // half-open probe finds a connection soon after Redis is back.
            reconnect_max_delay: (open_for / 2)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
            key_prefix: opts.key_prefix,
            breaker: Breaker::new(opts.breaker_failures, open_for),
        });
        match inner.open_connection().await {
            Ok(conn) => inner.conn.store(Some(Arc::new(conn))),
            Err(reason) => {
                tracing::warn!(
                    breaker = "redis_ratelimit",
                    error = %reason,
                    "redis rate limiter: cannot connect at start, reconnecting in the background"
                );
                spawn_reconnect(&inner);
            }
        }
        Ok(RedisLimiter { inner })
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    async fn decide(&self, key: &str, limit: &Limit) -> Result<Decision, LimitError> {
        let inner = &self.inner;
        let Some(conn) = inner.conn.load_full() else {
            spawn_reconnect(inner);
            return Err(LimitError::Unavailable("redis: not connected".to_owned()));
        };
        let burst = limit.burst.max(1);
        let interval_us = u64::try_from(limit.rate.interval().as_micros()).unwrap_or(u64::MAX);
        let t_us = interval_us.clamp(1, MAX_SPAN_US / u64::from(burst));
        let full_key = format!("{}{}", inner.key_prefix, key);
        let mut c = (*conn).clone();
        let call = async {
            inner
                .script
                .key(&full_key)
                .arg(t_us)
                .arg(burst)
                .invoke_async::<Vec<i64>>(&mut c)
                .await
        };
        match tokio::time::timeout(inner.timeout, call).await {
            Err(_elapsed) => Err(LimitError::Unavailable(format!(
                "redis: no answer within {} ms",
                inner.timeout.as_millis()
            ))),
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() {
                    inner.discard(&conn, &e);
                }
                Err(LimitError::Unavailable(format!("redis: {e}")))
            }
            Ok(Ok(reply)) => decision_from_reply(&reply, burst),
        }
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

impl Inner {
    /// One connection attempt, bounded by `connect_timeout`.
    async fn open_connection(&self) -> Result<MultiplexedConnection, String> {
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&self.conn_config);
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no connection within {} ms",
                self.connect_timeout.as_millis()
            )),
        }
    }

    /// Drops `conn` (if it is still the current one) and reconnects in the
    /// background.
    fn discard(self: &Arc<Self>, conn: &Arc<MultiplexedConnection>, why: &dyn fmt::Display) {
        let current = Some(Arc::clone(conn));
        let prev = self.conn.compare_and_swap(&current, None);
        let swapped = prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, conn));
        if swapped {
            tracing::warn!(
                breaker = "redis_ratelimit",
                error = %why,
                "redis rate limiter: connection dropped, reconnecting"
            );
        }
        spawn_reconnect(self);
    }
}

/// Starts the background reconnect loop unless one is running. The task
/// holds only a weak reference between attempts, so it ends when the
/// limiter is dropped.
fn spawn_reconnect(inner: &Arc<Inner>) {
    if inner.reconnecting.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(inner);
    let max_delay = inner.reconnect_max_delay;
    tokio::spawn(async move {
        // However the task ends (connected, limiter dropped, or the runtime
        // dropping the task), the next failure may start a new one.
        let _running = ReconnectingFlag(weak.clone());
        let mut delay = Duration::from_millis(10).min(max_delay);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            match inner.open_connection().await {
                Ok(conn) => {
                    inner.conn.store(Some(Arc::new(conn)));
                    tracing::info!(breaker = "redis_ratelimit", "redis rate limiter: connected");
                    return;
                }
                Err(reason) => tracing::debug!(
                    breaker = "redis_ratelimit",
                    error = %reason,
                    "redis rate limiter: reconnect failed"
                ),
            }
            drop(inner);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(max_delay);
        }
    });
}

/// Clears [`Inner::reconnecting`] when the reconnect task ends.
struct ReconnectingFlag(std::sync::Weak<Inner>);

impl Drop for ReconnectingFlag {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.reconnecting.store(false, Ordering::Release);
        }
    }
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, key: &str, limit: &Limit) -> Result<Decision, LimitError> {
        let inner = &self.inner;
        let Some(permit) = inner.breaker.admit(inner.breaker.now_ms()) else {
            return Err(LimitError::Unavailable(
                "redis: circuit breaker open".to_owned(),
            ));
        };
        let result = self.decide(key, limit).await;
        let now = inner.breaker.now_ms();
        match &result {
            Ok(_) => {
                if let Some(t) = inner.breaker.on_success(permit) {
                    log_transition(t, &inner.breaker);
                }
            }
            Err(e) => {
                if let Some(t) = inner.breaker.on_failure(permit, now) {
                    log_transition(t, &inner.breaker);
                    // A connection that stopped answering (no RST, e.g. a
                    // partition) never errors by itself: replace it.
                    if let Some(conn) = inner.conn.load_full() {
                        inner.discard(&conn, e);
                    }
                }
            }
        }
        result
    }
}

fn log_transition(t: Transition, breaker: &Breaker) {
    match t {
        Transition::Opened { failures } => tracing::warn!(
            breaker = "redis_ratelimit",
            state = "open",
            consecutive_failures = failures,
            open_for_ms = breaker.open_for_ms,
            "redis rate limiter circuit breaker opened"
        ),
        Transition::Reopened => tracing::warn!(
            breaker = "redis_ratelimit",
            state = "open",
            open_for_ms = breaker.open_for_ms,
            "redis rate limiter circuit breaker probe failed, open again"
        ),
        Transition::HalfOpened => tracing::info!(
            breaker = "redis_ratelimit",
            state = "half_open",
            "redis rate limiter circuit breaker half-open, probing"
        ),
        Transition::Closed => tracing::info!(
            breaker = "redis_ratelimit",
            state = "closed",
            "redis rate limiter circuit breaker closed, redis is back"
        ),
    }
}

#[cfg(test)]
mod tests;
