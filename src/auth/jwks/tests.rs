//! Tests of JWK entries and sets, key matching and RSA key sizes.

use serde_json::json;

use super::*;
use crate::auth::jwt::b64url_encode;

fn ec_p256() -> serde_json::Value {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "kid": "ec",
           "x": b64url_encode(&raw[1..33]), "y": b64url_encode(&raw[33..])})
}

fn with(mut v: serde_json::Value, k: &str, x: serde_json::Value) -> serde_json::Value {
    v[k] = x;
    v
}

fn rsa(bits: usize) -> serde_json::Value {
    let mut n = vec![0xffu8; bits / 8];
    n[0] = 0xc1;
    json!({"kty": "RSA", "kid": "rsa", "n": b64url_encode(&n), "e": "AQAB"})
}

#[test]
fn jwk_entries() {
    let ed = {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url_encode(kp.public_key_raw())})
    };
    let cases: Vec<(&str, serde_json::Value, Result<Vec<Algorithm>, &str>)> = vec![
        ("EC P-256", ec_p256(), Ok(vec![Algorithm::ES256])),
        (
            "EC with use sig and alg",
            with(with(ec_p256(), "use", json!("sig")), "alg", json!("ES256")),
            Ok(vec![Algorithm::ES256]),
        ),
        (
            "EC with a mismatched alg",
            with(ec_p256(), "alg", json!("ES384")),
            Err("alg does not fit the key type"),
        ),
        (
            "EC for encryption",
            with(ec_p256(), "use", json!("enc")),
            Err("key is not for signatures (use)"),
        ),
        (
            "EC with key_ops sign only",
            with(ec_p256(), "key_ops", json!(["sign"])),
            Err("key_ops does not include verify"),
        ),
        (
            "EC P-521",
            with(ec_p256(), "crv", json!("P-521")),
            Err("unsupported elliptic curve"),
        ),
        ("Ed25519", ed, Ok(vec![Algorithm::EdDSA])),
        ("RSA 2048", rsa(2048), Ok(RSA_ALGORITHMS.to_vec())),
        (
            "RSA 2048 with alg PS256",
            with(rsa(2048), "alg", json!("PS256")),
            Ok(vec![Algorithm::PS256]),
        ),
        (
            "RSA with an encryption alg",
            with(rsa(2048), "alg", json!("RSA-OAEP")),
            Err("alg is not a signature algorithm"),
        ),
        ("RSA 1024", rsa(1024), Err("RSA key shorter than 2048 bits")),
        ("RSA 8192", rsa(8192), Err("RSA key longer than 4096 bits")),
        (
            "symmetric",
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            Err("symmetric keys are never taken from a JWK Set"),
        ),
        (
            "unknown kty",
            json!({"kty": "XYZ"}),
            Err("malformed or unsupported key"),
        ),
        (
            "not an object",
            json!(5),
            Err("malformed or unsupported key"),
        ),
    ];
    for (name, jwk, want) in cases {
        let got = key_from_jwk(jwk).map(|k| k.algorithms);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn jwk_sets() {
    let good = ec_p256();
    let cases: Vec<(&str, String, Result<usize, &str>)> = vec![
        (
            "one usable, one skipped",
            json!({"keys": [good, {"kty": "oct", "k": "AA"}]}).to_string(),
            Ok(1),
        ),
        (
            "nothing usable",
            json!({"keys": [{"kty": "oct", "k": "AA"}]}).to_string(),
            Err("no usable"),
        ),
        ("empty", json!({"keys": []}).to_string(), Err("no usable")),
        (
            "no keys member",
            json!({"jwks": []}).to_string(),
            Err("json"),
        ),
        ("not JSON", "<html>".to_owned(), Err("json")),
        (
            "capped",
            json!({"keys": vec![ec_p256(); MAX_JWKS_KEYS + 5]}).to_string(),
            Ok(MAX_JWKS_KEYS),
        ),
    ];
    for (name, body, want) in cases {
        let got = match parse_jwk_set(body.as_bytes(), "http://test/jwks") {
            Ok(keys) => Ok(keys.len()),
            Err(JwksError::NoUsableKeys) => Err("no usable"),
            Err(JwksError::Json(_)) => Err("json"),
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn key_matching_and_bits() {
    let key = |kid: Option<&str>| VerificationKey {
        kid: kid.map(str::to_owned),
        algorithms: vec![Algorithm::ES256],
        key: DecodingKey::from_ec_der(&[4; 65]),
    };
    let cases = [
        (
            "same kid",
            key(Some("a")),
            Some("a"),
            Algorithm::ES256,
            true,
        ),
        (
            "other kid",
            key(Some("a")),
            Some("b"),
            Algorithm::ES256,
            false,
        ),
        (
            "token without kid",
            key(Some("a")),
            None,
            Algorithm::ES256,
            true,
        ),
        (
            "key without kid",
            key(None),
            Some("b"),
            Algorithm::ES256,
            true,
        ),
        (
            "other algorithm",
            key(Some("a")),
            Some("a"),
            Algorithm::ES384,
            false,
        ),
    ];
    for (name, k, kid, alg, want) in cases {
        assert_eq!(k.matches(kid, alg), want, "{name}");
    }
    let bits = [
        ("empty", vec![], 0),
        ("zeros", vec![0, 0], 0),
        ("one", vec![1], 1),
        ("leading zero byte", vec![0, 0x80, 0], 16),
        ("2048", [vec![0x80], vec![0; 255]].concat(), 2048),
    ];
    for (name, n, want) in bits {
        assert_eq!(rsa_bits(&n), want, "{name}");
    }
    let debug = format!("{:?}", key(Some("a")));
    assert!(
        debug.contains("\"a\"") && !debug.contains("SecretOrDer"),
        "{debug}"
    );
}
