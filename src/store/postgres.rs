//! The shared store: Postgres, for several gateway nodes.
//!
//! Owns the pool, the optional schema (created if missing; every pooled
//! connection gets it as its only `search_path`, so the tables and sqlx's
//! `_sqlx_migrations` live there), applying `migrations/postgres`, and the
//! [`KeyStore`] operations.
//!
//! Every consumer or key change bumps the revision in `store_meta` and sends
//! `NOTIFY` on the store's channel in the same transaction (Postgres delivers
//! it on commit); quota usage is no such change and does neither. [`KeyStore::wait_for_change`] listens on that channel on a
//! connection of its own, always re-reads the revision rather than trusting
//! the notification, and polls every second as well, so a lost notification
//! (a dropped connection) delays a node by at most about a second.
//!
//! Security: the schema name is checked against `[a-z_][a-z0-9_]{0,62}`
//! before it is put in any SQL text; everything else is a bound parameter.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::row::{
    AuditRow, ConsumerRow, CredentialRow, KeyRow, consumer_columns, convert, insert_error,
    key_columns, metadata_text, quota_delta, quota_used, scopes_text,
};
use super::usage::{self, COUNT_COLUMNS, RawRow};
use super::{
    ApiKey, AuditEntry, Consumer, KeySet, KeyStore, StoreError, StoreOptions, Timestamp,
    UsageDelta, UsageGrain, UsageRow,
};

/// How long [`KeyStore::wait_for_change`] waits for a notification before it
/// reads the revision anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(1);
/// The channel for a store without a schema; with one, `_<schema>` is added.
const CHANNEL: &str = "gatehouse_changes";
/// Postgres identifiers (and so channel names) are at most 63 bytes.
const MAX_IDENTIFIER: usize = 63;

/// Consumers and keys in Postgres.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// A pool of one connection for the listener, so it never takes one of
    /// `pool`'s; connected on the first [`KeyStore::wait_for_change`].
    listener_pool: PgPool,
    /// The NOTIFY channel for this store's schema.
    channel: String,
    /// The listener, once connected; `None` again after it failed.
    listener: Mutex<Option<PgListener>>,
}

impl PostgresStore {
    /// Connects (at most `opts.max_connections` connections, waiting up to
    /// `opts.connect_timeout` for one), creates `opts.schema` if it is set
    /// and missing, and applies pending migrations in it.
    pub async fn open(opts: &StoreOptions) -> Result<PostgresStore, StoreError> {
        let schema = opts.schema.as_deref().map(checked_schema).transpose()?;
        let mut connect =
            PgConnectOptions::from_str(&opts.url).map_err(|_| StoreError::InvalidUrl)?;
        if let Some(schema) = schema {
            connect = connect.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.connect_timeout)
            .connect_with(connect.clone())
            .await?;
        if let Some(schema) = schema {
            create_schema(&pool, schema).await?;
        }
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.connect_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(connect);
        Ok(PostgresStore {
            pool,
            listener_pool,
            channel: channel_name(schema),
            listener: Mutex::new(None),
        })
    }

    /// Bumps the revision and queues the notification for commit.
    async fn bump(&self, conn: &mut PgConnection) -> Result<i64, StoreError> {
        let revision: i64 = sqlx::query_scalar(
            "UPDATE store_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::Corrupt("store revision"))?;
        sqlx::query("SELECT pg_notify($1, $2::bigint::text)")
            .bind(&self.channel)
            .bind(revision)
            .execute(&mut *conn)
            .await?;
        Ok(revision)
    }

    /// Waits up to `slice` for a notification on the store's channel (or
    /// for the listener another waiter holds). Never fails: without a
    /// listener it just sleeps, and the caller re-reads the revision.
    async fn wait_for_notification(&self, slice: Duration) {
        let started = Instant::now();
        let mut guard = match self.listener.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another call is listening; when it lets go, something may
                // have changed (it may have taken the notification), so the
                // caller should re-read the revision.
                let _ = tokio::time::timeout(slice, self.listener.lock()).await;
                return;
            }
        };
        if guard.is_none() {
            *guard = self.listen(slice).await;
        }
        let remaining = slice.saturating_sub(started.elapsed());
        let Some(listener) = guard.as_mut() else {
            drop(guard);
            tokio::time::sleep(remaining).await;
            return;
        };
        match tokio::time::timeout(remaining, listener.try_recv()).await {
            // A notification, or the connection was lost and re-established
            // (notifications may have been missed): re-read either way.
            Ok(Ok(_)) => while listener.next_buffered().is_some() {},
            Ok(Err(_)) => {
                *guard = None;
                drop(guard);
                tokio::time::sleep(slice.saturating_sub(started.elapsed())).await;
            }
            Err(_elapsed) => {}
        }
    }

    /// Connects the listener and subscribes to the channel, giving up
    /// (`None`) on failure or after `within`.
    async fn listen(&self, within: Duration) -> Option<PgListener> {
        let connect = async {
            let mut listener = PgListener::connect_with(&self.listener_pool).await?;
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        tokio::time::timeout(within, connect).await.ok()?.ok()
    }

    /// Makes sure a listener is subscribed (if it can be within `within`),
    /// so that a change committed after the next revision read is notified.
    /// If another call holds the listener, it is subscribed already.
    async fn ensure_listening(&self, within: Duration) {
        if let Ok(mut guard) = self.listener.try_lock() {
            if guard.is_none() {
                *guard = self.listen(within).await;
            }
        }
    }
}

