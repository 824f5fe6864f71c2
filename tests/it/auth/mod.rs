//! Authentication on routes: API keys (format, argon2, revocation, expiry,
//! consumer state, the failure gate), JWTs (algorithms, keys, claims,
//! sizes, scopes, roles, JWKS), mixed routes, identity headers, and what the
//! access log says. Every refusal is checked for its status, JSON code and
//! challenge, and for never reaching the upstream.
//!
//! Keys and tokens are secrets: they are compared with `assert!(a == b)`
//! and never put in a failure message.

mod api_keys;
mod jwt;

use jwt::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

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
