//! The meter against a real SQLite store: flushes, kept batches, reports.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::{self, KeyStore, StoreOptions, Timestamp, UsageDelta, UsageGrain};

/// 2026-12-04T00:00:00Z.
const DAY: Timestamp = 1_796_342_400;

async fn sqlite() -> (tempfile::TempDir, Arc<dyn KeyStore>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        url: dir.path().join("usage.db").to_str().unwrap().to_owned(),
        schema: None,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
    };
    let store = store::open(&opts).await.unwrap();
    (dir, store)
}

fn meter(store: &Arc<dyn KeyStore>, settings: UsageSettings) -> UsageMeter {
    UsageMeter::new(store.clone(), settings, UsageMeters::default())
}

fn hit(meter: &UsageMeter, consumer: &str, key: &str, status: u16, at: Timestamp) {
    let (consumer, key): (Arc<str>, Arc<str>) = (consumer.into(), key.into());
    meter.record(&Seen {
        consumer: &consumer,
        key: &key,
        status,
        error: (status == 429).then_some("rate_limited"),
        refused: status == 429,
        route: None,
        bytes_in: 5,
        bytes_out: 50,
        at,
    });
}

#[tokio::test]
async fn a_flush_writes_the_tally_and_two_meters_add_up() {
    let (_dir, store) = sqlite().await;
    let a = meter(&store, UsageSettings::default());
    let b = meter(&store, UsageSettings::default());
    hit(&a, "c_a", "k1", 200, DAY + 10);
    hit(&a, "c_a", "k1", 429, DAY + 20);
    hit(&b, "c_a", "k1", 500, DAY + 30);
    hit(&b, "c_a", "k2", 200, DAY + 3_700);
    assert_eq!(a.flush().await.unwrap(), 1);
    assert_eq!(b.flush().await.unwrap(), 2);
    assert_eq!(a.flush().await.unwrap(), 0, "nothing new to write");

    let rows = store.usage("c_a", 0, UsageGrain::Minute).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let first = rows[0].counts;
    assert_eq!(
        (
            first.requests,
            first.status_2xx,
            first.status_4xx,
            first.status_5xx
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(
        (first.bytes_in, first.bytes_out, first.rate_limited),
        (15, 150, 1)
    );

    let q = |by, per_key| Query {
        consumer_id: "c_a".to_owned(),
        since: DAY + 100,
        by,
        per_key,
    };
    let hours = report(store.as_ref(), &q(By::Hour, false)).await.unwrap();
    let hours: Vec<(Timestamp, u64)> = hours.iter().map(|b| (b.start, b.counts.requests)).collect();
    assert_eq!(
        hours,
        [(DAY, 3), (DAY + 3_600, 1)],
        "since rounds down to its hour"
    );
    let days = report(store.as_ref(), &q(By::Day, true)).await.unwrap();
    let days: Vec<(Option<&str>, u64)> = days
        .iter()
        .map(|b| (b.key_id.as_deref(), b.counts.requests))
        .collect();
    assert_eq!(days, [(Some("k1"), 3), (Some("k2"), 1)]);
    let later = Query {
        since: DAY + 7_200,
        ..q(By::Hour, false)
    };
    assert!(report(store.as_ref(), &later).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_flush_keeps_its_batch_for_the_next() {
    let (_dir, store) = sqlite().await;
    // A row at the BIGINT ceiling makes any further add to it fail.
    let full = u64::try_from(i64::MAX).unwrap();
    store
        .add_usage(&[UsageDelta {
            consumer_id: "c_a".to_owned(),
            key_id: "k1".to_owned(),
            minute: DAY,
            counts: Counts {
                requests: full,
                ..Counts::default()
            },
        }])
        .await
        .unwrap();
    let m = meter(&store, UsageSettings::default());
    hit(&m, "c_a", "k1", 200, DAY + 1);
    hit(&m, "c_a", "k2", 200, DAY + 2);
    assert!(matches!(m.flush().await, Err(FlushError::Store(_))));
    hit(&m, "c_a", "k2", 200, DAY + 3);
    assert!(m.flush().await.is_err(), "still refused");
    assert_eq!(m.dropped(), 0, "nothing lost while it is kept");
    // Clear the obstacle: the kept batch and the new request land.
    store.prune_usage(i64::MAX, i64::MAX).await.unwrap();
    assert_eq!(m.flush().await.unwrap(), 2);
    let rows = store.usage("c_a", 0, UsageGrain::Minute).await.unwrap();
    let got: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r.key_id.as_str(), r.counts.requests))
        .collect();
    assert_eq!(got, [("k1", 1), ("k2", 2)]);
}

#[tokio::test]
async fn a_flush_of_unknown_outcome_counts_its_requests_as_dropped() {
    let (_dir, store) = sqlite().await;
    let m = meter(
        &store,
        UsageSettings {
            store_timeout: Duration::ZERO,
            ..UsageSettings::default()
        },
    );
    hit(&m, "c_a", "k1", 200, DAY);
    hit(&m, "c_a", "k1", 200, DAY);
    assert!(matches!(m.flush().await, Err(FlushError::TimedOut(_))));
    assert_eq!(m.dropped(), 2);
    assert_eq!(
        m.flush().await.unwrap(),
        0,
        "not retried: it may have been written"
    );
}

#[tokio::test]
async fn pruning_keeps_each_rollup_for_its_retention() {
    let (_dir, store) = sqlite().await;
    let m = meter(
        &store,
        UsageSettings {
            minute_retention: Duration::from_secs(3_600),
            day_retention: Duration::from_secs(86_400),
            ..UsageSettings::default()
        },
    );
    for at in [DAY - 2 * 86_400, DAY - 7_200, DAY - 60] {
        hit(&m, "c_a", "k1", 200, at);
    }
    m.flush().await.unwrap();
    // At DAY: minutes from DAY - 1 h stay; days from the day before stay.
    let gone = m.prune(DAY).await.unwrap();
    assert_eq!(gone, 3, "two minute rows and one day row");
    let minutes = store.usage("c_a", 0, UsageGrain::Minute).await.unwrap();
    assert_eq!(
        minutes.iter().map(|r| r.start).collect::<Vec<_>>(),
        [DAY - 60]
    );
    let days = store.usage("c_a", 0, UsageGrain::Day).await.unwrap();
    assert_eq!(
        days.iter().map(|r| r.start).collect::<Vec<_>>(),
        [DAY - 86_400]
    );
}

#[tokio::test]
async fn the_flush_task_flushes_once_more_when_stopped() {
    let (_dir, store) = sqlite().await;
    let m = Arc::new(meter(
        &store,
        UsageSettings {
            flush_interval: Duration::from_secs(3_600),
            ..UsageSettings::default()
        },
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = m.spawn_flush(stop_rx);
    hit(&m, "c_a", "k1", 200, DAY);
    stop.send(true).unwrap();
    task.await.unwrap();
    let rows = store.usage("c_a", 0, UsageGrain::Day).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].counts.requests, 1);
}
