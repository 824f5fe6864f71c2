//! API keys: the key format, argon2id hashing, and [`ApiKeyAuth`], which
//! authenticates presented keys on the request path.
//!
//! **Format**: `gth_` + 12-char base62 key id + 22-char base62 secret
//! (≈131 bits from the OS RNG, uniform) + 6-char base62 CRC32 of everything
//! before it: 44 ASCII characters in all (details in `format.rs`). [`generate`]
//! makes a key; [`parse`] checks a presented one (prefix, exact length,
//! charset, checksum) before anything else looks at it.
//!
//! **Hashing**: only the secret part is hashed, with argon2id (OWASP
//! parameters by default: m = 19 MiB, t = 2, p = 1) into a PHC string with a
//! random salt ([`hash_secret`], [`verify_secret`]; the same functions serve
//! the admin token). Verification uses the parameters in the stored string
//! and reports when a hash is weaker than the current settings, so
//! [`ApiKeyAuth`] re-hashes such keys after their next successful use.
//!
//! **Authentication** ([`ApiKeyAuth::authenticate`]), cheapest step first:
//! the client's failure budget (IPv4 address or IPv6 /64; only failures are
//! charged) → format → key id in the in-memory index → a cache of verified
//! keys (keyed by SHA-256 of the whole presented key) → on a miss, argon2
//! on the blocking pool, at most `max_concurrent_verifications` at once and
//! once per distinct presented key in flight → the key's *current* state in
//! the index (revoked, expired, consumer disabled), checked on every
//! request, cache hit or not. Keys and consumers are served from memory:
//! the store is read only by [`ApiKeyAuth::refresh`] (at start, after an
//! admin write, and when [`ApiKeyAuth::spawn_sync`] sees a new revision) and
//! written only in batches (last-used times) and for re-hashes.
//!
//! This module does not extract the key from the request (header or query
//! parameter: that is the gateway's), answer HTTP, or manage keys (the admin
//! API and CLI call [`generate`] and [`hash_secret`] and the store).
//!
//! Security caveats:
//! - Presented keys and secrets are never logged, not even truncated; key
//!   ids are (they are public, and only well-formed ones are logged).
//! - An unknown key id is refused without argon2, so response time tells
//!   whether a key id exists. Key ids are not secret (they appear in logs
//!   and admin listings); the secret is what authenticates.
//! - A cached key keeps working without argon2 for up to `cache_ttl`, but
//!   revocation, expiry and consumer state are read from the index on every
//!   request, so they take effect as soon as the index is reloaded.
//! - Secrets are copied into the blocking task that verifies or re-hashes
//!   them and are not zeroised afterwards.
//! - Expired/revoked/disabled answers are given only after the secret has
//!   been verified, so they tell nothing to someone who knows only an id.

mod format;
mod hash;
mod throttle;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};

pub use self::format::{
    CHECKSUM_LEN, ID_LEN, KEY_LEN, KeyFormatError, KeyGenError, NewKey, PREFIX, ParsedKey,
    SECRET_LEN, assemble, generate, parse,
};
pub use self::hash::{
    Argon2Settings, HashError, VerifyError, hash_admin_token, hash_secret, verify_admin_token,
    verify_secret,
};
use self::throttle::{FailureBudget, VerifySlot};
use super::{AuthMethod, Clock, Principal, Timestamp};
use crate::store::{KeySet, KeyStore, StoreError};

/// How long one `wait_for_change` call may wait before it is renewed.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// Pause after a failed refresh or store error before trying again.
const SYNC_BACKOFF: Duration = Duration::from_secs(1);
/// How often the failure limiter forgets clients whose budget is full again.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Longest `cache_ttl` honoured (moka refuses absurd values).
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Range of `last_used_flush` honoured.
const FLUSH_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

