//! Authentication on routes: API keys (format, argon2, revocation, expiry,
//! consumer state, the failure gate), JWTs (algorithms, keys, claims,
//! sizes, scopes, roles, JWKS), mixed routes, identity headers, and what the
//! access log says. Every refusal is checked for its status, JSON code and
//! challenge, and for never reaching the upstream.
//!
//! Keys and tokens are secrets: they are compared with `assert!(a == b)`
//! and never put in a failure message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gatehouse::auth::api_key::{self, assemble, generate, hash_secret};
use gatehouse::store::ApiKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::*;

const BEARER: &str = "Bearer realm=\"gatehouse\"";
pub(crate) const BEARER_INVALID: &str = "Bearer realm=\"gatehouse\", error=\"invalid_token\"";
pub(crate) const API_KEY: &str = "ApiKey realm=\"gatehouse\", header=\"x-api-key\"";

const ISS: &str = "https://idp.test";
const HS_ISS: &str = "https://hs.test";
const AUD: &str = "gatehouse-tests";

fn rsa_private() -> &'static [u8] {
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/auth/testdata/rsa2048_test_private.pem"
    ))
}

fn rsa_public_path() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/auth/testdata/rsa2048_test_public.pem"
    )
    .to_owned()
}

/// A gateway with API-key, JWT, mixed and open routes in front of a
/// counting echo backend, and an admin token.
pub(crate) struct Setup {
    pub(crate) gw: TestGateway,
    hits: Arc<AtomicUsize>,
    pub(crate) admin: AdminApi,
    hs_secret: String,
    _backend: Backend,
}

impl Setup {
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The RS256 issuer `rs` (static key `k1`).
fn rs_issuer() -> String {
    format!(
        "[[jwt_issuer]]\nname = \"rs\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"RS256\"]\npublic_keys = [{{ path = \"{}\", kid = \"k1\" }}]\n\
         roles_claim = \"roles\"\nclaim_headers = {{ sub = \"x-auth-sub\" }}\n",
        rsa_public_path()
    )
}

/// `rs` and the HS256 issuer `hs` (secret from `TEST_HS_SECRET`).
fn issuers() -> String {
    format!(
        "{}\n[[jwt_issuer]]\nname = \"hs\"\nissuer = \"{HS_ISS}\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"HS256\"]\nhmac_secret_env = \"TEST_HS_SECRET\"\n",
        rs_issuer()
    )
}

fn route(name: &str, prefix: &str, extra: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"b\"\n{extra}\n")
}

/// `api_keys_extra` goes into `[api_keys]`; `main_extra` into the main file.
pub(crate) async fn setup(api_keys_extra: &str, main_extra: &str) -> Setup {
    let (backend, hits) = Backend::counting().await;
    let (token, hash) = admin_token();
    let hs_secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let policy = [
        format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n",
            backend.url()
        ),
        route("key", "/key", "auth = \"api_key\""),
        route(
            "fwd",
            "/fwd",
            "auth = \"api_key\"\nforward_authorization = true",
        ),
        route("open", "/open", ""),
        route(
            "custom",
            "/custom",
            "auth = \"api_key\"\napi_key_header = \"X-Key\"",
        ),
        route("rs", "/rs", "auth = \"jwt\"\njwt_issuers = [\"rs\"]"),
        route(
            "rs-write",
            "/write",
            "auth = \"jwt\"\njwt_issuers = [\"rs\"]\nscopes = [\"orders:write\"]",
        ),
        route(
            "rs-admin",
            "/admin",
            "auth = \"jwt\"\njwt_issuers = [\"rs\"]\nroles = [\"admin\"]",
        ),
        route("hs", "/hs", "auth = \"jwt\"\njwt_issuers = [\"hs\"]"),
        route("anyjwt", "/anyjwt", "auth = \"jwt\""),
        route("mixed", "/mixed", "auth = [\"api_key\", \"jwt\"]"),
    ]
    .concat();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(api_keys_extra))
        .main(&issuers())
        .main(main_extra)
        .env("TEST_HS_SECRET", &hs_secret)
        .policy("a.toml", &policy)
        .start()
        .await;
    let admin = AdminApi::new(&gw, &token);
    Setup {
        gw,
        hits,
        admin,
        hs_secret,
        _backend: backend,
    }
}

/// Checks a refusal: status, `WWW-Authenticate` values in order, the JSON
/// code (and a request id). Returns the body. Bodies never echo credentials.
pub(crate) async fn check_refused(
    case: &str,
    resp: reqwest::Response,
    status: u16,
    code: &str,
    challenges: &[&str],
) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{case}: status");
    let got: Vec<String> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, challenges, "{case}: WWW-Authenticate");
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"], code, "{case}: {body}");
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{case}: request_id in {body}"
    );
    body
}

/// Sends `GET path` with `headers`.
pub(crate) async fn send(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    req.send().await.unwrap()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// The key with its last (checksum) character changed.
fn flip_last(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

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

// ---- JWT ----

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Standard valid claims for the `rs` issuer, with `over` merged in
/// (a `null` removes a claim).
fn claims(iss: &str, over: Value) -> Value {
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

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs_token(over: Value, kid: Option<&str>) -> String {
    let key = EncodingKey::from_rsa_pem(rsa_private()).unwrap();
    sign(Algorithm::RS256, kid, &claims(ISS, over), &key)
}

fn hs_token(secret: &[u8], over: Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &claims(HS_ISS, over),
        &EncodingKey::from_secret(secret),
    )
}

/// The token with one character in the middle of its signature changed.
fn tamper_signature(token: &str) -> String {
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
