//! Quota tests: [`StoreQuotas`] against a real SQLite store.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures_util::future::join_all;

use super::*;
use crate::store::sqlite::SqliteStore;
use crate::store::{ApiKey, AuditEntry, Consumer, KeySet, StoreOptions};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::Timestamp;
use crate::store::{KeyStore, StoreError};

/// A SQLite store that records quota calls, and can be told to fail
/// writes or to answer loads slowly.
#[derive(Debug)]
struct RecordingStore {
    inner: SqliteStore,
    batches: Mutex<Vec<Vec<(String, String, u64)>>>,
    loads: AtomicI64,
    fail_writes: AtomicBool,
    load_delay: Mutex<Duration>,
}

impl RecordingStore {
    fn batches(&self) -> Vec<Vec<(String, String, u64)>> {
        lock(&self.batches).clone()
    }
}

#[async_trait::async_trait]
impl KeyStore for RecordingStore {
    async fn create_consumer(&self, c: &Consumer) -> Result<(), StoreError> {
        self.inner.create_consumer(c).await
    }
    async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        self.inner.list_consumers().await
    }
    async fn consumer(&self, id_or_name: &str) -> Result<Option<Consumer>, StoreError> {
        self.inner.consumer(id_or_name).await
    }
    async fn disable_consumer(&self, id: &str, at: Timestamp) -> Result<Consumer, StoreError> {
        self.inner.disable_consumer(id, at).await
    }
    async fn create_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        self.inner.create_key(key, hash).await
    }
    async fn rotate_key(
        &self,
        old_id: &str,
        old_expires_at: Timestamp,
        new: &ApiKey,
        new_hash: &str,
    ) -> Result<ApiKey, StoreError> {
        self.inner
            .rotate_key(old_id, old_expires_at, new, new_hash)
            .await
    }
    async fn list_keys(&self, consumer_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.list_keys(consumer_id).await
    }
    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.inner.key(id).await
    }
    async fn revoke_key(&self, id: &str, at: Timestamp) -> Result<ApiKey, StoreError> {
        self.inner.revoke_key(id, at).await
    }
    async fn update_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        self.inner.update_hash(id, hash).await
    }
    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.inner.touch_keys(used).await
    }
    async fn key_set(&self) -> Result<KeySet, StoreError> {
        self.inner.key_set().await
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.inner.revision().await
    }
    async fn wait_for_change(&self, seen: i64, max_wait: Duration) -> Result<i64, StoreError> {
        self.inner.wait_for_change(seen, max_wait).await
    }
    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.inner.record_audit(entry).await
    }
    async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(limit).await
    }
    async fn quota_usage(&self, key: &str, period: &str) -> Result<u64, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let delay = *lock(&self.load_delay);
        tokio::time::sleep(delay).await;
        self.inner.quota_usage(key, period).await
    }
    async fn add_quota_usage(&self, batch: &[(String, String, u64)]) -> Result<(), StoreError> {
        lock(&self.batches).push(batch.to_vec());
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt("test store told to fail"));
        }
        self.inner.add_quota_usage(batch).await
    }
}

/// A SQLite file in a temporary directory.
struct Db {
    dir: tempfile::TempDir,
}

impl Db {
    fn new() -> Db {
        Db {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Opens the file (again: a new process, in real life).
    async fn open(&self) -> Arc<RecordingStore> {
        let path = self.dir.path().join("gatehouse.db");
        let opts = StoreOptions {
            url: path.to_str().unwrap().to_owned(),
            schema: None,
            max_connections: 2,
            connect_timeout: Duration::from_secs(5),
        };
        Arc::new(RecordingStore {
            inner: SqliteStore::open(&path, &opts).await.unwrap(),
            batches: Mutex::new(Vec::new()),
            loads: AtomicI64::new(0),
            fail_writes: AtomicBool::new(false),
            load_delay: Mutex::new(Duration::ZERO),
        })
    }

    /// A gateway's quotas over a freshly opened store.
    async fn quotas(&self) -> (Arc<StoreQuotas>, Arc<RecordingStore>) {
        let store = self.open().await;
        let quotas = StoreQuotas::new(store.clone(), Duration::from_secs(5));
        (Arc::new(quotas), store)
    }
}

async fn charges(
    quotas: &dyn QuotaCounter,
    key: &str,
    quota: &Quota,
    now: Timestamp,
    n: usize,
) -> Vec<(bool, u64, u64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = quotas.charge(key, quota, now).await.unwrap();
        out.push((d.allowed, d.used, d.remaining));
    }
    out
}

#[tokio::test]
async fn store_quotas_refuse_at_the_count_and_survive_a_restart() {
    let db = Db::new();
    let now = utc(2026, 12, 2, 10, 0, 0);
    let (quotas, store) = db.quotas().await;

    assert_eq!(
        charges(&*quotas, "api:c_a", &MONTHLY_3, now, 4).await,
        [(true, 1, 2), (true, 2, 1), (true, 3, 0), (false, 3, 0)],
        "three pass, the fourth is refused and not counted"
    );
    let refused = quotas.charge("api:c_a", &MONTHLY_3, now).await.unwrap();
    assert_eq!(
        refused,
        QuotaDecision {
            allowed: false,
            limit: 3,
            used: 3,
            remaining: 0,
            resets_at: midnight(2027, 1, 1),
        }
    );
    quotas.flush().await;
    assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 3);
    drop((quotas, store));

