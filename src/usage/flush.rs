//! [`UsageMeter`]: the tally, and its flushes to the store.
//!
//! Every `flush_interval` the counts since the last flush go to the store
//! in one transaction ([`KeyStore::add_usage`]), which adds them to the
//! minute and day rollups, so several gateways on one store add up. A
//! flush that fails (the store answered an error, so its transaction
//! rolled back) keeps its batch for the next one, up to `max_entries`
//! entries; beyond that, and when a flush's outcome is unknown (it timed
//! out, so it may have committed), the requests are counted as dropped
//! rather than risk counting them twice. Once an hour the flush task also
//! deletes rows older than their rollup's retention. After draining,
//! shutdown flushes once more ([`UsageMeter::flush`]), so a graceful stop
//! loses nothing; a crash loses what was counted since the last flush.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::tally::{Refusal, Seen, Tally, UsageMeters};
use crate::store::{KeyStore, StoreError, Timestamp, UsageDelta, UsageGrain};

/// How the meter flushes and what it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    /// Time between flushes (and so the most a crash loses).
    pub flush_interval: Duration,
    /// How long minute rows are kept (hourly reports reach back this far).
    pub minute_retention: Duration,
    /// How long day rows are kept.
    pub day_retention: Duration,
    /// Most consumer, key and minute entries held between flushes.
    pub max_entries: usize,
    /// Time allowed for one store call (a flush, a prune).
    pub store_timeout: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            flush_interval: Duration::from_secs(10),
            minute_retention: Duration::from_secs(7 * 86_400),
            day_retention: Duration::from_secs(400 * 86_400),
            max_entries: 100_000,
            store_timeout: Duration::from_secs(10),
        }
    }
}

/// How often the flush task prunes old rows.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

/// Why a flush did not write its batch.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The store refused it; the batch is kept for the next flush.
    #[error("the store refused the usage batch")]
    Store(#[source] StoreError),
    /// It took longer than `store_timeout`: it may have been written, so
    /// its requests are counted as dropped, never twice.
    #[error("the usage flush timed out after {0:?}")]
    TimedOut(Duration),
}

/// Usage counted in memory and flushed to the store in batches.
#[derive(Debug)]
pub struct UsageMeter {
    tally: Tally,
    store: Arc<dyn KeyStore>,
    settings: UsageSettings,
    /// A failed flush's batch, written with the next one. The lock also
    /// makes flushes take turns.
    pending: tokio::sync::Mutex<Vec<UsageDelta>>,
}

impl UsageMeter {
    /// A meter flushing to `store`.
    pub fn new(store: Arc<dyn KeyStore>, settings: UsageSettings, meters: UsageMeters) -> Self {
        UsageMeter {
            tally: Tally::new(settings.max_entries, meters),
            store,
            settings,
            pending: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Counts one finished request (no I/O; see [`Tally::record`]).
    pub fn record(&self, seen: &Seen<'_>) {
        self.tally.record(seen);
    }

    /// The consumer's recent refusals on this gateway, newest first.
    pub fn recent_refusals(&self, consumer_id: &str) -> Vec<Refusal> {
        self.tally.recent_refusals(consumer_id)
    }

    /// Requests not counted since start (see the module doc).
    pub fn dropped(&self) -> u64 {
        self.tally.dropped()
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &UsageSettings {
        &self.settings
    }

    /// Writes everything counted so far (and a failed flush's batch) to
    /// the store in one transaction. Returns how many entries it wrote.
    pub async fn flush(&self) -> Result<usize, FlushError> {
        let mut pending = self.pending.lock().await;
        let mut batch = std::mem::take(&mut *pending);
        if batch.is_empty() {
            batch = self.tally.take();
        } else {
            // A kept batch and the new counts may share entries.
            batch = coalesce(batch.into_iter().chain(self.tally.take()));
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let meters = &self.tally.meters;
        match tokio::time::timeout(self.settings.store_timeout, self.store.add_usage(&batch)).await
        {
            Ok(Ok(())) => {
                meters.flushed.increment(1);
                Ok(batch.len())
            }
            Ok(Err(e)) => {
                meters.failed.increment(1);
                let keep = self.tally.max_entries();
                if batch.len() > keep {
                    let lost = batch.split_off(keep);
                    self.tally
                        .drop_requests(lost.iter().map(|d| d.counts.requests).sum());
                }
                *pending = batch;
                Err(FlushError::Store(e))
            }
            Err(_) => {
                meters.failed.increment(1);
                self.tally
                    .drop_requests(batch.iter().map(|d| d.counts.requests).sum());
                Err(FlushError::TimedOut(self.settings.store_timeout))
            }
        }
    }

    /// Deletes rollup rows older than their retention, as of `now`.
    pub async fn prune(&self, now: Timestamp) -> Result<u64, FlushError> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let minutes_before =
            UsageGrain::Minute.start_of(now.saturating_sub(secs(self.settings.minute_retention)));
        let days_before =
            UsageGrain::Day.start_of(now.saturating_sub(secs(self.settings.day_retention)));
        match tokio::time::timeout(
            self.settings.store_timeout,
            self.store.prune_usage(minutes_before, days_before),
        )
        .await
        {
            Ok(result) => result.map_err(FlushError::Store),
            Err(_) => Err(FlushError::TimedOut(self.settings.store_timeout)),
        }
    }

    /// Flushes every `flush_interval` (and prunes hourly) until `stop`
    /// turns true, then flushes once more.
    pub fn spawn_flush(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let meter = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(meter.settings.flush_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut pruned: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.changed() => break,
                }
                meter.flush_logged().await;
                if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    pruned = Some(Instant::now());
                    match meter.prune(unix_now()).await {
                        Ok(gone) => tracing::debug!(rows = gone, "pruned old usage rows"),
                        Err(e) => tracing::warn!(error = %e, "could not prune old usage rows"),
                    }
                }
            }
            meter.flush_logged().await;
        })
    }

    /// [`UsageMeter::flush`], logging a failure.
    pub async fn flush_logged(&self) {
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, dropped = self.dropped(), "could not save usage");
        }
    }
}

/// The deltas with entries of the same consumer, key and minute summed.
fn coalesce(deltas: impl Iterator<Item = UsageDelta>) -> Vec<UsageDelta> {
    let mut merged: std::collections::BTreeMap<(String, String, Timestamp), UsageDelta> =
        std::collections::BTreeMap::new();
    for d in deltas {
        match merged.entry((d.consumer_id.clone(), d.key_id.clone(), d.minute)) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().counts.add(&d.counts)
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(d);
            }
        }
    }
    merged.into_values().collect()
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
