//! Auth tests: API keys refused, revoked, expired, disabled, throttled before
//! hashing; forged identity headers removed.

use gatehouse::auth::api_key::{self, assemble, generate, hash_secret};
use gatehouse::store::ApiKey;
use serde_json::{Value, json};

use crate::support::*;

use super::*;

#[tokio::test]
async fn api_key_route_refuses_bad_keys_and_forwards_the_caller() {
    let s = setup("", "").await;
    let (st, v) = s
        .admin
        .post("/v1/consumers", json!({"name": "acme", "plan": "gold"}))
        .await;
    assert_eq!(st, 201, "{v}");
    let consumer = v["consumer"]["id"].as_str().unwrap().to_owned();
    let (key_id, key) = s
        .admin
        .create_key(&consumer, json!({"scopes": ["orders:read"]}))
        .await;
    assert!(key.starts_with("gth_") && key.len() == api_key::KEY_LEN);
    let other_secret = generate().unwrap();
    let wrong_secret = assemble(&key_id, other_secret.secret()).unwrap();
    let unknown_id = assemble("000000000000", other_secret.secret()).unwrap();

    let invalid = [BEARER_INVALID, API_KEY];
    let cases: Vec<(&str, Vec<(&str, String)>, &str, &[&str])> = vec![
        ("no key", vec![], "missing_credentials", &[BEARER, API_KEY]),
        (
            "malformed key",
            vec![("x-api-key", "not-a-key".into())],
            "invalid_credentials",
            &invalid,
        ),
        (
            "bad checksum",
            vec![("x-api-key", flip_last(&key))],
            "invalid_credentials",
            &invalid,
        ),
        (
            "right id, wrong secret",
            vec![("x-api-key", wrong_secret.clone())],
            "invalid_credentials",
            &invalid,
        ),
        (
            "wrong secret as bearer",
            vec![bearer(&wrong_secret)],
            "invalid_credentials",
            &invalid,
        ),
        (
            "unknown key id",
            vec![("x-api-key", unknown_id)],
            "invalid_credentials",
            &invalid,
        ),
        (
            "x-api-key sent twice",
            vec![("x-api-key", key.clone()), ("x-api-key", key.clone())],
            "invalid_credentials",
            &invalid,
        ),
        (
            // RFC 6750 §3.1: no Bearer credential at all, so no error code.
            "basic scheme",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "missing_credentials",
            &[BEARER, API_KEY],
        ),
    ];
    for (case, headers, code, challenges) in &cases {
        let before = s.hits();
        let resp = send(&s.gw, "/key/x", headers).await;
        check_refused(case, resp, 401, code, challenges).await;
        assert_eq!(s.hits(), before, "{case}: the upstream got the request");
    }

    // A valid key, in its header and as a bearer token.
    let ways: [(&str, Vec<(&str, String)>); 2] = [
        ("x-api-key", vec![("x-api-key", key.clone())]),
        ("bearer", vec![bearer(&key)]),
    ];
    for (case, headers) in &ways {
        let resp = send(&s.gw, "/key/x", headers).await;
        assert_eq!(resp.status(), 200, "{case}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(
            echo.header("x-consumer-id"),
            Some(consumer.as_str()),
            "{case}"
        );
        assert_eq!(echo.header("x-consumer-name"), Some("acme"), "{case}");
        assert_eq!(echo.header("x-consumer-plan"), Some("gold"), "{case}");
        assert_eq!(echo.header("x-auth-method"), Some("api_key"), "{case}");
        assert_eq!(
            echo.header("x-credential-id"),
            Some(key_id.as_str()),
            "{case}"
        );
        assert_eq!(echo.header("x-auth-scopes"), Some("orders:read"), "{case}");
        assert!(echo.header("x-api-key").is_none(), "{case}: key forwarded");
        assert!(
            echo.header("authorization").is_none(),
            "{case}: authorization forwarded"
        );
    }

    // A route reading keys from its own header.
    let custom = "ApiKey realm=\"gatehouse\", header=\"x-key\"";
    let before = s.hits();
    let resp = send(&s.gw, "/custom/x", &[("x-api-key", key.clone())]).await;
    check_refused(
        "key in the default header on a custom-header route",
        resp,
        401,
        "missing_credentials",
        &[BEARER, custom],
    )
    .await;
    let resp = send(&s.gw, "/custom/x", &[("x-key", flip_last(&key))]).await;
    check_refused(
        "bad key in the custom header",
        resp,
        401,
        "invalid_credentials",
        &[BEARER_INVALID, custom],
    )
    .await;
    assert_eq!(s.hits(), before, "custom header: upstream reached");
    let resp = send(&s.gw, "/custom/x", &[("x-key", key.clone())]).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-credential-id"), Some(key_id.as_str()));
    assert!(
        echo.header("x-key").is_none(),
        "custom key header forwarded"
    );

    // forward_authorization passes the credential headers on.
    let resp = send(&s.gw, "/fwd/x", &[("x-api-key", key.clone())]).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert!(
        echo.header("x-api-key") == Some(key.as_str()),
        "x-api-key kept"
    );
    assert_eq!(echo.header("x-consumer-id"), Some(consumer.as_str()));
    let resp = send(&s.gw, "/fwd/x", &[bearer(&key)]).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    let want = format!("Bearer {key}");
    assert!(
        echo.header("authorization") == Some(want.as_str()),
        "authorization kept"
    );
}

