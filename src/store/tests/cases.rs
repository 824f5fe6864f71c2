//! Behaviour cases run on both backends (see the `on_both_backends!` list in
//! the module above).

use std::time::Duration;

use tokio::time::Instant;

use crate::store::{ApiKey, AuditEntry, Consumer, KeyStore, StoreError, Timestamp};

use super::*;

pub(super) async fn consumers_are_created_listed_and_found(store: &dyn KeyStore) {
    let b = consumer("c_b", "beta", T0 + 10);
    let a = consumer("c_a", "alpha", T0);
    let zero = Consumer {
        plan: None,
        metadata: serde_json::Map::new(),
        ..consumer("c_0", "zero", T0)
    };
    // A consumer whose *name* is another's id: lookups by id win.
    let tricky = consumer("c_z", "c_a", T0 + 20);
    for c in [&b, &a, &zero, &tricky] {
        store.create_consumer(c).await.unwrap();
    }

    assert_eq!(
        store.list_consumers().await.unwrap(),
        vec![zero.clone(), a.clone(), b.clone(), tricky.clone()],
        "ordered by created_at, then id"
    );
    let cases: [(&str, &str, Option<&Consumer>); 5] = [
        ("by id", "c_b", Some(&b)),
        ("by name", "beta", Some(&b)),
        ("id wins over name", "c_a", Some(&a)),
        ("no plan, empty metadata", "zero", Some(&zero)),
        ("missing", "nobody", None),
    ];
    for (name, query, want) in cases {
        assert_eq!(
            store.consumer(query).await.unwrap().as_ref(),
            want,
            "case {name}"
        );
    }
}

pub(super) async fn consumer_conflicts_leave_the_store_unchanged(store: &dyn KeyStore) {
    with_alpha(store).await;
    let before = store.list_consumers().await.unwrap();
    let revision = store.revision().await.unwrap();
    let cases = [
        ("same id", consumer("c_a", "other", T0 + 1)),
        ("same name", consumer("c_new", "alpha", T0 + 1)),
        ("same id and name", consumer("c_a", "alpha", T0 + 1)),
    ];
    for (name, duplicate) in cases {
        let err = store.create_consumer(&duplicate).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict("consumer")),
            "case {name}: {err:?}"
        );
        assert_eq!(store.list_consumers().await.unwrap(), before, "case {name}");
        assert_eq!(store.revision().await.unwrap(), revision, "case {name}");
    }
}

pub(super) async fn disabling_twice_keeps_the_first_time(store: &dyn KeyStore) {
    let alpha = with_alpha(store).await;
    let r0 = store.revision().await.unwrap();

    let disabled = store.disable_consumer("c_a", T0 + 5).await.unwrap();
    assert_eq!(
        disabled,
        Consumer {
            disabled_at: Some(T0 + 5),
            ..alpha
        }
    );
    let r1 = store.revision().await.unwrap();
    assert!(r1 > r0, "disabling is a change");

    let again = store.disable_consumer("c_a", T0 + 99).await.unwrap();
    assert_eq!(again.disabled_at, Some(T0 + 5), "the first time is kept");
    assert_eq!(store.consumer("c_a").await.unwrap(), Some(disabled));
    assert_eq!(
        store.revision().await.unwrap(),
        r1,
        "a no-op is not a change"
    );

    let err = store.disable_consumer("c_missing", T0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound("consumer")), "{err:?}");
}

pub(super) async fn key_for_a_missing_consumer_writes_nothing(store: &dyn KeyStore) {
    with_alpha(store).await;
    let revision = store.revision().await.unwrap();
    let err = store
        .create_key(&key("k_1", "c_missing", T0, None), &hash_of("k_1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("consumer")), "{err:?}");
    assert_eq!(store.list_keys(None).await.unwrap(), vec![]);
    assert_eq!(store.key("k_1").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), revision);
}

pub(super) async fn duplicate_key_id_conflicts(store: &dyn KeyStore) {
    with_alpha(store).await;
    let first = key("k_1", "c_a", T0, None);
    store.create_key(&first, &hash_of("k_1")).await.unwrap();
    let revision = store.revision().await.unwrap();

    let err = store
        .create_key(&key("k_1", "c_a", T0 + 1, Some(T0 + 2)), "other")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("key")), "{err:?}");
    assert_eq!(store.key("k_1").await.unwrap(), Some(first));
    assert_eq!(store.revision().await.unwrap(), revision);
    let set = store.key_set().await.unwrap();
    assert_eq!(set.credentials.len(), 1);
    assert_eq!(set.credentials[0].hash, hash_of("k_1"));
}

