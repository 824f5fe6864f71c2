//! [`StoreQuotas`]: quotas counted in memory and flushed to the key store in
//! one batch per interval (the one-node default).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;

use crate::auth::Timestamp;
use crate::store::KeyStore;

use super::*;

/// Quotas counted in memory and saved to the key store in batches: the
/// default, and what survives a restart on one node.
///
/// Call [`StoreQuotas::spawn_flush`] (or [`StoreQuotas::flush`]) to save
/// the counts; without it nothing is written.
#[derive(Debug)]
pub struct StoreQuotas {
    pub(super) store: Arc<dyn KeyStore>,
    /// Bounds each store call: a first load, a flush.
    pub(super) timeout: Duration,
    /// Counters by period id, then by key.
    pub(super) periods: Mutex<HashMap<String, PeriodCounters>>,
    /// The latest `now` charged: periods that ended before it are dropped
    /// once flushed.
    pub(super) latest: AtomicI64,
}

/// The counters of one period.
#[derive(Debug)]
pub(super) struct PeriodCounters {
    /// When the period ends.
    pub(super) resets_at: Timestamp,
    pub(super) counters: HashMap<String, Arc<Counter>>,
}

/// One key's counter in one period.
#[derive(Debug, Default)]
pub(super) struct Counter {
    /// The usage stored before this process counted: loaded once, by the
    /// first request (the others wait for that load rather than start their
    /// own).
    pub(super) stored: OnceCell<u64>,
    pub(super) counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Requests this process allowed since the load.
    pub(super) counted: u64,
    /// Of those, not yet handed to a flush.
    pub(super) pending: u64,
    /// Handed to a flush that has not finished.
    pub(super) in_flight: u64,
    /// Dropped from the map: a charge that still holds it starts over.
    pub(super) retired: bool,
}

/// A flush's share of one counter.
pub(super) struct Delta {
    pub(super) counter: Arc<Counter>,
    pub(super) key: String,
    pub(super) period: String,
    pub(super) count: u64,
}

/// How often a charge starts over after its counter was dropped under it
/// (only around the end of a period) before giving up.
pub(super) const CHARGE_ATTEMPTS: usize = 3;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StoreQuotas {
    /// Counts in memory over `store`, bounding each store call (a key's
    /// first load in a period, a flush) by `timeout`.
    pub fn new(store: Arc<dyn KeyStore>, timeout: Duration) -> StoreQuotas {
        StoreQuotas {
            store,
            timeout,
            periods: Mutex::new(HashMap::new()),
            latest: AtomicI64::new(i64::MIN),
        }
    }

    /// Saves the counts every `every` until `stop` turns true (or its sender
    /// is dropped), then once more.
    pub fn spawn_flush(
        self: &Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let quotas = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !*stop.borrow_and_update() {
                tokio::select! {
                    _ = ticks.tick() => quotas.flush().await,
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
            quotas.flush().await;
        })
    }

    /// Adds the requests counted since the last flush to the store, in one
    /// batch, then drops the counters of periods that have ended. On a store
    /// error (or timeout) the counts are kept for the next flush, and the
    /// error is logged.
    pub async fn flush(&self) {
        let deltas = self.take_pending();
        if !deltas.is_empty() {
            let batch: Vec<(String, String, u64)> = deltas
                .iter()
                .map(|d| (d.key.clone(), d.period.clone(), d.count))
                .collect();
            let result = tokio::time::timeout(self.timeout, self.store.add_quota_usage(&batch))
                .await
                .map_err(|_| QuotaError::Unavailable(self.timed_out()))
                .and_then(|r| r.map_err(QuotaError::Store));
            let saved = result.is_ok();
            for delta in &deltas {
                let mut counts = lock(&delta.counter.counts);
                counts.in_flight = counts.in_flight.saturating_sub(delta.count);
                if !saved {
                    counts.pending += delta.count;
                }
            }
            if let Err(err) = result {
                tracing::warn!(
                    error = %err,
                    keys = batch.len(),
                    "could not save quota usage; keeping it for the next flush"
                );
                return;
            }
        }
        self.drop_ended();
    }

    /// Hands every counter's pending requests to a flush.
    fn take_pending(&self) -> Vec<Delta> {
        let periods = lock(&self.periods);
        let mut deltas = Vec::new();
        for (period, counters) in periods.iter() {
            for (key, counter) in &counters.counters {
                let mut counts = lock(&counter.counts);
                if counts.pending > 0 {
                    deltas.push(Delta {
                        counter: Arc::clone(counter),
                        key: key.clone(),
                        period: period.clone(),
                        count: counts.pending,
                    });
                    counts.in_flight += counts.pending;
                    counts.pending = 0;
                }
            }
        }
        deltas
    }

    /// Drops the saved counters of periods that ended before the latest
    /// charge.
    fn drop_ended(&self) {
        let latest = self.latest.load(Ordering::Relaxed);
        let mut periods = lock(&self.periods);
        periods.retain(|_, period| {
            if period.resets_at > latest {
                return true;
            }
            period.counters.retain(|_, counter| {
                let mut counts = lock(&counter.counts);
                if counts.pending == 0 && counts.in_flight == 0 {
                    counts.retired = true;
                    false
                } else {
                    true
                }
            });
            !period.counters.is_empty()
        });
    }

    /// The counter of `key` in `period`, created if new.
    fn counter(&self, key: &str, period: &str, resets_at: Timestamp) -> Arc<Counter> {
        let mut periods = lock(&self.periods);
        let counters = periods
            .entry(period.to_owned())
            .or_insert_with(|| PeriodCounters {
                resets_at,
                counters: HashMap::new(),
            });
        if let Some(counter) = counters.counters.get(key) {
            return Arc::clone(counter);
        }
        Arc::clone(counters.counters.entry(key.to_owned()).or_default())
    }

    /// Reads the stored usage of `key` in `period`, bounded by the timeout.
    async fn load(&self, key: &str, period: &str) -> Result<u64, QuotaError> {
        tokio::time::timeout(self.timeout, self.store.quota_usage(key, period))
            .await
            .map_err(|_| QuotaError::Unavailable(self.timed_out()))?
            .map_err(QuotaError::Store)
    }

    fn timed_out(&self) -> String {
        format!("the store did not answer within {:?}", self.timeout)
    }
}

#[async_trait::async_trait]
impl QuotaCounter for StoreQuotas {
    async fn charge(
        &self,
        key: &str,
        quota: &Quota,
        now: Timestamp,
    ) -> Result<QuotaDecision, QuotaError> {
        let period = quota.period_id(now);
        let resets_at = quota.resets_at(now);
        self.latest.fetch_max(now, Ordering::Relaxed);
        for _ in 0..CHARGE_ATTEMPTS {
            let counter = self.counter(key, &period, resets_at);
            let stored = *counter
                .stored
                .get_or_try_init(|| self.load(key, &period))
                .await?;
            let mut counts = lock(&counter.counts);
            if counts.retired {
                continue;
            }
            let decision =
                QuotaDecision::new(quota, stored.saturating_add(counts.counted), resets_at);
            if decision.allowed {
                counts.counted += 1;
                counts.pending += 1;
            }
            return Ok(decision);
        }
        Err(QuotaError::Unavailable(
            "the quota period ended while counting".to_owned(),
        ))
    }
}
