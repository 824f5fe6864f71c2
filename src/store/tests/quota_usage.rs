//! Quota usage cases, run on both backends.

use crate::store::{KeyStore, StoreError};

pub(super) fn quota_batch(rows: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    rows.iter()
        .map(|(key, period, delta)| ((*key).to_owned(), (*period).to_owned(), *delta))
        .collect()
}

pub(super) async fn quota_usage_adds_up_without_bumping_the_revision(store: &dyn KeyStore) {
    let revision = store.revision().await.unwrap();
    store.add_quota_usage(&[]).await.unwrap();
    store
        .add_quota_usage(&quota_batch(&[
            ("q:c_a", "2026-12", 3),
            ("q:c_a", "2026-11", 5),
            ("q:c_b", "2026-12", 1),
            ("q:c_a", "2026-12-02", 7),
        ]))
        .await
        .unwrap();
    // Existing rows grow; the same key and period twice in one batch adds both.
    store
        .add_quota_usage(&quota_batch(&[
            ("q:c_a", "2026-12", 2),
            ("q:c_a", "2026-12", 4),
            ("q:c_b", "2026-12", 0),
        ]))
        .await
        .unwrap();

    let cases = [
        ("added over two batches", "q:c_a", "2026-12", 9),
        ("another period", "q:c_a", "2026-11", 5),
        ("a day period", "q:c_a", "2026-12-02", 7),
        ("another key, zero delta", "q:c_b", "2026-12", 1),
        ("never recorded period", "q:c_b", "2026-11", 0),
        ("never recorded key", "q:nobody", "2026-12", 0),
    ];
    for (name, key, period, want) in cases {
        assert_eq!(
            store.quota_usage(key, period).await.unwrap(),
            want,
            "case {name}"
        );
    }
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "usage is not a change"
    );
}

pub(super) async fn a_failing_quota_batch_writes_nothing(store: &dyn KeyStore) {
    let full = u64::try_from(i64::MAX).unwrap();
    store
        .add_quota_usage(&quota_batch(&[("q:full", "2026-12", full)]))
        .await
        .unwrap();
    // The second row overflows BIGINT: the whole batch fails, the first row
    // included.
    let err = store
        .add_quota_usage(&quota_batch(&[
            ("q:c_a", "2026-12", 1),
            ("q:full", "2026-12", 1),
        ]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert_eq!(store.quota_usage("q:c_a", "2026-12").await.unwrap(), 0);
    assert_eq!(store.quota_usage("q:full", "2026-12").await.unwrap(), full);
}
