//! [`Tally`]: usage counted in memory on the request path, and the
//! recent refusals per consumer.
//!
//! Counting a request is one lock of one of [`SHARDS`] small maps (chosen
//! by the key id's hash, so two cores rarely meet) and eight adds; nothing
//! is written to the store per request. The map holds one entry per
//! consumer, key and minute since the last flush, at most
//! `max_entries` in all: when it is full, requests of new entries are not
//! counted but counted as dropped (`gatehouse_usage_dropped_requests_total`),
//! so a flood of keys cannot grow memory. Only authenticated API-key
//! callers are metered, so the number of entries is bounded by the keys in
//! the store anyway.
//!
//! The refusals table keeps the last [`REFUSALS_PER_CONSUMER`] refusals of
//! at most [`REFUSAL_CONSUMERS`] consumers, for the console. Only refused
//! requests touch it, under a `try_lock` that skips rather than waits.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::{Timestamp, UsageCounts, UsageDelta, UsageGrain};

/// Maps the counters are spread over.
pub const SHARDS: usize = 8;
/// Refusals kept per consumer.
pub const REFUSALS_PER_CONSUMER: usize = 20;
/// Consumers whose refusals are kept.
pub const REFUSAL_CONSUMERS: usize = 1000;

/// One request as the meter sees it, at the end of its answer.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The consumer's id.
    pub consumer: &'a Arc<str>,
    /// The key's id.
    pub key: &'a Arc<str>,
    /// The answer's status.
    pub status: u16,
    /// The gateway's error code, when it refused or failed the request.
    pub error: Option<&'static str>,
    /// The gateway refused it (a client fault, not a server one).
    pub refused: bool,
    /// The matched route.
    pub route: Option<&'a Arc<str>>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// When it ended.
    pub at: Timestamp,
}

/// A refused request of a consumer, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// When.
    pub at: Timestamp,
    /// With which key.
    pub key_id: Arc<str>,
    /// The status it got.
    pub status: u16,
    /// The error code it got.
    pub code: &'static str,
    /// The route it was for.
    pub route: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    consumer: Arc<str>,
    key: Arc<str>,
    minute: Timestamp,
}

/// The meter's Prometheus counters (no-ops when metrics are off).
#[derive(Debug, Clone)]
pub struct UsageMeters {
    /// Requests not counted: the table was full, or a flush's outcome
    /// was unknown.
    pub dropped: metrics::Counter,
    /// Flushes that wrote their batch.
    pub flushed: metrics::Counter,
    /// Flushes that failed (their batch is kept for the next one).
    pub failed: metrics::Counter,
}

impl Default for UsageMeters {
    /// Counters that count nothing.
    fn default() -> Self {
        UsageMeters {
            dropped: metrics::Counter::noop(),
            flushed: metrics::Counter::noop(),
            failed: metrics::Counter::noop(),
        }
    }
}

/// Usage counted since the last flush, and recent refusals.
#[derive(Debug)]
pub struct Tally {
    shards: [Mutex<HashMap<Slot, UsageCounts>>; SHARDS],
    entries: AtomicUsize,
    max_entries: usize,
    dropped: AtomicU64,
    refusals: Mutex<HashMap<Arc<str>, VecDeque<Refusal>>>,
    pub(super) meters: UsageMeters,
}

impl Tally {
    /// An empty meter holding at most `max_entries` consumer, key and
    /// minute entries between flushes.
    pub fn new(max_entries: usize, meters: UsageMeters) -> Tally {
        Tally {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            entries: AtomicUsize::new(0),
            max_entries,
            dropped: AtomicU64::new(0),
            refusals: Mutex::new(HashMap::new()),
            meters,
        }
    }