/// Settings for [`ApiKeyAuth`]. `Default` gives working, safe values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySettings {
    /// Parameters for new hashes (re-hashes); weaker stored hashes are
    /// upgraded after their next successful verification.
    pub argon2: Argon2Settings,
    /// How long a verified key skips argon2 (default 5 min; at most 24 h).
    pub cache_ttl: Duration,
    /// Most verified keys cached (default 100 000).
    pub cache_capacity: u64,
    /// Most argon2 verifications running at once (default: CPU count).
    pub max_concurrent_verifications: usize,
    /// How long a cache miss waits for a verification slot before it is
    /// answered [`ApiKeyError::Busy`] (default 2 s).
    pub verify_wait: Duration,
    /// Failed attempts a client regains per minute (default 10; 0 counts as 1).
    pub failures_per_minute: u32,
    /// Failed attempts a client may make at once (default 20; 0 counts as 1).
    pub failure_burst: u32,
    /// How often last-used times are written to the store (default 5 s;
    /// kept within 10 ms ..= 1 h).
    pub last_used_flush: Duration,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        Self {
            argon2: Argon2Settings::default(),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 100_000,
            max_concurrent_verifications: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            verify_wait: Duration::from_secs(2),
            failures_per_minute: 10,
            failure_burst: 20,
            last_used_flush: Duration::from_secs(5),
        }
    }
}

/// Why a presented API key was refused. Messages never say which part of a
/// key was wrong beyond "malformed" (the format is public) or "invalid".
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// Not a well-formed gatehouse key (prefix, length, charset, checksum).
    #[error("malformed API key")]
    Malformed,
    /// Unknown key, wrong secret, or a key that no longer exists.
    #[error("invalid API key")]
    Invalid,
    /// The key is past its expiry.
    #[error("API key expired")]
    Expired,
    /// The key was revoked.
    #[error("API key revoked")]
    Revoked,
    /// The key's consumer is disabled.
    #[error("consumer disabled")]
    ConsumerDisabled,
    /// Too many failed attempts from this client.
    #[error("too many failed authentication attempts")]
    Throttled {
        /// Seconds until the client may try again.
        retry_after_secs: u64,
    },
    /// No verification slot became free in time.
    #[error("authentication is busy, try again")]
    Busy,
    /// Verification itself failed (an unusable stored hash, a crashed task).
    #[error("internal error while verifying the API key")]
    Internal(#[source] Arc<InternalError>),
}

/// The cause of an [`ApiKeyError::Internal`].
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// The stored hash could not be used.
    #[error("stored hash unusable")]
    Verify(#[source] VerifyError),
    /// The verification task failed.
    #[error("verification task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The verification semaphore was closed.
    #[error("verification slots closed")]
    Closed,
}

/// One key as authentication needs it, with its consumer's details.
#[derive(Debug)]
struct IndexEntry {
    key_id: Arc<str>,
    hash: Arc<str>,
    scopes: Vec<String>,
    expires_at: Option<Timestamp>,
    revoked: bool,
    consumer_id: Arc<str>,
    consumer_name: Arc<str>,
    plan: Option<Arc<str>>,
    consumer_disabled: bool,
}

/// The whole in-memory index, replaced at once.
#[derive(Debug)]
struct KeyIndex {
    entries: HashMap<Arc<str>, IndexEntry>,
    revision: i64,
}

/// A presented key whose secret verified against `hash` of `key_id`.
#[derive(Debug, Clone)]
struct CachedKey {
    key_id: Arc<str>,
    hash: Arc<str>,
}

/// What one argon2 verification found, shared by everyone waiting on it.
#[derive(Debug, Clone)]
enum Outcome {
    Valid {
        needs_rehash: bool,
    },
    Invalid,
    Busy,
    /// The client already has its share of argon2 runs in flight.
    ClientBusy,
    Internal(Arc<InternalError>),
}

type Digest32 = [u8; 32];
type InFlight = Mutex<HashMap<Digest32, Arc<OnceCell<Outcome>>>>;
type WaitFuture = Pin<Box<dyn Future<Output = Result<i64, StoreError>> + Send>>;

