//! JWT tests: issuer config refusals, redaction, minting, base64url.

use serde_json::json;

use super::*;
use crate::auth::jwt::*;
use crate::config::{Dur, PublicKeySpec};

#[test]
fn build_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let rsa_pub = write(dir.path(), "rsa.pem", RSA_PUBLIC);
    let rsa_priv = write(dir.path(), "rsa-private.pem", RSA_PRIVATE);
    let p256 = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let p256_pub = write(dir.path(), "p256.pem", &p256.public);
    let reg = registry();
    let key = |path: &PathBuf| PublicKeySpec {
        path: path.clone(),
        kid: None,
    };
    let hs = |f: &dyn Fn(&mut JwtIssuerSpec)| {
        let mut s = spec("my-idp", &["HS256"]);
        s.hmac_secret_env = Some(SECRET_VAR.into());
        f(&mut s);
        s
    };
    let rs = |f: &dyn Fn(&mut JwtIssuerSpec)| {
        let mut s = spec("my-idp", &["RS256"]);
        s.public_keys = vec![key(&rsa_pub)];
        f(&mut s);
        s
    };
    let short = |name: &str| (name == SECRET_VAR).then(|| "too-short-secret".to_owned());
    let pem_secret = |name: &str| (name == SECRET_VAR).then(|| format!("{RSA_PUBLIC}{RSA_PUBLIC}"));
    type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
    let cases: Vec<(&str, JwtIssuerSpec, Env<'_>, &str, &str)> = vec![
        (
            "alg none",
            rs(&|s| s.algorithms = vec!["RS256".into(), "none".into()]),
            &env,
            "algorithms",
            "never accepted",
        ),
        (
            "unknown alg",
            rs(&|s| s.algorithms = vec!["HS1024".into()]),
            &env,
            "algorithms",
            "unknown algorithm \"HS1024\"",
        ),
        (
            "no algorithms",
            rs(&|s| s.algorithms.clear()),
            &env,
            "algorithms",
            "at least one",
        ),
        (
            "mixed HS and RS",
            rs(&|s| {
                s.algorithms = vec!["RS256".into(), "HS256".into()];
                s.hmac_secret_env = Some(SECRET_VAR.into());
            }),
            &env,
            "algorithms",
            "cannot be mixed",
        ),
        (
            "short HMAC secret",
            hs(&|_| {}),
            &short,
            "hmac_secret_env",
            "shorter than 32 bytes",
        ),
        (
            "PEM as HMAC secret",
            hs(&|_| {}),
            &pem_secret,
            "hmac_secret_env",
            "PEM key",
        ),
        (
            "missing env var",
            hs(&|_| {}),
            &no_env,
            "hmac_secret_env",
            "GATEHOUSE_TEST_JWT_SECRET is not set",
        ),
        (
            "HMAC without hmac_secret_env",
            hs(&|s| s.hmac_secret_env = None),
            &env,
            "public_keys",
            "no key source",
        ),
        (
            "HMAC with a jwks_url",
            hs(&|s| s.jwks_url = Some("https://idp.test/jwks".into())),
            &env,
            "jwks_url",
            "not allowed with HMAC",
        ),
        (
            "HMAC issuer with a public key",
            hs(&|s| s.public_keys = vec![key(&rsa_pub)]),
            &env,
            "public_keys",
            "not allowed with HMAC",
        ),
        (
            "hmac_secret_env on an RS issuer",
            rs(&|s| s.hmac_secret_env = Some(SECRET_VAR.into())),
            &env,
            "hmac_secret_env",
            "only for HMAC",
        ),
        (
            "missing file",
            rs(&|s| s.public_keys = vec![key(&PathBuf::from("nope.pem"))]),
            &env,
            "public_keys[0].path",
            "cannot read",
        ),
        (
            "private key as public key",
            rs(&|s| s.public_keys = vec![key(&rsa_priv)]),
            &env,
            "public_keys[0].path",
            "private key",
        ),
        (
            "RSA key for ES256",
            rs(&|s| s.algorithms = vec!["ES256".into()]),
            &env,
            "public_keys[0].path",
            "a RSA key cannot verify any of the configured algorithms (ES256)",
        ),
        (
            "EC key for RS256",
            rs(&|s| s.public_keys = vec![key(&p256_pub)]),
            &env,
            "public_keys[0].path",
            "EC P-256 key cannot verify",
        ),
        (
            "algorithm without a key",
            rs(&|s| s.algorithms = vec!["RS256".into(), "ES256".into()]),
            &env,
            "algorithms",
            "ES256 has no key",
        ),
        (
            "no key source",
            rs(&|s| s.public_keys.clear()),
            &env,
            "public_keys",
            "no key source",
        ),
        (
            "duplicate kid",
            rs(&|s| {
                s.public_keys = vec![
                    PublicKeySpec {
                        path: rsa_pub.clone(),
                        kid: Some("k".into()),
                    },
                    PublicKeySpec {
                        path: rsa_pub.clone(),
                        kid: Some("k".into()),
                    },
                ]
            }),
            &env,
            "public_keys[1].kid",
            "used twice",
        ),
        (
            "hop-by-hop header",
            rs(&|s| {
                s.claim_headers.insert("sub".into(), "Connection".into());
            }),
            &env,
            "claim_headers.sub",
            "hop-by-hop",
        ),
        (
            "framing header",
            rs(&|s| {
                s.claim_headers
                    .insert("sub".into(), "content-length".into());
            }),
            &env,
            "claim_headers.sub",
            "framing",
        ),
        (
            "invalid header name",
            rs(&|s| {
                s.claim_headers.insert("sub".into(), "x auth".into());
            }),
            &env,
            "claim_headers.sub",
            "not a valid header name",
        ),
        (
            "empty claim name",
            rs(&|s| s.required_claims = vec![String::new()]),
            &env,
            "required_claims",
            "must not be empty",
        ),
        (
            "empty header claim",
            rs(&|s| {
                s.claim_headers.insert(String::new(), "x-a".into());
            }),
            &env,
            "claim_headers",
            "must not be empty",
        ),
        (
            "huge leeway",
            rs(&|s| s.leeway = Dur(Duration::from_secs(600))),
            &env,
            "leeway",
            "at most 300s",
        ),
        (
            "jwks_url not http",
            rs(&|s| s.jwks_url = Some("ftp://idp.test/jwks".into())),
            &env,
            "jwks_url",
            "only http",
        ),
        (
            "jwks_url with credentials",
            rs(&|s| s.jwks_url = Some("https://u:p@idp.test/jwks".into())),
            &env,
            "jwks_url",
            "credentials",
        ),
        (
            "jwks_url plain http to another host",
            rs(&|s| s.jwks_url = Some("http://idp.test/jwks".into())),
            &env,
            "jwks_url",
            "use https",
        ),
        (
            "empty name",
            rs(&|s| s.name = " ".into()),
            &env,
            "name",
            "printable",
        ),
    ];
    for (name, s, env, field, contains) in cases {
        let err = match Issuer::build(&s, dir.path(), env, &reg) {
            Ok(i) => panic!("{name}: built {i:?}"),
            Err(e) if e.to_string().contains("u:p") => {
                panic!("{name}: the URL's password is echoed")
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        assert_eq!(err.field(), field, "{name}: {msg}");
        assert!(msg.contains(contains), "{name}: {msg}");
        if field != "name" {
            assert!(
                msg.contains("\"my-idp\""),
                "{name}: message names the issuer: {msg}"
            );
            assert_eq!(err.issuer(), "my-idp", "{name}");
        }
        assert!(
            !msg.contains(SECRET) && !msg.contains("too-short-secret"),
            "{name}: {msg}"
        );
    }
}

#[test]
fn secrets_stay_out_of_debug() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("hs", &["HS256"]);
    s.hmac_secret_env = Some(SECRET_VAR.into());
    let issuer = Issuer::build(&s, dir.path(), &env, &registry()).unwrap();
    let verifier = JwtVerifier::new(vec![Arc::new(issuer)], TestClock::at(NOW));
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(
        !debug.contains(&format!("{:?}", SECRET.as_bytes())),
        "{debug}"
    );
    assert!(debug.contains("\"hs\""), "{debug}");
}