    // A restart: a new process opens the same file.
    let (quotas, store) = db.quotas().await;
    assert_eq!(
        charges(&*quotas, "api:c_a", &MONTHLY_3, now + 60, 1).await,
        [(false, 3, 0)],
        "still refused after the restart"
    );
    let bigger = Quota {
        count: 5,
        ..MONTHLY_3
    };
    assert_eq!(
        charges(&*quotas, "api:c_a", &bigger, now + 60, 3).await,
        [(true, 4, 1), (true, 5, 0), (false, 5, 0)],
        "a raised quota counts on from the stored usage"
    );
    assert_eq!(store.loads.load(Ordering::SeqCst), 1, "loaded once");
}

#[tokio::test]
async fn a_new_period_starts_from_zero_and_the_old_one_is_dropped() {
    let db = Db::new();
    let (quotas, store) = db.quotas().await;
    let december = utc(2026, 12, 31, 23, 59, 59);
    let january = midnight(2027, 1, 1);

    charges(&*quotas, "api:c_a", &MONTHLY_3, december, 3).await;
    assert_eq!(
        charges(&*quotas, "api:c_a", &MONTHLY_3, january, 2).await,
        [(true, 1, 2), (true, 2, 1)],
        "January starts from 0"
    );
    quotas.flush().await;

    let cases = [("December", "2026-12", 3), ("January", "2027-01", 2)];
    for (name, period, want) in cases {
        assert_eq!(
            store.quota_usage("api:c_a", period).await.unwrap(),
            want,
            "case {name}"
        );
    }
    let periods: Vec<String> = lock(&quotas.periods).keys().cloned().collect();
    assert_eq!(periods, ["2027-01"], "December is dropped once flushed");

    // A late request still stamped December loads it again from the store.
    assert_eq!(
        charges(&*quotas, "api:c_a", &MONTHLY_3, december, 1).await,
        [(false, 3, 0)]
    );
}

#[tokio::test]
async fn flush_writes_one_batch_of_what_is_new() {
    let db = Db::new();
    let (quotas, store) = db.quotas().await;
    let now = utc(2026, 12, 2, 10, 0, 0);
    let daily = Quota {
        count: 100,
        period: QuotaPeriod::Day,
    };
    charges(&*quotas, "api:c_a", &MONTHLY_3, now, 2).await;
    charges(&*quotas, "api:c_b", &MONTHLY_3, now, 5).await;
    charges(&*quotas, "day:c_a", &daily, now, 1).await;

    quotas.flush().await;
    let mut batches = store.batches();
    assert_eq!(batches.len(), 1, "one batch");
    batches[0].sort();
    assert_eq!(
        batches[0],
        [
            ("api:c_a".to_owned(), "2026-12".to_owned(), 2),
            ("api:c_b".to_owned(), "2026-12".to_owned(), 3),
            ("day:c_a".to_owned(), "2026-12-02".to_owned(), 1),
        ],
        "the refused requests are not in it"
    );

    quotas.flush().await;
    assert_eq!(store.batches().len(), 1, "nothing new: no write");

    charges(&*quotas, "api:c_a", &MONTHLY_3, now, 1).await;
    quotas.flush().await;
    assert_eq!(
        store.batches().last().cloned().unwrap_or_default(),
        [("api:c_a".to_owned(), "2026-12".to_owned(), 1)],
        "only what was counted since"
    );
    assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 3);
}

