//! Consumer, key and upstream operations shared by the admin API, the web
//! console and the CLI.
//!
//! Each consumer or key operation checks its input with `validator` first, does any
//! hashing off the async runtime, and then makes exactly one store write
//! (one transaction), so a failed call leaves the store as it was. A new
//! key's full text is returned once, here, and is never stored or logged:
//! only its argon2id hash is. The upstream operations (shift weights,
//! drain a target) change runtime state of the running config only; a
//! reload re-applies the file's weights.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationError, ValidationErrors, ValidationErrorsKind};

use crate::auth::Timestamp;
use crate::auth::api_key::{self, Argon2Settings};
use crate::proxy::{ChangeError, Upstream, UpstreamStatus};
use crate::snapshot::Snapshot;
use crate::store::{ApiKey, Consumer, KeyStore, StoreError};

/// Input for a new consumer.
#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    /// Unique name: 1–64 of `A-Za-z0-9._-`, starting with a letter or digit.
    #[validate(length(min = 1, max = 64), custom(function = "valid_name"))]
    pub name: String,
    /// Plan or tier, same characters as a name.
    #[validate(length(min = 1, max = 64), custom(function = "valid_name"))]
    pub plan: Option<String>,
    /// Free-form JSON object, at most 4 KiB serialised.
    #[serde(default)]
    #[validate(custom(function = "valid_metadata"))]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Input for a new key.
#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A label, 1–64 characters like a name.
    #[serde(default = "default_key_name")]
    #[validate(length(min = 1, max = 64), custom(function = "valid_name"))]
    pub name: String,
    /// Scopes the key grants (each 1–128 visible ASCII characters, at most 64).
    #[serde(default)]
    #[validate(length(max = 64), custom(function = "valid_scopes"))]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. `90d` or `12h` (none: no expiry).
    #[validate(custom(function = "valid_duration"))]
    pub expires_in: Option<String>,
}

/// Input for a key rotation.
#[derive(Debug, Deserialize, Validate, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, e.g. `24h` (default from config).
    #[validate(custom(function = "valid_duration"))]
    pub grace: Option<String>,
}

fn default_key_name() -> String {
    "default".to_owned()
}

fn valid_name(s: &str) -> Result<(), ValidationError> {
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("name").with_message(
            "use letters, digits, `.`, `_` and `-`, starting with a letter or digit".into(),
        ))
    }
}

