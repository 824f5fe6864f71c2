//! API-key tests: default settings, argon2 runs per client, cancelled
//! attempts.

use std::time::Duration;

use super::*;

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
