//! The in-process rate limiter: governor GCRA keyed limiters, one per
//! distinct [`Limit`], with memory bounded by pruning.
//!
//! It owns the per-key GCRA state of this gateway instance only: two
//! gateways each give a client the full budget (use the Redis limiter for a
//! shared one). It does not choose keys or limits; the caller passes both.
//!
//! # Keys
//!
//! A key is never stored as given. It is hashed to 128 bits with SipHash-1-3
//! under a random per-process key (std's `RandomState`), once with a `0`
//! and once with a `1` domain byte in front. So every client costs the same
//! fixed-size entry however long its key is, checking an existing key does
//! not allocate, and as the hash key is secret and changes with every start
//! nobody can compute two keys that share a budget (accidental collisions
//! among `n` live keys have probability about `n² / 2^129`). Since the
//! stored key is already a keyed pseudo-random value, the maps hash it with
//! a pass-through hasher instead of hashing it a second time.
//!
//! # Memory
//!
//! Every distinct key creates an entry: a client sending random keys (or an
//! IPv6 client, if it were not keyed by its /64) would grow memory without
//! bound. [`LocalLimiter::prune`] drops every entry whose bucket is full
//! again — such an entry is indistinguishable from a missing one, so
//! pruning never changes a decision — and gives the memory back; it also
//! drops the limiter of a [`Limit`] that has no entries left (after a
//! reload removed a plan, say). [`LocalLimiter::spawn_pruner`] runs it
//! periodically, off the async runtime. Between prunes memory is bounded by
//! the number of distinct keys seen in one period (about 40 bytes each).
//!
//! # Caveats
//!
//! * `Decision::reset` of an *allowed* request is derived from the remaining
//!   count (`(burst − remaining) × interval`), because governor's state
//!   snapshot does not expose the exact theoretical arrival time. It is an
//!   upper bound, late by less than one interval. For a refused request
//!   `retry_after` and `reset` are exact.
//! * A limit too large for governor's nanosecond arithmetic is clamped:
//!   burst 0 counts as 1, the interval is at least 1 ns and the window
//!   (burst × interval) at most [`MAX_WINDOW`]. Config validation should
//!   reject such limits before they get here.
//! * A prune that drops an emptied limiter at the very moment a request
//!   charges it forgets that one request (the client's next request sees a
//!   fresh bucket).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Decision, Limit, LimitError, Limiter};

/// The longest window (burst × interval) a limit may have; longer ones are
/// clamped to it. Ten years keeps governor's nanosecond sums far from
/// overflowing.
pub const MAX_WINDOW: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The shortest period [`LocalLimiter::spawn_pruner`] accepts.
const MIN_PRUNE_EVERY: Duration = Duration::from_millis(1);

/// A key as stored: 128 bits of keyed SipHash (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
struct KeyId {
    lo: u64,
    hi: u64,
}

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Half of a keyed PRF output is already a good hash.
        state.write_u64(self.lo);
    }
}

/// Builds [`PassThrough`] hashers for maps keyed by [`KeyId`].
#[derive(Clone, Copy, Default)]
struct PassThroughState;

impl BuildHasher for PassThroughState {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// A hasher that returns the `u64` it was given ([`KeyId`] writes exactly
/// one). Other input is folded in FNV-1a style so it is at least correct.
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// governor's keyed GCRA limiter as used here.
type KeyedGcra<C> =
    RateLimiter<KeyId, DashMapStateStore<KeyId, PassThroughState>, C, StateInformationMiddleware>;

/// The limiter of one [`Limit`], with the quota it actually enforces.
struct Bucket<C: Clock> {
    gcra: KeyedGcra<C>,
    burst: u32,
    interval: Duration,
    /// GCRA's tolerance: `(burst − 1) × interval`.
    tau: Duration,
}

impl<C: Clock> Bucket<C> {
    fn new(limit: &Limit, clock: C) -> Self {
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let interval = limit
            .rate
            .interval()
            .max(Duration::from_nanos(1))
            .min(MAX_WINDOW / burst.get());
        // `with_period` refuses only a zero interval, which was ruled out.
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let interval = quota.replenish_interval();
        Bucket {
            gcra: RateLimiter::dashmap_with_clock_and_hasher(quota, clock, PassThroughState)
                .with_middleware::<StateInformationMiddleware>(),
            burst: burst.get(),
            interval,
            tau: interval.saturating_mul(burst.get() - 1),
        }
    }