fn valid_scopes(scopes: &[String]) -> Result<(), ValidationError> {
    for s in scopes {
        if s.is_empty()
            || s.len() > 128
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(ValidationError::new("scope").with_message(
                "each scope is 1 to 128 visible ASCII characters, without quotes or backslashes"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn valid_metadata(m: &serde_json::Map<String, serde_json::Value>) -> Result<(), ValidationError> {
    let size = serde_json::to_string(m)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > 4096 {
        return Err(ValidationError::new("metadata").with_message("at most 4 KiB of JSON".into()));
    }
    Ok(())
}

fn valid_duration(s: &str) -> Result<(), ValidationError> {
    match parse_duration(s) {
        Ok(_) => Ok(()),
        Err(()) => Err(ValidationError::new("duration").with_message(
            "a duration between 1s and 100 years, like `90d`, `12h` or `30m`".into(),
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, ()> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| ())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(100 * 365 * 86_400) {
        return Err(());
    }
    Ok(d)
}

/// Why an operation failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The input broke a rule; field name → messages.
    #[error("invalid input")]
    Invalid(BTreeMap<String, Vec<String>>),
    /// The consumer or key does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The name or id is taken.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// Keys cannot be made for a disabled consumer.
    #[error("consumer is disabled")]
    ConsumerDisabled,
    /// The key is revoked, so it cannot be rotated.
    #[error("key is revoked")]
    KeyRevoked,
    /// The store failed.
    #[error("store error")]
    Store(#[source] StoreError),
    /// Hashing failed, or its task did.
    #[error("hashing failed")]
    Hash,
}

impl OpError {
    /// The HTTP status the admin API and the console answer it with.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            OpError::Invalid(_) => StatusCode::BAD_REQUEST,
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Conflict(_) | OpError::ConsumerDisabled | OpError::KeyRevoked => {
                StatusCode::CONFLICT
            }
            OpError::Store(_) | OpError::Hash => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            OpError::Invalid(_) => "invalid_input",
            OpError::NotFound(_) => "not_found",
            OpError::Conflict(_) => "conflict",
            OpError::ConsumerDisabled => "consumer_disabled",
            OpError::KeyRevoked => "key_revoked",
            OpError::Store(_) => "store_error",
            OpError::Hash => "internal",
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => OpError::NotFound(what),
            StoreError::Conflict(what) => OpError::Conflict(what),
            other => OpError::Store(other),
        }
    }
}

impl From<ValidationErrors> for OpError {
    fn from(e: ValidationErrors) -> Self {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (field, kind) in e.errors() {
            if let ValidationErrorsKind::Field(errs) = kind {
                for err in errs {
                    let message = match (&err.message, err.params.get("min"), err.params.get("max"))
                    {
                        (Some(m), _, _) => m.to_string(),
                        (None, Some(min), Some(max)) => {
                            format!("length must be between {min} and {max}")
                        }
                        (None, None, Some(max)) => format!("at most {max} items"),
                        (None, Some(min), None) => format!("at least {min}"),
                        (None, None, None) => err.code.to_string(),
                    };
                    fields.entry(field.to_string()).or_default().push(message);
                }
            }
        }
        OpError::Invalid(fields)
    }
}

fn invalid(field: &str, message: &str) -> OpError {
    OpError::Invalid(BTreeMap::from([(
        field.to_owned(),
        vec![message.to_owned()],
    )]))
}

/// A key just made: the record, and the full key shown this once.
#[derive(Serialize)]
pub struct CreatedKey {
    /// The stored record.
    pub key: ApiKey,
    /// The full key. Not stored anywhere; show it to the user once.
    pub api_key: String,
    /// After a rotation: the old key, with its new expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ApiKey>,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("api_key", &"<redacted>")
            .field("previous", &self.previous)
            .finish()
    }
}

/// A new random consumer id: `c_` and 16 base62 characters.
fn consumer_id() -> String {
    let tail: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("c_{tail}")
}

/// Creates a consumer.
pub async fn create_consumer(
    store: &dyn KeyStore,
    now: Timestamp,
    input: NewConsumer,
) -> Result<Consumer, OpError> {
    input.validate()?;
    let consumer = Consumer {
        id: consumer_id(),
        name: input.name,
        plan: input.plan,
        metadata: input.metadata,
        created_at: now,
        disabled_at: None,
    };
    store.create_consumer(&consumer).await?;
    Ok(consumer)
}

/// The consumer with this id or name.
pub async fn consumer(store: &dyn KeyStore, id_or_name: &str) -> Result<Consumer, OpError> {
    store
        .consumer(id_or_name)
        .await?
        .ok_or(OpError::NotFound("consumer"))
}

/// Disables a consumer: every key of it stops working.
pub async fn disable_consumer(
    store: &dyn KeyStore,
    now: Timestamp,
    id_or_name: &str,
) -> Result<Consumer, OpError> {
    let c = consumer(store, id_or_name).await?;
    Ok(store.disable_consumer(&c.id, now).await?)
}

/// Makes a new key for a consumer (by id or name).
pub async fn create_key(
    store: &dyn KeyStore,
    now: Timestamp,
    argon2: &Argon2Settings,
    consumer_ref: &str,
    input: NewKey,
) -> Result<CreatedKey, OpError> {
    input.validate()?;
    let owner = consumer(store, consumer_ref).await?;
    if owner.disabled_at.is_some() {
        return Err(OpError::ConsumerDisabled);
    }
    let expires_at = match &input.expires_in {
        Some(s) => Some(expiry(now, s).ok_or_else(|| invalid("expires_in", "invalid duration"))?),
        None => None,
    };
    let (id, full, hash) = new_secret(argon2).await?;
    let key = ApiKey {
        id,
        consumer_id: owner.id,
        name: input.name,
        scopes: input.scopes,
        expires_at,
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    store.create_key(&key, &hash).await?;
    Ok(CreatedKey {
        key,
        api_key: full,
        previous: None,
    })
}

/// Replaces a key: a new key with the same consumer, name, scopes and
/// lifetime; the old one keeps working for the grace period.
pub async fn rotate_key(
    store: &dyn KeyStore,
    now: Timestamp,
    argon2: &Argon2Settings,
    key_id: &str,
    input: RotateKey,
    default_grace: Duration,
) -> Result<CreatedKey, OpError> {
    input.validate()?;
    let grace = match &input.grace {
        Some(s) => parse_duration(s).map_err(|()| invalid("grace", "invalid duration"))?,
        None => default_grace,
    };
    let old = store.key(key_id).await?.ok_or(OpError::NotFound("key"))?;
    if old.revoked_at.is_some() {
        return Err(OpError::KeyRevoked);
    }
    let lifetime = old
        .expires_at
        .map(|e| e.saturating_sub(old.created_at).max(1));
    let (id, full, hash) = new_secret(argon2).await?;
    let new = ApiKey {
        id,
        consumer_id: old.consumer_id.clone(),
        name: old.name.clone(),
        scopes: old.scopes.clone(),
        expires_at: lifetime.map(|l| now.saturating_add(l)),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let previous = store
        .rotate_key(&old.id, now.saturating_add(grace_secs), &new, &hash)
        .await?;
    Ok(CreatedKey {
        key: new,
        api_key: full,
        previous: Some(previous),
    })
}

/// Revokes a key at once.
pub async fn revoke_key(
    store: &dyn KeyStore,
    now: Timestamp,
    key_id: &str,
) -> Result<ApiKey, OpError> {
    Ok(store.revoke_key(key_id, now).await?)
}

fn expiry(now: Timestamp, s: &str) -> Option<Timestamp> {
    let d = parse_duration(s).ok()?;
    Some(now.saturating_add(i64::try_from(d.as_secs()).ok()?))
}

/// A fresh key: its id, full text and the argon2id hash of its secret
/// (hashed on a blocking thread).
async fn new_secret(argon2: &Argon2Settings) -> Result<(String, String, String), OpError> {
    let generated = api_key::generate().map_err(|_| OpError::Hash)?;
    let settings = *argon2;
    let secret = generated.secret().to_owned();
    let hash = tokio::task::spawn_blocking(move || api_key::hash_secret(&secret, &settings))
        .await
        .map_err(|_| OpError::Hash)?
        .map_err(|_| OpError::Hash)?;
    Ok((generated.id.clone(), generated.full.clone(), hash))
}

/// The upstream `name` of the running config.
pub fn upstream(snapshot: &Snapshot, name: &str) -> Result<std::sync::Arc<Upstream>, OpError> {
    snapshot
        .upstreams
        .get(name)
        .cloned()
        .ok_or(OpError::NotFound("upstream"))
}

/// Sets the weights of upstream `name`'s sets: the named sets get theirs,
/// the others 0. Returns the upstream's status after the change.
pub fn shift_upstream(
    snapshot: &Snapshot,
    name: &str,
    to: &BTreeMap<String, u32>,
) -> Result<UpstreamStatus, OpError> {
    let u = upstream(snapshot, name)?;
    u.shift(to).map_err(|e| change_refused("to", &e))?;
    Ok(u.status())
}

/// Drains (`drained`) or undrains one target of upstream `name`. Returns
/// the upstream's status after the change.
pub fn drain_target(
    snapshot: &Snapshot,
    name: &str,
    target: &str,
    drained: bool,
) -> Result<UpstreamStatus, OpError> {
    let u = upstream(snapshot, name)?;
    u.drain(target, drained)
        .map_err(|e| change_refused("target", &e))?;
    Ok(u.status())
}

fn change_refused(field: &str, e: &ChangeError) -> OpError {
    invalid(field, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_field_by_field() {
        let cases: Vec<(&str, serde_json::Value, Option<&str>)> = vec![
            (
                "good",
                serde_json::json!({"name": "acme-1", "plan": "gold"}),
                None,
            ),
            ("empty name", serde_json::json!({"name": ""}), Some("name")),
            ("spaces", serde_json::json!({"name": "a b"}), Some("name")),
            (
                "leading dash",
                serde_json::json!({"name": "-a"}),
                Some("name"),
            ),
            (
                "long",
                serde_json::json!({"name": "a".repeat(65)}),
                Some("name"),
            ),
            (
                "bad plan",
                serde_json::json!({"name": "a", "plan": "g/old"}),
                Some("plan"),
            ),
            (
                "huge metadata",
                serde_json::json!({"name": "a", "metadata": {"x": "y".repeat(5000)}}),
                Some("metadata"),
            ),
        ];
        for (name, json, field) in cases {
            let input: NewConsumer = serde_json::from_value(json).unwrap();
            let got = input.validate().map_err(OpError::from);
            match (field, got) {
                (None, Ok(())) => {}
                (Some(f), Err(OpError::Invalid(fields))) => {
                    assert!(fields.contains_key(f), "{name}: {fields:?}")
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn key_inputs() {
        let cases: Vec<(&str, serde_json::Value, Option<&str>)> = vec![
            ("defaults", serde_json::json!({}), None),
            (
                "scopes and expiry",
                serde_json::json!({"scopes": ["orders:read"], "expires_in": "90d"}),
                None,
            ),
            (
                "bad scope",
                serde_json::json!({"scopes": ["a b"]}),
                Some("scopes"),
            ),
            (
                "bad duration",
                serde_json::json!({"expires_in": "soon"}),
                Some("expires_in"),
            ),
            (
                "zero duration",
                serde_json::json!({"expires_in": "0s"}),
                Some("expires_in"),
            ),
        ];
        for (name, json, field) in cases {
            let input: NewKey = serde_json::from_value(json).unwrap();
            let got = input.validate().map_err(OpError::from);
            match (field, got) {
                (None, Ok(())) => {}
                (Some(f), Err(OpError::Invalid(fields))) => {
                    assert!(fields.contains_key(f), "{name}: {fields:?}")
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
        assert!(serde_json::from_value::<NewKey>(serde_json::json!({"secret": "x"})).is_err());
    }
}