/// Authenticates API keys from memory. Build one per gateway, share it in
/// an `Arc`, [`refresh`](Self::refresh) it once before serving and run
/// [`spawn_sync`](Self::spawn_sync) to follow the store.
pub struct ApiKeyAuth {
    settings: ApiKeySettings,
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    index: ArcSwap<KeyIndex>,
    refresh_lock: tokio::sync::Mutex<()>,
    cache: moka::sync::Cache<Digest32, CachedKey>,
    in_flight: InFlight,
    slots: Arc<Semaphore>,
    failures: Arc<FailureBudget>,
    last_used: Mutex<HashMap<Arc<str>, Timestamp>>,
    rehashing: Arc<Mutex<HashSet<Arc<str>>>>,
    verifications: AtomicU64,
}

impl fmt::Debug for ApiKeyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .field("index_len", &self.index_len())
            .field("cache_len", &self.cache_len())
            .field("verifications", &self.verifications())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a digest's in-flight entry when its waiter finishes or is
/// dropped (if it is still the same entry).
struct InFlightGuard<'a> {
    map: &'a InFlight,
    digest: Digest32,
    cell: Arc<OnceCell<Outcome>>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        if map
            .get(&self.digest)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(&self.digest);
        }
    }
}

impl ApiKeyAuth {
    /// A ready authenticator with an empty index (every key is refused
    /// until [`load`](Self::load) or [`refresh`](Self::refresh)).
    pub fn new(
        settings: ApiKeySettings,
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
    ) -> ApiKeyAuth {
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .time_to_live(settings.cache_ttl.min(MAX_CACHE_TTL))
            .build();
        ApiKeyAuth {
            failures: Arc::new(FailureBudget::new(
                settings.failures_per_minute,
                settings.failure_burst,
                settings.cache_capacity,
            )),
            slots: Arc::new(Semaphore::new(settings.max_concurrent_verifications.max(1))),
            settings,
            store,
            clock,
            index: ArcSwap::from_pointee(KeyIndex {
                entries: HashMap::new(),
                revision: i64::MIN,
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
            cache,
            in_flight: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
            rehashing: Arc::new(Mutex::new(HashSet::new())),
            verifications: AtomicU64::new(0),
        }
    }

    /// Replaces the whole in-memory index with `set`. Keys whose consumer
    /// is missing from the set are left out (and logged).
    pub fn load(&self, set: KeySet) {
        struct ConsumerInfo {
            id: Arc<str>,
            name: Arc<str>,
            plan: Option<Arc<str>>,
            disabled: bool,
        }
        let consumers: HashMap<String, ConsumerInfo> = set
            .consumers
            .into_iter()
            .map(|c| {
                let info = ConsumerInfo {
                    id: Arc::from(c.id.as_str()),
                    name: Arc::from(c.name),
                    plan: c.plan.map(Arc::from),
                    disabled: c.disabled_at.is_some(),
                };
                (c.id, info)
            })
            .collect();
        let mut entries = HashMap::with_capacity(set.credentials.len());
        for cred in set.credentials {
            let key = cred.key;
            let Some(consumer) = consumers.get(&key.consumer_id) else {
                tracing::warn!(key_id = %key.id, consumer_id = %key.consumer_id,
                    "API key's consumer is missing; key ignored");
                continue;
            };
            let key_id: Arc<str> = Arc::from(key.id);
            entries.insert(
                Arc::clone(&key_id),
                IndexEntry {
                    key_id,
                    hash: Arc::from(cred.hash),
                    scopes: key.scopes,
                    expires_at: key.expires_at,
                    revoked: key.revoked_at.is_some(),
                    consumer_id: Arc::clone(&consumer.id),
                    consumer_name: Arc::clone(&consumer.name),
                    plan: consumer.plan.clone(),
                    consumer_disabled: consumer.disabled,
                },
            );
        }
        tracing::debug!(
            keys = entries.len(),
            revision = set.revision,
            "API key index loaded"
        );
        self.index.store(Arc::new(KeyIndex {
            entries,
            revision: set.revision,
        }));
        lock(&self.rehashing).clear();
    }

    /// Reads the key set from the store and loads it. Refreshes run one at
    /// a time, and a set older than the loaded one is ignored, so racing
    /// refreshes (admin write and sync task) cannot bring back old state.
    /// On error the current index stays.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let set = self.store.key_set().await?;
        let loaded = self.index.load().revision;
        if set.revision < loaded {
            tracing::debug!(revision = set.revision, loaded, "ignoring an older key set");
            return Ok(());
        }
        self.load(set);
        Ok(())
    }

    /// Authenticates a presented API key for a client. Never touches the
    /// store. See the module docs for the order of checks.
    pub async fn authenticate(
        &self,
        presented: &str,
        client: IpAddr,
    ) -> Result<Principal, ApiKeyError> {
        if let Err(retry_after_secs) = self.failures.check(client) {
            return Err(ApiKeyError::Throttled { retry_after_secs });
        }
        let Ok(parsed) = parse(presented) else {
            self.failures.charge(client);
            return Err(ApiKeyError::Malformed);
        };
        let key_id = parsed.id();
        let Some(hash) = self
            .index
            .load()
            .entries
            .get(key_id)
            .map(|e| Arc::clone(&e.hash))
        else {
            self.failures.charge(client);
            tracing::debug!(key_id, %client, "unknown API key id");
            return Err(ApiKeyError::Invalid);
        };

        let digest: Digest32 = Sha256::digest(presented.as_bytes()).into();
        let hit = self
            .cache
            .get(&digest)
            .is_some_and(|c| c.key_id.as_ref() == key_id && c.hash == hash);
        if !hit {
            match self.verify_once(digest, parsed, hash, client).await {
                Outcome::Valid { needs_rehash } => {
                    if needs_rehash {
                        self.spawn_rehash(key_id, parsed.secret());
                    }
                }
                Outcome::Invalid => {
                    // Charged where argon2 ran (so a cancelled request is
                    // charged too).
                    tracing::debug!(key_id, %client, "API key secret did not verify");
                    return Err(ApiKeyError::Invalid);
                }
                Outcome::Busy => return Err(ApiKeyError::Busy),
                Outcome::ClientBusy => {
                    return Err(ApiKeyError::Throttled {
                        retry_after_secs: 1,
                    });
                }
                Outcome::Internal(e) => return Err(ApiKeyError::Internal(e)),
            }
        }

        // The key's state now, whatever the cache says.
        let now = self.clock.now();
        let index = self.index.load();
        let Some(entry) = index.entries.get(key_id) else {
            return Err(ApiKeyError::Invalid);
        };
        if entry.revoked {
            return Err(ApiKeyError::Revoked);
        }
        if entry.expires_at.is_some_and(|at| at <= now) {
            return Err(ApiKeyError::Expired);
        }
        if entry.consumer_disabled {
            return Err(ApiKeyError::ConsumerDisabled);
        }
        {
            let mut used = lock(&self.last_used);
            let at = used.entry(Arc::clone(&entry.key_id)).or_insert(now);
            *at = (*at).max(now);
        }
        Ok(Principal {
            method: AuthMethod::ApiKey,
            subject: Arc::clone(&entry.consumer_id),
            consumer_name: Some(Arc::clone(&entry.consumer_name)),
            plan: entry.plan.clone(),
            credential_id: Arc::clone(&entry.key_id),
            scopes: entry.scopes.clone(),
            roles: Vec::new(),
            headers: Vec::new(),
        })
    }

    /// Verifies a presented key whose digest missed the cache, sharing the
    /// work with concurrent requests presenting the same key. Starting a
    /// new argon2 run takes one of the client's few in-flight places (the
    /// failure budget is only charged after a run fails, so without them
    /// one client could start many runs at once); joining a run does not.
    async fn verify_once(
        &self,
        digest: Digest32,
        parsed: ParsedKey<'_>,
        hash: Arc<str>,
        client: IpAddr,
    ) -> Outcome {
        let (cell, slot) = {
            let mut map = lock(&self.in_flight);
            match map.get(&digest) {
                Some(cell) => (Arc::clone(cell), None),
                None => {
                    let Some(slot) = self.failures.verify_slot(client) else {
                        return Outcome::ClientBusy;
                    };
                    let cell = Arc::new(OnceCell::new());
                    map.insert(digest, Arc::clone(&cell));
                    (cell, Some(slot))
                }
            }
        };
        let _guard = InFlightGuard {
            map: &self.in_flight,
            digest,
            cell: Arc::clone(&cell),
        };
        cell.get_or_init(|| self.verify_now(digest, parsed, hash, slot, client))
            .await
            .clone()
    }

    /// Runs argon2 in the blocking pool, within the concurrency bound, and
    /// caches a success.
    async fn verify_now(
        &self,
        digest: Digest32,
        parsed: ParsedKey<'_>,
        hash: Arc<str>,
        slot: Option<VerifySlot>,
        client: IpAddr,
    ) -> Outcome {
        // A request that joined a run whose starter went away runs it
        // itself, under its own client's place.
        let slot = match slot {
            Some(s) => s,
            None => match self.failures.verify_slot(client) {
                Some(s) => s,
                None => return Outcome::ClientBusy,
            },
        };
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let permit = match tokio::time::timeout(self.settings.verify_wait, acquire).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Outcome::Internal(Arc::new(InternalError::Closed)),
            Err(_) => {
                tracing::warn!(
                    key_id = parsed.id(),
                    "no argon2 slot in time; answering busy"
                );
                return Outcome::Busy;
            }
        };
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let secret = parsed.secret().to_owned();
        let phc = Arc::clone(&hash);
        let settings = self.settings.argon2;
        let failures = Arc::clone(&self.failures);
        let verified = tokio::task::spawn_blocking(move || {
            // The global permit and the client's place are held until
            // argon2 finishes, and a wrong secret is charged here, even if
            // the waiting request goes away.
            let _permit = permit;
            let _slot = slot;
            let result = verify_secret(&secret, &phc, &settings);
            if matches!(result, Err(VerifyError::Mismatch)) {
                failures.charge(client);
            }
            result
        })
        .await;
        match verified {
            Ok(Ok(needs_rehash)) => {
                self.cache.insert(
                    digest,
                    CachedKey {
                        key_id: Arc::from(parsed.id()),
                        hash,
                    },
                );
                Outcome::Valid { needs_rehash }
            }
            Ok(Err(VerifyError::Mismatch)) => Outcome::Invalid,
            Ok(Err(e)) => {
                tracing::error!(key_id = parsed.id(), error = %e, "stored API key hash is unusable");
                Outcome::Internal(Arc::new(InternalError::Verify(e)))
            }
            Err(e) => {
                tracing::error!(key_id = parsed.id(), error = %e, "API key verification task failed");
                Outcome::Internal(Arc::new(InternalError::Task(e)))
            }
        }
    }

