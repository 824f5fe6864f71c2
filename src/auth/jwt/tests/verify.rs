//! JWT tests: verification cases, leeway, the verified-token cache, principals.

use serde_json::json;

use super::*;
use crate::auth::jwt::*;

/// The first of `tokens` whose header or payload ends with unused low bits,
/// with its last character changed to set one of them: the same bytes to a
/// lenient decoder, refused by a strict one.
fn non_canonical_token(tokens: &[String]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (token, i) = tokens
        .iter()
        .find_map(|t| {
            let parts: Vec<&str> = t.split('.').collect();
            (0..2).find(|&i| parts[i].len() % 4 >= 2).map(|i| (t, i))
        })
        .expect("a header or payload with unused bits");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let last = parts[i].pop().unwrap();
    let at = A.iter().position(|&c| char::from(c) == last).unwrap();
    assert_eq!(at & 1, 0, "canonical to start with");
    parts[i].push(char::from(A[at | 1]));
    let tampered = parts.join(".");
    let (a, b) = (token.split('.').nth(i), tampered.split('.').nth(i));
    assert_ne!(a, b);
    tampered
}

#[tokio::test]
async fn verify_cases() {
    let w = world();
    let hs = || with(claims("https://hs.test"), "tenant", json!("t1"));
    let rs = || claims("https://rs.test");
    let es = || claims("https://es.test");
    let ed = || claims("https://ed.test");
    let p256 = w.p256.private.as_str();
    let es256 = |c: &Value| sign(Algorithm::ES256, Some("ec1"), c, p256);
    let ok = Ok("alice".to_owned());
    let valid_es = es256(&es());
    let header_segment = |h: Value| b64url_encode(h.to_string().as_bytes());
    let payload_segment = b64url_encode(es().to_string().as_bytes());
    let cases: Vec<(&str, String, Option<Vec<String>>, Result<String, JwtError>)> = vec![
        (
            "HS256",
            sign(Algorithm::HS256, None, &hs(), SECRET),
            None,
            ok.clone(),
        ),
        (
            "HS512",
            sign(Algorithm::HS512, None, &hs(), SECRET),
            None,
            ok.clone(),
        ),
        (
            "RS256",
            sign(Algorithm::RS256, Some("rsa1"), &rs(), &w.rsa.private),
            None,
            ok.clone(),
        ),
        (
            "PS256",
            sign(Algorithm::PS256, Some("rsa1"), &rs(), &w.rsa.private),
            None,
            ok.clone(),
        ),
        ("ES256", valid_es.clone(), None, ok.clone()),
        (
            "ES384",
            sign(Algorithm::ES384, Some("ec2"), &es(), &w.p384.private),
            None,
            ok.clone(),
        ),
        (
            "EdDSA without kid",
            sign(Algorithm::EdDSA, None, &ed(), &w.ed.private),
            None,
            ok.clone(),
        ),
        (
            "EdDSA with any kid (key has none)",
            sign(Algorithm::EdDSA, Some("x"), &ed(), &w.ed.private),
            None,
            ok.clone(),
        ),
        (
            "ES256 without kid tries the fitting keys",
            sign(Algorithm::ES256, None, &es(), p256),
            None,
            ok.clone(),
        ),
        (
            "route allows the issuer",
            valid_es.clone(),
            Some(vec!["es".into()]),
            ok.clone(),
        ),
        (
            "route allows another issuer",
            valid_es.clone(),
            Some(vec!["hs".into()]),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "route allows no known issuer",
            valid_es.clone(),
            Some(vec!["nobody".into()]),
            Err(JwtError::UnknownIssuer),
        ),
        (
            "alg none, unsigned",
            format!(
                "{}.{payload_segment}.",
                header_segment(json!({"alg": "none"}))
            ),
            None,
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "alg NoNe, unsigned",
            format!(
                "{}.{payload_segment}.",
                header_segment(json!({"alg": "NoNe"}))
            ),
            None,
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "unknown alg",
            format!(
                "{}.{payload_segment}.AAAA",
                header_segment(json!({"alg": "HS1024"}))
            ),
            None,
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "RS256 public key used as HS256 secret",
            sign(Algorithm::HS256, Some("rsa1"), &rs(), &w.rsa.public),
            None,
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "RS256 public key used as HS256 secret, route allows rs",
            sign(Algorithm::HS256, None, &rs(), &w.rsa.public),
            Some(vec!["rs".into()]),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "algorithm of another issuer",
            sign(Algorithm::ES256, Some("ec1"), &hs(), p256),
            None,
            Err(JwtError::AlgorithmNotAllowed),
        ),
        (
            "expired",
            es256(&with(es(), "exp", json!(NOW - 31))),
            None,
            Err(JwtError::Expired),
        ),
        (
            "expired exactly at the leeway",
            es256(&with(es(), "exp", json!(NOW - 30))),
            None,
            Err(JwtError::Expired),
        ),
        (
            "expired within leeway",
            es256(&with(es(), "exp", json!(NOW - 29))),
            None,
            ok.clone(),
        ),
        (
            "fractional exp",
            es256(&with(es(), "exp", json!(NOW as f64 + 0.5))),
            None,
            ok.clone(),
        ),
        (
            "not yet valid",
            es256(&with(es(), "nbf", json!(NOW + 31))),
            None,
            Err(JwtError::NotYetValid),
        ),
        (
            "nbf within leeway",
            es256(&with(es(), "nbf", json!(NOW + 30))),
            None,
            ok.clone(),
        ),
        (
            "nbf as a string",
            es256(&with(es(), "nbf", json!("0"))),
            None,
            Err(JwtError::WrongClaimType("nbf".into())),
        ),
        (
            "iat in the future",
            es256(&with(es(), "iat", json!(NOW + 31))),
            None,
            Err(JwtError::IssuedInFuture),
        ),
        (
            "iat within leeway",
            es256(&with(es(), "iat", json!(NOW + 30))),
            None,
            ok.clone(),
        ),
        (
            "iat as a bool",
            es256(&with(es(), "iat", json!(true))),
            None,
            Err(JwtError::WrongClaimType("iat".into())),
        ),
        (
            "missing exp",
            es256(&without(es(), "exp")),
            None,
            Err(JwtError::MissingClaim("exp".into())),
        ),
        (
            "exp as a string",
            es256(&with(es(), "exp", json!((NOW + 600).to_string()))),
            None,
            Err(JwtError::WrongClaimType("exp".into())),
        ),
        (
            "exp null",
            es256(&with(es(), "exp", Value::Null)),
            None,
            Err(JwtError::WrongClaimType("exp".into())),
        ),
        (
            "wrong iss, route allows es",
            es256(&with(es(), "iss", json!("https://evil.test"))),
            Some(vec!["es".into()]),
            Err(JwtError::WrongIssuer),
        ),
        (
            "wrong iss, any route",
            es256(&with(es(), "iss", json!("https://evil.test"))),
            None,
            Err(JwtError::UnknownIssuer),
        ),
        (
            "missing iss, route allows es",
            es256(&without(es(), "iss")),
            Some(vec!["es".into()]),
            Err(JwtError::MissingClaim("iss".into())),
        ),
        (
            "iss as a number",
            es256(&with(es(), "iss", json!(7))),
            None,
            Err(JwtError::WrongClaimType("iss".into())),
        ),
        (
            "wrong aud",
            es256(&with(es(), "aud", json!("other"))),
            None,
            Err(JwtError::WrongAudience),
        ),
        (
            "aud array containing ours",
            es256(&with(es(), "aud", json!(["other", "api"]))),
            None,
            ok.clone(),
        ),
        (
            "aud array without ours",
            es256(&with(es(), "aud", json!(["other"]))),
            None,
            Err(JwtError::WrongAudience),
        ),
        (
            "aud empty array",
            es256(&with(es(), "aud", json!([]))),
            None,
            Err(JwtError::WrongAudience),
        ),
        (
            "aud 123",
            es256(&with(es(), "aud", json!(123))),
            None,
            Err(JwtError::WrongClaimType("aud".into())),
        ),
        (
            "aud array with a number",
            es256(&with(es(), "aud", json!(["api", 1]))),
            None,
            Err(JwtError::WrongClaimType("aud".into())),
        ),
        (
            "missing aud",
            es256(&without(es(), "aud")),
            None,
            Err(JwtError::MissingClaim("aud".into())),
        ),
        (
            "second configured audience",
            sign(
                Algorithm::RS256,
                Some("rsa1"),
                &with(rs(), "aud", json!("api2")),
                &w.rsa.private,
            ),
            None,
            ok.clone(),
        ),
        (
            "missing sub",
            es256(&without(es(), "sub")),
            None,
            Err(JwtError::MissingClaim("sub".into())),
        ),
        (
            "empty sub",
            es256(&with(es(), "sub", json!(""))),
            None,
            Err(JwtError::MissingClaim("sub".into())),
        ),
        (
            "sub as a number",
            es256(&with(es(), "sub", json!(42))),
            None,
            Err(JwtError::WrongClaimType("sub".into())),
        ),
        (
            "missing required claim",
            sign(Algorithm::HS256, None, &without(hs(), "tenant"), SECRET),
            None,
            Err(JwtError::MissingClaim("tenant".into())),
        ),
        (
            "null required claim",
            sign(
                Algorithm::HS256,
                None,
                &with(hs(), "tenant", Value::Null),
                SECRET,
            ),
            None,
            Err(JwtError::MissingClaim("tenant".into())),
        ),
        (
            "bad signature (flipped byte)",
            flip_signature_char(&valid_es),
            None,
            Err(JwtError::BadSignature),
        ),
        (
            "tampered payload",
            {
                let parts: Vec<&str> = valid_es.split('.').collect();
                let evil = b64url_encode(with(es(), "sub", json!("root")).to_string().as_bytes());
                format!("{}.{evil}.{}", parts[0], parts[2])
            },
            None,
            Err(JwtError::BadSignature),
        ),
        (
            "signed by another key",
            sign(
                Algorithm::ES256,
                Some("ec1"),
                &es(),
                &generate(&rcgen::PKCS_ECDSA_P256_SHA256).private,
            ),
            None,
            Err(JwtError::BadSignature),
        ),
        (
            "HS256 with a wrong secret",
            sign(
                Algorithm::HS256,
                None,
                &hs(),
                "another-secret-of-32-bytes-or-more!!",
            ),
            None,
            Err(JwtError::BadSignature),
        ),
        (
            "ES256 under the P-384 kid",
            sign(Algorithm::ES256, Some("ec2"), &es(), p256),
            None,
            Err(JwtError::UnknownKey),
        ),
        (
            "unknown kid on a static issuer",
            sign(Algorithm::ES256, Some("nope"), &es(), p256),
            None,
            Err(JwtError::UnknownKey),
        ),
        (
            "kid not a string",
            forge(
                json!({"alg": "ES256", "kid": 5}),
                &es(),
                Algorithm::ES256,
                p256,
            ),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "truncated: two segments",
            valid_es.rsplit_once('.').unwrap().0.to_owned(),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "truncated signature",
            valid_es[..valid_es.len() - 10].to_owned(),
            None,
            Err(JwtError::BadSignature),
        ),
        (
            "four segments",
            format!("{valid_es}.AAAA"),
            None,
            Err(JwtError::Malformed),
        ),
        ("empty", String::new(), None, Err(JwtError::Malformed)),
        (
            "not base64url",
            valid_es.replacen('.', ".+", 1),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "padded base64",
            format!(
                "{}=.{}",
                valid_es.split('.').next().unwrap(),
                valid_es.split_once('.').unwrap().1
            ),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "non-canonical last character in a segment (same bytes to a lenient decoder)",
            non_canonical_token(&["", "x", "xx"].map(|pad| es256(&with(es(), "pad", json!(pad))))),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "header not JSON",
            format!("{}.{payload_segment}.AAAA", b64url_encode(b"nope")),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "payload not an object",
            sign(Algorithm::ES256, Some("ec1"), &json!([1, 2]), p256),
            None,
            Err(JwtError::Malformed),
        ),
        (
            "oversized, refused before decoding",
            "a".repeat(9000),
            None,
            Err(JwtError::TooLarge),
        ),
    ];
    let mut forbidden: Vec<(String, String)> = Vec::new();
    for (h, v) in [
        ("crit", json!(["exp"])),
        ("jku", json!("https://evil.test/jwks")),
        ("x5u", json!("https://evil.test/cert")),
        ("jwk", json!({"kty": "oct", "k": "AAAA"})),
        ("x5c", json!(["MIIB"])),
        ("jku", Value::Null),
    ] {
        let header = json!({"alg": "ES256", "kid": "ec1", h: v});
        forbidden.push((
            format!("{h} header ({v})"),
            forge(header, &es(), Algorithm::ES256, p256),
        ));
    }
    for (name, token, allowed, want) in cases {
        let got = outcome(w.verifier.verify(&token, allowed.as_deref()).await);
        assert_eq!(got, want, "{name}");
    }
    for (name, token) in forbidden {
        let got = outcome(w.verifier.verify(&token, None).await);
        assert_eq!(got, Err(JwtError::ForbiddenHeader), "{name}");
    }
}