    fn decide(&self, key: &KeyId) -> Decision {
        match self.gcra.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity().min(self.burst);
                Decision {
                    allowed: true,
                    limit: self.burst,
                    remaining,
                    reset: self.interval.saturating_mul(self.burst - remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                Decision {
                    allowed: false,
                    limit: self.burst,
                    remaining: 0,
                    reset: wait.saturating_add(self.tau),
                    retry_after: Some(wait),
                }
            }
        }
    }
}

/// The in-process [`Limiter`]: one governor keyed GCRA limiter per distinct
/// [`Limit`], keys hashed to 128 bits, pruned on demand or by
/// [`spawn_pruner`](LocalLimiter::spawn_pruner).
///
/// `C` is governor's clock: the default (quanta) in production,
/// [`governor::clock::FakeRelativeClock`] in tests via
/// [`with_clock`](LocalLimiter::with_clock).
pub struct LocalLimiter<C: Clock = DefaultClock> {
    clock: C,
    hash_key: RandomState,
    /// Read on every check (lock-free); replaced whole, rarely, when a new
    /// `Limit` shows up or a prune drops an empty one.
    buckets: ArcSwap<HashMap<Limit, Arc<Bucket<C>>>>,
}

impl LocalLimiter<DefaultClock> {
    /// A limiter on the real clock, with no keys yet.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for LocalLimiter<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("limits", &self.buckets.load().len())
            .finish_non_exhaustive()
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    /// A limiter on `clock` (every per-limit limiter gets a clone: with
    /// `FakeRelativeClock` advancing one advances all).
    pub fn with_clock(clock: C) -> Self {
        LocalLimiter {
            clock,
            hash_key: RandomState::new(),
            buckets: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Charges one request to `key` under `limit`, synchronously: the whole
    /// of [`Limiter::check`] for this limiter, which never fails. It takes
    /// no lock other than governor's per-shard map lock and allocates only
    /// when `key` (or `limit`) is new.
    pub fn check_sync(&self, key: &str, limit: &Limit) -> Decision {
        let key = self.key_id(key);
        if let Some(bucket) = self.buckets.load().get(limit) {
            return bucket.decide(&key);
        }
        self.bucket_for_new(limit).decide(&key)
    }

    /// Drops every key whose bucket is full again (it would decide exactly
    /// like a missing key), gives the freed memory back, and drops the
    /// limiters of limits left with no keys. Takes time linear in the number
    /// of keys and briefly write-locks each map shard in turn: call it off
    /// the async runtime (as [`spawn_pruner`](Self::spawn_pruner) does).
    pub fn prune(&self) {
        let buckets = self.buckets.load_full();
        let mut emptied = false;
        for bucket in buckets.values() {
            bucket.gcra.retain_recent();
            bucket.gcra.shrink_to_fit();
            emptied |= bucket.gcra.is_empty();
        }
        if emptied {
            self.buckets.rcu(|current| {
                current
                    .iter()
                    .filter(|(_, bucket)| !bucket.gcra.is_empty())
                    .map(|(limit, bucket)| (*limit, Arc::clone(bucket)))
                    .collect::<HashMap<_, _>>()
            });
        }
    }

    /// The number of keys held, over all limits (each key counts once per
    /// limit it was checked under).
    pub fn key_count(&self) -> usize {
        self.buckets.load().values().map(|b| b.gcra.len()).sum()
    }

    /// The number of distinct limits with a limiter.
    pub fn limit_count(&self) -> usize {
        self.buckets.load().len()
    }

    fn key_id(&self, key: &str) -> KeyId {
        KeyId {
            lo: self.hash_key.hash_one((0u8, key)),
            hi: self.hash_key.hash_one((1u8, key)),
        }
    }

    /// The slow path: adds a limiter for `limit` unless a concurrent call
    /// (or an earlier one) already did, and returns the one in the table.
    #[cold]
    fn bucket_for_new(&self, limit: &Limit) -> Arc<Bucket<C>> {
        let fresh = Arc::new(Bucket::new(limit, self.clock.clone()));
        let seen = self.buckets.rcu(|current| {
            if current.contains_key(limit) {
                Arc::clone(current)
            } else {
                let mut next = HashMap::clone(current);
                next.insert(*limit, Arc::clone(&fresh));
                Arc::new(next)
            }
        });
        match seen.get(limit) {
            Some(existing) => Arc::clone(existing),
            None => fresh,
        }
    }
}

impl<C> LocalLimiter<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Prunes every `every` (at least 1 ms; the first prune is one period
    /// after the start) on Tokio's blocking pool, until `stop` turns true,
    /// its sender is dropped, or the limiter itself is dropped (the task
    /// holds only a weak reference between prunes). Must be called from
    /// within a Tokio runtime.
    pub fn spawn_pruner(
        self: &Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let limiter = Arc::downgrade(self);
        let every = every.max(MIN_PRUNE_EVERY);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !*stop.borrow_and_update() {
                tokio::select! {
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    _ = ticks.tick() => {
                        let Some(limiter) = limiter.upgrade() else { break };
                        let pruned = tokio::task::spawn_blocking(move || {
                            let before = limiter.key_count();
                            limiter.prune();
                            (before, limiter.key_count())
                        });
                        match pruned.await {
                            Ok((before, after)) => {
                                tracing::debug!(before, after, "local rate limiter pruned");
                            }
                            Err(error) => {
                                tracing::warn!(%error, "local rate limiter prune failed");
                            }
                        }
                    }
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl<C> Limiter for LocalLimiter<C>
where
    C: Clock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    async fn check(&self, key: &str, limit: &Limit) -> Result<Decision, LimitError> {
        Ok(self.check_sync(key, limit))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::ratelimit::{Rate, client_key};

    fn limit(rate: &str, burst: u32) -> Limit {
        Limit {
            rate: Rate::parse(rate).unwrap(),
            burst,
        }
    }

    fn fake() -> (FakeRelativeClock, LocalLimiter<FakeRelativeClock>) {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(clock.clone());
        (clock, limiter)
    }

    #[test]
    fn burst_passes_next_is_refused_then_one_more_after_the_interval() {
        let cases = [
            ("10/s burst 10", limit("10/s", 10)),
            ("100/min burst 5", limit("100/min", 5)),
            ("1/s burst 1", limit("1/s", 1)),
            ("50/h burst 20", limit("50/h", 20)),
        ];
        for (name, limit) in cases {
            let (clock, limiter) = fake();
            let interval = limit.rate.interval();
            for i in 0..limit.burst {
                let d = limiter.check_sync("client", &limit);
                assert!(d.allowed, "{name}: request {i} of the burst");
                assert_eq!(d.retry_after, None, "{name}");
            }
            let refused = limiter.check_sync("client", &limit);
            assert!(!refused.allowed, "{name}: one past the burst");
            assert_eq!(refused.remaining, 0, "{name}");
            let wait = refused.retry_after.unwrap();
            assert!(
                wait <= interval && interval - wait < Duration::from_millis(1),
                "{name}: retry_after {wait:?} vs interval {interval:?}"
            );
            clock.advance(wait);
            assert!(
                limiter.check_sync("client", &limit).allowed,
                "{name}: after the wait"
            );
            assert!(
                !limiter.check_sync("client", &limit).allowed,
                "{name}: only one"
            );
        }
    }

    #[test]
    fn budgets_are_separate() {
        let a = limit("10/min", 3);
        let b = limit("10/min", 5); // same rate, other burst: another limiter
        struct Case {
            name: &'static str,
            spend: (&'static str, Limit),
            then: (&'static str, Limit),
            passes: u32,
        }
        let cases = [
            Case {
                name: "two keys do not share a budget",
                spend: ("api:c_1", a),
                then: ("api:c_2", a),
                passes: 3,
            },
            Case {
                name: "two limits on one key are independent",
                spend: ("api:c_1", a),
                then: ("api:c_1", b),
                passes: 5,
            },
            Case {
                name: "same key, same limit: shared",
                spend: ("api:c_1", a),
                then: ("api:c_1", a),
                passes: 0,
            },
        ];
        for case in cases {
            let (_clock, limiter) = fake();
            while limiter.check_sync(case.spend.0, &case.spend.1).allowed {}
            let passed = (0..10)
                .map(|_| limiter.check_sync(case.then.0, &case.then.1))
                .take_while(|d| d.allowed)
                .count();
            assert_eq!(passed, case.passes as usize, "{}", case.name);
        }
    }

    #[test]
    fn remaining_counts_down_and_reset_grows() {
        let limit = limit("10/s", 10);
        let t = Duration::from_millis(100);
        let (clock, limiter) = fake();
        for n in 1..=10u32 {
            let d = limiter.check_sync("k", &limit);
            assert!(d.allowed, "request {n}");
            assert_eq!(d.limit, 10, "request {n}");
            assert_eq!(d.remaining, 10 - n, "request {n}");
            assert_eq!(d.reset, t * n, "request {n}");
        }
        let d = limiter.check_sync("k", &limit);
        assert_eq!(
            (d.allowed, d.remaining, d.reset, d.retry_after),
            (false, 0, t * 10, Some(t)),
            "refused: full again after one interval plus the tolerance"
        );
        // Half an interval later the wait and the reset have shrunk by as much.
        clock.advance(t / 2);
        let d = limiter.check_sync("k", &limit);
        assert_eq!((d.reset, d.retry_after), (t * 10 - t / 2, Some(t / 2)));
        // Quiet for a full window: the bucket is full again.
        clock.advance(t * 10);
        let d = limiter.check_sync("k", &limit);
        assert_eq!((d.allowed, d.remaining, d.reset), (true, 9, t));
    }

    #[test]
    fn odd_limits_are_clamped_not_panicking() {
        let cases = [
            (
                "burst 0 counts as 1",
                Limit {
                    rate: Rate {
                        count: 1,
                        period: Duration::from_secs(1),
                    },
                    burst: 0,
                },
                1,
            ),
            (
                "zero interval",
                Limit {
                    rate: Rate {
                        count: u32::MAX,
                        period: Duration::from_millis(1),
                    },
                    burst: 3,
                },
                3,
            ),
            (
                "window beyond u64 nanoseconds",
                Limit {
                    rate: Rate {
                        count: 1,
                        period: Duration::from_secs(u64::MAX),
                    },
                    burst: u32::MAX,
                },
                u32::MAX,
            ),
        ];
        for (name, limit, burst) in cases {
            let (_clock, limiter) = fake();
            let d = limiter.check_sync("k", &limit);
            assert!(d.allowed, "{name}");
            assert_eq!(d.limit, burst, "{name}");
            assert!(d.reset <= MAX_WINDOW, "{name}");
        }
    }

    #[test]
    fn keys_are_hashed_to_distinct_fixed_ids() {
        let (_clock, limiter) = fake();
        let long = "x".repeat(64 * 1024);
        let cases = [
            ("empty vs one byte", "", "a"),
            ("prefix", "api:c_1", "api:c_12"),
            ("long keys differing in the last byte", &long[..], "x"),
        ];
        for (name, a, b) in cases {
            assert!(limiter.key_id(a) != limiter.key_id(b), "{name}");
            assert!(limiter.key_id(a) == limiter.key_id(a), "{name}: stable");
        }
        let mut other = long.clone();
        other.push('y');
        assert!(limiter.key_id(&long) != limiter.key_id(&other));
    }

    #[test]
    fn prune_keeps_live_keys_and_drops_stale_ones() {
        let limit = limit("10/s", 10); // interval 100 ms, window 1 s
        let (clock, limiter) = fake();
        for i in 0..100 {
            limiter.check_sync(&format!("old:{i}"), &limit);
        }
        clock.advance(Duration::from_millis(500));
        for i in 0..10 {
            // Five requests each: full again only after 500 ms.
            for _ in 0..5 {
                limiter.check_sync(&format!("busy:{i}"), &limit);
            }
        }
        assert_eq!(limiter.key_count(), 110);
        limiter.prune();
        assert_eq!(
            limiter.key_count(),
            10,
            "the stale single-request keys went"
        );
        // A kept key kept its state: 5 spent, 5 remain (4 after this one).
        assert_eq!(limiter.check_sync("busy:0", &limit).remaining, 4);
        clock.advance(Duration::from_secs(1));
        limiter.prune();
        assert_eq!((limiter.key_count(), limiter.limit_count()), (0, 0));
        // The dropped limiter comes back on demand, fresh.
        assert_eq!(limiter.check_sync("busy:0", &limit).remaining, 9);
        assert_eq!(limiter.limit_count(), 1);
    }

    /// A million distinct client addresses (half IPv4, half IPv6 in
    /// distinct /64s) through the check, then a prune once they are stale.
    /// The time it takes is measured by `cargo test -- --nocapture`, not
    /// asserted.
    #[test]
    fn a_million_random_clients_are_pruned_away() {
        const CLIENTS: u32 = 1_000_000;
        let limit = limit("10/s", 10);
        let (clock, limiter) = fake();
        let started = std::time::Instant::now();
        for i in 0..CLIENTS {
            let ip = if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
            } else {
                let [a, b, c, d] = i.to_be_bytes();
                let net = u16::from_be_bytes([a, b]);
                let sub = u16::from_be_bytes([c, d]);
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, sub, 0xdead, 0xbeef, 0, 1))
            };
            assert!(limiter.check_sync(&client_key(ip), &limit).allowed);
        }
        let checked = started.elapsed();
        let before = limiter.key_count();
        assert_eq!(before, CLIENTS as usize);
        clock.advance(Duration::from_secs(1));
        let prune_started = std::time::Instant::now();
        limiter.prune();
        let pruned = prune_started.elapsed();
        let after = limiter.key_count();
        eprintln!(
            "{CLIENTS} clients: checks {checked:?}, prune {pruned:?}, keys {before} -> {after}"
        );
        assert_eq!(after, 0);
    }

    #[test]
    fn same_64_is_one_key() {
        let limit = limit("10/s", 10);
        let (_clock, limiter) = fake();
        for host in 0..10_000u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 7, host, host, 0, 1));
            limiter.check_sync(&client_key(ip), &limit);
        }
        assert_eq!(limiter.key_count(), 1);
    }

    #[tokio::test]
    async fn the_pruner_prunes_and_stops() {
        let limit = limit("10/s", 10);
        let (clock, limiter) = fake();
        let limiter = Arc::new(limiter);
        for i in 0..1_000 {
            Limiter::check(&*limiter, &format!("k{i}"), &limit)
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let pruner = limiter.spawn_pruner(Duration::from_millis(5), stop_rx);
        let emptied = tokio::time::timeout(Duration::from_secs(5), async {
            while limiter.key_count() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(emptied.is_ok(), "the pruner emptied the limiter");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), pruner)
            .await
            .expect("the pruner stops when told")
            .unwrap();
    }

    #[tokio::test]
    async fn the_pruner_ends_with_its_limiter() {
        let limiter = Arc::new(LocalLimiter::new());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let pruner = limiter.spawn_pruner(Duration::from_millis(1), stop_rx);
        drop(limiter);
        tokio::time::timeout(Duration::from_secs(5), pruner)
            .await
            .expect("the pruner ends once the limiter is gone")
            .unwrap();
    }
}
