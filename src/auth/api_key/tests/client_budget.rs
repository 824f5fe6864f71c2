//! API-key tests: failure throttling per client address (IPv6 /64 shared).

use super::*;

pub(super) fn throttle_settings() -> ApiKeySettings {
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
