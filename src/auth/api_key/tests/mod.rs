//! Tests for [`ApiKeyAuth`] against an in-memory test double of the store.

mod argon2_slots;
mod background;
mod client_budget;
mod verify;

use client_budget::*;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::store::{ApiKey, AuditEntry, Consumer, Credential};

/// Cheap argon2 parameters so tests run fast (debug builds).
const FAST: Argon2Settings = Argon2Settings {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};
/// Weaker than [`FAST`]: hashes made with it need a re-hash.
const WEAK: Argon2Settings = Argon2Settings {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};

/// TEST DOUBLE: a `KeyStore` backed by a `Mutex<KeySet>` that records the
/// calls the gateway makes. Not a real store.
#[derive(Debug, Default)]
struct FakeStore {
    set: Mutex<KeySet>,
    calls: AtomicUsize,
    key_set_calls: AtomicUsize,
    touched: Mutex<Vec<Vec<(String, Timestamp)>>>,
    updated_hashes: Mutex<Vec<(String, String)>>,
    fail_touch: AtomicBool,
    changed: Notify,
}

impl FakeStore {
    fn new(set: KeySet) -> Arc<Self> {
        Arc::new(Self {
            set: Mutex::new(set),
            ..Self::default()
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn call(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes the set, bumps its revision and wakes `wait_for_change`.
    fn change(&self, f: impl FnOnce(&mut KeySet)) {
        {
            let mut set = self.set.lock().unwrap();
            f(&mut set);
            set.revision += 1;
        }
        self.changed.notify_waiters();
    }
}

#[async_trait::async_trait]
impl KeyStore for FakeStore {
    async fn create_consumer(&self, _: &Consumer) -> Result<(), StoreError> {
        self.call();
        Ok(())
    }
    async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        self.call();
        Ok(self.set.lock().unwrap().consumers.clone())
    }
    async fn consumer(&self, _: &str) -> Result<Option<Consumer>, StoreError> {
        self.call();
        Ok(None)
    }
    async fn disable_consumer(&self, _: &str, _: Timestamp) -> Result<Consumer, StoreError> {
        self.call();
        Err(StoreError::NotFound("consumer"))
    }
    async fn create_key(&self, _: &ApiKey, _: &str) -> Result<(), StoreError> {
        self.call();
        Ok(())
    }
    async fn rotate_key(
        &self,
        _: &str,
        _: Timestamp,
        _: &ApiKey,
        _: &str,
    ) -> Result<ApiKey, StoreError> {
        self.call();
        Err(StoreError::NotFound("key"))
    }
    async fn list_keys(&self, _: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        self.call();
        Ok(Vec::new())
    }
    async fn key(&self, _: &str) -> Result<Option<ApiKey>, StoreError> {
        self.call();
        Ok(None)
    }
    async fn revoke_key(&self, _: &str, _: Timestamp) -> Result<ApiKey, StoreError> {
        self.call();
        Err(StoreError::NotFound("key"))
    }
    async fn update_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        self.call();
        self.updated_hashes
            .lock()
            .unwrap()
            .push((id.to_owned(), hash.to_owned()));
        Ok(())
    }
    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.call();
        if self.fail_touch.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt("test double told to fail"));
        }
        self.touched.lock().unwrap().push(used.to_vec());
        Ok(())
    }
    async fn key_set(&self) -> Result<KeySet, StoreError> {
        self.call();
        self.key_set_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.set.lock().unwrap().clone())
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.call();
        Ok(self.set.lock().unwrap().revision)
    }
    async fn wait_for_change(&self, seen: i64, max_wait: Duration) -> Result<i64, StoreError> {
        self.call();
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.set.lock().unwrap().revision;
            if now != seen {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(now);
            }
        }
    }
    async fn record_audit(&self, _: &AuditEntry) -> Result<(), StoreError> {
        self.call();
        Ok(())
    }
    async fn audit(&self, _: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.call();
        Ok(Vec::new())
    }
}

/// A clock the test moves.
#[derive(Debug)]
struct TestClock(AtomicI64);

impl TestClock {
    fn set(&self, t: Timestamp) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        self.0.load(Ordering::SeqCst)
    }
}

const T0: Timestamp = 1_700_000_000;

fn consumer(id: &str, disabled: bool) -> Consumer {
    Consumer {
        id: id.to_owned(),
        name: format!("{id}-name"),
        plan: Some("gold".to_owned()),
        metadata: serde_json::Map::new(),
        created_at: T0 - 100,
        disabled_at: disabled.then_some(T0 - 10),
    }
}

/// A new key for `consumer_id`, hashed with `params`.
fn credential(consumer_id: &str, params: &Argon2Settings) -> (NewKey, Credential) {
    let new = generate().unwrap();
    let cred = Credential {
        key: ApiKey {
            id: new.id.clone(),
            consumer_id: consumer_id.to_owned(),
            name: "ci".to_owned(),
            scopes: vec!["read".to_owned(), "write".to_owned()],
            expires_at: None,
            created_at: T0 - 50,
            last_used_at: None,
            revoked_at: None,
        },
        hash: hash_secret(new.secret(), params).unwrap(),
    };
    (new, cred)
}

fn settings() -> ApiKeySettings {
    ApiKeySettings {
        argon2: FAST,
        ..ApiKeySettings::default()
    }
}

struct Fixture {
    auth: Arc<ApiKeyAuth>,
    store: Arc<FakeStore>,
    clock: Arc<TestClock>,
    key: NewKey,
    set: KeySet,
}

/// One consumer `c1` with one key, loaded.
fn fixture(settings: ApiKeySettings) -> Fixture {
    let (key, cred) = credential("c1", &FAST);
    let set = KeySet {
        consumers: vec![consumer("c1", false)],
        credentials: vec![cred],
        revision: 1,
    };
    let store = FakeStore::new(set.clone());
    let clock = Arc::new(TestClock(AtomicI64::new(T0)));
    let auth = Arc::new(ApiKeyAuth::new(
        settings,
        Arc::clone(&store) as Arc<dyn KeyStore>,
        Arc::clone(&clock) as Arc<dyn Clock>,
    ));
    auth.load(set.clone());
    Fixture {
        auth,
        store,
        clock,
        key,
        set,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Waits (bounded) until `f` holds; for work done by spawned tasks.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

mod budgets;
