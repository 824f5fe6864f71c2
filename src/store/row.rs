//! Rows as both databases return them, and their conversion to and from the
//! store's types.
//!
//! Both backends keep JSON (consumer metadata, key scopes) as text; a value
//! that does not parse back becomes [`StoreError::Corrupt`], never a panic.
//! Also maps the database's unique and foreign-key violations (by error
//! code, through [`sqlx::error::ErrorKind`], never by message text) to the
//! store's own errors.

use super::{ApiKey, AuditEntry, Consumer, Credential, StoreError, Timestamp};

/// A `consumers` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ConsumerRow {
    id: String,
    name: String,
    plan: Option<String>,
    metadata: String,
    created_at: Timestamp,
    disabled_at: Option<Timestamp>,
}

impl ConsumerRow {
    /// The consumer, or `Corrupt` if its metadata is not a JSON object.
    pub(super) fn into_consumer(self) -> Result<Consumer, StoreError> {
        let metadata = serde_json::from_str(&self.metadata)
            .map_err(|_| StoreError::Corrupt("consumer metadata"))?;
        Ok(Consumer {
            id: self.id,
            name: self.name,
            plan: self.plan,
            metadata,
            created_at: self.created_at,
            disabled_at: self.disabled_at,
        })
    }
}

/// An `api_keys` row without the hash.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct KeyRow {
    id: String,
    consumer_id: String,
    name: String,
    scopes: String,
    expires_at: Option<Timestamp>,
    created_at: Timestamp,
    last_used_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

impl KeyRow {
    /// The key, or `Corrupt` if its scopes are not a JSON array of strings.
    pub(super) fn into_key(self) -> Result<ApiKey, StoreError> {
        let scopes =
            serde_json::from_str(&self.scopes).map_err(|_| StoreError::Corrupt("key scopes"))?;
        Ok(ApiKey {
            id: self.id,
            consumer_id: self.consumer_id,
            name: self.name,
            scopes,
            expires_at: self.expires_at,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
        })
    }
}

/// An `api_keys` row with its hash.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct CredentialRow {
    #[sqlx(flatten)]
    key: KeyRow,
    hash: String,
}

impl CredentialRow {
    /// The credential, or `Corrupt` if the key's scopes do not parse.
    pub(super) fn into_credential(self) -> Result<Credential, StoreError> {
        Ok(Credential {
            key: self.key.into_key()?,
            hash: self.hash,
        })
    }
}

/// An `audit` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AuditRow {
    at: Timestamp,
    actor: String,
    client: Option<String>,
    action: String,
    target: Option<String>,
    outcome: String,
}

impl From<AuditRow> for AuditEntry {
    fn from(row: AuditRow) -> Self {
        AuditEntry {
            at: row.at,
            actor: row.actor,
            client: row.client,
            action: row.action,
            target: row.target,
            outcome: row.outcome,
        }
    }
}

/// Converts every row, failing on the first that does not convert.
pub(super) fn convert<R, T>(
    rows: Vec<R>,
    f: impl Fn(R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(f).collect()
}

/// Consumer metadata as stored (a JSON object).
pub(super) fn metadata_text(consumer: &Consumer) -> String {
    serde_json::Value::Object(consumer.metadata.clone()).to_string()
}

/// Key scopes as stored (a JSON array of strings).
pub(super) fn scopes_text(key: &ApiKey) -> String {
    serde_json::Value::from(key.scopes.clone()).to_string()
}

/// The error for a failed insert: a unique violation is `Conflict(what)`,
/// a foreign-key violation (a key's consumer is missing) is
/// `NotFound("consumer")`, anything else is a database error.
pub(super) fn insert_error(err: sqlx::Error, what: &'static str) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => return StoreError::Conflict(what),
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return StoreError::NotFound("consumer");
            }
            _ => {}
        }
    }
    StoreError::Database(err)
}

/// The columns of [`KeyRow`], for a `SELECT` or `RETURNING` list in
/// `concat!`.
macro_rules! key_columns {
    () => {
        "id, consumer_id, name, scopes, expires_at, created_at, last_used_at, revoked_at"
    };
}
pub(super) use key_columns;

/// The columns of [`ConsumerRow`], for `concat!`.
macro_rules! consumer_columns {
    () => {
        "id, name, plan, metadata, created_at, disabled_at"
    };
}
pub(super) use consumer_columns;

/// A stored quota usage as a count; a negative value (which the table's
/// CHECK forbids) is `Corrupt`.
pub(super) fn quota_used(used: i64) -> Result<u64, StoreError> {
    u64::try_from(used).map_err(|_| StoreError::Corrupt("quota usage"))
}

/// A usage delta as the databases' BIGINT (capped at its largest value: a
/// count that large means the quota is spent either way).
pub(super) fn quota_delta(delta: u64) -> i64 {
    i64::try_from(delta).unwrap_or(i64::MAX)
}