    /// Re-hashes a key's secret with the current settings and stores it,
    /// in the background, once per key until the next index load.
    fn spawn_rehash(&self, key_id: &str, secret: &str) {
        let Some(entry_id) = self
            .index
            .load()
            .entries
            .get_key_value(key_id)
            .map(|(k, _)| Arc::clone(k))
        else {
            return;
        };
        if !lock(&self.rehashing).insert(Arc::clone(&entry_id)) {
            return;
        }
        let secret = secret.to_owned();
        let settings = self.settings.argon2;
        let store = Arc::clone(&self.store);
        let slots = Arc::clone(&self.slots);
        let rehashing = Arc::clone(&self.rehashing);
        tokio::spawn(async move {
            let hashed = match slots.acquire_owned().await {
                Ok(permit) => {
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        hash_secret(&secret, &settings)
                    })
                    .await
                }
                Err(_) => return,
            };
            let result = match hashed {
                Ok(Ok(phc)) => store
                    .update_hash(&entry_id, &phc)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    tracing::info!(key_id = %entry_id, "API key re-hashed with current argon2 parameters")
                }
                Err(error) => {
                    tracing::warn!(key_id = %entry_id, %error, "API key re-hash failed; will retry on a later use");
                    lock(&rehashing).remove(&entry_id);
                }
            }
        });
    }

    /// Writes the collected last-used times to the store in one
    /// `touch_keys` batch. On error they are kept (for keys still in the
    /// index, so the map stays bounded) for the next flush.
    pub async fn flush_last_used(&self) {
        let batch: Vec<(String, Timestamp)> = {
            let mut used = lock(&self.last_used);
            used.drain().map(|(id, at)| (id.to_string(), at)).collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self.store.touch_keys(&batch).await {
            tracing::warn!(%error, keys = batch.len(), "could not record API key last-used times; will retry");
            let index = self.index.load();
            let mut used = lock(&self.last_used);
            for (id, at) in batch {
                if let Some((key_id, _)) = index.entries.get_key_value(id.as_str()) {
                    let kept = used.entry(Arc::clone(key_id)).or_insert(at);
                    *kept = (*kept).max(at);
                }
            }
        }
    }

    /// Follows the store: reloads the index whenever its revision changes
    /// (Postgres wakes on NOTIFY, SQLite polls), flushes last-used times
    /// every `last_used_flush` and prunes the failure limiter. A failed
    /// refresh keeps the old index and is retried after 1 s. When `stop`
    /// turns true (or its sender is dropped) it flushes once more and ends.
    pub fn spawn_sync(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let store = Arc::clone(&this.store);
            let wait_from = |seen: i64, delay: Duration| -> WaitFuture {
                let store = Arc::clone(&store);
                Box::pin(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    store.wait_for_change(seen, SYNC_WAIT).await
                })
            };
            let every = |period: Duration| {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            };
            let mut flush = every(
                this.settings
                    .last_used_flush
                    .clamp(FLUSH_RANGE.0, FLUSH_RANGE.1),
            );
            let mut prune = every(PRUNE_EVERY);
            let mut revision = this.index.load().revision;
            let mut wait = wait_from(revision, Duration::ZERO);
            while !*stop.borrow_and_update() {
                tokio::select! {
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    _ = flush.tick() => this.flush_last_used().await,
                    _ = prune.tick() => this.failures.prune(),
                    seen = &mut wait => {
                        let delay = match seen {
                            Ok(rev) if rev == revision => Duration::ZERO,
                            Ok(rev) => match this.refresh().await {
                                Ok(()) => {
                                    revision = this.index.load().revision;
                                    tracing::debug!(revision = rev, "API key index refreshed");
                                    Duration::ZERO
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "API key refresh failed; keeping the current index");
                                    SYNC_BACKOFF
                                }
                            },
                            Err(error) => {
                                tracing::warn!(%error, "waiting for key store changes failed");
                                SYNC_BACKOFF
                            }
                        };
                        wait = wait_from(revision, delay);
                    }
                }
            }
            this.flush_last_used().await;
        })
    }

    /// Verified keys currently cached (approximate).
    pub fn cache_len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Keys in the in-memory index.
    pub fn index_len(&self) -> usize {
        self.index.load().entries.len()
    }

    /// Clients the failure limiter currently tracks (pruned every minute).
    pub fn throttle_len(&self) -> usize {
        self.failures.tracked()
    }

    /// Argon2 verifications run so far (cache misses that got a slot).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
