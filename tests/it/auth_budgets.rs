//! The per-key-id failure budget, end to end: wrong secrets for one key id
//! from many addresses (behind a trusted proxy) spend the id's budget; the
//! key's owner keeps being served from the verified-key cache; zero budgets
//! are config errors.
//!
//! Keys are secrets: compared with `assert!`, never printed.

use gatehouse::auth::api_key::{assemble, generate};
use serde_json::json;

use crate::auth::{API_KEY, BEARER_INVALID, check_refused, send, setup};
use crate::support::{GatewayBuilder, fast_api_keys};

#[tokio::test]
async fn a_key_ids_budget_is_shared_by_every_address() {
    let s = setup(
        "key_failure_burst = 3\nkey_failures_per_minute = 1\nfailure_burst = 1000",
        "[access]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let consumer = s.admin.create_consumer("acme").await;
    let (key_id, key) = s.admin.create_key(&consumer, json!({})).await;
    let (other_id, other_key) = s.admin.create_key(&consumer, json!({})).await;
    let from = |addr: &str| ("x-forwarded-for", addr.to_owned());
    let api_key = |k: &str| ("x-api-key", k.to_owned());
    // The owner verifies the key once.
    assert!(
        send(&s.gw, "/key/x", &[api_key(&key), from("192.0.2.1")])
            .await
            .status()
            == 200
    );
    // Three wrong secrets for each id, every one from another address.
    for (n, id) in [&key_id, &other_id].into_iter().enumerate() {
        for i in 0..3 {
            let wrong = assemble(id, generate().unwrap().secret()).unwrap();
            let addr = format!("203.0.113.{}", 10 * n + i);
            let resp = send(&s.gw, "/key/x", &[api_key(&wrong), from(&addr)]).await;
            check_refused(
                &format!("wrong secret {n}/{i}"),
                resp,
                401,
                "invalid_credentials",
                &[BEARER_INVALID, API_KEY],
            )
            .await;
        }
    }
    let api_keys = s.gw.running().shared().api_keys();
    let runs = api_keys.verifications();
    let before = s.hits();
    let cases = [
        (
            "a wrong secret from a new address",
            assemble(&key_id, generate().unwrap().secret()).unwrap(),
        ),
        ("a right secret never verified", other_key.clone()),
    ];
    for (case, k) in &cases {
        let resp = send(&s.gw, "/key/x", &[api_key(k), from("198.51.100.9")]).await;
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=60).contains(&retry), "{case}: Retry-After {retry}");
        check_refused(case, resp, 429, "too_many_auth_failures", &[]).await;
    }
    assert_eq!(
        api_keys.verifications(),
        runs,
        "argon2 ran for a spent key id"
    );
    assert_eq!(s.hits(), before, "throttled requests reached the upstream");
    // The owner's cached key works, from its own address and any other.
    for addr in ["192.0.2.1", "198.51.100.9"] {
        assert!(
            send(&s.gw, "/key/x", &[api_key(&key), from(addr)])
                .await
                .status()
                == 200,
            "cached key from {addr}"
        );
    }
    assert_eq!(s.hits(), before + 2);
}

#[test]
fn zero_key_budgets_are_config_errors() {
    let cases = [
        (
            "no failures per minute",
            "key_failures_per_minute = 0",
            true,
        ),
        ("no burst", "key_failure_burst = 0", true),
        (
            "both set",
            "key_failures_per_minute = 2\nkey_failure_burst = 4",
            false,
        ),
    ];
    for (name, line, refused) in cases {
        let b = GatewayBuilder::new().main(&fast_api_keys(line));
        let config = b.write();
        let got = gatehouse::server::check(&config, &Default::default());
        match got {
            Ok(_) => assert!(!refused, "case {name}: accepted"),
            Err(err) => {
                assert!(refused, "case {name}: refused: {err}");
                let key = line.split(' ').next().unwrap();
                let p = err
                    .0
                    .iter()
                    .find(|p| p.message.contains("[api_keys]") && p.message.contains(key))
                    .unwrap_or_else(|| panic!("case {name}: no [api_keys] problem in:\n{err}"));
                assert_eq!(p.file, config, "case {name}");
            }
        }
    }
}