pub(super) async fn keys_are_listed_per_consumer_in_creation_order(store: &dyn KeyStore) {
    with_alpha(store).await;
    store
        .create_consumer(&consumer("c_b", "beta", T0))
        .await
        .unwrap();
    let keys = [
        key("k_3", "c_a", T0 + 2, None),
        key("k_1", "c_b", T0 + 1, None),
        key("k_2", "c_a", T0 + 1, Some(T0 + 100)),
        key("k_0", "c_a", T0 + 2, None),
    ];
    for k in &keys {
        store.create_key(k, &hash_of(&k.id)).await.unwrap();
    }
    let ids = |list: Vec<ApiKey>| list.into_iter().map(|k| k.id).collect::<Vec<_>>();
    let cases = [
        ("all", None, vec!["k_1", "k_2", "k_0", "k_3"]),
        ("alpha", Some("c_a"), vec!["k_2", "k_0", "k_3"]),
        ("beta", Some("c_b"), vec!["k_1"]),
        ("unknown consumer", Some("c_x"), vec![]),
    ];
    for (name, consumer_id, want) in cases {
        assert_eq!(
            ids(store.list_keys(consumer_id).await.unwrap()),
            want,
            "case {name}"
        );
    }
    assert_eq!(store.key("k_2").await.unwrap(), Some(keys[2].clone()));
    assert_eq!(store.key("k_9").await.unwrap(), None);
}

pub(super) async fn rotation_sets_the_earlier_expiry(store: &dyn KeyStore) {
    with_alpha(store).await;
    let given = T0 + 100;
    let cases = [
        ("no expiry: the given time", None, given),
        ("later expiry: the given time", Some(T0 + 500), given),
        ("earlier expiry: kept", Some(T0 + 50), T0 + 50),
        ("same expiry: kept", Some(given), given),
    ];
    for (i, (name, old_expiry, want)) in cases.into_iter().enumerate() {
        let old = key(&format!("k_old{i}"), "c_a", T0, old_expiry);
        let new = key(&format!("k_new{i}"), "c_a", T0 + 1, None);
        store.create_key(&old, &hash_of(&old.id)).await.unwrap();
        let revision = store.revision().await.unwrap();

        let rotated = store
            .rotate_key(&old.id, given, &new, &hash_of(&new.id))
            .await
            .unwrap();
        assert_eq!(
            rotated,
            ApiKey {
                expires_at: Some(want),
                ..old.clone()
            },
            "case {name}"
        );
        assert_eq!(
            store.key(&old.id).await.unwrap(),
            Some(rotated),
            "case {name}"
        );
        assert_eq!(
            store.key(&new.id).await.unwrap(),
            Some(new.clone()),
            "case {name}"
        );
        assert!(store.revision().await.unwrap() > revision, "case {name}");
        let set = store.key_set().await.unwrap();
        let credential = set.credentials.iter().find(|c| c.key.id == new.id);
        assert_eq!(
            credential.map(|c| c.hash.clone()),
            Some(hash_of(&new.id)),
            "case {name}"
        );
    }
}