#[test]
fn public_descriptions_say_little() {
    let cases = [
        ("expired", JwtError::Expired, "token expired"),
        ("bad signature", JwtError::BadSignature, "invalid token"),
        ("unknown key", JwtError::UnknownKey, "invalid token"),
        (
            "missing claim",
            JwtError::MissingClaim("tenant".into()),
            "invalid token",
        ),
        (
            "keys unavailable",
            JwtError::KeysUnavailable,
            "invalid token",
        ),
        ("too large", JwtError::TooLarge, "token too large"),
    ];
    for (name, err, want) in cases {
        assert_eq!(err.public_description(), want, "{name}");
    }
}

#[tokio::test]
async fn mint_then_verify() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    // ES256 from generated dev keys.
    let mut es = spec("dev", &["ES256"]);
    es.issuer = Some("https://gatehouse.local".into());
    es.audiences = vec!["api".into()];
    es.public_keys = vec![PublicKeySpec {
        path: "keys/dev-jwt.pub.pem".into(),
        kid: Some("dev1".into()),
    }];
    es.signing_key = Some("keys/dev-jwt.key.pem".into());
    es.dev_keys = true;
    // RS256 from the committed test key.
    let mut rs = spec("rs", &["PS256", "RS256"]);
    rs.public_keys = vec![PublicKeySpec {
        path: write(dir.path(), "rsa.pem", RSA_PUBLIC),
        kid: None,
    }];
    rs.signing_key = Some(write(dir.path(), "rsa-key.pem", RSA_PRIVATE));
    // HMAC.
    let mut hs = spec("hs", &["HS384"]);
    hs.hmac_secret_env = Some(SECRET_VAR.into());
    // EdDSA.
    let ed_pair = generate(&rcgen::PKCS_ED25519);
    let mut ed = spec("ed", &["EdDSA"]);
    ed.public_keys = vec![PublicKeySpec {
        path: write(dir.path(), "ed.pem", &ed_pair.public),
        kid: None,
    }];
    ed.signing_key = Some(write(dir.path(), "ed-key.pem", &ed_pair.private));

    assert!(
        ensure_dev_keys(&es, dir.path()).unwrap(),
        "first run writes keys"
    );
    assert!(
        !ensure_dev_keys(&es, dir.path()).unwrap(),
        "second run keeps them"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("keys/dev-jwt.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    for (name, s, alg) in [
        ("ES256 dev keys", &es, Algorithm::ES256),
        (
            "PS256 (first configured RSA algorithm)",
            &rs,
            Algorithm::PS256,
        ),
        ("HS384", &hs, Algorithm::HS384),
        ("EdDSA", &ed, Algorithm::EdDSA),
    ] {
        let issuer = Arc::new(Issuer::build(s, dir.path(), &env, &reg).unwrap());
        let mut extra = Map::new();
        extra.insert("sub".into(), json!("not-me"));
        extra.insert("tenant".into(), json!("t1"));
        let scopes = vec!["read".to_owned(), "write".to_owned()];
        let token = mint(&issuer, "bob", &scopes, Duration::from_secs(60), extra, NOW).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().alg,
            alg,
            "{name}"
        );
        let verifier = JwtVerifier::new(vec![Arc::clone(&issuer)], TestClock::at(NOW + 30));
        let p = verifier
            .verify(&token, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&*p.subject, "bob", "{name}: extra cannot replace sub");
        assert_eq!(p.scopes, scopes, "{name}");
        let late = JwtVerifier::new(vec![issuer], TestClock::at(NOW + 60 + 30));
        assert_eq!(
            late.verify(&token, None).await,
            Err(JwtError::Expired),
            "{name}"
        );
    }

    let mut half = es.clone();
    half.signing_key = Some("other/key.pem".into());
    let err = ensure_dev_keys(&half, dir.path()).unwrap_err();
    assert!(err.to_string().contains("only one of"), "{err}");
}

#[test]
fn base64url() {
    let cases: [(&str, &str, Option<&[u8]>); 12] = [
        ("empty", "", Some(b"")),
        ("one byte", "Zg", Some(b"f")),
        ("two bytes", "Zm8", Some(b"fo")),
        ("three bytes", "Zm9v", Some(b"foo")),
        ("the URL-safe characters", "-_8", Some(&[0xfb, 0xff])),
        ("padding", "Zg==", None),
        ("one padding character", "Zm8=", None),
        ("non-canonical last character (4 unused bits)", "Zh", None),
        ("non-canonical last character (2 unused bits)", "Zm9", None),
        ("an impossible length", "Z", None),
        ("the standard alphabet's +", "Zm9v+", None),
        ("whitespace", "Zm9v\n", None),
    ];
    for (name, input, want) in cases {
        assert_eq!(b64url_decode(input.as_bytes()).as_deref(), want, "{name}");
    }
    for len in 0..40u8 {
        let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
        assert_eq!(b64url_decode(b64url_encode(&data).as_bytes()), Some(data));
    }
}
