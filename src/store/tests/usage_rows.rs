//! Usage rollup cases, run on both backends.

use crate::store::{KeyStore, StoreError, Timestamp, UsageCounts, UsageDelta, UsageGrain};

/// 2026-12-04T00:00:00Z.
const DAY: Timestamp = 1_796_342_400;

fn delta(
    consumer: &str,
    key: &str,
    minute: Timestamp,
    requests: u64,
    bytes_out: u64,
) -> UsageDelta {
    UsageDelta {
        consumer_id: consumer.to_owned(),
        key_id: key.to_owned(),
        minute,
        counts: UsageCounts {
            requests,
            status_2xx: requests,
            bytes_out,
            ..UsageCounts::default()
        },
    }
}

fn requests_of(rows: &[crate::store::UsageRow]) -> Vec<(&str, Timestamp, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                r.key_id.as_str(),
                r.start,
                r.counts.requests,
                r.counts.bytes_out,
            )
        })
        .collect()
}

pub(super) async fn usage_adds_up_in_both_rollups_without_bumping_the_revision(
    store: &dyn KeyStore,
) {
    let revision = store.revision().await.unwrap();
    store.add_usage(&[]).await.unwrap();
    // Two flushes (two gateways, say) touching the same buckets.
    store
        .add_usage(&[
            delta("c_a", "k1", DAY + 60, 2, 100),
            delta("c_a", "k2", DAY + 60, 1, 10),
            delta("c_a", "k1", DAY + 3_600, 5, 50),
            delta("c_b", "k9", DAY + 60, 7, 70),
        ])
        .await
        .unwrap();
    store
        .add_usage(&[
            delta("c_a", "k1", DAY + 60, 3, 1),
            delta("c_a", "k1", DAY + 60, 1, 1),
            delta("c_a", "k1", DAY - 60, 4, 4),
        ])
        .await
        .unwrap();

    let minutes = store.usage("c_a", 0, UsageGrain::Minute).await.unwrap();
    assert_eq!(
        requests_of(&minutes),
        [
            ("k1", DAY - 60, 4, 4),
            ("k1", DAY + 60, 6, 102),
            ("k2", DAY + 60, 1, 10),
            ("k1", DAY + 3_600, 5, 50),
        ],
        "minute rows, oldest first, then by key"
    );
    assert_eq!(minutes[1].counts.status_2xx, 6, "every count adds up");
    let days = store.usage("c_a", 0, UsageGrain::Day).await.unwrap();
    assert_eq!(
        requests_of(&days),
        [
            ("k1", DAY - 86_400, 4, 4),
            ("k1", DAY, 11, 152),
            ("k2", DAY, 1, 10)
        ]
    );
    let since = store
        .usage("c_a", DAY + 61, UsageGrain::Minute)
        .await
        .unwrap();
    assert_eq!(requests_of(&since), [("k1", DAY + 3_600, 5, 50)], "since");
    assert!(
        store
            .usage("c_nobody", 0, UsageGrain::Day)
            .await
            .unwrap()
            .is_empty(),
        "another consumer has no rows"
    );
    let other = store.usage("c_b", 0, UsageGrain::Day).await.unwrap();
    assert_eq!(requests_of(&other), [("k9", DAY, 7, 70)]);
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "usage is not a change"
    );
}

pub(super) async fn a_failing_usage_batch_writes_nothing(store: &dyn KeyStore) {
    let full = u64::try_from(i64::MAX).unwrap();
    store
        .add_usage(&[delta("c_a", "k_full", DAY, full, 0)])
        .await
        .unwrap();
    // The second row overflows BIGINT: the whole flush fails, the first
    // row and both rollups included.
    let err = store
        .add_usage(&[
            delta("c_a", "k1", DAY, 1, 1),
            delta("c_a", "k_full", DAY, 1, 0),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    for grain in [UsageGrain::Minute, UsageGrain::Day] {
        let rows = store.usage("c_a", 0, grain).await.unwrap();
        assert_eq!(rows.len(), 1, "{grain:?}: {rows:?}");
        assert_eq!(rows[0].key_id, "k_full");
        assert_eq!(rows[0].counts.requests, full);
    }
}

pub(super) async fn pruning_drops_each_rollup_by_its_own_cutoff(store: &dyn KeyStore) {
    store
        .add_usage(&[
            delta("c_a", "k1", DAY - 2 * 86_400, 1, 0),
            delta("c_a", "k1", DAY - 60, 1, 0),
            delta("c_a", "k1", DAY + 60, 1, 0),
        ])
        .await
        .unwrap();
    // Minutes before DAY go (two rows); days before DAY - 86 400 go (one).
    let gone = store.prune_usage(DAY, DAY - 86_400).await.unwrap();
    assert_eq!(gone, 3);
    let minutes = store.usage("c_a", 0, UsageGrain::Minute).await.unwrap();
    assert_eq!(requests_of(&minutes), [("k1", DAY + 60, 1, 0)]);
    let days = store.usage("c_a", 0, UsageGrain::Day).await.unwrap();
    assert_eq!(
        requests_of(&days),
        [("k1", DAY - 86_400, 1, 0), ("k1", DAY, 1, 0)]
    );
    assert_eq!(store.prune_usage(DAY, DAY - 86_400).await.unwrap(), 0);
}
