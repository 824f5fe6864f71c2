//! JWT verification cost per algorithm family (HS256, RS256, ES256, EdDSA),
//! through the public API: `Issuer::build` from PEM files, `mint`, then
//! `JwtVerifier::verify` on a static-key issuer (no network, never awaits):
//! `jwt_verify/<alg>` with a fresh verifier each time (the signature is
//! checked: a token's first use), `jwt_verify_cached/<alg>` on a verifier
//! that has seen the token (every later use within a minute).
//!
//! Test keys only: RSA from `src/auth/testdata`, the others generated here.

// A bench is test code: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use gatehouse::auth::jwks::JwksRegistry;
use gatehouse::auth::jwt::{Issuer, JwtVerifier, mint};
use gatehouse::auth::{Clock, SystemClock};
use gatehouse::config::{JwtIssuerSpec, PublicKeySpec};

const RSA_PRIVATE: &str = include_str!("../src/auth/testdata/rsa2048_test_private.pem");
const RSA_PUBLIC: &str = include_str!("../src/auth/testdata/rsa2048_test_public.pem");
const SECRET: &str = "bench-only-hmac-secret-0123456789abcdef";

fn spec(alg: &str, dir: &Path, keys: Option<(String, String)>) -> JwtIssuerSpec {
    let mut s: JwtIssuerSpec =
        toml::from_str(&format!("name = \"{alg}\"\nalgorithms = [\"{alg}\"]\n")).unwrap();
    s.issuer = Some("https://bench.test".into());
    s.audiences = vec!["api".into()];
    s.claim_headers.insert("sub".into(), "x-auth-sub".into());
    match keys {
        None => s.hmac_secret_env = Some("BENCH_SECRET".into()),
        Some((private, public)) => {
            std::fs::write(dir.join(format!("{alg}.key.pem")), private).unwrap();
            std::fs::write(dir.join(format!("{alg}.pub.pem")), public).unwrap();
            s.signing_key = Some(format!("{alg}.key.pem").into());
            s.public_keys = vec![PublicKeySpec {
                path: format!("{alg}.pub.pem").into(),
                kid: Some(format!("{alg}-1")),
            }];
        }
    }
    s
}

fn generated(alg: &'static rcgen::SignatureAlgorithm) -> Option<(String, String)> {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    Some((kp.serialize_pem(), kp.public_key_pem()))
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let registry = JwksRegistry::new().unwrap();
    let env = |name: &str| (name == "BENCH_SECRET").then(|| SECRET.to_owned());
    let mut cases = Vec::new();
    for (alg, keys) in [
        ("HS256", None),
        (
            "RS256",
            Some((RSA_PRIVATE.to_owned(), RSA_PUBLIC.to_owned())),
        ),
        ("ES256", generated(&rcgen::PKCS_ECDSA_P256_SHA256)),
        ("EdDSA", generated(&rcgen::PKCS_ED25519)),
    ] {
        let s = spec(alg, dir.path(), keys);
        let issuer = Arc::new(Issuer::build(&s, dir.path(), &env, &registry).unwrap());
        let scopes = vec!["read".to_owned(), "write".to_owned()];
        let now = SystemClock.now();
        let token = mint(
            &issuer,
            "bench-user",
            &scopes,
            Duration::from_secs(3600),
            serde_json::Map::new(),
            now,
        )
        .unwrap();
        cases.push((alg, issuer, token));
    }
    let mut cold = c.benchmark_group("jwt_verify");
    for (alg, issuer, token) in &cases {
        let fresh = || JwtVerifier::new(vec![issuer.clone()], Arc::new(SystemClock));
        // Static keys: verify completes without awaiting.
        let check = fresh().verify(token, None).now_or_never();
        assert!(matches!(check, Some(Ok(_))), "{alg}: {check:?}");
        cold.bench_function(*alg, |b| {
            b.iter_batched_ref(
                fresh,
                |verifier| {
                    let out = verifier.verify(black_box(token), None).now_or_never();
                    assert!(verifier.signature_checks() == 1);
                    out
                },
                BatchSize::SmallInput,
            )
        });
    }
    cold.finish();
    let mut cached = c.benchmark_group("jwt_verify_cached");
    for (alg, issuer, token) in &cases {
        let verifier = JwtVerifier::new(vec![issuer.clone()], Arc::new(SystemClock));
        let _ = verifier.verify(token, None).now_or_never();
        cached.bench_function(*alg, |b| {
            b.iter(|| verifier.verify(black_box(token), None).now_or_never())
        });
        assert!(
            verifier.signature_checks() == 1,
            "{alg}: served from the cache"
        );
    }
    cached.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