pub(super) async fn failed_rotation_writes_nothing(store: &dyn KeyStore) {
    with_alpha(store).await;
    let live = key("k_live", "c_a", T0, Some(T0 + 1000));
    let revoked = key("k_revoked", "c_a", T0, None);
    store.create_key(&live, &hash_of("k_live")).await.unwrap();
    store
        .create_key(&revoked, &hash_of("k_revoked"))
        .await
        .unwrap();
    store.revoke_key("k_revoked", T0 + 1).await.unwrap();
    let keys = store.list_keys(None).await.unwrap();
    let revision = store.revision().await.unwrap();

    let cases = [
        (
            "revoked old key",
            "k_revoked",
            key("k_new", "c_a", T0 + 2, None),
            "NotFound(\"key\")",
        ),
        (
            "missing old key",
            "k_nope",
            key("k_new", "c_a", T0 + 2, None),
            "NotFound(\"key\")",
        ),
        (
            "new id taken: the old expiry is not changed",
            "k_live",
            key("k_revoked", "c_a", T0 + 2, None),
            "Conflict(\"key\")",
        ),
        (
            "new key's consumer missing: the old expiry is not changed",
            "k_live",
            key("k_new", "c_missing", T0 + 2, None),
            "NotFound(\"consumer\")",
        ),
    ];
    for (name, old_id, new, want) in cases {
        let err = store
            .rotate_key(old_id, T0 + 10, &new, &hash_of(&new.id))
            .await
            .unwrap_err();
        assert_eq!(format!("{err:?}"), want, "case {name}");
        assert_eq!(store.list_keys(None).await.unwrap(), keys, "case {name}");
        assert_eq!(store.revision().await.unwrap(), revision, "case {name}");
    }
}

pub(super) async fn revoking_twice_keeps_the_first_time(store: &dyn KeyStore) {
    with_alpha(store).await;
    let k = key("k_1", "c_a", T0, None);
    store.create_key(&k, &hash_of("k_1")).await.unwrap();
    let r0 = store.revision().await.unwrap();

    let revoked = store.revoke_key("k_1", T0 + 7).await.unwrap();
    assert_eq!(
        revoked,
        ApiKey {
            revoked_at: Some(T0 + 7),
            ..k
        }
    );
    let r1 = store.revision().await.unwrap();
    assert!(r1 > r0, "revoking is a change");

    let again = store.revoke_key("k_1", T0 + 99).await.unwrap();
    assert_eq!(again.revoked_at, Some(T0 + 7), "the first time is kept");
    assert_eq!(store.key("k_1").await.unwrap(), Some(revoked));
    assert_eq!(
        store.revision().await.unwrap(),
        r1,
        "a no-op is not a change"
    );

    let err = store.revoke_key("k_missing", T0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound("key")), "{err:?}");
}

pub(super) async fn touch_keys_batch(store: &dyn KeyStore, batch: &[(&str, Timestamp)]) {
    let batch: Vec<(String, Timestamp)> = batch
        .iter()
        .map(|(id, at)| ((*id).to_owned(), *at))
        .collect();
    store.touch_keys(&batch).await.unwrap();
}

pub(super) async fn touch_keeps_the_latest_use(store: &dyn KeyStore) {
    with_alpha(store).await;
    for id in ["k_1", "k_2"] {
        store
            .create_key(&key(id, "c_a", T0, None), &hash_of(id))
            .await
            .unwrap();
    }
    let revision = store.revision().await.unwrap();
    let cases: [(
        &str,
        &[(&str, Timestamp)],
        Option<Timestamp>,
        Option<Timestamp>,
    ); 5] = [
        ("empty batch", &[], None, None),
        (
            "first use; unknown ids are ignored",
            &[("k_1", T0 + 100), ("k_unknown", T0 + 5), ("k_2", T0 + 200)],
            Some(T0 + 100),
            Some(T0 + 200),
        ),
        (
            "older times never win",
            &[("k_1", T0 + 50), ("k_2", T0 + 300)],
            Some(T0 + 100),
            Some(T0 + 300),
        ),
        (
            "duplicates in a batch: the latest wins",
            &[("k_1", T0 + 400), ("k_1", T0 + 150), ("k_2", T0 + 10)],
            Some(T0 + 400),
            Some(T0 + 300),
        ),
        (
            "same time again",
            &[("k_1", T0 + 400)],
            Some(T0 + 400),
            Some(T0 + 300),
        ),
    ];
    for (name, batch, want_1, want_2) in cases {
        touch_keys_batch(store, batch).await;
        let used = |k: Option<ApiKey>| k.and_then(|k| k.last_used_at);
        assert_eq!(used(store.key("k_1").await.unwrap()), want_1, "case {name}");
        assert_eq!(used(store.key("k_2").await.unwrap()), want_2, "case {name}");
        assert_eq!(store.revision().await.unwrap(), revision, "case {name}");
    }
}

