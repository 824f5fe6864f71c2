//! The embedded store: one SQLite file, the default for a single node.
//!
//! Owns opening the file (created with its parent directory if missing; on
//! Unix a new file is made readable by its owner only, as it holds key
//! hashes), the connection settings (WAL journal, `foreign_keys = ON`,
//! `synchronous = NORMAL`, a 5 s busy timeout), applying
//! `migrations/sqlite`, and the [`KeyStore`] operations.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, so it takes the
//! write lock up front and waits (up to the busy timeout) for another writer
//! (the CLI in another process) instead of failing half-way. Changes to
//! consumers and keys bump the revision in `store_meta` in the same
//! transaction (quota usage does not: it is no consumer or key change); [`KeyStore::wait_for_change`] polls it, since SQLite has no
//! notifications across processes.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{SqliteConnection, Transaction};

use super::row::{
    AuditRow, ConsumerRow, CredentialRow, KeyRow, consumer_columns, convert, insert_error,
    key_columns, metadata_text, quota_delta, quota_used, scopes_text,
};
use super::usage::{self, COUNT_COLUMNS, RawRow};
use super::{
    ApiKey, AuditEntry, Consumer, KeySet, KeyStore, StoreError, StoreOptions, Timestamp,
    UsageDelta, UsageGrain, UsageRow,
};

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`KeyStore::wait_for_change`] reads the revision.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The most pooled connections (SQLite has one writer at a time anyway).
const MAX_CONNECTIONS: u32 = 4;

/// Consumers and keys in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the file at `path` (creating it and its parent directory if
    /// missing) and applies pending migrations. Uses at most
    /// `opts.max_connections` connections (capped at 4) and waits up to
    /// `opts.connect_timeout` for one.
    pub async fn open(path: &Path, opts: &StoreOptions) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|err| StoreError::Database(sqlx::Error::Io(err)))?;
        }
        create_private_file(path).await?;
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.clamp(1, MAX_CONNECTIONS))
            .acquire_timeout(opts.connect_timeout)
            .connect_with(connect)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// A write transaction that holds the write lock from the start.
    async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, so the database
/// (and the WAL and shared-memory files SQLite derives from it) are not
/// world-readable. Elsewhere than Unix SQLite creates the file itself.
async fn create_private_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await;
        match created {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(StoreError::Database(sqlx::Error::Io(err))),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Bumps the revision inside a write transaction and returns the new one.
async fn bump(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "UPDATE store_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::Corrupt("store revision"))
}

/// Reads the revision.
async fn read_revision(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT revision FROM store_meta WHERE id = 1")
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::Corrupt("store revision"))
}

/// Reads one key.
async fn read_key(conn: &mut SqliteConnection, id: &str) -> Result<Option<ApiKey>, StoreError> {
    let row: Option<KeyRow> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE id = ?1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(KeyRow::into_key).transpose()
}

