//! Tests for both store backends.
//!
//! The behaviour tests are written once, as async functions over
//! `&dyn KeyStore` (or over a [`Harness`] when they need a second handle or
//! raw SQL), and the `on_both_backends!` macro runs each against SQLite (a
//! file in a temporary directory) and Postgres (the server at
//! `GATEHOUSE_TEST_POSTGRES_URL`, in a random schema dropped afterwards; the
//! Postgres tests are skipped, not failed, when the variable is unset).

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rand::Rng;
use sqlx::Connection;
use tokio::time::Instant;

use super::{ApiKey, AuditEntry, Consumer, KeyStore, StoreError, StoreOptions, Timestamp, open};

const T0: Timestamp = 1_700_000_000;

/// The Postgres server for tests, if the environment names one.
#[allow(clippy::disallowed_methods)]
fn postgres_url() -> Option<String> {
    std::env::var("GATEHOUSE_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

fn options(url: String, schema: Option<String>) -> StoreOptions {
    StoreOptions {
        url,
        schema,
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
    }
}

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        schema: String,
    },
}

/// One store under test: its options (to open more handles), a first
/// handle, and what to clean up.
struct Harness {
    opts: StoreOptions,
    store: Arc<dyn KeyStore>,
    backend: Backend,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.db");
        let opts = options(path.to_str().unwrap().to_owned(), None);
        let store = open(&opts).await.unwrap();
        Harness {
            opts,
            store,
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    async fn postgres() -> Option<Harness> {
        let Some(url) = postgres_url() else {
            println!("skipped: GATEHOUSE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema = format!("gh_test_{:016x}", rand::rng().random::<u64>());
        let opts = options(url, Some(schema.clone()));
        let store = open(&opts).await.unwrap();
        Some(Harness {
            opts,
            store,
            backend: Backend::Postgres { schema },
        })
    }

    /// A second, independent handle on the same store (another process, in
    /// real life).
    async fn reopen(&self) -> Arc<dyn KeyStore> {
        open(&self.opts).await.unwrap()
    }

    /// Runs raw SQL on the store's database (in its schema).
    async fn execute(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            Backend::Postgres { schema } => {
                let mut conn = self.postgres_connection(Some(schema)).await;
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    async fn postgres_connection(&self, schema: Option<&str>) -> sqlx::PgConnection {
        let mut opts: sqlx::postgres::PgConnectOptions = self.opts.url.parse().unwrap();
        if let Some(schema) = schema {
            opts = opts.options([("search_path", schema)]);
        }
        sqlx::PgConnection::connect_with(&opts).await.unwrap()
    }

    /// Drops the Postgres schema (the temporary directory goes by itself).
    async fn finish(self) {
        let Harness { store, backend, .. } = self;
        drop(store);
        if let Backend::Postgres { schema } = backend {
            let url = postgres_url().unwrap_or_default();
            let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
            let mut conn = sqlx::PgConnection::connect_with(&opts).await.unwrap();
            sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
}

/// Runs `case` and then cleans up, also when the case panicked.
async fn run<F>(harness: Option<Harness>, case: F)
where
    F: for<'a> FnOnce(&'a Harness) -> futures_util::future::LocalBoxFuture<'a, ()>,
{
    let Some(harness) = harness else { return };
    let outcome = AssertUnwindSafe(case(&harness)).catch_unwind().await;
    harness.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests for every case:
/// `store` cases take `&dyn KeyStore`, `harness` cases take `&Harness`.
macro_rules! on_both_backends {
    (store: [$($case:ident),* $(,)?], harness: [$($hcase:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::run(Some(super::Harness::sqlite().await), |h| {
                        Box::pin(super::$case(&*h.store))
                    })
                    .await;
                }
            )*
            $(
                #[tokio::test]
                async fn $hcase() {
                    super::run(Some(super::Harness::sqlite().await), |h| {
                        Box::pin(super::$hcase(h))
                    })
                    .await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::run(super::Harness::postgres().await, |h| {
                        Box::pin(super::$case(&*h.store))
                    })
                    .await;
                }
            )*
            $(
                #[tokio::test]
                async fn $hcase() {
                    super::run(super::Harness::postgres().await, |h| {
                        Box::pin(super::$hcase(h))
                    })
                    .await;
                }
            )*
        }
    };
}

on_both_backends! {
    store: [
        consumers_are_created_listed_and_found,
        consumer_conflicts_leave_the_store_unchanged,
        disabling_twice_keeps_the_first_time,
        key_for_a_missing_consumer_writes_nothing,
        duplicate_key_id_conflicts,
        keys_are_listed_per_consumer_in_creation_order,
        rotation_sets_the_earlier_expiry,
        failed_rotation_writes_nothing,
        revoking_twice_keeps_the_first_time,
        touch_keeps_the_latest_use,
        update_hash_replaces_the_hash,
        key_set_excludes_revoked_keys_and_carries_the_revision,
        revision_bumps_on_changes_only,
        audit_is_newest_first,
        wait_for_change_returns_at_once_or_after_max_wait,
        quota_usage_adds_up_without_bumping_the_revision,
        a_failing_quota_batch_writes_nothing,
    ],
    harness: [
        wait_for_change_wakes_on_a_write_from_another_handle,
        concurrent_writes_from_two_handles_all_land,
        bad_json_in_a_row_is_corrupt,
    ],
}

// ---------------------------------------------------------------- fixtures

fn consumer(id: &str, name: &str, created_at: Timestamp) -> Consumer {
    let metadata = serde_json::json!({"team": "payments", "limits": {"burst": 10}});
    Consumer {
        id: id.to_owned(),
        name: name.to_owned(),
        plan: Some("free".to_owned()),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        created_at,
        disabled_at: None,
    }
}

fn key(
    id: &str,
    consumer_id: &str,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> ApiKey {
    ApiKey {
        id: id.to_owned(),
        consumer_id: consumer_id.to_owned(),
        name: format!("label-{id}"),
        scopes: vec!["orders:read".to_owned(), "orders:write".to_owned()],
        expires_at,
        created_at,
        last_used_at: None,
        revoked_at: None,
    }
}

fn hash_of(id: &str) -> String {
    format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$hash-of-{id}")
}

fn audit_entry(at: Timestamp, action: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: "cli:alice".to_owned(),
        client: Some("127.0.0.1".to_owned()),
        action: action.to_owned(),
        target: Some("c_a".to_owned()),
        outcome: "ok".to_owned(),
    }
}

/// A store with consumer `c_a` ("alpha").
async fn with_alpha(store: &dyn KeyStore) -> Consumer {
    let alpha = consumer("c_a", "alpha", T0);
    store.create_consumer(&alpha).await.unwrap();
    alpha
}

// ----------------------------------------------------------------- cases

async fn consumers_are_created_listed_and_found(store: &dyn KeyStore) {
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

async fn consumer_conflicts_leave_the_store_unchanged(store: &dyn KeyStore) {
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

async fn disabling_twice_keeps_the_first_time(store: &dyn KeyStore) {
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

async fn key_for_a_missing_consumer_writes_nothing(store: &dyn KeyStore) {
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

async fn duplicate_key_id_conflicts(store: &dyn KeyStore) {
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

async fn keys_are_listed_per_consumer_in_creation_order(store: &dyn KeyStore) {
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

async fn rotation_sets_the_earlier_expiry(store: &dyn KeyStore) {
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

async fn failed_rotation_writes_nothing(store: &dyn KeyStore) {
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

async fn revoking_twice_keeps_the_first_time(store: &dyn KeyStore) {
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

async fn touch_keys_batch(store: &dyn KeyStore, batch: &[(&str, Timestamp)]) {
    let batch: Vec<(String, Timestamp)> = batch
        .iter()
        .map(|(id, at)| ((*id).to_owned(), *at))
        .collect();
    store.touch_keys(&batch).await.unwrap();
}

async fn touch_keeps_the_latest_use(store: &dyn KeyStore) {
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

async fn update_hash_replaces_the_hash(store: &dyn KeyStore) {
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

async fn key_set_excludes_revoked_keys_and_carries_the_revision(store: &dyn KeyStore) {
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

async fn revision_bumps_on_changes_only(store: &dyn KeyStore) {
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

async fn audit_is_newest_first(store: &dyn KeyStore) {
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

async fn wait_for_change_returns_at_once_or_after_max_wait(store: &dyn KeyStore) {
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

async fn wait_for_change_wakes_on_a_write_from_another_handle(h: &Harness) {
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

async fn concurrent_writes_from_two_handles_all_land(h: &Harness) {
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

async fn bad_json_in_a_row_is_corrupt(h: &Harness) {
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

// ------------------------------------------------- one backend, or neither

#[tokio::test]
async fn sqlite_reopen_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.db");
    let opts = options(format!("sqlite://{}", path.display()), None);
    let migrations = || async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT version, CAST(installed_on AS TEXT) FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        rows
    };

    let store = open(&opts).await.unwrap();
    with_alpha(&*store).await;
    let revision = store.revision().await.unwrap();
    drop(store);
    let applied = migrations().await;
    assert_eq!(applied.len(), 2, "0001_init and 0002_quota");

    let store = open(&opts).await.unwrap();
    assert_eq!(
        store.consumer("alpha").await.unwrap(),
        Some(consumer("c_a", "alpha", T0))
    );
    assert_eq!(store.revision().await.unwrap(), revision);
    assert_eq!(migrations().await, applied, "migrations are not re-run");
}

#[tokio::test]
async fn sqlite_file_is_in_wal_mode_with_its_directory_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("gatehouse.db");
    let _store = open(&options(path.to_str().unwrap().to_owned(), None))
        .await
        .unwrap();

    // WAL mode is a property of the file: a plain new connection sees it.
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    conn.close().await.unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "not readable by others: {mode:o}");
    }
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    for url in [
        "mysql://x",
        "redis://127.0.0.1:6379",
        "http://example.com/db",
    ] {
        let err = open(&options(url.to_owned(), None)).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl), "case {url}: {err:?}");
    }
}

#[tokio::test]
async fn bad_schema_names_are_refused_before_connecting() {
    // Nothing listens on port 1: the name is checked first.
    let url = "postgres://postgres@127.0.0.1:1/test".to_owned();
    for schema in [
        "",
        "Upper",
        "1starts_with_digit",
        "semi;colon",
        "quo\"te",
        "dash-ed",
        &"a".repeat(64),
    ] {
        let err = open(&options(url.clone(), Some(schema.to_owned())))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidSchema),
            "case {schema:?}: {err:?}"
        );
    }
}

#[test]
fn schema_names() {
    let long = "a".repeat(63);
    let cases = [
        ("lowercase", "gatehouse", true),
        ("underscore first", "_private", true),
        ("digits after the first", "gh_test_0123", true),
        ("63 bytes", long.as_str(), true),
        ("empty", "", false),
        ("digit first", "9lives", false),
        ("upper case", "Gatehouse", false),
        ("space", "gate house", false),
        ("quote", "a\"b", false),
        ("non-ascii", "gätehouse", false),
    ];
    for (name, schema, ok) in cases {
        assert_eq!(
            super::postgres::checked_schema(schema).is_ok(),
            ok,
            "case {name}"
        );
    }
}

#[test]
fn channel_names() {
    let long = "s".repeat(63);
    let cases = [
        ("no schema", None, "gatehouse_changes".to_owned()),
        (
            "schema",
            Some("tenant_a"),
            "gatehouse_changes_tenant_a".to_owned(),
        ),
        (
            "cut to 63 bytes",
            Some(long.as_str()),
            format!("gatehouse_changes_{}", &long[..45]),
        ),
    ];
    for (name, schema, want) in cases {
        assert_eq!(super::postgres::channel_name(schema), want, "case {name}");
    }
}

#[tokio::test]
async fn postgres_tables_and_migrations_live_in_the_schema() {
    run(Harness::postgres().await, |h| {
        Box::pin(async move {
            let Backend::Postgres { schema } = &h.backend else {
                unreachable!()
            };
            let mut conn = h.postgres_connection(None).await;
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = $1 ORDER BY table_name",
            )
            .bind(schema)
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert_eq!(
                tables,
                [
                    "_sqlx_migrations",
                    "api_keys",
                    "audit",
                    "consumers",
                    "quota_usage",
                    "store_meta"
                ]
            );
            conn.close().await.unwrap();

            // Reopening applies nothing new.
            let again = h.reopen().await;
            assert_eq!(again.revision().await.unwrap(), 0);
        })
    })
    .await;
}

// ------------------------------------------------------------ quota usage

fn quota_batch(rows: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    rows.iter()
        .map(|(key, period, delta)| ((*key).to_owned(), (*period).to_owned(), *delta))
        .collect()
}

async fn quota_usage_adds_up_without_bumping_the_revision(store: &dyn KeyStore) {
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

async fn a_failing_quota_batch_writes_nothing(store: &dyn KeyStore) {
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
