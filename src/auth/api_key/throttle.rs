//! Failure budgets: bad keys are refused before they can cost anything
//! (above all argon2) once a budget is spent. There are two, built from one
//! generic [`FailureBudget`]: one per client (IPv4 address or IPv6 /64;
//! IPv4-mapped IPv6 counts as IPv4) and one per key id, so that many
//! addresses cannot keep argon2 busy guessing the secret of one known id.
//!
//! A governor keyed GCRA limiter is charged only on failures. governor has
//! no way to ask "would the next cell pass?" without spending it, so when a
//! failure spends the last cell (or is refused) the key is marked
//! blocked until the next cell is due, and every attempt first checks the
//! mark. Marks live at most one replenish interval (moka, bounded); losing
//! one early costs one extra attempt, after which the limiter marks the
//! key again. The limiter forgets keys whose budget is full again on
//! [`FailureBudget::prune`]; only failures add keys, and the per-key-id
//! budget is only charged for ids that are in the index (unknown ids never
//! reach argon2), so made-up keys cannot grow memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A client as the failure budget sees it: the key the connection caps
/// use too.
pub(super) use crate::conn::AddressKey as ClientKey;

/// What a budget can be kept for (a client, a key id).
pub(super) trait BudgetKey: Clone + Hash + Eq + Send + Sync + 'static {}
impl<K: Clone + Hash + Eq + Send + Sync + 'static> BudgetKey for K {}

pub(super) struct FailureBudget<K: BudgetKey> {
    limiter: DefaultKeyedRateLimiter<K, StateInformationMiddleware>,
    blocked: moka::sync::Cache<K, Instant>,
    interval: Duration,
    /// argon2 runs in flight per key: the budget is only charged once a
    /// run has failed, so without this cap one client (or many clients on
    /// one key id) could start many runs at once (an h2 connection of 100
    /// streams) before the first failure.
    verifying: Mutex<HashMap<K, u32>>,
}

/// argon2 runs one client may have in flight at once.
pub(super) const MAX_VERIFYING_PER_CLIENT: u32 = 2;
/// argon2 runs of distinct presented keys for one key id in flight at once
/// (the same presented key shares one run, so legitimate traffic of one
/// key never needs more than one).
pub(super) const MAX_VERIFYING_PER_KEY: u32 = 2;

/// One of a key's in-flight verification places; given back on drop.
/// It travels with the argon2 run onto the blocking pool, so a request that
/// is cancelled mid-run does not free its place early.
pub(super) struct VerifySlot<K: BudgetKey> {
    budget: Arc<FailureBudget<K>>,
    key: K,
}

impl<K: BudgetKey> Drop for VerifySlot<K> {
    fn drop(&mut self) {
        let mut map = self
            .budget
            .verifying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl<K: BudgetKey> FailureBudget<K> {
    /// `per_minute` failures sustained, `burst` at once; zeros count as 1.
    /// At most `capacity` keys are marked blocked at a time.
    pub(super) fn new(per_minute: u32, burst: u32, capacity: u64) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let interval = quota.replenish_interval();
        Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            blocked: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1))
                .time_to_live(interval + Duration::from_secs(1))
                .build(),
            interval,
            verifying: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more argon2 run of this key, or `None` when it
    /// already has `max` in flight. The map only holds keys with a run in
    /// flight.
    pub(super) fn verify_slot(self: &Arc<Self>, key: &K, max: u32) -> Option<VerifySlot<K>> {
        let mut map = self
            .verifying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(VerifySlot {
            budget: Arc::clone(self),
            key: key.clone(),
        })
    }

    /// `Err(retry_after_secs)` if the key has no failures left.
    pub(super) fn check(&self, key: &K) -> Result<(), u64> {
        match self.blocked.get(key) {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Err(ceil_secs(left)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Spends one failure of the key's budget.
    pub(super) fn charge(&self, key: &K) {
        let wait = match self.limiter.check_key(key) {
            Ok(state) if state.remaining_burst_capacity() == 0 => self.interval,
            Ok(_) => return,
            Err(not_until) => not_until.wait_time_from(self.limiter.clock().now()),
        };
        self.blocked.insert(key.clone(), Instant::now() + wait);
    }

    /// Forgets keys whose budget is full again (and expired marks).
    pub(super) fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.blocked.run_pending_tasks();
    }

    /// Keys the limiter currently tracks.
    pub(super) fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn client_keys() {
        let cases: [(&str, &str, &str, bool); 6] = [
            ("same v4", "192.0.2.1", "192.0.2.1", true),
            ("neighbour v4", "192.0.2.1", "192.0.2.2", false),
            (
                "same /64",
                "2001:db8:1:2::1",
                "2001:db8:1:2:ffff:ffff:ffff:ffff",
                true,
            ),
            ("next /64", "2001:db8:1:2::1", "2001:db8:1:3::1", false),
            ("v4-mapped is v4", "::ffff:192.0.2.1", "192.0.2.1", true),
            (
                "v4-mapped neighbour",
                "::ffff:192.0.2.2",
                "192.0.2.1",
                false,
            ),
        ];
        for (name, a, b, same) in cases {
            let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(
                ClientKey::from(a) == ClientKey::from(b),
                same,
                "case {name}"
            );
        }
    }

    #[test]
    fn blocks_after_burst_and_tells_when() {
        let budget = FailureBudget::<ClientKey>::new(1, 3, 100);
        let ip = ClientKey::from("198.51.100.7".parse::<IpAddr>().unwrap());
        for _ in 0..2 {
            budget.charge(&ip);
            assert_eq!(budget.check(&ip), Ok(()));
        }
        budget.charge(&ip);
        let retry = budget.check(&ip).unwrap_err();
        assert!((1..=60).contains(&retry), "{retry}");
        let other = ClientKey::from("198.51.100.8".parse::<IpAddr>().unwrap());
        assert_eq!(budget.check(&other), Ok(()));
        budget.prune();
        assert_eq!(budget.tracked(), 1);
        assert!(budget.check(&ip).is_err());
    }

    #[test]
    fn key_id_budgets_and_places_are_per_key() {
        let budget = Arc::new(FailureBudget::<Arc<str>>::new(1, 2, 100));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("key-a"), Arc::from("key-b"));
        budget.charge(&a);
        assert_eq!(budget.check(&a), Ok(()), "one failure left");
        budget.charge(&a);
        assert!(budget.check(&a).is_err(), "spent");
        assert_eq!(budget.check(&b), Ok(()), "another id is unaffected");

        let first = budget.verify_slot(&a, 2);
        let second = budget.verify_slot(&a, 2);
        assert!(first.is_some() && second.is_some());
        assert!(budget.verify_slot(&a, 2).is_none(), "two in flight at most");
        assert!(budget.verify_slot(&b, 2).is_some(), "per key");
        drop(first);
        assert!(budget.verify_slot(&a, 2).is_some(), "given back on drop");
    }

    #[test]
    fn ceil() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(6)), 6);
        assert_eq!(ceil_secs(Duration::from_millis(6001)), 7);
    }
}
