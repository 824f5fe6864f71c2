//! Following the store: [`ApiKeyAuth::spawn_sync`] reloads the in-memory
//! index when the store's revision changes, flushes last-used times in
//! batches ([`ApiKeyAuth::flush_last_used`]) and prunes the failure
//! limiters. It owns no state of its own; everything lives in
//! [`ApiKeyAuth`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{ApiKeyAuth, lock};
use crate::auth::Timestamp;
use crate::store::StoreError;

/// How long one `wait_for_change` call may wait before it is renewed.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// Pause after a failed refresh or store error before trying again.
const SYNC_BACKOFF: Duration = Duration::from_secs(1);
/// How often the failure limiters forget clients and key ids whose budget
/// is full again.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Range of `last_used_flush` honoured.
const FLUSH_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));
type WaitFuture = Pin<Box<dyn Future<Output = Result<i64, StoreError>> + Send>>;

impl ApiKeyAuth {
    /// Writes the collected last-used times to the store in one
    /// `touch_keys` batch. On error they are kept (for keys still in the
    /// index, so the map stays bounded) for the next flush.
    pub async fn flush_last_used(&self) {
        let batch: Vec<(String, Timestamp)> = {
            let mut used = lock(&self.last_used);
            used.drain().map(|(id, at)| (id.to_string(), at)).collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self.store.touch_keys(&batch).await {
            tracing::warn!(%error, keys = batch.len(), "could not record API key last-used times; will retry");
            let index = self.index.load();
            let mut used = lock(&self.last_used);
            for (id, at) in batch {
                if let Some((key_id, _)) = index.entries.get_key_value(id.as_str()) {
                    let kept = used.entry(Arc::clone(key_id)).or_insert(at);
                    *kept = (*kept).max(at);
                }
            }
        }
    }

    /// Follows the store: reloads the index whenever its revision changes
    /// (Postgres wakes on NOTIFY, SQLite polls), flushes last-used times
    /// every `last_used_flush` and prunes the failure limiter. A failed
    /// refresh keeps the old index and is retried after 1 s. When `stop`
    /// turns true (or its sender is dropped) it flushes once more and ends.
    pub fn spawn_sync(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let store = Arc::clone(&this.store);
            let wait_from = |seen: i64, delay: Duration| -> WaitFuture {
                let store = Arc::clone(&store);
                Box::pin(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    store.wait_for_change(seen, SYNC_WAIT).await
                })
            };
            let every = |period: Duration| {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            };
            let mut flush = every(
                this.settings
                    .last_used_flush
                    .clamp(FLUSH_RANGE.0, FLUSH_RANGE.1),
            );
            let mut prune = every(PRUNE_EVERY);
            let mut revision = this.index.load().revision;
            let mut wait = wait_from(revision, Duration::ZERO);
            while !*stop.borrow_and_update() {
                tokio::select! {
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    _ = flush.tick() => this.flush_last_used().await,
                    _ = prune.tick() => {
                        this.failures.prune();
                        this.key_failures.prune();
                    }
                    seen = &mut wait => {
                        let delay = match seen {
                            Ok(rev) if rev == revision => Duration::ZERO,
                            Ok(rev) => match this.refresh().await {
                                Ok(()) => {
                                    revision = this.index.load().revision;
                                    tracing::debug!(revision = rev, "API key index refreshed");
                                    Duration::ZERO
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "API key refresh failed; keeping the current index");
                                    SYNC_BACKOFF
                                }
                            },
                            Err(error) => {
                                tracing::warn!(%error, "waiting for key store changes failed");
                                SYNC_BACKOFF
                            }
                        };
                        wait = wait_from(revision, delay);
                    }
                }
            }
            this.flush_last_used().await;
        })
    }
}
