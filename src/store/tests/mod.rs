//! Tests for both store backends.
//!
//! The behaviour tests are written once, as async functions over
//! `&dyn KeyStore` (or over a [`Harness`] when they need a second handle or
//! raw SQL), and the `on_both_backends!` macro runs each against SQLite (a
//! file in a temporary directory) and Postgres (the server at
//! `GATEHOUSE_TEST_POSTGRES_URL`, in a random schema dropped afterwards; the
//! Postgres tests are skipped, not failed, when the variable is unset).

mod cases;
mod one_backend;
mod quota_usage;
mod usage_rows;

use cases::*;
use quota_usage::*;
use usage_rows::*;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rand::Rng;
use sqlx::Connection;

use super::{ApiKey, AuditEntry, Consumer, KeyStore, StoreOptions, Timestamp, open};

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
        usage_adds_up_in_both_rollups_without_bumping_the_revision,
        a_failing_usage_batch_writes_nothing,
        pruning_drops_each_rollup_by_its_own_cutoff,
    ],
    harness: [
        wait_for_change_wakes_on_a_write_from_another_handle,
        concurrent_writes_from_two_handles_all_land,
        bad_json_in_a_row_is_corrupt,
    ],
}

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
