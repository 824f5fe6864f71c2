//! Auth tests: JWT routes (algorithms, keys, claims, size, scopes, roles),
//! JWKS issuers, mixed key-or-token routes, logs without credentials.

use gatehouse::auth::api_key::{self, assemble, generate};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::*;

use super::*;

/// Unpadded base64url (the `base64` crate's strict URL-safe engine).
pub(super) fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Standard valid claims for the `rs` issuer, with `over` merged in
/// (a `null` removes a claim).
pub(super) fn claims(iss: &str, over: Value) -> Value {
    let now = unix_now();
    let mut c = json!({
        "sub": "alice",
        "iss": iss,
        "aud": AUD,
        "iat": now,
        "exp": now + 600,
        "scope": "orders:read",
    });
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub(super) fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub(super) fn rs_token(over: Value, kid: Option<&str>) -> String {
    let key = EncodingKey::from_rsa_pem(rsa_private()).unwrap();
    sign(Algorithm::RS256, kid, &claims(ISS, over), &key)
}

pub(super) fn hs_token(secret: &[u8], over: Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &claims(HS_ISS, over),
        &EncodingKey::from_secret(secret),
    )
}

/// The token with one character in the middle of its signature changed.
pub(super) fn tamper_signature(token: &str) -> String {
    let dot = token.rfind('.').unwrap();
    let mut bytes = token.as_bytes().to_vec();
    let i = dot + (token.len() - dot) / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn jwt_routes_check_algorithm_key_claims_size_scope_and_role() {
    let s = setup("", "").await;
    let now = unix_now();
    let valid = rs_token(json!({}), Some("k1"));

    // A valid RS256 token: the upstream sees who called, not the token.
    let resp = send(&s.gw, "/rs/x", &[bearer(&valid)]).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-consumer-id"), Some("alice"));
    assert_eq!(echo.header("x-auth-method"), Some("jwt"));
    assert_eq!(echo.header("x-auth-sub"), Some("alice"));
    assert_eq!(echo.header("x-credential-id"), Some("rs"));
    assert!(echo.header("authorization").is_none(), "token forwarded");

    // A valid HS256 token on its own issuer, and a role holder.
    let hs = hs_token(s.hs_secret.as_bytes(), json!({}));
    let admin = rs_token(json!({"roles": ["admin"]}), Some("k1"));
    let writer = rs_token(json!({"scope": "orders:read orders:write"}), Some("k1"));
    let scp_writer = rs_token(json!({"scope": null, "scp": ["orders:write"]}), Some("k1"));
    let aud_list = rs_token(json!({"aud": ["someone-else", AUD]}), Some("k1"));
    for (case, path, token) in [
        ("hs256", "/hs/x", &hs),
        ("scp array", "/write/x", &scp_writer),
        ("aud list holding ours", "/rs/x", &aud_list),
        ("role holder", "/admin/x", &admin),
        ("scope holder", "/write/x", &writer),
        ("rs256 on any-issuer route", "/anyjwt/x", &valid),
        ("hs256 on any-issuer route", "/anyjwt/x", &hs),
    ] {
        let resp = send(&s.gw, path, &[bearer(token)]).await;
        assert_eq!(resp.status(), 200, "{case}");
    }

    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims(ISS, json!({})).to_string().as_bytes())
    );
    let pem = std::fs::read(rsa_public_path()).unwrap();
    let pem_as_secret = EncodingKey::from_secret(&pem);
    let confused = sign(
        Algorithm::HS256,
        Some("k1"),
        &claims(ISS, json!({})),
        &pem_as_secret,
    );
    let confused_hs = sign(
        Algorithm::HS256,
        None,
        &claims(HS_ISS, json!({})),
        &pem_as_secret,
    );
    let oversized = rs_token(json!({"pad": "x".repeat(7000)}), Some("k1"));
    assert!(oversized.len() > 8192 && oversized.len() < 12 * 1024);
    let wrong_hs_secret = hs_token(&[7u8; 40], json!({}));
    // Signed with the right key, but pointing at a key set of its own.
    let jku_token = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        header.jku = Some("https://evil.test/jwks.json".into());
        let key = EncodingKey::from_rsa_pem(rsa_private()).unwrap();
        jsonwebtoken::encode(&header, &claims(ISS, json!({})), &key).unwrap()
    };

    let inv: &[&str] = &[BEARER_INVALID];
    let cases: Vec<(&str, &str, Vec<(&str, String)>, u16, &str, &[&str])> = vec![
        (
            "no token",
            "/rs/x",
            vec![],
            401,
            "missing_credentials",
            &[BEARER],
        ),
        (
            "alg none",
            "/rs/x",
            vec![bearer(&unsigned)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "alg none on any-issuer route",
            "/anyjwt/x",
            vec![bearer(&unsigned)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "public key as HMAC secret",
            "/rs/x",
            vec![bearer(&confused)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "public key as HMAC secret, any issuer",
            "/anyjwt/x",
            vec![bearer(&confused)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "public key as the HS issuer's secret",
            "/anyjwt/x",
            vec![bearer(&confused_hs)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "wrong HMAC secret",
            "/hs/x",
            vec![bearer(&wrong_hs_secret)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "rs256 token on the hs route",
            "/hs/x",
            vec![bearer(&valid)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "expired",
            "/rs/x",
            vec![bearer(&rs_token(
                json!({"exp": now - 3600, "iat": now - 7200}),
                Some("k1"),
            ))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "exp as a string",
            "/rs/x",
            vec![bearer(&rs_token(json!({"exp": "99999999999"}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "issued in the future",
            "/rs/x",
            vec![bearer(&rs_token(json!({"iat": now + 3600}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "sub not a string",
            "/rs/x",
            vec![bearer(&rs_token(json!({"sub": 42}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "no sub",
            "/rs/x",
            vec![bearer(&rs_token(json!({"sub": null}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "jku header",
            "/rs/x",
            vec![bearer(&jku_token)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "no exp",
            "/rs/x",
            vec![bearer(&rs_token(json!({"exp": null}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "not yet valid",
            "/rs/x",
            vec![bearer(&rs_token(json!({"nbf": now + 3600}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "wrong iss",
            "/rs/x",
            vec![bearer(&rs_token(
                json!({"iss": "https://evil.test"}),
                Some("k1"),
            ))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "wrong aud",
            "/rs/x",
            vec![bearer(&rs_token(
                json!({"aud": "someone-else"}),
                Some("k1"),
            ))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "aud of the wrong type",
            "/rs/x",
            vec![bearer(&rs_token(json!({"aud": 123}), Some("k1")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "bad signature",
            "/rs/x",
            vec![bearer(&tamper_signature(&valid))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "unknown kid",
            "/rs/x",
            vec![bearer(&rs_token(json!({}), Some("k2")))],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "truncated",
            "/rs/x",
            vec![bearer(&valid[..valid.len() / 2])],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "oversized",
            "/rs/x",
            vec![bearer(&oversized)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "not a JWT",
            "/rs/x",
            vec![bearer("hello")],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "key header on a jwt route",
            "/rs/x",
            vec![("x-api-key", valid.clone())],
            401,
            "missing_credentials",
            &[BEARER],
        ),
        (
            "authorization sent twice",
            "/rs/x",
            vec![bearer(&valid), bearer(&valid)],
            401,
            "invalid_credentials",
            inv,
        ),
        (
            "missing scope",
            "/write/x",
            vec![bearer(&valid)],
            403,
            "insufficient_scope",
            &["Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"orders:write\""],
        ),
        (
            "missing role",
            "/admin/x",
            vec![bearer(&rs_token(json!({"roles": ["user"]}), Some("k1")))],
            403,
            "role_required",
            &[],
        ),
        (
            "no roles claim",
            "/admin/x",
            vec![bearer(&valid)],
            403,
            "role_required",
            &[],
        ),
    ];
    for (case, path, headers, status, code, challenges) in &cases {
        let before = s.hits();
        let resp = send(&s.gw, path, headers).await;
        let body = check_refused(case, resp, *status, code, challenges).await;
        assert_eq!(s.hits(), before, "{case}: the upstream got the request");
        let message = body["message"].as_str().unwrap_or_default();
        for (_, v) in headers {
            let token = v.trim_start_matches("Bearer ");
            assert!(!message.contains(token), "{case}: token echoed");
        }
    }
}

#[tokio::test]
async fn jwks_issuer_keys_come_from_the_url() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "j1", "alg": "EdDSA", "use": "sig",
        "x": base64url(kp.public_key_raw()),
    }]})
    .to_string();
    let idp = Backend::start(move |_req| {
        let body = jwks.clone();
        async move {
            http::Response::builder()
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    let issuer = format!(
        "[[jwt_issuer]]\nname = \"idp\"\nissuer = \"https://jwks.test\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"EdDSA\"]\njwks_url = \"{}/jwks.json\"\n",
        idp.url()
    );
    let s = setup("", &issuer).await;
    let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
    let token = sign(
        Algorithm::EdDSA,
        Some("j1"),
        &claims("https://jwks.test", json!({"sub": "bob"})),
        &key,
    );
    // The first fetch runs in the background at start: poll until it did.
    let echo = eventually(5, || async {
        let resp = send(&s.gw, "/anyjwt/x", &[bearer(&token)]).await;
        if resp.status() == 200 {
            resp.json::<Echo>().await.ok()
        } else {
            None
        }
    })
    .await
    .expect("a token signed by the JWKS key is accepted");
    assert_eq!(echo.header("x-consumer-id"), Some("bob"));
    assert_eq!(echo.header("x-credential-id"), Some("idp"));

    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let other_key = EncodingKey::from_ed_pem(other.serialize_pem().as_bytes()).unwrap();
    let cases = [
        (
            "signed by another key",
            sign(
                Algorithm::EdDSA,
                Some("j1"),
                &claims("https://jwks.test", json!({})),
                &other_key,
            ),
        ),
        (
            "kid not in the set",
            sign(
                Algorithm::EdDSA,
                Some("j9"),
                &claims("https://jwks.test", json!({})),
                &key,
            ),
        ),
    ];
    for (case, t) in &cases {
        let before = s.hits();
        let resp = send(&s.gw, "/anyjwt/x", &[bearer(t)]).await;
        check_refused(case, resp, 401, "invalid_credentials", &[BEARER_INVALID]).await;
        assert_eq!(s.hits(), before, "{case}: upstream reached");
    }
}

#[tokio::test]
async fn mixed_route_takes_a_key_or_a_token() {
    let s = setup("", "").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (_, key) = s.admin.create_key(&consumer, json!({})).await;
    let token = rs_token(json!({}), Some("k1"));
    let passes = [
        (
            "key header",
            ("x-api-key", key.clone()),
            consumer.as_str(),
            "api_key",
        ),
        ("key as bearer", bearer(&key), consumer.as_str(), "api_key"),
        ("token", bearer(&token), "alice", "jwt"),
    ];
    for (case, header, who, method) in passes {
        let resp = send(&s.gw, "/mixed/x", &[header]).await;
        assert_eq!(resp.status(), 200, "{case}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.header("x-consumer-id"), Some(who), "{case}");
        assert_eq!(echo.header("x-auth-method"), Some(method), "{case}");
    }
    let cases: Vec<(&str, Vec<(&str, String)>, &str, [&str; 2])> = vec![
        ("nothing", vec![], "missing_credentials", [BEARER, API_KEY]),
        (
            "bad token",
            vec![bearer(&tamper_signature(&token))],
            "invalid_credentials",
            [BEARER_INVALID, API_KEY],
        ),
        (
            "bad key",
            vec![("x-api-key", flip_last(&key))],
            "invalid_credentials",
            [BEARER_INVALID, API_KEY],
        ),
    ];
    for (case, headers, code, challenges) in &cases {
        let before = s.hits();
        let resp = send(&s.gw, "/mixed/x", headers).await;
        check_refused(case, resp, 401, code, challenges).await;
        assert_eq!(s.hits(), before, "{case}: upstream reached");
    }
}

#[tokio::test]
async fn logs_name_the_caller_and_never_hold_credentials() {
    let backend = Backend::echo().await;
    let (admin_token, hash) = admin_token();
    let policy = format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n{}",
        backend.url(),
        route("mixed", "/mixed", "auth = [\"api_key\", \"jwt\"]")
    );
    let b = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(""))
        .main(&rs_issuer())
        .policy("a.toml", &policy);
    let config = b.write();
    let (mut proc, addr, admin_addr) = serve_with_admin(&config).await;
    let admin = AdminApi::at(&format!("http://{admin_addr}"), &admin_token);
    let consumer = admin.create_consumer("acme").await;
    let (key_id, key) = admin.create_key(&consumer, json!({})).await;
    let token = rs_token(json!({}), Some("k1"));
    let wrong_key = assemble(&key_id, generate().unwrap().secret()).unwrap();
    let wrong_token = tamper_signature(&token);
    let wrong_admin = AdminApi::at(&format!("http://{admin_addr}"), "not-the-admin-token");
    let (st, _) = wrong_admin.get("/v1/consumers").await;
    assert_eq!(st, 401);

    let c = client();
    let url = format!("http://{addr}/mixed/x");
    let requests = [
        ("x-api-key", key.clone(), 200, consumer.as_str(), "api_key"),
        (
            "authorization",
            format!("Bearer {token}"),
            200,
            "alice",
            "jwt",
        ),
        ("x-api-key", wrong_key.clone(), 401, "-", "-"),
        (
            "authorization",
            format!("Bearer {wrong_token}"),
            401,
            "-",
            "-",
        ),
    ];
    for (i, (header, value, status, who, method)) in requests.iter().enumerate() {
        let id = format!("log-test-{i}");
        let r = c
            .get(&url)
            .header(*header, value.as_str())
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), *status, "request {i}");
        let line = proc.wait_for("access").await;
        assert_eq!(line["request_id"], id.as_str());
        assert_eq!(line["consumer"], *who, "request {i}: {line}");
        assert_eq!(line["auth"], *method, "request {i}: {line}");
    }
    proc.signal("-TERM");
    let (_, lines) = proc.finish().await;
    let audit: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "admin call")
        .collect();
    for (action, outcome) in [
        ("consumer.create", "ok"),
        ("key.create", "ok"),
        ("consumer.list", "unauthorized"),
    ] {
        assert!(
            audit
                .iter()
                .any(|v| v["action"] == action && v["outcome"] == outcome),
            "audit log line for {action} {outcome}"
        );
    }
    let secrets = [
        ("the key", key.as_str()),
        (
            "the key's secret",
            &key[4 + api_key::ID_LEN..4 + api_key::ID_LEN + api_key::SECRET_LEN],
        ),
        ("a wrong key", wrong_key.as_str()),
        ("the token", token.as_str()),
        ("the token's signature", token.rsplit('.').next().unwrap()),
        ("a wrong token", wrong_token.as_str()),
        ("the admin token", admin_token.as_str()),
        ("a wrong admin token", "not-the-admin-token"),
    ];
    for (what, secret) in secrets {
        for (n, l) in lines.iter().enumerate() {
            assert!(!l.contains(secret), "{what} in log line {n}");
        }
    }
}
