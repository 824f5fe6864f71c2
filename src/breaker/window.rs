//! [`Window`]: two counters over a sliding window of ten buckets, lock-free.
//! The breaker counts requests and failures in one (its failure rate); the
//! upstream retry budget counts requests and retries in another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: u64 = 10;

/// Two counters (`a`, `b`) over a sliding window of ten buckets, lock-free.
/// Times are milliseconds from the caller's own epoch; the window's length
/// is passed on every call (a config reload may change it).
#[derive(Default)]
pub(crate) struct Window {
    buckets: [Bucket; BUCKETS as usize],
}

#[derive(Default)]
struct Bucket {
    epoch: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

impl Window {
    fn width(window: Duration) -> u64 {
        (u64::try_from(window.as_millis()).unwrap_or(u64::MAX) / BUCKETS).max(1)
    }

    /// Adds `a` and `b` to the bucket of `now_ms`.
    pub(crate) fn add(&self, now_ms: u64, window: Duration, a: u64, b: u64) {
        let epoch = now_ms / Self::width(window) + 1;
        let Some(bucket) = self.buckets.get((epoch % BUCKETS) as usize) else {
            return;
        };
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch
            && bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.a.store(0, Ordering::Release);
            bucket.b.store(0, Ordering::Release);
        }
        bucket.a.fetch_add(a, Ordering::AcqRel);
        bucket.b.fetch_add(b, Ordering::AcqRel);
    }

    /// The sums of `a` and `b` over the window ending at `now_ms`.
    pub(crate) fn sum(&self, now_ms: u64, window: Duration) -> (u64, u64) {
        let epoch = now_ms / Self::width(window) + 1;
        self.buckets
            .iter()
            .filter(|b| b.epoch.load(Ordering::Acquire) + BUCKETS > epoch)
            .fold((0, 0), |(a, b), k| {
                (
                    a + k.a.load(Ordering::Acquire),
                    b + k.b.load(Ordering::Acquire),
                )
            })
    }

    /// Forgets everything counted.
    pub(crate) fn clear(&self) {
        for b in &self.buckets {
            b.epoch.store(0, Ordering::Release);
            b.a.store(0, Ordering::Release);
            b.b.store(0, Ordering::Release);
        }
    }
}
