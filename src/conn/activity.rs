//! Whether a connection is busy ([`Activity`], for the idle timeout) and how
//! many connections and tunnels are open ([`Drain`], for graceful shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests in flight on one connection, and since when none has been.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    active: AtomicUsize,
    /// Milliseconds after `base` at which the last request ended.
    idle_since_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

/// One request in flight; ends on drop (when its response is sent or the
/// request is abandoned).
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<Activity>);

impl Activity {
    /// Marks a request as started.
    pub(crate) fn start(self: &Arc<Self>) -> StreamGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once no request has been in flight for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            if self.active.load(Ordering::Acquire) > 0 {
                // Busy: look again soon (a request may end any moment).
                tokio::time::sleep(limit.min(Duration::from_secs(1))).await;
                continue;
            }
            let since = self.idle_since_ms.load(Ordering::Acquire);
            let idle = self.now_ms().saturating_sub(since);
            if idle >= limit_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(limit_ms - idle)).await;
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections and tunnels; graceful shutdown waits for none to be left.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    open: AtomicUsize,
    empty: Notify,
}

/// One open connection or tunnel in a [`Drain`].
#[derive(Debug)]
pub(crate) struct DrainGuard(Arc<Drain>);

impl Drain {
    /// Counts one more.
    pub(crate) fn enter(self: &Arc<Self>) -> DrainGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        DrainGuard(Arc::clone(self))
    }

    /// How many are open.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when none is open.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.empty.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_for_the_whole_limit() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_secs(10);
        // Busy for 30 s: not idle meanwhile.
        let guard = activity.start();
        let idle = tokio::time::timeout(Duration::from_secs(30), activity.idle_for(limit)).await;
        assert!(idle.is_err(), "idle while a request was in flight");
        drop(guard);
        let started = tokio::time::Instant::now();
        activity.idle_for(limit).await;
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn drain_waits_for_the_last_guard() {
        let drain = Arc::new(Drain::default());
        drain.wait().await;
        let a = drain.enter();
        let b = drain.enter();
        assert_eq!(drain.open(), 2);
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one still open");
        drop(b);
        let done = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(matches!(done, Ok(Ok(()))));
    }
}