#[tokio::test]
async fn leeway_with_a_moving_clock() {
    let w = world();
    let clock = TestClock::at(NOW);
    let verifier = JwtVerifier::new(w.verifier.issuers().to_vec(), clock.clone());
    let c = json!({
        "iss": "https://es.test", "aud": "api", "sub": "alice",
        "nbf": NOW + 100, "exp": NOW + 200,
    });
    let token = sign(Algorithm::ES256, Some("ec1"), &c, &w.p256.private);
    let cases = [
        ("long before nbf", NOW, Err(JwtError::NotYetValid)),
        (
            "just outside leeway before nbf",
            NOW + 69,
            Err(JwtError::NotYetValid),
        ),
        ("within leeway before nbf", NOW + 70, Ok("alice".to_owned())),
        ("inside the window", NOW + 150, Ok("alice".to_owned())),
        ("within leeway after exp", NOW + 229, Ok("alice".to_owned())),
        (
            "leeway used up after exp",
            NOW + 230,
            Err(JwtError::Expired),
        ),
        ("long after exp", NOW + 10_000, Err(JwtError::Expired)),
    ];
    for (name, now, want) in cases {
        clock.set(now);
        assert_eq!(outcome(verifier.verify(&token, None).await), want, "{name}");
    }
}

#[tokio::test]
async fn verified_tokens_are_remembered_only_inside_their_window() {
    let w = world();
    let clock = TestClock::at(NOW);
    let verifier = JwtVerifier::new(w.verifier.issuers().to_vec(), clock.clone());
    let c = json!({
        "iss": "https://es.test", "aud": "api", "sub": "alice",
        "nbf": NOW - 10, "exp": NOW + 100,
    });
    let token = sign(Algorithm::ES256, Some("ec1"), &c, &w.p256.private);
    let es_only = vec!["es".to_owned()];
    let other = vec!["ed".to_owned()];
    // (name, clock, allowed issuers, outcome, signature checks so far)
    let cases: Vec<(&str, i64, Option<&[String]>, Result<String, JwtError>, u64)> = vec![
        (
            "first use checks the signature",
            NOW,
            None,
            Ok("alice".into()),
            1,
        ),
        (
            "second use is remembered",
            NOW + 1,
            Some(&es_only),
            Ok("alice".into()),
            1,
        ),
        (
            "a route without its issuer is not served from memory",
            NOW + 1,
            Some(&other),
            Err(JwtError::AlgorithmNotAllowed),
            1,
        ),
        (
            "before the window is checked again",
            NOW - 100,
            None,
            Err(JwtError::NotYetValid),
            2,
        ),
        (
            "past exp and leeway is checked again",
            NOW + 130,
            None,
            Err(JwtError::Expired),
            3,
        ),
    ];
    for (name, now, allowed, want, checks) in cases {
        clock.set(now);
        assert_eq!(
            outcome(verifier.verify(&token, allowed).await),
            want,
            "{name}"
        );
        assert_eq!(verifier.signature_checks(), checks, "{name}");
    }
}

