//! Tests of one backend, or of neither: SQLite files, URL and schema checks,
//! Postgres schemas.

use sqlx::Connection;

use crate::store::{StoreError, open};

use super::*;

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
    assert_eq!(applied.len(), 3, "0001_init, 0002_quota and 0003_usage");

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
            crate::store::postgres::checked_schema(schema).is_ok(),
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
        assert_eq!(
            crate::store::postgres::channel_name(schema),
            want,
            "case {name}"
        );
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
                    "store_meta",
                    "usage_day",
                    "usage_minute"
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
