//! Tests of JWT verification: fixtures here; cases by concern in the
//! files beside.

mod build;
mod jwks;
mod verify;

use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::json;

use super::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde_json::{Map, Value};

use crate::auth::jwks::{JwksRegistry, JwksSettings};
use crate::auth::jwt_config_checks::MIN_JWKS_MIN_REFRESH_INTERVAL;
use crate::auth::{AuthMethod, Clock, Principal};
use crate::config::JwtIssuerSpec;
use crate::config::PublicKeySpec;

const RSA_PRIVATE: &str = include_str!("../../testdata/rsa2048_test_private.pem");
const RSA_PUBLIC: &str = include_str!("../../testdata/rsa2048_test_public.pem");
const NOW: i64 = 1_700_000_000;
const SECRET_VAR: &str = "GATEHOUSE_TEST_JWT_SECRET";
const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

#[derive(Debug)]
struct TestClock(AtomicI64);

impl TestClock {
    fn at(t: i64) -> Arc<TestClock> {
        Arc::new(TestClock(AtomicI64::new(t)))
    }
    fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn env(name: &str) -> Option<String> {
    (name == SECRET_VAR).then(|| SECRET.to_owned())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn spec(name: &str, algs: &[&str]) -> JwtIssuerSpec {
    let algs: Vec<String> = algs.iter().map(|a| format!("{a:?}")).collect();
    toml::from_str(&format!(
        "name = {name:?}\nalgorithms = [{}]\n",
        algs.join(", ")
    ))
    .unwrap()
}

fn registry() -> JwksRegistry {
    JwksRegistry::new().unwrap()
}

/// A generated key pair: private PKCS#8 PEM, public SPKI PEM, raw public.
struct Pair {
    private: String,
    public: String,
    raw: Vec<u8>,
}

fn generate(alg: &'static rcgen::SignatureAlgorithm) -> Pair {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    Pair {
        private: kp.serialize_pem(),
        public: kp.public_key_pem(),
        raw: kp.public_key_raw().to_vec(),
    }
}

fn rsa_pair() -> Pair {
    Pair {
        private: RSA_PRIVATE.to_owned(),
        public: RSA_PUBLIC.to_owned(),
        raw: Vec::new(),
    }
}

fn encoding_key(alg: Algorithm, private: &str) -> EncodingKey {
    match alg.family() {
        AlgorithmFamily::Hmac => EncodingKey::from_secret(private.as_bytes()),
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
    }
}

/// Signs `claims` under a hand-made header (so tests can put anything
/// in it), the way an attacker would.
fn forge(header: Value, claims: &Value, alg: Algorithm, private: &str) -> String {
    let message = format!(
        "{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    );
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(alg, private), alg).unwrap();
    format!("{message}.{sig}")
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, private: &str) -> String {
    let mut header = json!({"alg": format!("{alg:?}"), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    forge(header, claims, alg, private)
}

fn claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "aud": "api",
        "sub": "alice",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    if let Some(m) = base.as_object_mut() {
        m.remove(key);
    }
    base
}

fn flip_signature_char(token: &str) -> String {
    let dot = token.rfind('.').unwrap();
    let mut bytes = token.as_bytes().to_vec();
    let i = dot + 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Static-key issuers of every family, with their signing keys.
struct World {
    _dir: tempfile::TempDir,
    verifier: JwtVerifier,
    rsa: Pair,
    p256: Pair,
    p384: Pair,
    ed: Pair,
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    PathBuf::from(name)
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa_pair();
    let p256 = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let p384 = generate(&rcgen::PKCS_ECDSA_P384_SHA384);
    let ed = generate(&rcgen::PKCS_ED25519);
    let reg = registry();
    let mut hs = spec("hs", &["HS256", "HS512"]);
    hs.issuer = Some("https://hs.test".into());
    hs.audiences = vec!["api".into()];
    hs.hmac_secret_env = Some(SECRET_VAR.into());
    hs.required_claims = vec!["tenant".into()];

    let mut rs = spec("rs", &["RS256", "PS256"]);
    rs.issuer = Some("https://rs.test".into());
    rs.audiences = vec!["api".into(), "api2".into()];
    rs.public_keys = vec![PublicKeySpec {
        path: write(dir.path(), "rsa.pem", &rsa.public),
        kid: Some("rsa1".into()),
    }];

    let mut es = spec("es", &["ES256", "ES384"]);
    es.issuer = Some("https://es.test".into());
    es.audiences = vec!["api".into()];
    es.public_keys = vec![
        PublicKeySpec {
            path: write(dir.path(), "p256.pem", &p256.public),
            kid: Some("ec1".into()),
        },
        PublicKeySpec {
            path: write(dir.path(), "p384.pem", &p384.public),
            kid: Some("ec2".into()),
        },
    ];
    es.roles_claim = Some("roles".into());
    es.plan_claim = Some("plan".into());
    es.claim_headers = [
        ("sub", "x-auth-sub"),
        ("tenant", "x-auth-tenant"),
        ("groups", "x-auth-groups"),
        ("admin", "x-auth-admin"),
        ("evil", "x-auth-evil"),
        ("obj", "x-auth-obj"),
        ("absent", "x-auth-absent"),
    ]
    .into_iter()
    .map(|(c, h)| (c.to_owned(), h.to_owned()))
    .collect();

    let mut ed_spec = spec("ed", &["EdDSA"]);
    ed_spec.issuer = Some("https://ed.test".into());
    ed_spec.audiences = vec!["api".into()];
    ed_spec.scope_claim = Some("permissions".into());
    ed_spec.public_keys = vec![PublicKeySpec {
        path: write(dir.path(), "ed.pem", &ed.public),
        kid: None,
    }];

    let issuers = [hs, rs, es, ed_spec]
        .iter()
        .map(|s| Arc::new(Issuer::build(s, dir.path(), &env, &reg).unwrap()))
        .collect();
    World {
        _dir: dir,
        verifier: JwtVerifier::new(issuers, TestClock::at(NOW)),
        rsa,
        p256,
        p384,
        ed,
    }
}

fn outcome(r: Result<Principal, JwtError>) -> Result<String, JwtError> {
    r.map(|p| p.subject.to_string())
}