/// Inserts a key (inside a transaction).
async fn insert_key(
    conn: &mut SqliteConnection,
    key: &ApiKey,
    hash: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys \
         (id, consumer_id, name, scopes, hash, expires_at, created_at, last_used_at, revoked_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(&key.id)
    .bind(&key.consumer_id)
    .bind(&key.name)
    .bind(scopes_text(key))
    .bind(hash)
    .bind(key.expires_at)
    .bind(key.created_at)
    .bind(key.last_used_at)
    .bind(key.revoked_at)
    .execute(conn)
    .await
    .map_err(|err| insert_error(err, "key"))?;
    Ok(())
}

#[async_trait::async_trait]
impl KeyStore for SqliteStore {
    async fn create_consumer(&self, consumer: &Consumer) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO consumers (id, name, plan, metadata, created_at, disabled_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&consumer.id)
        .bind(&consumer.name)
        .bind(&consumer.plan)
        .bind(metadata_text(consumer))
        .bind(consumer.created_at)
        .bind(consumer.disabled_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| insert_error(err, "consumer"))?;
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        let rows: Vec<ConsumerRow> = sqlx::query_as(concat!(
            "SELECT ",
            consumer_columns!(),
            " FROM consumers ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        convert(rows, ConsumerRow::into_consumer)
    }

    async fn consumer(&self, id_or_name: &str) -> Result<Option<Consumer>, StoreError> {
        let row: Option<ConsumerRow> = sqlx::query_as(concat!(
            "SELECT ",
            consumer_columns!(),
            " FROM consumers WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ConsumerRow::into_consumer).transpose()
    }

    async fn disable_consumer(&self, id: &str, at: Timestamp) -> Result<Consumer, StoreError> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE consumers SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
        )
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row: Option<ConsumerRow> = sqlx::query_as(concat!(
            "SELECT ",
            consumer_columns!(),
            " FROM consumers WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let consumer = row
            .ok_or(StoreError::NotFound("consumer"))?
            .into_consumer()?;
        if changed > 0 {
            bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(consumer)
    }

    async fn create_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_key(&mut tx, key, hash).await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_key(
        &self,
        old_id: &str,
        old_expires_at: Timestamp,
        new: &ApiKey,
        new_hash: &str,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin_write().await?;
        let old: Option<KeyRow> = sqlx::query_as(concat!(
            "UPDATE api_keys SET expires_at = CASE \
               WHEN expires_at IS NULL OR expires_at > ?2 THEN ?2 ELSE expires_at END \
             WHERE id = ?1 AND revoked_at IS NULL RETURNING ",
            key_columns!()
        ))
        .bind(old_id)
        .bind(old_expires_at)
        .fetch_optional(&mut *tx)
        .await?;
        let old = old.ok_or(StoreError::NotFound("key"))?.into_key()?;
        insert_key(&mut tx, new, new_hash).await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(old)
    }

    async fn list_keys(&self, consumer_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE ?1 IS NULL OR consumer_id = ?1 ORDER BY created_at, id"
        ))
        .bind(consumer_id)
        .fetch_all(&self.pool)
        .await?;
        convert(rows, KeyRow::into_key)
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_key(&mut conn, id).await
    }

    async fn revoke_key(&self, id: &str, at: Timestamp) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin_write().await?;
        let changed =
            sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let key = read_key(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound("key"))?;
        if changed > 0 {
            bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(key)
    }

    async fn update_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        let changed = sqlx::query("UPDATE api_keys SET hash = ?2 WHERE id = ?1")
            .bind(id)
            .bind(hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, ?2), ?2) \
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn key_set(&self) -> Result<KeySet, StoreError> {
        // A deferred transaction: in WAL mode its first read fixes a
        // snapshot that the later reads share.
        let mut tx = self.pool.begin().await?;
        let revision = read_revision(&mut tx).await?;
        let consumers: Vec<ConsumerRow> = sqlx::query_as(concat!(
            "SELECT ",
            consumer_columns!(),
            " FROM consumers ORDER BY created_at, id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let credentials: Vec<CredentialRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            ", hash FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(KeySet {
            consumers: convert(consumers, ConsumerRow::into_consumer)?,
            credentials: convert(credentials, CredentialRow::into_credential)?,
            revision,
        })
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_revision(&mut conn).await
    }

    async fn wait_for_change(&self, seen: i64, max_wait: Duration) -> Result<i64, StoreError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let revision = self.revision().await?;
            let now = tokio::time::Instant::now();
            if revision != seen || now >= deadline {
                return Ok(revision);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, client, action, target, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.client)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT at, actor, client, action, target, outcome FROM audit \
             ORDER BY at DESC, id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }

    async fn quota_usage(&self, key: &str, period: &str) -> Result<u64, StoreError> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT used FROM quota_usage WHERE key = ?1 AND period = ?2")
                .bind(key)
                .bind(period)
                .fetch_optional(&self.pool)
                .await?;
        used.map_or(Ok(0), quota_used)
    }

    async fn add_quota_usage(&self, batch: &[(String, String, u64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One transaction, one statement per row (SQLite runs them in
        // process, so this is no round trip per row).
        let mut tx = self.begin_write().await?;
        for (key, period, delta) in batch {
            sqlx::query(
                "INSERT INTO quota_usage (key, period, used) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key, period) DO UPDATE SET used = used + excluded.used",
            )
            .bind(key)
            .bind(period)
            .bind(quota_delta(*delta))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for grain in [UsageGrain::Minute, UsageGrain::Day] {
            let sql = format!(
                "INSERT INTO {table} AS u (consumer_id, key_id, start, {COUNT_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (consumer_id, start, key_id) DO UPDATE SET {set}",
                table = grain.table(),
                set = usage::add_on_conflict("u"),
            );
            for (consumer, key, start, counts) in usage::rollup(batch, grain) {
                let mut q = sqlx::query(&sql).bind(consumer).bind(key).bind(start);
                for n in counts.columns() {
                    q = q.bind(n);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage(
        &self,
        consumer_id: &str,
        since: Timestamp,
        grain: UsageGrain,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows: Vec<RawRow> = sqlx::query_as(&usage::select_sql(grain, '?'))
            .bind(consumer_id)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(usage::from_raw).collect()
    }

    async fn prune_usage(
        &self,
        minutes_before: Timestamp,
        days_before: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let minutes = sqlx::query("DELETE FROM usage_minute WHERE start < ?1")
            .bind(minutes_before)
            .execute(&mut *tx)
            .await?;
        let days = sqlx::query("DELETE FROM usage_day WHERE start < ?1")
            .bind(days_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(minutes.rows_affected() + days.rows_affected())
    }
}
