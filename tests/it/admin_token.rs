//! The admin token during an incident: an address throttled for wrong
//! tokens (here every caller is 127.0.0.1, like an operator behind the same
//! NAT as the attacker) still gets in with the right, already verified
//! token, while its wrong tokens keep getting 429 before any argon2.
//!
//! Tokens are secrets: never put in a failure message.

use serde_json::Value;

use crate::support::*;

async fn status_and_code(gw: &TestGateway, token: &str) -> (u16, String) {
    let resp = client()
        .get(gw.admin_url("/v1/consumers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn the_verified_admin_token_works_from_a_throttled_address() {
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(""))
        .start()
        .await;
    assert_eq!(status_and_code(&gw, &token).await.0, 200, "first use");
    // Wrong tokens from the same address until it is throttled.
    let mut throttled = false;
    for i in 0..30 {
        match status_and_code(&gw, &format!("wrong-token-{i}")).await {
            (401, _) => {}
            (429, code) => {
                assert_eq!(code, "too_many_auth_failures");
                throttled = true;
                break;
            }
            other => panic!("wrong token {i}: {other:?}"),
        }
    }
    assert!(throttled, "wrong tokens are throttled");
    let cases = [
        ("the verified token", token.clone(), 200),
        ("a wrong token", "still-wrong".to_owned(), 429),
        ("the verified token again", token.clone(), 200),
        ("the token with a suffix", format!("{token}x"), 429),
    ];
    for (case, t, want) in cases {
        assert_eq!(status_and_code(&gw, &t).await.0, want, "{case}");
    }
}
