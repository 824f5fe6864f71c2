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
//! format → key id in the in-memory index → a cache of verified keys (keyed
//! by SHA-256 of the whole presented key, holding the key id and hash it
//! verified against) → on a miss only: the client's failure budget (IPv4
//! address or IPv6 /64) and the key id's failure budget (only failures are
//! charged to either) → argon2 on the blocking pool, at most
//! `max_concurrent_verifications` at once, two per client and two per key
//! id, and once per distinct presented key in flight → the key's *current*
//! state in the index (revoked, expired, consumer disabled), checked on
//! every request, cache hit or not. A cache hit costs no argon2 and is
//! served even to a throttled client (a NAT address whose neighbours
//! flooded it with junk) or for a throttled key id (its owner keeps
//! working while someone guesses its secret); a throttled client's other
//! attempts all get [`ApiKeyError::Throttled`].
//!
//! **Cache lifetime**: only successful verifications insert into the cache
//! (misses, unknown ids and wrong secrets never do), and an entry lives
//! `cache_ttl` after its *last use* (moka time-to-idle), so a key in use
//! never falls out and never needs argon2 again while someone floods its
//! address or key id. Re-verifying a hot key would add nothing: a changed
//! hash (rotation, re-hash) misses the cache, and revocation is read from
//! the index. Keys and consumers are served from memory:
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
//! - A cached key keeps working without argon2 while it is used at least
//!   every `cache_ttl`, but revocation, expiry and consumer state are read
//!   from the index on every request, so they take effect as soon as the
//!   index is reloaded.
//! - Once a key id's failure budget is spent, a right secret that is not in
//!   the cache waits too (429 with `Retry-After`, no argon2): telling it
//!   from a wrong one would take the argon2 run the budget exists to
//!   prevent. The key's owner is served from the cache meanwhile.
//! - Secrets are copied into the blocking task that verifies or re-hashes
//!   them and are not zeroised afterwards.
//! - Expired/revoked/disabled answers are given only after the secret has
//!   been verified, so they tell nothing to someone who knows only an id.

mod format;
mod hash;
mod settings;
mod sync;
mod throttle;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
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
use self::throttle::{
    ClientKey, FailureBudget, MAX_VERIFYING_PER_CLIENT, MAX_VERIFYING_PER_KEY, VerifySlot,
};
use super::{AuthMethod, Clock, Principal, Timestamp};
use crate::store::{KeySet, KeyStore, StoreError};

/// Longest `cache_ttl` honoured (moka refuses absurd values).
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Settings for [`ApiKeyAuth`]. `Default` gives working, safe values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySettings {
    /// Parameters for new hashes (re-hashes); weaker stored hashes are
    /// upgraded after their next successful verification.
    pub argon2: Argon2Settings,
    /// How long a verified key stays cached (skipping argon2) after its
    /// last use (default 5 min; at most 24 h).
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
    /// Failed attempts one key id regains per minute, whichever clients
    /// made them (default 5; 0 counts as 1).
    pub key_failures_per_minute: u32,
    /// Failed attempts one key id may take at once (default 10; 0 counts
    /// as 1).
    pub key_failure_burst: u32,
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
            key_failures_per_minute: 5,
            key_failure_burst: 10,
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
    /// Too many failed attempts from this client, or for this key id.
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
    /// The client (or the key id) already has its share of argon2 runs in
    /// flight.
    ClientBusy,
    Internal(Arc<InternalError>),
}

