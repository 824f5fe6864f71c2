//! API-key tests: last-used flushes, background rehashing, changed hashes,
//! single-flight verification, store refresh and sync.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use super::*;

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
