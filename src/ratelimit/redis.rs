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

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------
// Circuit breaker

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

/// A circuit breaker in two atomics: `word` packs the state (low 2 bits)
/// with the time it was entered (ms since `epoch`, the high bits), so that
/// state and time change together in one compare-and-swap; `failures`
/// counts consecutive failures while closed. Nothing is locked, so nothing
/// is held across an await.
struct Breaker {
    word: AtomicU64,
    failures: AtomicU32,
    threshold: u32,
    open_for_ms: u64,
    epoch: Instant,
}

/// What a call was admitted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permit {
    Normal,
    Probe,
}

/// A state change, to be logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Opened { failures: u32 },
    Reopened,
    HalfOpened,
    Closed,
}

fn pack(state: u64, at_ms: u64) -> u64 {
    (at_ms << 2) | state
}

impl Breaker {
    fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            word: AtomicU64::new(pack(CLOSED, 0)),
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            open_for_ms: u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX >> 2),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
    }

    fn state(&self) -> BreakerState {
        match self.word.load(Ordering::Acquire) & 0b11 {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to Redis now, and as what. While open, after
    /// `open_for` exactly one caller wins the probe. A probe whose result
    /// never came back (its future was dropped) is replaced after another
    /// `open_for`, so the breaker cannot stay half-open forever.
    fn admit(&self, now_ms: u64) -> Option<Permit> {
        let w = self.word.load(Ordering::Acquire);
        match w & 0b11 {
            CLOSED => Some(Permit::Normal),
            _ => {
                let since = w >> 2;
                if now_ms.saturating_sub(since) < self.open_for_ms {
                    return None;
                }
                let won = self
                    .word
                    .compare_exchange(
                        w,
                        pack(HALF_OPEN, now_ms),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                if won && w & 0b11 == OPEN {
                    log_transition(Transition::HalfOpened, self);
                }
                won.then_some(Permit::Probe)
            }
        }
    }

    fn on_success(&self, permit: Permit) -> Option<Transition> {
        self.failures.store(0, Ordering::Release);
        if permit != Permit::Probe {
            return None;
        }
        let w = self.word.load(Ordering::Acquire);
        (w & 0b11 == HALF_OPEN
            && self
                .word
                .compare_exchange(w, pack(CLOSED, 0), Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then_some(Transition::Closed)
    }

    fn on_failure(&self, permit: Permit, now_ms: u64) -> Option<Transition> {
        let w = self.word.load(Ordering::Acquire);
        match permit {
            Permit::Probe => (w & 0b11 == HALF_OPEN
                && self
                    .word
                    .compare_exchange(w, pack(OPEN, now_ms), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
            .then_some(Transition::Reopened),
            Permit::Normal => {
                let failures = self
                    .failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                (failures >= self.threshold
                    && w & 0b11 == CLOSED
                    && self
                        .word
                        .compare_exchange(
                            w,
                            pack(OPEN, now_ms),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok())
                .then_some(Transition::Opened { failures })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fallback

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

#[cfg(test)]
mod tests {
    //! Unit tests for the breaker and the reply, and tests against a real
    //! Redis (`GATEHOUSE_TEST_REDIS_URL`) and a `redis-server` started here.

    use super::*;
    use crate::ratelimit::Rate;
    use std::sync::atomic::AtomicUsize;
    use tokio::process::{Child, Command};

    /// The one place tests read the environment.
    #[allow(clippy::disallowed_methods)]
    fn test_redis_url() -> Option<String> {
        let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty());
        if url.is_none() {
            println!("skipped: GATEHOUSE_TEST_REDIS_URL is not set");
        }
        url
    }

    fn random_prefix() -> String {
        format!("gatehouse:test:{:016x}:", rand::random::<u64>())
    }

    fn limit(count: u32, period_ms: u64, burst: u32) -> Limit {
        Limit {
            rate: Rate {
                count,
                period: Duration::from_millis(period_ms),
            },
            burst,
        }
    }

    async fn limiter(url: &str, prefix: &str) -> RedisLimiter {
        RedisLimiter::connect(RedisOptions {
            url: url.to_owned(),
            key_prefix: prefix.to_owned(),
            // Generous: these tests are about the decision, not the timeout,
            // and the machine may be busy.
            timeout: Duration::from_millis(500),
            ..RedisOptions::default()
        })
        .await
        .unwrap()
    }

    /// `PTTL key` on a separate connection (-2: no such key).
    async fn pttl(url: &str, key: &str) -> i64 {
        let query = async {
            let mut c = Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("PTTL").arg(key).query_async::<i64>(&mut c).await
        };
        tokio::time::timeout(Duration::from_secs(2), query)
            .await
            .unwrap()
            .unwrap()
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A `Limiter` that allows everything and counts its calls.
    #[derive(Debug, Default)]
    struct CountingLimiter {
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Limiter for CountingLimiter {
        async fn check(&self, _key: &str, limit: &Limit) -> Result<Decision, LimitError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Decision {
                allowed: true,
                limit: limit.burst,
                remaining: limit.burst.saturating_sub(1),
                reset: Duration::ZERO,
                retry_after: None,
            })
        }
    }

    // -- pure ---------------------------------------------------------------

    #[derive(Debug)]
    enum Step {
        Admit(u64, Option<Permit>),
        Fail(Permit, u64, Option<Transition>),
        Succeed(Permit, Option<Transition>),
        State(BreakerState),
    }

    #[test]
    fn breaker_state_machine() {
        use BreakerState::{Closed, HalfOpen, Open};
        use Permit::{Normal, Probe};
        use Step::*;
        let opened = Some(Transition::Opened { failures: 3 });
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "opens after 3 consecutive failures, then refuses",
                vec![
                    Admit(0, Some(Normal)),
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    State(Closed),
                    Fail(Normal, 10, opened),
                    State(Open),
                    Admit(50, None),
                    Admit(109, None),
                ],
            ),
            (
                "a success resets the count",
                vec![
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    Succeed(Normal, None),
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    State(Closed),
                ],
            ),
            (
                "half-open after open_for, one probe only, success closes",
                vec![
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, opened),
                    Admit(100, Some(Probe)),
                    State(HalfOpen),
                    Admit(101, None),
                    Succeed(Probe, Some(Transition::Closed)),
                    State(Closed),
                    Admit(102, Some(Normal)),
                    // The count starts again from zero.
                    Fail(Normal, 103, None),
                    State(Closed),
                ],
            ),
            (
                "a failed probe opens again for open_for",
                vec![
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, opened),
                    Admit(100, Some(Probe)),
                    Fail(Probe, 110, Some(Transition::Reopened)),
                    State(Open),
                    Admit(209, None),
                    Admit(210, Some(Probe)),
                ],
            ),
            (
                "a lost probe is replaced after open_for",
                vec![
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, opened),
                    Admit(100, Some(Probe)),
                    Admit(199, None),
                    Admit(200, Some(Probe)),
                    State(HalfOpen),
                ],
            ),
            (
                "stragglers neither close nor reopen",
                vec![
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, None),
                    Fail(Normal, 0, opened),
                    Fail(Normal, 1, None),
                    Succeed(Normal, None),
                    State(Open),
                    Admit(100, Some(Probe)),
                    Fail(Normal, 101, None),
                    State(HalfOpen),
                ],
            ),
        ];
        for (name, steps) in cases {
            let b = Breaker::new(3, Duration::from_millis(100));
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Admit(at, want) => assert_eq!(b.admit(at), want, "{name}: step {i} {step:?}"),
                    Fail(p, at, want) => {
                        assert_eq!(b.on_failure(p, at), want, "{name}: step {i} {step:?}")
                    }
                    Succeed(p, want) => {
                        assert_eq!(b.on_success(p), want, "{name}: step {i} {step:?}")
                    }
                    State(want) => assert_eq!(b.state(), want, "{name}: step {i} {step:?}"),
                }
            }
        }
    }

    #[test]
    fn decision_from_script_reply() {
        let ms = Duration::from_millis;
        let cases: Vec<(&str, Vec<i64>, Option<Decision>)> = vec![
            (
                "allowed",
                vec![1, 2, 0, 300_000],
                Some(Decision {
                    allowed: true,
                    limit: 5,
                    remaining: 2,
                    reset: ms(300),
                    retry_after: None,
                }),
            ),
            (
                "refused",
                vec![0, 0, 99_500, 499_500],
                Some(Decision {
                    allowed: false,
                    limit: 5,
                    remaining: 0,
                    reset: Duration::from_micros(499_500),
                    retry_after: Some(Duration::from_micros(99_500)),
                }),
            ),
            (
                "out-of-range values are clamped",
                vec![1, 99, -1, -5],
                Some(Decision {
                    allowed: true,
                    limit: 5,
                    remaining: 5,
                    reset: Duration::ZERO,
                    retry_after: None,
                }),
            ),
            ("too short", vec![1, 2], None),
            ("too long", vec![1, 2, 3, 4, 5], None),
        ];
        for (name, reply, want) in cases {
            let got = decision_from_reply(&reply, 5).ok();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn debug_redacts_the_url_password() {
        let cases = [
            (
                "no credentials",
                "redis://127.0.0.1:6379",
                "redis://127.0.0.1:6379",
            ),
            (
                "password",
                "redis://:s3cret@h:6379/0",
                "redis://***@h:6379/0",
            ),
            ("user and password", "redis://u:p@ss@h", "redis://***@h"),
            ("not a url", "s3cret@h", "s3cret@h"),
        ];
        for (name, url, want) in cases {
            assert_eq!(redact_url(url), want, "{name}");
            let opts = RedisOptions {
                url: url.to_owned(),
                ..RedisOptions::default()
            };
            let debug = format!("{opts:?}");
            assert!(debug.contains(want), "{name}: {debug}");
            if url.contains("://") {
                assert!(!debug.contains("s3cret"), "{name}: {debug}");
            }
        }
    }

    // -- no server needed ---------------------------------------------------

    #[tokio::test]
    async fn bad_urls_are_refused_at_connect() {
        let cases = [
            ("not a url", "definitely not a url"),
            ("other scheme", "http://127.0.0.1:6379"),
            ("tls without a tls feature", "rediss://127.0.0.1:6379"),
        ];
        for (name, url) in cases {
            let got = RedisLimiter::connect(RedisOptions {
                url: url.to_owned(),
                ..RedisOptions::default()
            })
            .await;
            assert!(got.is_err(), "{name}: {got:?}");
        }
    }

    #[tokio::test]
    async fn starts_with_redis_down_and_fails_fast() {
        let port = free_port();
        let timeout = Duration::from_millis(50);
        let start = Instant::now();
        let limiter = RedisLimiter::connect(RedisOptions {
            url: format!("redis://127.0.0.1:{port}"),
            timeout,
            connect_timeout: Duration::from_millis(500),
            breaker_failures: 2,
            breaker_open_for: Duration::from_secs(60),
            key_prefix: random_prefix(),
        })
        .await
        .unwrap();
        assert!(start.elapsed() < Duration::from_millis(500) + timeout);
        let lim = limit(10, 1000, 5);
        for _ in 0..3 {
            let t = Instant::now();
            let got = limiter.check("k", &lim).await;
            assert!(matches!(got, Err(LimitError::Unavailable(_))), "{got:?}");
            assert!(t.elapsed() < timeout * 2, "{:?}", t.elapsed());
        }
        assert_eq!(limiter.breaker_state(), BreakerState::Open);
    }

    // -- against GATEHOUSE_TEST_REDIS_URL ------------------------------------

    #[tokio::test]
    async fn a_burst_passes_then_the_next_is_refused() {
        let Some(url) = test_redis_url() else { return };
        let prefix = random_prefix();
        let l = limiter(&url, &prefix).await;
        let cases = [
            ("10/s, burst 3", limit(10, 1000, 3)),
            ("20/s, burst 1", limit(20, 1000, 1)),
            ("5/s, burst 10", limit(5, 1000, 10)),
            ("1/min, burst 2", limit(1, 60_000, 2)),
        ];
        for (i, (name, lim)) in cases.iter().enumerate() {
            let key = format!("burst-{i}");
            let t = lim.rate.interval();
            let burst = lim.burst;
            let start = Instant::now();
            for n in 1..=burst {
                let d = l.check(&key, lim).await.unwrap();
                let slack = start.elapsed() + Duration::from_millis(2);
                assert!(d.allowed, "{name}: request {n}");
                assert_eq!(d.limit, burst, "{name}");
                assert_eq!(d.remaining, burst - n, "{name}: remaining counts down");
                assert_eq!(d.retry_after, None, "{name}");
                let full = t * n;
                assert!(
                    d.reset <= full && d.reset + slack >= full,
                    "{name}: reset {:?}",
                    d.reset
                );
            }
            let d = l.check(&key, lim).await.unwrap();
            let slack = start.elapsed() + Duration::from_millis(2);
            assert!(!d.allowed, "{name}: request {} must be refused", burst + 1);
            assert_eq!(d.remaining, 0, "{name}");
            let retry = d.retry_after.unwrap();
            assert!(
                retry <= t && retry + slack >= t,
                "{name}: retry_after {retry:?} vs interval {t:?}"
            );
            // The key lives until the bucket is full again.
            let ttl = pttl(&url, &format!("{prefix}{key}")).await;
            let full_ms = i64::try_from((t * burst).as_millis()).unwrap();
            // The TTL keeps running until PTTL answers.
            let ttl_slack = start.elapsed() + Duration::from_millis(2);
            let slack_ms = i64::try_from(ttl_slack.as_millis()).unwrap() + 1;
            assert!(
                ttl > 0 && ttl <= full_ms && ttl + slack_ms >= full_ms,
                "{name}: PTTL {ttl} vs {full_ms}"
            );
            if t <= Duration::from_millis(200) {
                tokio::time::sleep(retry + Duration::from_millis(3)).await;
                let d = l.check(&key, lim).await.unwrap();
                assert!(d.allowed, "{name}: allowed again after retry_after");
                assert_eq!(d.remaining, 0, "{name}");
            }
        }
    }

    #[tokio::test]
    async fn keys_expire_once_the_bucket_is_full() {
        let Some(url) = test_redis_url() else { return };
        let prefix = random_prefix();
        let l = limiter(&url, &prefix).await;
        let key = format!("{prefix}idle");
        // T = 50 ms, burst 4: after two requests the bucket is full again in 100 ms.
        let lim = limit(20, 1000, 4);
        l.check("idle", &lim).await.unwrap();
        l.check("idle", &lim).await.unwrap();
        let ttl = pttl(&url, &key).await;
        assert!((90..=100).contains(&ttl), "PTTL {ttl}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(pttl(&url, &key).await, -2, "the key is gone");
        let d = l.check("idle", &lim).await.unwrap();
        assert_eq!(d.remaining, 3, "a fresh, full bucket");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_share_one_budget() {
        let Some(url) = test_redis_url() else { return };
        let prefix = random_prefix();
        // Two limiters, two connections: two gateways.
        let gateways = [limiter(&url, &prefix).await, limiter(&url, &prefix).await];
        let lim = limit(200, 1000, 20); // T = 5 ms
        let run_for = Duration::from_millis(1000);
        let allowed = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let refused = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8 {
            let which = task % 2;
            let l = gateways[which].clone();
            let (allowed, refused, errors) = (allowed.clone(), refused.clone(), errors.clone());
            tasks.spawn(async move {
                while start.elapsed() < run_for {
                    match l.check("shared", &lim).await {
                        Ok(d) if d.allowed => allowed[which].fetch_add(1, Ordering::Relaxed),
                        Ok(_) => refused.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let elapsed = start.elapsed();
        let by_gateway = [
            allowed[0].load(Ordering::Relaxed),
            allowed[1].load(Ordering::Relaxed),
        ];
        let total = by_gateway[0] + by_gateway[1];
        let t = lim.rate.interval();
        let expected = f64::from(lim.burst) + elapsed.as_secs_f64() / t.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let deviation = (total as f64 - expected) / expected;
        println!(
            "shared budget: allowed {total} ({} + {}), refused {}, errors {}, elapsed {elapsed:?}, \
             GCRA allows {expected:.1}, deviation {:+.2}%",
            by_gateway[0],
            by_gateway[1],
            refused.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            deviation * 100.0
        );
        assert_eq!(errors.load(Ordering::Relaxed), 0);
        assert!(
            refused.load(Ordering::Relaxed) > 10 * total,
            "the key was hammered"
        );
        assert!(
            by_gateway[0] > 0 && by_gateway[1] > 0,
            "both gateways took part"
        );
        assert!(
            deviation.abs() < 0.03,
            "deviation {:+.2}%",
            deviation * 100.0
        );
    }

    // -- against a redis-server of our own ------------------------------------

    async fn redis_server_on_path() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .await
            .is_ok_and(|o| o.status.success())
    }

    async fn answers_ping(url: &str) -> bool {
        let ping = async {
            let mut c = Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(200), ping).await,
            Ok(Ok(pong)) if pong == "PONG"
        )
    }

    /// Starts `redis-server` on `port` and waits (≤ 5 s) until it answers.
    async fn start_redis_server(port: u16) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !answers_ping(&url).await {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer PING in 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }

    /// How Redis goes away, and how it comes back.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outage {
        /// SIGKILL, then a new redis-server on the same port: connections
        /// are refused, calls fail at once.
        Killed,
        /// SIGSTOP, then SIGCONT: the socket stays open and nothing answers,
        /// calls fail by timeout.
        Frozen,
    }

    async fn signal(pid: u32, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -{sig} {pid}");
    }

    #[tokio::test]
    async fn redis_stopped_mid_test_then_back() {
        if !redis_server_on_path().await {
            println!("skipped: redis-server is not on PATH");
            return;
        }
        for outage in [Outage::Killed, Outage::Frozen] {
            outage_then_recovery(outage).await;
        }
    }

    async fn outage_then_recovery(outage: Outage) {
        let name = format!("{outage:?}");
        let port = free_port();
        let mut server = start_redis_server(port).await;
        let timeout = Duration::from_millis(50);
        let failures = 3;
        let open_for = Duration::from_millis(300);
        let limiter = RedisLimiter::connect(RedisOptions {
            url: format!("redis://127.0.0.1:{port}"),
            timeout,
            connect_timeout: Duration::from_millis(200),
            key_prefix: random_prefix(),
            breaker_failures: failures,
            breaker_open_for: open_for,
        })
        .await
        .unwrap();
        let lim = limit(1000, 1000, 100);
        assert!(limiter.check("k", &lim).await.unwrap().allowed, "{name}");
        assert_eq!(limiter.breaker_state(), BreakerState::Closed, "{name}");

        // Redis goes away, by its pid.
        let pid = server.id().unwrap();
        match outage {
            Outage::Killed => {
                signal(pid, "KILL").await;
                server.wait().await.unwrap();
            }
            Outage::Frozen => signal(pid, "STOP").await,
        }

        // Each call fails within about `timeout`; then the breaker opens.
        let mut failing = Vec::new();
        for _ in 0..failures {
            let t = Instant::now();
            let got = limiter.check("k", &lim).await;
            failing.push(t.elapsed());
            assert!(
                matches!(got, Err(LimitError::Unavailable(_))),
                "{name}: {got:?}"
            );
        }
        assert!(
            failing.iter().all(|e| *e < timeout * 2),
            "{name}: {failing:?}"
        );
        if outage == Outage::Frozen {
            assert!(
                failing.iter().all(|e| *e >= timeout),
                "{name}: by timeout: {failing:?}"
            );
        }
        assert_eq!(limiter.breaker_state(), BreakerState::Open, "{name}");

        // While open: at once, without the network.
        let mut open = Vec::new();
        for _ in 0..11 {
            let t = Instant::now();
            let got = limiter.check("k", &lim).await;
            open.push(t.elapsed());
            assert!(
                matches!(got, Err(LimitError::Unavailable(_))),
                "{name}: {got:?}"
            );
        }
        open.sort();
        let open_median = open[open.len() / 2];
        assert!(open_median < Duration::from_millis(5), "{name}: {open:?}");

        // The two documented behaviours.
        let counting = Arc::new(CountingLimiter::default());
        let local = Fallback {
            primary: limiter.clone(),
            fallback: counting.clone(),
            deny_on_failure: false,
        };
        let deny = Fallback {
            primary: limiter.clone(),
            fallback: counting.clone(),
            deny_on_failure: true,
        };
        assert!(local.degraded() && deny.degraded(), "{name}");
        assert!(local.check("k", &lim).await.unwrap().allowed, "{name}");
        assert_eq!(
            counting.calls.load(Ordering::SeqCst),
            1,
            "{name}: the fallback decided"
        );
        let got = deny.check("k", &lim).await;
        assert!(
            matches!(got, Err(LimitError::Unavailable(_))),
            "{name}: {got:?}"
        );
        assert_eq!(
            counting.calls.load(Ordering::SeqCst),
            1,
            "{name}: deny does not fall back"
        );

        // Redis comes back: the limiter recovers by itself.
        let _server = match outage {
            Outage::Killed => start_redis_server(port).await,
            Outage::Frozen => {
                signal(pid, "CONT").await;
                server
            }
        };
        let back = Instant::now();
        let deadline = back + open_for * 2 + Duration::from_secs(2);
        loop {
            if limiter.check("k", &lim).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no recovery within {:?}",
                deadline - back
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let recovered_in = back.elapsed();
        assert_eq!(limiter.breaker_state(), BreakerState::Closed, "{name}");
        assert!(!local.degraded(), "{name}");
        assert!(local.check("k", &lim).await.unwrap().allowed, "{name}");
        assert_eq!(
            counting.calls.load(Ordering::SeqCst),
            1,
            "{name}: redis decides again"
        );
        println!(
            "breaker ({name}): redis-server pid {pid}; failing calls took {failing:?}; \
             calls while open: median {open_median:?}, max {:?}; recovered {recovered_in:?} \
             after redis was back (open_for {open_for:?})",
            open[open.len() - 1]
        );
    }
}
