//! Tests for [`ApiKeyAuth`] against an in-memory test double of the store.

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

#[tokio::test]
async fn valid_key_gives_principal_then_hits_cache() {
    let f = fixture(settings());
    let calls = f.store.calls();
    let p = f
        .auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(p.method, AuthMethod::ApiKey);
    assert_eq!(&*p.subject, "c1");
    assert_eq!(p.consumer_name.as_deref(), Some("c1-name"));
    assert_eq!(p.plan.as_deref(), Some("gold"));
    assert_eq!(&*p.credential_id, f.key.id);
    assert_eq!(p.scopes, ["read", "write"]);
    assert!(p.roles.is_empty() && p.headers.is_empty());
    assert_eq!(f.auth.verifications(), 1);

    let again = f
        .auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(again, p);
    assert_eq!(f.auth.verifications(), 1, "second call must be a cache hit");
    f.auth.cache.run_pending_tasks();
    assert_eq!(f.auth.cache_len(), 1);
    assert_eq!(f.auth.index_len(), 1);
    assert_eq!(f.store.calls(), calls, "no store access per request");
}

#[tokio::test]
async fn refusals_before_and_after_argon2() {
    let f = fixture(settings());
    let other = generate().unwrap(); // well-formed, id not in the index
    let wrong_secret = {
        // Same id, another secret, valid checksum.
        let body = format!("{PREFIX}{}{}", f.key.id, other.secret());
        let crc = crc32fast::hash(body.as_bytes());
        let mut n = crc;
        let mut digits = [0u8; CHECKSUM_LEN];
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        for d in digits.iter_mut().rev() {
            *d = alphabet[(n % 62) as usize];
            n /= 62;
        }
        format!("{body}{}", std::str::from_utf8(&digits).unwrap())
    };
    assert!(parse(&wrong_secret).is_ok());
    let bad_checksum = format!("{}{}", &f.key.full[..KEY_LEN - 1], {
        let last = f.key.full.as_bytes()[KEY_LEN - 1];
        if last == b'0' { '1' } else { '0' }
    });
    // (name, presented, want, argon2 runs)
    let cases: Vec<(&str, String, &str, u64)> = vec![
        ("wrong secret, valid id", wrong_secret, "invalid", 1),
        ("unknown id", other.full.clone(), "invalid", 0),
        ("bad checksum", bad_checksum, "malformed", 0),
        (
            "wrong prefix",
            format!("ghp_{}", &f.key.full[4..]),
            "malformed",
            0,
        ),
        ("empty", String::new(), "malformed", 0),
        ("bearer-ish junk", "Bearer abc".to_owned(), "malformed", 0),
    ];
    for (i, (name, presented, want, runs)) in cases.into_iter().enumerate() {
        let before = f.auth.verifications();
        let client = IpAddr::from([198, 51, 100, u8::try_from(i).unwrap()]);
        let got = f.auth.authenticate(&presented, client).await;
        let kind = match got {
            Err(ApiKeyError::Invalid) => "invalid",
            Err(ApiKeyError::Malformed) => "malformed",
            other => panic!("case {name}: {other:?}"),
        };
        assert_eq!(kind, want, "case {name}");
        assert_eq!(
            f.auth.verifications() - before,
            runs,
            "case {name}: argon2 runs"
        );
    }
    // A wrong secret is not cached as valid, and the right key still works.
    assert!(
        f.auth
            .authenticate(&f.key.full, ip("192.0.2.9"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn revocation_takes_effect_at_once_for_cached_keys() {
    let f = fixture(settings());
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    let runs = f.auth.verifications();

    let mut revoked = f.set.clone();
    revoked.credentials[0].key.revoked_at = Some(T0);
    revoked.revision = 2;
    f.auth.load(revoked);
    assert!(matches!(
        f.auth.authenticate(&f.key.full, ip("192.0.2.1")).await,
        Err(ApiKeyError::Revoked)
    ));

    let mut gone = f.set.clone();
    gone.credentials.clear();
    gone.revision = 3;
    f.auth.load(gone);
    assert!(matches!(
        f.auth.authenticate(&f.key.full, ip("192.0.2.1")).await,
        Err(ApiKeyError::Invalid)
    ));
    assert_eq!(
        f.auth.verifications(),
        runs,
        "answered from the index, no argon2"
    );
}

#[tokio::test]
async fn expiry_follows_the_clock() {
    let f = fixture(settings());
    let mut set = f.set.clone();
    set.credentials[0].key.expires_at = Some(T0 + 60);
    f.auth.load(set);
    let cases = [
        ("before expiry", T0 + 59, true),
        ("at expiry", T0 + 60, false),
        ("after expiry", T0 + 3600, false),
        ("clock back before expiry", T0, true),
    ];
    for (name, now, ok) in cases {
        f.clock.set(now);
        let got = f.auth.authenticate(&f.key.full, ip("192.0.2.1")).await;
        if ok {
            assert!(got.is_ok(), "case {name}: {got:?}");
        } else {
            assert!(
                matches!(got, Err(ApiKeyError::Expired)),
                "case {name}: {got:?}"
            );
        }
    }
    assert_eq!(f.auth.verifications(), 1);
}

#[tokio::test]
async fn disabled_consumer_is_refused() {
    let f = fixture(settings());
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    let mut set = f.set.clone();
    set.consumers[0].disabled_at = Some(T0);
    f.auth.load(set.clone());
    assert!(matches!(
        f.auth.authenticate(&f.key.full, ip("192.0.2.1")).await,
        Err(ApiKeyError::ConsumerDisabled)
    ));
    // A key never seen before is verified first, then refused the same way.
    let (key2, cred2) = credential("c1", &FAST);
    set.credentials.push(cred2);
    f.auth.load(set);
    assert!(matches!(
        f.auth.authenticate(&key2.full, ip("192.0.2.1")).await,
        Err(ApiKeyError::ConsumerDisabled)
    ));
    assert_eq!(f.auth.verifications(), 2);
}

#[tokio::test]
async fn key_whose_consumer_is_missing_is_left_out() {
    let f = fixture(settings());
    let (orphan, cred) = credential("no-such-consumer", &FAST);
    let mut set = f.set.clone();
    set.credentials.push(cred);
    f.auth.load(set);
    assert_eq!(f.auth.index_len(), 1);
    assert!(matches!(
        f.auth.authenticate(&orphan.full, ip("192.0.2.1")).await,
        Err(ApiKeyError::Invalid)
    ));
    assert_eq!(f.auth.verifications(), 0);
}

fn throttle_settings() -> ApiKeySettings {
    ApiKeySettings {
        failure_burst: 3,
        failures_per_minute: 1,
        ..settings()
    }
}

#[tokio::test]
async fn failures_throttle_the_client_only() {
    let f = fixture(throttle_settings());
    let attacker = ip("203.0.113.5");
    let unknown = generate().unwrap().full;
    let bad = ["gth_nope".to_owned(), unknown.clone(), unknown];
    for b in &bad {
        assert!(matches!(
            f.auth.authenticate(b, attacker).await,
            Err(ApiKeyError::Malformed | ApiKeyError::Invalid)
        ));
    }
    let runs = f.auth.verifications();
    // Even a valid key is refused now, before any argon2.
    match f.auth.authenticate(&f.key.full, attacker).await {
        Err(ApiKeyError::Throttled { retry_after_secs }) => {
            assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}");
        }
        other => panic!("want Throttled, got {other:?}"),
    }
    assert_eq!(f.auth.verifications(), runs);
    // Another client is unaffected.
    assert!(
        f.auth
            .authenticate(&f.key.full, ip("203.0.113.6"))
            .await
            .is_ok()
    );
    // Successes are never charged.
    for _ in 0..10 {
        assert!(
            f.auth
                .authenticate(&f.key.full, ip("203.0.113.7"))
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn ipv6_clients_in_one_slash64_share_a_budget() {
    let f = fixture(throttle_settings());
    for host in ["2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:abcd::3"] {
        assert!(matches!(
            f.auth.authenticate("gth_x", ip(host)).await,
            Err(ApiKeyError::Malformed)
        ));
    }
    let cases = [
        ("same /64", "2001:db8:5:6:ffff::9", false),
        ("next /64", "2001:db8:5:7::1", true),
    ];
    for (name, host, ok) in cases {
        let got = f.auth.authenticate(&f.key.full, ip(host)).await;
        if ok {
            assert!(got.is_ok(), "case {name}: {got:?}");
        } else {
            assert!(
                matches!(got, Err(ApiKeyError::Throttled { .. })),
                "case {name}: {got:?}"
            );
        }
    }
}

#[tokio::test]
async fn last_used_is_flushed_in_one_batch() {
    let f = fixture(settings());
    let (key2, cred2) = credential("c1", &FAST);
    let mut set = f.set.clone();
    set.credentials.push(cred2);
    f.auth.load(set);
    let calls = f.store.calls();
    for (t, key) in [(T0 + 1, &f.key), (T0 + 5, &f.key), (T0 + 3, &key2)] {
        f.clock.set(t);
        f.auth
            .authenticate(&key.full, ip("192.0.2.1"))
            .await
            .unwrap();
    }
    f.clock.set(T0 + 2); // an older use does not win
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(f.store.calls(), calls, "no per-request writes");

    f.auth.flush_last_used().await;
    let mut touched = f.store.touched.lock().unwrap().clone();
    assert_eq!(touched.len(), 1, "one batch");
    touched[0].sort();
    let mut want = vec![(f.key.id.clone(), T0 + 5), (key2.id.clone(), T0 + 3)];
    want.sort();
    assert_eq!(touched[0], want);

    f.auth.flush_last_used().await;
    assert_eq!(
        f.store.touched.lock().unwrap().len(),
        1,
        "nothing new, no call"
    );
}

#[tokio::test]
async fn failed_flush_keeps_the_times() {
    let f = fixture(settings());
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    f.store.fail_touch.store(true, Ordering::SeqCst);
    f.auth.flush_last_used().await;
    assert!(f.store.touched.lock().unwrap().is_empty());

    f.store.fail_touch.store(false, Ordering::SeqCst);
    f.auth.flush_last_used().await;
    let touched = f.store.touched.lock().unwrap().clone();
    assert_eq!(touched, vec![vec![(f.key.id.clone(), T0)]]);
}

#[tokio::test]
async fn weak_hash_is_rehashed_in_the_background() {
    let f = fixture(settings());
    let (weak_key, weak_cred) = credential("c1", &WEAK);
    let mut set = f.set.clone();
    set.credentials.push(weak_cred);
    f.auth.load(set);

    f.auth
        .authenticate(&weak_key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    let store = Arc::clone(&f.store);
    eventually("update_hash", || {
        !store.updated_hashes.lock().unwrap().is_empty()
    })
    .await;
    let updated = f.store.updated_hashes.lock().unwrap().clone();
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].0, weak_key.id);
    assert!(
        updated[0].1.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
        "{}",
        updated[0].1
    );
    assert!(!verify_secret(weak_key.secret(), &updated[0].1, &FAST).unwrap());

    // A current-strength hash is never re-hashed.
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.store.updated_hashes.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_changed_hash_is_verified_again() {
    let f = fixture(settings());
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    let mut set = f.set.clone();
    set.credentials[0].hash = hash_secret(f.key.secret(), &FAST).unwrap();
    f.auth.load(set);
    f.auth
        .authenticate(&f.key.full, ip("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(f.auth.verifications(), 2);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_verify_once() {
    let f = fixture(settings());
    let attempts = (0..8).map(|_| f.auth.authenticate(&f.key.full, ip("192.0.2.1")));
    let results = futures_util::future::join_all(attempts).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(f.auth.verifications(), 1);
    assert!(f.auth.in_flight.lock().unwrap().is_empty());
}

#[tokio::test]
async fn busy_when_no_verification_slot_frees_up() {
    let f = fixture(ApiKeySettings {
        max_concurrent_verifications: 1,
        verify_wait: Duration::from_millis(20),
        ..settings()
    });
    let held = Arc::clone(&f.auth.slots).acquire_owned().await.unwrap();
    assert!(matches!(
        f.auth.authenticate(&f.key.full, ip("192.0.2.1")).await,
        Err(ApiKeyError::Busy)
    ));
    assert_eq!(f.auth.verifications(), 0);
    drop(held);
    assert!(
        f.auth
            .authenticate(&f.key.full, ip("192.0.2.1"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn unusable_stored_hash_is_internal() {
    let f = fixture(settings());
    let mut set = f.set.clone();
    set.credentials[0].hash = "not-a-phc-string".to_owned();
    f.auth.load(set);
    let got = f.auth.authenticate(&f.key.full, ip("192.0.2.1")).await;
    let Err(ApiKeyError::Internal(cause)) = got else {
        panic!("{got:?}");
    };
    assert!(matches!(*cause, InternalError::Verify(_)));
    let shown = format!("{:?} {}", cause, ApiKeyError::Internal(Arc::clone(&cause)));
    assert!(!shown.contains(f.key.secret()));
}

#[tokio::test]
async fn refresh_reads_the_store_and_ignores_older_sets() {
    let f = fixture(settings());
    let (key2, cred2) = credential("c1", &FAST);
    f.store.change(|set| set.credentials.push(cred2));
    f.auth.refresh().await.unwrap();
    assert_eq!(f.store.key_set_calls.load(Ordering::SeqCst), 1);
    assert_eq!(f.auth.index_len(), 2);
    assert!(
        f.auth
            .authenticate(&key2.full, ip("192.0.2.1"))
            .await
            .is_ok()
    );

    // The store going back to an older revision does not undo the index.
    f.store.set.lock().unwrap().revision = 0;
    f.store.set.lock().unwrap().credentials.clear();
    f.auth.refresh().await.unwrap();
    assert_eq!(f.auth.index_len(), 2);
}

#[tokio::test]
async fn sync_follows_the_store_and_flushes_on_stop() {
    let (key, cred) = credential("c1", &FAST);
    let store = FakeStore::new(KeySet {
        consumers: vec![consumer("c1", false)],
        credentials: vec![cred],
        revision: 7,
    });
    let auth = Arc::new(ApiKeyAuth::new(
        ApiKeySettings {
            last_used_flush: Duration::from_secs(3600),
            ..settings()
        },
        Arc::clone(&store) as Arc<dyn KeyStore>,
        Arc::new(TestClock(AtomicI64::new(T0))),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = auth.spawn_sync(stop_rx);

    let a = Arc::clone(&auth);
    eventually("initial load", || a.index_len() == 1).await;
    auth.authenticate(&key.full, ip("192.0.2.1")).await.unwrap();

    // A revocation elsewhere reaches this node without a refresh() call.
    store.change(|set| set.credentials[0].key.revoked_at = Some(T0));
    let mut revoked = false;
    for _ in 0..500 {
        if matches!(
            auth.authenticate(&key.full, ip("192.0.2.1")).await,
            Err(ApiKeyError::Revoked)
        ) {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(revoked, "revocation not picked up");
    assert!(store.touched.lock().unwrap().is_empty());

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *store.touched.lock().unwrap(),
        vec![vec![(key.id.clone(), T0)]]
    );
}

#[test]
fn default_settings() {
    let s = ApiKeySettings::default();
    assert_eq!(s.argon2, Argon2Settings::default());
    assert_eq!(s.cache_ttl, Duration::from_secs(300));
    assert_eq!(s.cache_capacity, 100_000);
    assert!(s.max_concurrent_verifications >= 1);
    assert_eq!(s.verify_wait, Duration::from_secs(2));
    assert_eq!((s.failures_per_minute, s.failure_burst), (10, 20));
    assert_eq!((s.key_failures_per_minute, s.key_failure_burst), (5, 10));
    assert_eq!(s.last_used_flush, Duration::from_secs(5));
}

#[tokio::test]
async fn one_client_cannot_start_many_argon2_runs_at_once() {
    let f = fixture(settings());
    let attacker = ip("203.0.113.9");
    // Twenty different made-up secrets for a real key id, all at once.
    let forged: Vec<String> = (0..20)
        .map(|i| assemble(&f.key.id, &format!("{i:0>22}")).unwrap())
        .collect();
    let attempts = forged.iter().map(|k| f.auth.authenticate(k, attacker));
    let results = futures_util::future::join_all(attempts).await;
    let throttled = results
        .iter()
        .filter(|r| matches!(r, Err(ApiKeyError::Throttled { .. })))
        .count();
    let invalid = results
        .iter()
        .filter(|r| matches!(r, Err(ApiKeyError::Invalid)))
        .count();
    assert_eq!(throttled + invalid, 20, "{results:?}");
    assert!(
        f.auth.verifications() <= u64::from(throttle::MAX_VERIFYING_PER_CLIENT),
        "argon2 ran {} times",
        f.auth.verifications()
    );
    // Another client's key check is not held up by it.
    assert!(
        f.auth
            .authenticate(&f.key.full, ip("203.0.113.10"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn cancelled_attempts_keep_their_place_and_are_charged() {
    let f = fixture(throttle_settings());
    // A key whose hash is slow to check (OWASP parameters).
    let (slow, cred) = credential("c1", &Argon2Settings::default());
    let mut set = f.set.clone();
    set.credentials.push(cred);
    f.auth.load(set);
    let attacker = ip("203.0.113.20");
    let forged = |i: u32| assemble(&slow.id, &format!("{i:0>22}")).unwrap();
    // Two forged secrets, each request given up after 1 ms (an h2 client
    // resetting its streams).
    for i in 0..2 {
        let key = forged(i);
        let attempt = f.auth.authenticate(&key, attacker);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), attempt)
                .await
                .is_err(),
            "argon2 with OWASP parameters takes longer than 1 ms"
        );
    }
    // Their runs go on without them and keep the client's two places: a
    // third attempt is refused at once instead of starting another run.
    assert!(matches!(
        f.auth.authenticate(&forged(2), attacker).await,
        Err(ApiKeyError::Throttled { .. })
    ));
    // Once they finish, both wrong secrets have been charged: one more
    // failure spends the budget of 3 (it would not without those charges).
    let mut third = None;
    for _ in 0..500 {
        match f.auth.authenticate(&forged(3), attacker).await {
            Err(ApiKeyError::Throttled { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => {
                third = Some(other);
                break;
            }
        }
    }
    assert!(
        matches!(third, Some(Err(ApiKeyError::Invalid))),
        "{third:?}"
    );
    assert!(f.auth.verifications() == 3);
    assert!(matches!(
        f.auth.authenticate(&f.key.full, attacker).await,
        Err(ApiKeyError::Throttled { .. })
    ));
}

mod budgets;
