//! [`Link`]: the one way gatehouse talks to Redis, shared by the cluster
//! rate limiter ([`RedisLimiter`](super::RedisLimiter)) and the quota
//! counter ([`RedisQuotas`](crate::ratelimit::quota::RedisQuotas)).
//!
//! A link is a lazy [`ConnectionManager`] (it connects on first use and
//! again after a connection is lost, one attempt per failed call, each
//! bounded by the connect timeout) behind the shared circuit breaker
//! ([`crate::breaker`]): every call is bounded by the call timeout, and
//! after consecutive failures the breaker opens and calls fail at once
//! without touching the network. When it opens (or a probe fails) the
//! connection manager is replaced by a fresh one, because a connection
//! that stopped answering without a reset (a partition, a frozen server)
//! never errors by itself, and a background task reconnects it so that the
//! half-open probe finds a connection. Transitions are logged once each
//! (`tracing`, field `breaker = <the link's name>`).
//!
//! It does not choose what a failure means for a request: callers map
//! [`LinkError`] to their own errors and behaviours.
//!
//! Security: the URL may hold a password. It lives only in the
//! [`Client`]; nothing here logs it.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult};

use crate::breaker::{self, Admission, Breaker, Transition, Trip};

/// Consecutive failures that open a link's breaker unless configured.
pub(crate) const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long a link's breaker stays open before a probe unless configured.
pub(crate) const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);

/// The one constructor of a Redis connection: a lazy connection manager
/// whose connection attempts are bounded by `connect_timeout` and not
/// retried (the next call, or the reconnect task, tries again), and whose
/// commands time out after `response_timeout` (`None`: the caller bounds
/// each call itself).
pub(crate) fn connection_manager(
    client: &Client,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// The breaker of a link: opens after `failures` (at least 1) consecutive
/// failures, for `open_for`; then one probe, replaced after another
/// `open_for` if its result never comes back.
pub(super) fn breaker_settings(failures: u32, open_for: Duration) -> breaker::Settings {
    breaker::Settings {
        failures: failures.max(1),
        failure_rate_percent: 0,
        window: Duration::from_secs(10),
        open_for,
        probes: 1,
        probe_timeout: open_for,
    }
}

/// How a [`Link`] connects, times out and breaks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkOptions {
    /// The `breaker` field of its log lines (`redis_ratelimit`).
    pub(crate) name: &'static str,
    /// What it is, opening its log messages (`redis rate limiter`).
    pub(crate) what: &'static str,
    /// Bound on each call.
    pub(crate) timeout: Duration,
    /// Bound on each connection attempt.
    pub(crate) connect_timeout: Duration,
    /// The connection manager's own bound on each command (`None`: only
    /// `timeout`, and a timed-out call keeps the connection).
    pub(crate) response_timeout: Option<Duration>,
    /// Consecutive failures that open the breaker (at least 1).
    pub(crate) breaker_failures: u32,
    /// How long the breaker stays open before one probe.
    pub(crate) breaker_open_for: Duration,
}