type Digest32 = [u8; 32];
/// A client's and a key id's place for one argon2 run.
type RunPlaces = (VerifySlot<ClientKey>, VerifySlot<Arc<str>>);
type InFlight = Mutex<HashMap<Digest32, Arc<OnceCell<Outcome>>>>;

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
    failures: Arc<FailureBudget<ClientKey>>,
    key_failures: Arc<FailureBudget<Arc<str>>>,
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
            .time_to_idle(settings.cache_ttl.min(MAX_CACHE_TTL))
            .build();
        ApiKeyAuth {
            failures: Arc::new(FailureBudget::new(
                settings.failures_per_minute,
                settings.failure_burst,
                settings.cache_capacity,
            )),
            key_failures: Arc::new(FailureBudget::new(
                settings.key_failures_per_minute,
                settings.key_failure_burst,
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
        let who = ClientKey::from(client);
        let parsed = parse(presented).ok();
        let found = parsed.and_then(|p| {
            let index = self.index.load();
            let entry = index.entries.get(p.id())?;
            let digest: Digest32 = Sha256::digest(presented.as_bytes()).into();
            Some((
                p,
                Arc::clone(&entry.key_id),
                Arc::clone(&entry.hash),
                digest,
            ))
        });
        // A verified key is served before any budget is consulted.
        let hit = found.as_ref().is_some_and(|(_, key_id, hash, digest)| {
            self.cache
                .get(digest)
                .is_some_and(|c| c.key_id == *key_id && c.hash == *hash)
        });
        if !hit {
            if let Err(retry_after_secs) = self.failures.check(&who) {
                return Err(ApiKeyError::Throttled { retry_after_secs });
            }
            let Some((parsed, key_id, hash, digest)) = found.clone() else {
                self.failures.charge(&who);
                if let Some(p) = parsed {
                    tracing::debug!(key_id = p.id(), %client, "unknown API key id");
                    return Err(ApiKeyError::Invalid);
                }
                return Err(ApiKeyError::Malformed);
            };
            if let Err(retry_after_secs) = self.key_failures.check(&key_id) {
                tracing::debug!(%key_id, %client, "API key id throttled after failed attempts");
                return Err(ApiKeyError::Throttled { retry_after_secs });
            }
            match self.verify_once(digest, parsed, &key_id, hash, who).await {
                Outcome::Valid { needs_rehash } => {
                    if needs_rehash {
                        self.spawn_rehash(&key_id, parsed.secret());
                    }
                }
                Outcome::Invalid => {
                    // Charged where argon2 ran (so a cancelled request is
                    // charged too).
                    tracing::debug!(%key_id, %client, "API key secret did not verify");
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
        let Some((_, found_id, _, _)) = found else {
            return Err(ApiKeyError::Invalid);
        };
        let key_id: &str = &found_id;

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
    /// new argon2 run takes one of the client's and one of the key id's few
    /// in-flight places (the failure budgets are only charged after a run
    /// fails, so without them one client, or many on one key id, could
    /// start many runs at once); joining a run does not.
    async fn verify_once(
        &self,
        digest: Digest32,
        parsed: ParsedKey<'_>,
        key_id: &Arc<str>,
        hash: Arc<str>,
        client: ClientKey,
    ) -> Outcome {
        let (cell, slot) = {
            let mut map = lock(&self.in_flight);
            match map.get(&digest) {
                Some(cell) => (Arc::clone(cell), None),
                None => {
                    let Some(slot) = self.run_places(client, key_id) else {
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
        cell.get_or_init(|| self.verify_now(digest, parsed, key_id, hash, slot, client))
            .await
            .clone()
    }

    /// A place for one argon2 run in both the client's and the key id's
    /// in-flight caps, or `None` if either is full.
    fn run_places(&self, client: ClientKey, key_id: &Arc<str>) -> Option<RunPlaces> {
        let client = self
            .failures
            .verify_slot(&client, MAX_VERIFYING_PER_CLIENT)?;
        let key = self
            .key_failures
            .verify_slot(key_id, MAX_VERIFYING_PER_KEY)?;
        Some((client, key))
    }

    /// Runs argon2 in the blocking pool, within the concurrency bound, and
    /// caches a success.
    async fn verify_now(
        &self,
        digest: Digest32,
        parsed: ParsedKey<'_>,
        key_id: &Arc<str>,
        hash: Arc<str>,
        slot: Option<RunPlaces>,
        client: ClientKey,
    ) -> Outcome {
        // A request that joined a run whose starter went away runs it
        // itself, under its own client's place.
        let slot = match slot {
            Some(s) => s,
            None => match self.run_places(client, key_id) {
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
        let key_failures = Arc::clone(&self.key_failures);
        let charged_id = Arc::clone(key_id);
        let verified = tokio::task::spawn_blocking(move || {
            // The global permit and the client's place are held until
            // argon2 finishes, and a wrong secret is charged here, even if
            // the waiting request goes away.
            let _permit = permit;
            let _slot = slot;
            let result = verify_secret(&secret, &phc, &settings);
            if matches!(result, Err(VerifyError::Mismatch)) {
                failures.charge(&client);
                key_failures.charge(&charged_id);
            }
            result
        })
        .await;
        match verified {
            Ok(Ok(needs_rehash)) => {
                self.cache.insert(
                    digest,
                    CachedKey {
                        key_id: Arc::clone(key_id),
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

    /// Key ids the per-key failure limiter currently tracks (only ids in
    /// the index are ever charged; pruned every minute).
    pub fn key_throttle_len(&self) -> usize {
        self.key_failures.tracked()
    }

    /// Argon2 verifications run so far (cache misses that got a slot).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