pub(super) async fn update_hash_replaces_the_hash(store: &dyn KeyStore) {
    with_alpha(store).await;
    store
        .create_key(&key("k_1", "c_a", T0, None), "old-hash")
        .await
        .unwrap();
    let revision = store.revision().await.unwrap();
    store.update_hash("k_1", "new-hash").await.unwrap();
    let set = store.key_set().await.unwrap();
    assert_eq!(set.credentials[0].hash, "new-hash");
    assert_eq!(store.revision().await.unwrap(), revision);
    let err = store.update_hash("k_missing", "x").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound("key")), "{err:?}");
}

pub(super) async fn key_set_excludes_revoked_keys_and_carries_the_revision(store: &dyn KeyStore) {
    let alpha = with_alpha(store).await;
    let beta = consumer("c_b", "beta", T0 + 1);
    store.create_consumer(&beta).await.unwrap();
    let beta = store.disable_consumer("c_b", T0 + 2).await.unwrap();
    let live = key("k_live", "c_a", T0, None);
    let expired = key("k_expired", "c_a", T0 + 1, Some(T0 + 2));
    let revoked = key("k_revoked", "c_b", T0 + 2, None);
    for k in [&live, &expired, &revoked] {
        store.create_key(k, &hash_of(&k.id)).await.unwrap();
    }
    store.revoke_key("k_revoked", T0 + 3).await.unwrap();

    let set = store.key_set().await.unwrap();
    assert_eq!(
        set.consumers,
        vec![alpha, beta],
        "disabled consumers included"
    );
    let credentials: Vec<(ApiKey, String)> = set
        .credentials
        .into_iter()
        .map(|c| (c.key, c.hash))
        .collect();
    assert_eq!(
        credentials,
        vec![(live, hash_of("k_live")), (expired, hash_of("k_expired")),],
        "revoked keys excluded, expired ones kept"
    );
    assert_eq!(set.revision, store.revision().await.unwrap());
}

pub(super) async fn revision_bumps_on_changes_only(store: &dyn KeyStore) {
    let mut last = store.revision().await.unwrap();
    let mut step = async |name: &str, changed: bool| {
        let now = store.revision().await.unwrap();
        if changed {
            assert!(now > last, "{name} bumps the revision ({last} -> {now})");
        } else {
            assert_eq!(now, last, "{name} does not bump the revision");
        }
        last = now;
    };

    step("nothing", false).await;
    store
        .create_consumer(&consumer("c_a", "alpha", T0))
        .await
        .unwrap();
    step("create consumer", true).await;
    store
        .create_key(&key("k_1", "c_a", T0, None), &hash_of("k_1"))
        .await
        .unwrap();
    step("create key", true).await;
    store
        .rotate_key("k_1", T0 + 10, &key("k_2", "c_a", T0 + 1, None), "h")
        .await
        .unwrap();
    step("rotate key", true).await;
    store.revoke_key("k_1", T0 + 2).await.unwrap();
    step("revoke key", true).await;
    store.disable_consumer("c_a", T0 + 3).await.unwrap();
    step("disable consumer", true).await;
    touch_keys_batch(store, &[("k_2", T0 + 4)]).await;
    step("touch keys", false).await;
    store.update_hash("k_2", "rehashed").await.unwrap();
    step("update hash", false).await;
    store
        .record_audit(&audit_entry(T0 + 5, "key.revoke"))
        .await
        .unwrap();
    step("record audit", false).await;
    store.key_set().await.unwrap();
    store.list_keys(None).await.unwrap();
    step("reads", false).await;
}