/// Why a call through a [`Link`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The breaker is open: the call did not touch the network.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// No answer within the call timeout.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Redis (or the connection to it) failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// A connection to Redis behind a circuit breaker. Cheap to clone (clones
/// share the connection and the breaker).
#[derive(Clone)]
pub(crate) struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    opts: LinkOptions,
    /// The connection manager in use; replaced when the breaker opens.
    conn: ArcSwap<ConnectionManager>,
    /// Whether a background reconnect task is running.
    reconnecting: AtomicBool,
    reconnect_max_delay: Duration,
    breaker: Breaker,
    settings: breaker::Settings,
    epoch: Instant,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.inner.opts.name)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to the Redis of `client`; connects on first use.
    pub(crate) fn new(client: Client, opts: LinkOptions) -> RedisResult<Link> {
        let conn = connection_manager(&client, opts.connect_timeout, opts.response_timeout)?;
        let open_for = opts.breaker_open_for;
        Ok(Link {
            inner: Arc::new(Inner {
                client,
                opts,
                conn: ArcSwap::from_pointee(conn),
                reconnecting: AtomicBool::new(false),
                // Reconnect at least twice per open period, so that the
                // half-open probe finds a connection soon after Redis is back.
                reconnect_max_delay: (open_for / 2)
                    .clamp(Duration::from_millis(10), Duration::from_secs(1)),
                breaker: Breaker::default(),
                settings: breaker_settings(opts.breaker_failures, open_for),
                epoch: Instant::now(),
            }),
        })
    }

    /// Connects now, for at most the connect timeout; if Redis does not
    /// answer, says so once and keeps reconnecting in the background.
    pub(crate) async fn connect_now(&self) {
        if let Err(reason) = self.inner.ping().await {
            tracing::warn!(
                breaker = self.inner.opts.name,
                error = %reason,
                "{}: cannot connect at start, reconnecting in the background",
                self.inner.opts.what
            );
            spawn_reconnect(&self.inner);
        }
    }

    /// The breaker's state now.
    pub(crate) fn breaker_state(&self) -> breaker::State {
        self.inner.breaker.state()
    }

    /// Runs `call` on the connection if the breaker lets it, bounded by the
    /// call timeout, and feeds its outcome to the breaker.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, LinkError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &self.inner;
        let (admission, change) = inner.breaker.admit(&inner.settings, inner.now_ms());
        if let Some(t) = change {
            inner.log_transition(t);
        }
        let Admission::Pass(permit) = admission else {
            return Err(LinkError::BreakerOpen);
        };
        let conn = (**inner.conn.load()).clone();
        let result = match tokio::time::timeout(inner.opts.timeout, call(conn)).await {
            Err(_elapsed) => Err(LinkError::Timeout(inner.opts.timeout)),
            Ok(Err(e)) => Err(LinkError::Redis(e)),
            Ok(Ok(v)) => Ok(v),
        };
        let change = inner
            .breaker
            .record(&inner.settings, permit, result.is_ok(), inner.now_ms());
        if let Some(t) = change {
            inner.log_transition(t);
            if let (breaker::State::Open, Err(e)) = (t.to(), &result) {
                inner.replace_connection(e);
            }
        }
        result
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One `PING` on the current connection, bounded by the connect timeout.
    async fn ping(&self) -> Result<(), String> {
        let mut conn = (**self.conn.load()).clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.opts.connect_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no connection within {} ms",
                self.opts.connect_timeout.as_millis()
            )),
        }
    }

    /// Puts a fresh connection manager in place of the current one and
    /// reconnects it in the background.
    fn replace_connection(self: &Arc<Self>, why: &LinkError) {
        match connection_manager(
            &self.client,
            self.opts.connect_timeout,
            self.opts.response_timeout,
        ) {
            Ok(fresh) => {
                self.conn.store(Arc::new(fresh));
                tracing::warn!(
                    breaker = self.opts.name,
                    error = %why,
                    "{}: connection dropped, reconnecting",
                    self.opts.what
                );
            }
            Err(e) => tracing::warn!(
                breaker = self.opts.name,
                error = %e,
                "{}: cannot replace the connection",
                self.opts.what
            ),
        }
        spawn_reconnect(self);
    }

    fn log_transition(&self, t: Transition) {
        let (name, what) = (self.opts.name, self.opts.what);
        let open_for_ms = u64::try_from(self.settings.open_for.as_millis()).unwrap_or(u64::MAX);
        match t {
            Transition::Opened(Trip::Consecutive { failures }) => tracing::warn!(
                breaker = name,
                state = "open",
                consecutive_failures = failures,
                open_for_ms,
                "{what} circuit breaker opened"
            ),
            Transition::Opened(Trip::FailureRate { failed, total }) => tracing::warn!(
                breaker = name,
                state = "open",
                failed,
                total,
                open_for_ms,
                "{what} circuit breaker opened"
            ),
            Transition::Reopened => tracing::warn!(
                breaker = name,
                state = "open",
                open_for_ms,
                "{what} circuit breaker probe failed, open again"
            ),
            Transition::HalfOpened => tracing::info!(
                breaker = name,
                state = "half_open",
                "{what} circuit breaker half-open, probing"
            ),
            Transition::Closed => tracing::info!(
                breaker = name,
                state = "closed",
                "{what} circuit breaker closed, redis is back"
            ),
        }
    }
}

/// Starts the background reconnect loop (a `PING` on the current
/// connection, with a growing pause) unless one is running. The task holds
/// only a weak reference between attempts, so it ends when the link is
/// dropped.
fn spawn_reconnect(inner: &Arc<Inner>) {
    if inner.reconnecting.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(inner);
    let max_delay = inner.reconnect_max_delay;
    tokio::spawn(async move {
        // However the task ends (connected, link dropped, or the runtime
        // dropping the task), the next failure may start a new one.
        let _running = ReconnectingFlag(weak.clone());
        let mut delay = Duration::from_millis(10).min(max_delay);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            match inner.ping().await {
                Ok(()) => {
                    tracing::info!(breaker = inner.opts.name, "{}: connected", inner.opts.what);
                    return;
                }
                Err(reason) => tracing::debug!(
                    breaker = inner.opts.name,
                    error = %reason,
                    "{}: reconnect failed",
                    inner.opts.what
                ),
            }
            drop(inner);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(max_delay);
        }
    });
}

/// Clears [`Inner::reconnecting`] when the reconnect task ends.
struct ReconnectingFlag(Weak<Inner>);

impl Drop for ReconnectingFlag {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.reconnecting.store(false, Ordering::Release);
        }
    }
}