#[tokio::test]
async fn revoked_expired_and_disabled_keys_are_refused() {
    // Polling for the expired key below presents an unknown id, which the
    // failure gate counts: give it room.
    let s = setup("failure_burst = 1000", "").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (key_id, key) = s.admin.create_key(&consumer, json!({})).await;
    let ok = |r: &reqwest::Response| r.status() == 200;

    // Revoked: works (and is cached), then the very next request fails.
    assert!(ok(
        &send(&s.gw, "/key/x", &[("x-api-key", key.clone())]).await
    ));
    let (st, v) = s
        .admin
        .post(&format!("/v1/keys/{key_id}/revoke"), json!({}))
        .await;
    assert_eq!(st, 200, "revoke: {v}");
    assert!(v["key"]["revoked_at"].is_i64(), "{v}");
    let before = s.hits();
    let resp = send(&s.gw, "/key/x", &[("x-api-key", key.clone())]).await;
    check_refused(
        "revoked",
        resp,
        401,
        "invalid_credentials",
        &[BEARER_INVALID, API_KEY],
    )
    .await;
    assert_eq!(s.hits(), before, "revoked: upstream reached");

    // Expired: written straight into the gateway's store; the gateway
    // notices the new revision by polling.
    let store = open_store(s.gw.dir.path()).await;
    let now = unix_now();
    let write = |expires_at: Option<i64>| {
        let store = store.clone();
        let consumer = consumer.clone();
        async move {
            let new = generate().unwrap();
            let hash = hash_secret(new.secret(), &FAST_ARGON2).unwrap();
            let record = ApiKey {
                id: new.id.clone(),
                consumer_id: consumer,
                name: "direct".into(),
                scopes: vec![],
                expires_at,
                created_at: now - 3600,
                last_used_at: None,
                revoked_at: None,
            };
            store.create_key(&record, &hash).await.unwrap();
            new.full
        }
    };
    let expired = write(Some(now - 60)).await;
    let before = s.hits();
    let body = eventually(3, || async {
        let resp = send(&s.gw, "/key/x", &[("x-api-key", expired.clone())]).await;
        assert_eq!(resp.status(), 401, "expired key let through");
        let v: Value = resp.json().await.unwrap();
        (v["message"] == "API key expired").then_some(v)
    })
    .await
    .expect("the gateway picks up the store change within 3 s");
    assert_eq!(body["error"], "invalid_credentials");
    let resp = send(&s.gw, "/key/x", &[bearer(&expired)]).await;
    check_refused(
        "expired",
        resp,
        401,
        "invalid_credentials",
        &[BEARER_INVALID, API_KEY],
    )
    .await;
    assert_eq!(s.hits(), before, "expired: upstream reached");
    // A live key written the same way works, with no restart.
    let live = write(Some(now + 3600)).await;
    let got = eventually(3, || async {
        let r = send(&s.gw, "/key/x", &[("x-api-key", live.clone())]).await;
        ok(&r).then_some(())
    })
    .await;
    assert!(got.is_some(), "a key written to the store starts working");

    // Disabled consumer: all its keys stop at once.
    let other = s.admin.create_consumer("other").await;
    let (_, other_key) = s.admin.create_key(&other, json!({})).await;
    assert!(ok(&send(
        &s.gw,
        "/key/x",
        &[("x-api-key", other_key.clone())]
    )
    .await));
    let (st, v) = s
        .admin
        .post(&format!("/v1/consumers/{other}/disable"), json!({}))
        .await;
    assert_eq!(st, 200, "disable: {v}");
    let before = s.hits();
    let resp = send(&s.gw, "/key/x", &[("x-api-key", other_key.clone())]).await;
    let body = check_refused(
        "disabled consumer",
        resp,
        401,
        "invalid_credentials",
        &[BEARER_INVALID, API_KEY],
    )
    .await;
    assert_eq!(body["message"], "consumer disabled");
    assert_eq!(s.hits(), before, "disabled: upstream reached");
}