pub(super) async fn audit_is_newest_first(store: &dyn KeyStore) {
    assert_eq!(store.audit(10).await.unwrap(), vec![]);
    let entries = [
        audit_entry(T0, "consumer.create"),
        AuditEntry {
            client: None,
            target: None,
            outcome: "conflict".to_owned(),
            ..audit_entry(T0 + 1, "consumer.create")
        },
        audit_entry(T0 + 2, "key.create"),
        audit_entry(T0 + 2, "key.revoke"),
    ];
    for e in &entries {
        store.record_audit(e).await.unwrap();
    }
    let newest_first: Vec<AuditEntry> = entries.iter().rev().cloned().collect();
    let cases = [
        ("all", 10, newest_first.clone()),
        ("limited", 2, newest_first[..2].to_vec()),
        ("none", 0, vec![]),
    ];
    for (name, limit, want) in cases {
        assert_eq!(store.audit(limit).await.unwrap(), want, "case {name}");
    }
}

pub(super) async fn wait_for_change_returns_at_once_or_after_max_wait(store: &dyn KeyStore) {
    let seen = store.revision().await.unwrap();

    let started = Instant::now();
    let got = store
        .wait_for_change(seen - 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got, seen, "an already different revision returns at once");
    assert!(started.elapsed() < Duration::from_secs(5));

    let started = Instant::now();
    let got = store
        .wait_for_change(seen, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(got, seen, "no change: the same revision");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

pub(super) async fn wait_for_change_wakes_on_a_write_from_another_handle(h: &Harness) {
    let other = h.reopen().await;
    let seen = h.store.revision().await.unwrap();
    // Let the waiting handle set up (for Postgres: subscribe) first, so the
    // write below lands while it is really waiting.
    assert_eq!(
        h.store
            .wait_for_change(seen, Duration::from_millis(10))
            .await
            .unwrap(),
        seen
    );

    let waiter = async {
        let revision = h
            .store
            .wait_for_change(seen, Duration::from_secs(10))
            .await
            .unwrap();
        (revision, Instant::now())
    };
    let writer = async {
        // Just after the waiter started its wait: if it only polled (every
        // second, for Postgres), it would wake more than 900 ms later.
        tokio::time::sleep(Duration::from_millis(50)).await;
        other
            .create_consumer(&consumer("c_a", "alpha", T0))
            .await
            .unwrap();
        Instant::now()
    };
    let ((revision, woke), written) = tokio::join!(waiter, writer);

    assert_eq!(revision, other.revision().await.unwrap());
    assert!(revision > seen);
    let lag = woke.saturating_duration_since(written);
    assert!(
        lag < Duration::from_millis(900),
        "woke {lag:?} after the write"
    );
    assert_eq!(
        h.store.consumer("alpha").await.unwrap().map(|c| c.id),
        Some("c_a".to_owned())
    );
}

pub(super) async fn concurrent_writes_from_two_handles_all_land(h: &Harness) {
    let other = h.reopen().await;
    let before = h.store.revision().await.unwrap();
    let writes = (0..20).map(|i| {
        let store = if i % 2 == 0 { &h.store } else { &other };
        async move {
            store
                .create_consumer(&consumer(&format!("c_{i:02}"), &format!("n{i:02}"), T0 + i))
                .await
        }
    });
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(h.store.list_consumers().await.unwrap().len(), 20);
    assert_eq!(h.store.revision().await.unwrap(), before + 20);
}

pub(super) async fn bad_json_in_a_row_is_corrupt(h: &Harness) {
    let store = &*h.store;
    with_alpha(store).await;
    store
        .create_key(&key("k_1", "c_a", T0, None), "h")
        .await
        .unwrap();

    h.execute("UPDATE consumers SET metadata = 'not json'")
        .await;
    for (name, result) in [
        ("list", store.list_consumers().await.map(drop)),
        ("show", store.consumer("c_a").await.map(drop)),
        ("key set", store.key_set().await.map(drop)),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt("consumer metadata")),
            "case {name}: {err:?}"
        );
    }

    h.execute("UPDATE consumers SET metadata = '{}'; UPDATE api_keys SET scopes = '{\"a\": 1}'")
        .await;
    for (name, result) in [
        ("list", store.list_keys(None).await.map(drop)),
        ("show", store.key("k_1").await.map(drop)),
        ("key set", store.key_set().await.map(drop)),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt("key scopes")),
            "case {name}: {err:?}"
        );
    }
}
