//! API-key tests: a valid key and the cache, refusals before and after
//! argon2, revocation, expiry, disabled and missing consumers.

use std::net::IpAddr;

use super::*;

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