#[tokio::test]
async fn failed_attempts_are_throttled_before_any_hashing() {
    let s = setup("failure_burst = 3\nfailures_per_minute = 1", "").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (key_id, key) = s.admin.create_key(&consumer, json!({})).await;
    let (_, unused_key) = s.admin.create_key(&consumer, json!({})).await;
    assert!(
        send(&s.gw, "/key/x", &[("x-api-key", key.clone())])
            .await
            .status()
            == 200
    );
    let wrong = assemble(&key_id, generate().unwrap().secret()).unwrap();
    let before = s.hits();
    for i in 0..3 {
        let resp = send(&s.gw, "/key/x", &[("x-api-key", wrong.clone())]).await;
        check_refused(
            &format!("bad key {i}"),
            resp,
            401,
            "invalid_credentials",
            &[BEARER_INVALID, API_KEY],
        )
        .await;
    }
    let verifications = s.gw.running().shared().api_keys().verifications();
    let cases = [
        ("one bad key too many", wrong.clone()),
        ("a valid key never seen", unused_key.clone()),
        ("malformed junk", "gth_junk".to_owned()),
    ];
    for (case, k) in &cases {
        let resp = send(&s.gw, "/key/x", &[("x-api-key", k.clone())]).await;
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(retry >= 1, "{case}: Retry-After {retry}");
        check_refused(case, resp, 429, "too_many_auth_failures", &[]).await;
    }
    assert_eq!(s.hits(), before, "throttled requests reached the upstream");
    // A key this address already verified is served from the cache, before
    // the spent budget is looked at (a shared NAT address keeps working).
    assert!(
        send(&s.gw, "/key/x", &[("x-api-key", key.clone())])
            .await
            .status()
            == 200,
        "a valid, cached key from a throttled address"
    );
    assert_eq!(s.hits(), before + 1);
    assert_eq!(
        s.gw.running().shared().api_keys().verifications(),
        verifications,
        "argon2 ran for a throttled client"
    );
    // Other routes and the admin API are unaffected.
    assert_eq!(send(&s.gw, "/open/x", &[]).await.status(), 200);
}

#[tokio::test]
async fn forged_identity_headers_are_removed() {
    let s = setup("", "").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (key_id, key) = s.admin.create_key(&consumer, json!({})).await;
    let forged: Vec<(&str, String)> = [
        ("x-consumer-id", "admin"),
        ("x-consumer-name", "root"),
        ("x-consumer-plan", "platinum"),
        ("x-auth-method", "jwt"),
        ("x-auth-scopes", "everything"),
        ("x-credential-id", "forged"),
        ("x-auth-sub", "root"),
    ]
    .iter()
    .map(|(k, v)| (*k, (*v).to_owned()))
    .collect();

    // No auth: all removed.
    let echo: Echo = send(&s.gw, "/open/x", &forged).await.json().await.unwrap();
    for (name, _) in &forged {
        assert_eq!(echo.header(name), None, "open route: {name} passed");
    }

    // API key: replaced by the real values, the rest removed.
    let mut headers = forged.clone();
    headers.push(("x-api-key", key.clone()));
    let echo: Echo = send(&s.gw, "/key/x", &headers).await.json().await.unwrap();
    let want = [
        ("x-consumer-id", Some(consumer.as_str())),
        ("x-consumer-name", Some("acme")),
        ("x-consumer-plan", None),
        ("x-auth-method", Some("api_key")),
        ("x-auth-scopes", None),
        ("x-credential-id", Some(key_id.as_str())),
        ("x-auth-sub", None),
    ];
    for (name, value) in want {
        assert_eq!(echo.headers.get(name).map(Vec::len), value.map(|_| 1));
        assert_eq!(echo.header(name), value, "key route: {name}");
    }

    // JWT: the claim header is the token's.
    let mut headers = forged.clone();
    headers.push(bearer(&rs_token(json!({}), Some("k1"))));
    let echo: Echo = send(&s.gw, "/rs/x", &headers).await.json().await.unwrap();
    let want = [
        ("x-consumer-id", Some("alice")),
        ("x-consumer-name", None),
        ("x-auth-method", Some("jwt")),
        ("x-auth-scopes", Some("orders:read")),
        ("x-credential-id", Some("rs")),
        ("x-auth-sub", Some("alice")),
    ];
    for (name, value) in want {
        assert_eq!(echo.header(name), value, "jwt route: {name}");
    }
}