#[tokio::test]
async fn keys_are_independent() {
    let db = Db::new();
    let (quotas, _store) = db.quotas().await;
    let now = utc(2026, 12, 2, 10, 0, 0);
    let cases = [
        (
            "first key spends its quota",
            "api:c_a",
            4,
            vec![true, true, true, false],
        ),
        (
            "another key still has all of its",
            "api:c_b",
            3,
            vec![true, true, true],
        ),
        (
            "the same consumer under another policy",
            "other:c_a",
            1,
            vec![true],
        ),
    ];
    for (name, key, n, want) in cases {
        let got: Vec<bool> = charges(&*quotas, key, &MONTHLY_3, now, n)
            .await
            .into_iter()
            .map(|(allowed, _, _)| allowed)
            .collect();
        assert_eq!(got, want, "case {name}");
    }
}

#[tokio::test]
async fn a_failed_flush_keeps_the_counts_for_the_next() {
    let db = Db::new();
    let (quotas, store) = db.quotas().await;
    let now = utc(2026, 12, 2, 10, 0, 0);
    charges(&*quotas, "api:c_a", &MONTHLY_3, now, 2).await;

    store.fail_writes.store(true, Ordering::SeqCst);
    quotas.flush().await;
    assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 0);
    charges(&*quotas, "api:c_a", &MONTHLY_3, now, 2).await;

    store.fail_writes.store(false, Ordering::SeqCst);
    quotas.flush().await;
    assert_eq!(
        store.quota_usage("api:c_a", "2026-12").await.unwrap(),
        3,
        "the kept two and the one since (the fourth was refused)"
    );
    assert_eq!(store.batches().len(), 2);
}

#[tokio::test]
async fn concurrent_first_charges_load_once_and_never_overcount() {
    let db = Db::new();
    let (quotas, store) = db.quotas().await;
    let now = utc(2026, 12, 2, 10, 0, 0);
    store
        .add_quota_usage(&[("api:c_a".to_owned(), "2026-12".to_owned(), 5)])
        .await
        .unwrap();
    *lock(&store.load_delay) = Duration::from_millis(100);
    let quota = Quota {
        count: 10,
        period: QuotaPeriod::Month,
    };

    let results = join_all((0..20).map(|_| quotas.charge("api:c_a", &quota, now))).await;
    let allowed = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|d| d.allowed))
        .count();
    assert_eq!(allowed, 5, "10 allowed, 5 stored: 5 more");
    assert_eq!(store.loads.load(Ordering::SeqCst), 1, "one load");
}

#[tokio::test]
async fn a_slow_store_is_unavailable_within_the_timeout() {
    let db = Db::new();
    let store = db.open().await;
    *lock(&store.load_delay) = Duration::from_secs(10);
    let quotas = StoreQuotas::new(store.clone(), Duration::from_millis(100));
    let started = Instant::now();
    let err = quotas
        .charge("api:c_a", &MONTHLY_3, utc(2026, 12, 2, 10, 0, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, QuotaError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The next request tries the load again.
    *lock(&store.load_delay) = Duration::ZERO;
    let decision = quotas
        .charge("api:c_a", &MONTHLY_3, utc(2026, 12, 2, 10, 0, 0))
        .await
        .unwrap();
    assert_eq!((decision.allowed, decision.used), (true, 1));
    assert_eq!(store.loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_flush_task_flushes_once_more_on_stop() {
    let db = Db::new();
    let (quotas, store) = db.quotas().await;
    let (stop_tx, stop) = watch::channel(false);
    let task = quotas.spawn_flush(Duration::from_secs(3600), stop);
    charges(
        &*quotas,
        "api:c_a",
        &MONTHLY_3,
        utc(2026, 12, 2, 10, 0, 0),
        2,
    )
    .await;
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 2);
    assert_eq!(store.batches().len(), 1);
}

#[tokio::test]
async fn the_flush_task_flushes_every_interval() {
    let db = Db::new();
    let (quotas, store) = db.quotas().await;
    let (_stop_tx, stop) = watch::channel(false);
    let task = quotas.spawn_flush(Duration::from_millis(50), stop);
    charges(
        &*quotas,
        "api:c_a",
        &MONTHLY_3,
        utc(2026, 12, 2, 10, 0, 0),
        1,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.batches().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 1);
    task.abort();
}