#[tokio::test]
async fn principal_scopes_roles_plan_and_headers() {
    let w = world();
    let es = |extra: Value| {
        let mut c = claims("https://es.test");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(Algorithm::ES256, Some("ec1"), &c, &w.p256.private)
    };
    let ed = |extra: Value| {
        let mut c = claims("https://ed.test");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(Algorithm::EdDSA, None, &c, &w.ed.private)
    };
    type Want = Result<(Vec<&'static str>, Vec<&'static str>, Option<&'static str>), JwtError>;
    let cases: Vec<(&str, String, Want)> = vec![
        (
            "scope string",
            es(json!({"scope": "read  write"})),
            Ok((vec!["read", "write"], vec![], None)),
        ),
        (
            "scp array",
            es(json!({"scp": ["a", "b"]})),
            Ok((vec!["a", "b"], vec![], None)),
        ),
        (
            "scp string",
            es(json!({"scp": "a b"})),
            Ok((vec!["a", "b"], vec![], None)),
        ),
        (
            "scope wins over scp",
            es(json!({"scope": "x", "scp": ["y"]})),
            Ok((vec!["x"], vec![], None)),
        ),
        ("no scopes", es(json!({})), Ok((vec![], vec![], None))),
        (
            "scope wrong type",
            es(json!({"scope": 5})),
            Err(JwtError::WrongClaimType("scope".into())),
        ),
        (
            "scp with a number",
            es(json!({"scp": ["a", 1]})),
            Err(JwtError::WrongClaimType("scp".into())),
        ),
        (
            "roles and plan",
            es(json!({"roles": ["admin", "ops"], "plan": "gold"})),
            Ok((vec![], vec!["admin", "ops"], Some("gold"))),
        ),
        (
            "plan wrong type",
            es(json!({"plan": 3})),
            Err(JwtError::WrongClaimType("plan".into())),
        ),
        (
            "roles wrong type",
            es(json!({"roles": {"a": 1}})),
            Err(JwtError::WrongClaimType("roles".into())),
        ),
        (
            "custom scope claim",
            ed(json!({"permissions": ["p:1", "p:2"], "scope": "ignored"})),
            Ok((vec!["p:1", "p:2"], vec![], None)),
        ),
    ];
    for (name, token, want) in cases {
        let got = w
            .verifier
            .verify(&token, None)
            .await
            .map(|p| (p.scopes, p.roles, p.plan.map(|s| s.to_string())));
        let want = want.map(|(s, r, p)| {
            (
                s.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                r.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                p.map(str::to_owned),
            )
        });
        assert_eq!(got, want, "{name}");
    }

    let token = es(json!({
        "tenant": 42,
        "groups": ["a", "b", 3],
        "admin": true,
        "evil": "x\r\nx-injected: 1",
        "obj": {"nested": 1},
    }));
    let p = w.verifier.verify(&token, None).await.unwrap();
    assert_eq!(p.method, AuthMethod::Jwt);
    assert_eq!(&*p.credential_id, "es");
    assert_eq!(p.consumer_name, None);
    let mut headers: Vec<(String, String)> = p
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let want: Vec<(String, String)> = [
        ("x-auth-admin", "true"),
        ("x-auth-groups", "a,b,3"),
        ("x-auth-sub", "alice"),
        ("x-auth-tenant", "42"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(headers, want);
}
