//! Tests for the order of the failure budgets and the verified-key cache:
//! cached keys are served before any budget, the per-key-id budget, and
//! the cache's lifetime under floods.

use super::*;

/// A second key of `c1`, loaded next to the fixture's (never verified).
fn with_second_key(f: &Fixture) -> NewKey {
    let (key2, cred2) = credential("c1", &FAST);
    let mut set = f.set.clone();
    set.credentials.push(cred2);
    f.auth.load(set);
    key2
}

/// A made-up secret for a real key id.
fn forged(id: &str, i: u32) -> String {
    assemble(id, &format!("{i:0>22}")).unwrap()
}

fn is_throttled(r: &Result<Principal, ApiKeyError>) -> bool {
    matches!(r, Err(ApiKeyError::Throttled { .. }))
}

#[tokio::test]
async fn a_throttled_address_keeps_its_verified_keys() {
    let f = fixture(throttle_settings());
    let fresh = with_second_key(&f);
    let nat = ip("198.51.100.40");
    // A good key, verified once from the shared address.
    assert!(f.auth.authenticate(&f.key.full, nat).await.is_ok());
    // Someone behind the same address floods it with junk until throttled.
    let mut throttled = false;
    for i in 0..50 {
        let junk = if i % 2 == 0 {
            "gth_junk".to_owned()
        } else {
            generate().unwrap().full
        };
        if is_throttled(&f.auth.authenticate(&junk, nat).await) {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the flood spends the address's budget");
    let runs = f.auth.verifications();
    let cases = [
        ("verified key is served", f.key.full.clone(), true),
        ("never-verified key waits", fresh.full.clone(), false),
        ("wrong secret waits", forged(&f.key.id, 1), false),
        ("junk waits", "gth_junk".to_owned(), false),
    ];
    for (name, key, ok) in cases {
        let got = f.auth.authenticate(&key, nat).await;
        if ok {
            assert_eq!(
                got.map(|p| p.credential_id.to_string()).ok().as_deref(),
                Some(f.key.id.as_str()),
                "case {name}"
            );
        } else {
            assert!(is_throttled(&got), "case {name}: {got:?}");
        }
    }
    assert_eq!(f.auth.verifications(), runs, "no argon2 for any of them");
}

fn key_budget_settings() -> ApiKeySettings {
    ApiKeySettings {
        failure_burst: 1000,
        failures_per_minute: 1000,
        key_failure_burst: 3,
        key_failures_per_minute: 1,
        ..settings()
    }
}

#[tokio::test]
async fn a_key_id_budget_spans_addresses() {
    let f = fixture(key_budget_settings());
    let other = with_second_key(&f);
    let owner = ip("192.0.2.10");
    assert!(f.auth.authenticate(&f.key.full, owner).await.is_ok());
    // Wrong secrets for both ids, each from a different address.
    for (n, id) in [&f.key.id, &other.id].into_iter().enumerate() {
        for i in 0..3u32 {
            let from = ip(&format!("203.0.113.{}", 10 * n as u32 + i));
            assert!(matches!(
                f.auth.authenticate(&forged(id, i), from).await,
                Err(ApiKeyError::Invalid)
            ));
        }
    }
    let runs = f.auth.verifications();
    assert_eq!(runs, 7, "one for the owner, three per id");
    // Both ids are spent now: new addresses get 429 before argon2.
    let fresh = ip("203.0.113.99");
    match f.auth.authenticate(&forged(&f.key.id, 9), fresh).await {
        Err(ApiKeyError::Throttled { retry_after_secs }) => {
            assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}");
        }
        other => panic!("want Throttled, got {other:?}"),
    }
    // The owner's verified key is still served, from anywhere.
    for from in [owner, fresh] {
        assert!(f.auth.authenticate(&f.key.full, from).await.is_ok());
    }
    // A right secret that was never verified waits with the id (the safe
    // choice: telling it from a wrong one would take argon2).
    assert!(is_throttled(&f.auth.authenticate(&other.full, owner).await));
    assert_eq!(f.auth.verifications(), runs);
    // Only the two real ids are tracked.
    f.auth.key_failures.prune();
    assert_eq!(f.auth.key_throttle_len(), 2);
}

#[tokio::test]
async fn unknown_ids_and_misses_grow_nothing() {
    let f = fixture(key_budget_settings());
    for i in 0..200u32 {
        let from = ip(&format!("10.0.{}.{}", i / 250, i % 250));
        let junk = generate().unwrap().full;
        assert!(matches!(
            f.auth.authenticate(&junk, from).await,
            Err(ApiKeyError::Invalid)
        ));
    }
    assert_eq!(
        f.auth.key_throttle_len(),
        0,
        "unknown ids are never charged"
    );
    // Two wrong secrets (the id's budget of three is not spent).
    for i in 0..2u32 {
        let got = f
            .auth
            .authenticate(&forged(&f.key.id, i), ip("10.1.0.1"))
            .await;
        assert!(matches!(got, Err(ApiKeyError::Invalid)), "{got:?}");
    }
    f.auth.cache.run_pending_tasks();
    assert_eq!(f.auth.cache_len(), 0, "failed verifications are not cached");
    assert!(
        f.auth
            .authenticate(&f.key.full, ip("10.1.0.2"))
            .await
            .is_ok()
    );
    f.auth.cache.run_pending_tasks();
    assert_eq!(f.auth.cache_len(), 1);
}

#[tokio::test]
async fn many_addresses_cannot_start_many_runs_for_one_id() {
    let f = fixture(key_budget_settings());
    let attempts: Vec<(String, IpAddr)> = (0..20u32)
        .map(|i| (forged(&f.key.id, i), ip(&format!("203.0.113.{}", i + 1))))
        .collect();
    let results =
        futures_util::future::join_all(attempts.iter().map(|(k, a)| f.auth.authenticate(k, *a)))
            .await;
    assert!(
        results
            .iter()
            .all(|r| is_throttled(r) || matches!(r, Err(ApiKeyError::Invalid))),
        "{results:?}"
    );
    assert!(
        f.auth.verifications() <= u64::from(throttle::MAX_VERIFYING_PER_KEY),
        "argon2 ran {} times",
        f.auth.verifications()
    );
}

#[tokio::test]
async fn a_key_in_use_stays_cached_and_an_idle_one_expires() {
    // Real time: moka has no clock seam. The margins are wide (a use every
    // 50 ms against a 600 ms idle limit).
    let f = fixture(ApiKeySettings {
        cache_ttl: Duration::from_millis(600),
        ..settings()
    });
    let client = ip("192.0.2.30");
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(f.auth.authenticate(&f.key.full, client).await.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        f.auth.verifications(),
        1,
        "in use for 2.5 × cache_ttl, verified once"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(f.auth.authenticate(&f.key.full, client).await.is_ok());
    assert_eq!(
        f.auth.verifications(),
        2,
        "idle past cache_ttl: verified again"
    );
}