/// `schema` if it is a safe identifier: `[a-z_][a-z0-9_]{0,62}`.
pub(super) fn checked_schema(schema: &str) -> Result<&str, StoreError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= MAX_IDENTIFIER {
        Ok(schema)
    } else {
        Err(StoreError::InvalidSchema)
    }
}

/// The NOTIFY channel: `gatehouse_changes[_<schema>]`, cut to 63 bytes (the
/// name is ASCII). Two long schema names with the same first 45 bytes share
/// a channel, which costs only a spurious wake-up: the revision decides.
pub(super) fn channel_name(schema: Option<&str>) -> String {
    let mut channel = match schema {
        Some(schema) => format!("{CHANNEL}_{schema}"),
        None => CHANNEL.to_owned(),
    };
    channel.truncate(MAX_IDENTIFIER);
    channel
}

/// `CREATE SCHEMA IF NOT EXISTS`, tolerating another node doing the same at
/// the same moment. `schema` has passed [`checked_schema`].
async fn create_schema(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    match sqlx::query(&sql).execute(pool).await {
        Ok(_) => Ok(()),
        // Two concurrent CREATE SCHEMA IF NOT EXISTS can still collide on
        // the catalog's unique index (or report duplicate_schema).
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation() || db.code().as_deref() == Some("42P06") =>
        {
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Reads one key.
async fn read_key(conn: &mut PgConnection, id: &str) -> Result<Option<ApiKey>, StoreError> {
    let row: Option<KeyRow> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(KeyRow::into_key).transpose()
}

/// Reads the revision.
async fn read_revision(conn: &mut PgConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT revision FROM store_meta WHERE id = 1")
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::Corrupt("store revision"))
}

/// Inserts a key (inside a transaction).
async fn insert_key(conn: &mut PgConnection, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys \
         (id, consumer_id, name, scopes, hash, expires_at, created_at, last_used_at, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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

/// A write transaction.
async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    Ok(pool.begin().await?)
}

#[async_trait::async_trait]
impl KeyStore for PostgresStore {
    async fn create_consumer(&self, consumer: &Consumer) -> Result<(), StoreError> {
        let mut tx = begin(&self.pool).await?;
        sqlx::query(
            "INSERT INTO consumers (id, name, plan, metadata, created_at, disabled_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
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
        self.bump(&mut tx).await?;
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
            " FROM consumers WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ConsumerRow::into_consumer).transpose()
    }

    async fn disable_consumer(&self, id: &str, at: Timestamp) -> Result<Consumer, StoreError> {
        let mut tx = begin(&self.pool).await?;
        let changed = sqlx::query(
            "UPDATE consumers SET disabled_at = $2 WHERE id = $1 AND disabled_at IS NULL",
        )
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row: Option<ConsumerRow> = sqlx::query_as(concat!(
            "SELECT ",
            consumer_columns!(),
            " FROM consumers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let consumer = row
            .ok_or(StoreError::NotFound("consumer"))?
            .into_consumer()?;
        if changed > 0 {
            self.bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(consumer)
    }

    async fn create_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        let mut tx = begin(&self.pool).await?;
        insert_key(&mut tx, key, hash).await?;
        self.bump(&mut tx).await?;
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
        let mut tx = begin(&self.pool).await?;
        let old: Option<KeyRow> = sqlx::query_as(concat!(
            "UPDATE api_keys SET expires_at = CASE \
               WHEN expires_at IS NULL OR expires_at > $2 THEN $2 ELSE expires_at END \
             WHERE id = $1 AND revoked_at IS NULL RETURNING ",
            key_columns!()
        ))
        .bind(old_id)
        .bind(old_expires_at)
        .fetch_optional(&mut *tx)
        .await?;
        let old = old.ok_or(StoreError::NotFound("key"))?.into_key()?;
        insert_key(&mut tx, new, new_hash).await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(old)
    }

    async fn list_keys(&self, consumer_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE $1::text IS NULL OR consumer_id = $1 ORDER BY created_at, id"
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
        let mut tx = begin(&self.pool).await?;
        let changed =
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let key = read_key(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound("key"))?;
        if changed > 0 {
            self.bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(key)
    }

    async fn update_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        let changed = sqlx::query("UPDATE api_keys SET hash = $2 WHERE id = $1")
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
        let ids: Vec<&str> = used.iter().map(|(id, _)| id.as_str()).collect();
        let ats: Vec<i64> = used.iter().map(|(_, at)| *at).collect();
        // One statement; duplicates in the batch are folded to their latest
        // time first, as UPDATE … FROM applies only one match per row.
        sqlx::query(
            "UPDATE api_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.at) \
             FROM (SELECT id, MAX(at) AS at FROM UNNEST($1::text[], $2::bigint[]) AS t (id, at) \
                   GROUP BY id) AS u \
             WHERE k.id = u.id",
        )
        .bind(ids)
        .bind(ats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn key_set(&self) -> Result<KeySet, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
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
        let deadline = Instant::now() + max_wait;
        // Subscribe before the first read, so a change committed after it is
        // notified (or else found by the fallback poll).
        self.ensure_listening(max_wait).await;
        loop {
            let revision = self.revision().await?;
            let now = Instant::now();
            if revision != seen || now >= deadline {
                return Ok(revision);
            }
            self.wait_for_notification(POLL_FALLBACK.min(deadline - now))
                .await;
        }
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, client, action, target, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6)",
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
             ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }

    async fn quota_usage(&self, key: &str, period: &str) -> Result<u64, StoreError> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT used FROM quota_usage WHERE key = $1 AND period = $2")
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
        let keys: Vec<&str> = batch.iter().map(|(key, _, _)| key.as_str()).collect();
        let periods: Vec<&str> = batch.iter().map(|(_, period, _)| period.as_str()).collect();
        let deltas: Vec<i64> = batch.iter().map(|(_, _, d)| quota_delta(*d)).collect();
        // One statement (so one transaction and one round trip); duplicates
        // in the batch are summed first, as ON CONFLICT may touch a row only
        // once per statement.
        sqlx::query(
            "INSERT INTO quota_usage AS q (key, period, used) \
             SELECT key, period, SUM(delta)::bigint \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t (key, period, delta) \
             GROUP BY key, period \
             ON CONFLICT (key, period) DO UPDATE SET used = q.used + excluded.used",
        )
        .bind(keys)
        .bind(periods)
        .bind(deltas)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn add_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One statement per rollup (deltas of a bucket summed first), both
        // in one transaction.
        let mut tx = self.pool.begin().await?;
        for grain in [UsageGrain::Minute, UsageGrain::Day] {
            let rows = usage::rollup(batch, grain);
            let consumers: Vec<&str> = rows.iter().map(|r| r.0).collect();
            let keys: Vec<&str> = rows.iter().map(|r| r.1).collect();
            let starts: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let counts: Vec<[i64; 8]> = rows.iter().map(|r| r.3.columns()).collect();
            let sql = format!(
                "INSERT INTO {table} AS u (consumer_id, key_id, start, {COUNT_COLUMNS}) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], \
                 $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], \
                 $10::bigint[], $11::bigint[]) \
                 ON CONFLICT (consumer_id, start, key_id) DO UPDATE SET {set}",
                table = grain.table(),
                set = usage::add_on_conflict("u"),
            );
            let mut q = sqlx::query(&sql).bind(consumers).bind(keys).bind(starts);
            for i in 0..8 {
                q = q.bind(counts.iter().map(|c| c[i]).collect::<Vec<i64>>());
            }
            q.execute(&mut *tx).await?;
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
        let rows: Vec<RawRow> = sqlx::query_as(&usage::select_sql(grain, '$'))
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
        let mut tx = self.pool.begin().await?;
        let minutes = sqlx::query("DELETE FROM usage_minute WHERE start < $1")
            .bind(minutes_before)
            .execute(&mut *tx)
            .await?;
        let days = sqlx::query("DELETE FROM usage_day WHERE start < $1")
            .bind(days_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(minutes.rows_affected() + days.rows_affected())
    }
}