    /// Counts one finished request.
    pub fn record(&self, seen: &Seen<'_>) {
        let one = UsageCounts {
            requests: 1,
            status_2xx: u64::from((200..300).contains(&seen.status)),
            status_3xx: u64::from((300..400).contains(&seen.status)),
            status_4xx: u64::from((400..500).contains(&seen.status)),
            status_5xx: u64::from(seen.status >= 500),
            bytes_in: seen.bytes_in,
            bytes_out: seen.bytes_out,
            rate_limited: u64::from(matches!(
                seen.error,
                Some("rate_limited" | "quota_exceeded")
            )),
        };
        let slot = Slot {
            consumer: seen.consumer.clone(),
            key: seen.key.clone(),
            minute: UsageGrain::Minute.start_of(seen.at),
        };
        if !self.add(slot, &one) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.meters.dropped.increment(1);
        }
        if seen.refused
            && let Some(code) = seen.error
        {
            self.remember_refusal(seen, code);
        }
    }

    /// Adds `counts` to `slot`'s entry; false when the table is full and
    /// `slot` has none.
    fn add(&self, slot: Slot, counts: &UsageCounts) -> bool {
        let mut hasher = DefaultHasher::new();
        slot.key.hash(&mut hasher);
        let shard = usize::try_from(hasher.finish() % SHARDS as u64).unwrap_or(0);
        let mut map = match self.shards[shard].lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(entry) = map.get_mut(&slot) {
            entry.add(counts);
            return true;
        }
        // Reserve an entry first, so concurrent inserts cannot overshoot.
        if self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_entries).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        map.insert(slot, *counts);
        true
    }

    fn remember_refusal(&self, seen: &Seen<'_>, code: &'static str) {
        let Ok(mut table) = self.refusals.try_lock() else {
            return;
        };
        if !table.contains_key(seen.consumer) && table.len() >= REFUSAL_CONSUMERS {
            // Make room: forget the consumer refused longest ago.
            let stalest = table
                .iter()
                .min_by_key(|(_, list)| list.front().map_or(Timestamp::MIN, |r| r.at))
                .map(|(consumer, _)| consumer.clone());
            if let Some(consumer) = stalest {
                table.remove(&consumer);
            }
        }
        let list = table.entry(seen.consumer.clone()).or_default();
        if list.len() >= REFUSALS_PER_CONSUMER {
            list.pop_back();
        }
        list.push_front(Refusal {
            at: seen.at,
            key_id: seen.key.clone(),
            status: seen.status,
            code,
            route: seen.route.cloned(),
        });
    }

    /// The consumer's recent refusals on this gateway, newest first.
    pub fn recent_refusals(&self, consumer_id: &str) -> Vec<Refusal> {
        let table = match self.refusals.lock() {
            Ok(table) => table,
            Err(poisoned) => poisoned.into_inner(),
        };
        table
            .get(consumer_id)
            .map(|list| list.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes everything counted so far, as deltas, leaving the meter empty.
    pub(super) fn take(&self) -> Vec<UsageDelta> {
        let mut batch = Vec::new();
        for shard in &self.shards {
            let map = {
                let mut map = match shard.lock() {
                    Ok(map) => map,
                    Err(poisoned) => poisoned.into_inner(),
                };
                std::mem::take(&mut *map)
            };
            self.entries.fetch_sub(map.len(), Ordering::Relaxed);
            batch.extend(map.into_iter().map(|(slot, counts)| UsageDelta {
                consumer_id: slot.consumer.to_string(),
                key_id: slot.key.to_string(),
                minute: slot.minute,
                counts,
            }));
        }
        batch
    }

    /// Requests not counted since the meter was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `requests` more as dropped (a flush lost them).
    pub(super) fn drop_requests(&self, requests: u64) {
        self.dropped.fetch_add(requests, Ordering::Relaxed);
        self.meters.dropped.increment(requests);
    }

    /// The most entries held between flushes.
    pub(super) fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(consumer: &'a Arc<str>, key: &'a Arc<str>, status: u16, at: Timestamp) -> Seen<'a> {
        Seen {
            consumer,
            key,
            status,
            error: None,
            refused: false,
            route: None,
            bytes_in: 10,
            bytes_out: 100,
            at,
        }
    }

    fn counts_of(batch: &[UsageDelta], key: &str, minute: Timestamp) -> UsageCounts {
        batch
            .iter()
            .find(|d| d.key_id == key && d.minute == minute)
            .map(|d| d.counts)
            .unwrap_or_default()
    }

    #[test]
    fn requests_are_counted_per_key_and_minute_by_status_class() {
        let meter = Tally::new(100, UsageMeters::default());
        let (c, k1, k2): (Arc<str>, Arc<str>, Arc<str>) = ("c_a".into(), "k1".into(), "k2".into());
        let cases: [(&Arc<str>, u16, Option<&'static str>, Timestamp); 6] = [
            (&k1, 200, None, 60),
            (&k1, 204, None, 119),
            (&k1, 301, None, 61),
            (&k1, 429, Some("rate_limited"), 100),
            (&k1, 503, Some("upstream_unavailable"), 120),
            (&k2, 429, Some("quota_exceeded"), 60),
        ];
        for (key, status, error, at) in cases {
            meter.record(&Seen {
                error,
                ..seen(&c, key, status, at)
            });
        }
        let batch = meter.take();
        assert_eq!(batch.len(), 3, "{batch:?}");
        let first = counts_of(&batch, "k1", 60);
        assert_eq!(
            first,
            UsageCounts {
                requests: 4,
                status_2xx: 2,
                status_3xx: 1,
                status_4xx: 1,
                status_5xx: 0,
                bytes_in: 40,
                bytes_out: 400,
                rate_limited: 1,
            }
        );
        assert_eq!(counts_of(&batch, "k1", 120).status_5xx, 1);
        assert_eq!(
            counts_of(&batch, "k2", 60).rate_limited,
            1,
            "quotas count too"
        );
        assert!(meter.take().is_empty(), "take empties the meter");
    }

    #[test]
    fn a_full_table_drops_new_entries_but_counts_existing_ones() {
        let meter = Tally::new(2, UsageMeters::default());
        let c: Arc<str> = "c_a".into();
        let keys: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("k{i}"))).collect();
        for key in &keys {
            meter.record(&seen(&c, key, 200, 0));
        }
        meter.record(&seen(&c, &keys[0], 200, 0));
        assert_eq!(meter.dropped(), 1);
        let batch = meter.take();
        assert_eq!(batch.len(), 2);
        assert_eq!(counts_of(&batch, "k0", 0).requests, 2);
        // The flush frees the table.
        meter.record(&seen(&c, &keys[2], 200, 0));
        assert_eq!(meter.take().len(), 1);
        assert_eq!(meter.dropped(), 1);
    }

    #[test]
    fn refusals_are_kept_newest_first_and_bounded() {
        let meter = Tally::new(100, UsageMeters::default());
        let (c, k): (Arc<str>, Arc<str>) = ("c_a".into(), "k1".into());
        let route: Arc<str> = "orders".into();
        for at in 0..(REFUSALS_PER_CONSUMER as i64 + 5) {
            meter.record(&Seen {
                error: Some("rate_limited"),
                refused: true,
                route: Some(&route),
                ..seen(&c, &k, 429, at)
            });
        }
        // A server fault is no refusal.
        meter.record(&Seen {
            error: Some("upstream_unavailable"),
            ..seen(&c, &k, 503, 1_000)
        });
        let list = meter.recent_refusals("c_a");
        assert_eq!(list.len(), REFUSALS_PER_CONSUMER);
        assert_eq!(list[0].at, REFUSALS_PER_CONSUMER as i64 + 4);
        assert_eq!(list[0].code, "rate_limited");
        assert_eq!(list[0].route.as_deref(), Some("orders"));
        assert!(meter.recent_refusals("c_other").is_empty());
    }

    #[test]
    fn the_refusal_table_forgets_the_stalest_consumer_when_full() {
        let meter = Tally::new(10, UsageMeters::default());
        let k: Arc<str> = "k".into();
        let consumers: Vec<Arc<str>> = (0..=REFUSAL_CONSUMERS)
            .map(|i| Arc::from(format!("c_{i}")))
            .collect();
        for (i, c) in consumers.iter().enumerate() {
            meter.record(&Seen {
                error: Some("forbidden"),
                refused: true,
                ..seen(c, &k, 403, i as i64)
            });
        }
        assert!(meter.recent_refusals("c_0").is_empty(), "the stalest went");
        assert_eq!(meter.recent_refusals("c_1").len(), 1);
        assert_eq!(
            meter
                .recent_refusals(&format!("c_{REFUSAL_CONSUMERS}"))
                .len(),
            1
        );
    }
}
