//! JWT tests: JWK Sets from a real server on 127.0.0.1:0.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::*;
use crate::auth::jwt::*;
use crate::config::Dur;

// ---- JWKS, against a real server on 127.0.0.1:0 -------------------

struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body));
        let down = Arc::new(AtomicBool::new(false));
        let (h, b, d) = (hits.clone(), body.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, b, d) = (h.clone(), b.clone(), d.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let status = if d.load(Ordering::SeqCst) { 503 } else { 200 };
                        let text = b.lock().unwrap().clone();
                        async move {
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(text)))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            hits,
            body,
            down,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

fn ec_jwk(pair: &Pair, kid: &str) -> Value {
    // SEC1 uncompressed: 0x04 || x || y.
    let (x, y) = pair.raw[1..].split_at((pair.raw.len() - 1) / 2);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
           "x": b64url_encode(x), "y": b64url_encode(y)})
}

fn ed_jwk(pair: &Pair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(&pair.raw)})
}

fn rsa_jwk(kid: &str, alg: Algorithm) -> Value {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn jwks_issuer(url: &str, reg: &JwksRegistry, min_refresh: Duration) -> Arc<Issuer> {
    let mut s = spec("idp", &["ES256", "EdDSA", "RS256", "PS256"]);
    s.issuer = Some("https://idp.test".into());
    s.audiences = vec!["api".into()];
    s.jwks_url = Some(url.to_owned());
    // Below the config floor, the set's settings are set directly.
    s.jwks_min_refresh_interval = Dur(min_refresh.max(MIN_JWKS_MIN_REFRESH_INTERVAL));
    s.jwks_timeout = Dur(Duration::from_secs(2));
    let issuer = Issuer::build(&s, Path::new("."), &no_env, reg).unwrap();
    if let Some(set) = issuer.jwks() {
        let settings = JwksSettings {
            min_refresh_interval: min_refresh,
            ..set.settings()
        };
        reg.get(set.url(), settings);
    }
    Arc::new(issuer)
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn jwks_rotation_refreshes_once_for_a_new_kid() {
    let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let b = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
    let reg = registry();
    let issuer = jwks_issuer(&server.url, &reg, HOUR);
    assert!(reg.refresh_all().await.is_empty());
    assert_eq!(server.hits(), 1, "first fetch");
    let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
    let c = claims("https://idp.test");

    let token_a = sign(Algorithm::ES256, Some("a"), &c, &a.private);
    assert!(verifier.verify(&token_a, None).await.is_ok(), "old key");
    assert_eq!(server.hits(), 1, "known kid: no fetch");

    server.serve(jwks(&[ec_jwk(&b, "b")]));
    let token_b = sign(Algorithm::ES256, Some("b"), &c, &b.private);
    assert_eq!(
        outcome(verifier.verify(&token_b, None).await),
        Ok("alice".into()),
        "new key"
    );
    assert_eq!(server.hits(), 2, "exactly one refresh for the new kid");
    assert!(verifier.verify(&token_b, None).await.is_ok());
    assert_eq!(server.hits(), 2, "now known");

    assert_eq!(
        verifier.verify(&token_a, None).await,
        Err(JwtError::UnknownKey),
        "old key gone"
    );
    assert_eq!(server.hits(), 2, "rate limited");
}

#[tokio::test]
async fn jwks_unknown_kids_are_rate_limited() {
    let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
    let reg = registry();
    let issuer = jwks_issuer(&server.url, &reg, HOUR);
    assert!(reg.refresh_all().await.is_empty());
    let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
    let c = claims("https://idp.test");
    let tokens: Vec<String> = (0..20)
        .map(|i| {
            sign(
                Algorithm::ES256,
                Some(&format!("random-{i}")),
                &c,
                &a.private,
            )
        })
        .collect();
    let results =
        futures_util::future::join_all(tokens.iter().map(|t| verifier.verify(t, None))).await;
    for r in results {
        assert_eq!(r, Err(JwtError::UnknownKey));
    }
    // Sequentially too.
    for t in &tokens {
        assert_eq!(verifier.verify(t, None).await, Err(JwtError::UnknownKey));
    }
    assert_eq!(server.hits(), 2, "one initial fetch and at most one extra");
}

#[tokio::test]
async fn jwks_server_down_keeps_the_last_good_set() {
    let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let ed = generate(&rcgen::PKCS_ED25519);
    let server = JwksServer::start(jwks(&[
        ec_jwk(&a, "a"),
        ed_jwk(&ed, "ed"),
        rsa_jwk("rsa", Algorithm::RS256),
    ]))
    .await;
    let reg = registry();
    let issuer = jwks_issuer(&server.url, &reg, Duration::from_millis(1));
    assert!(reg.refresh_all().await.is_empty());
    let set = Arc::clone(issuer.jwks().unwrap());
    assert_eq!(set.keys().len(), 3);
    let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
    let c = claims("https://idp.test");
    let cases = [
        (
            "ES256 from JWKS",
            sign(Algorithm::ES256, Some("a"), &c, &a.private),
            Ok("alice".to_owned()),
        ),
        (
            "EdDSA from JWKS",
            sign(Algorithm::EdDSA, Some("ed"), &c, &ed.private),
            Ok("alice".to_owned()),
        ),
        (
            "RS256 from JWKS",
            sign(Algorithm::RS256, Some("rsa"), &c, RSA_PRIVATE),
            Ok("alice".to_owned()),
        ),
        // The JWK says alg RS256: a PS256 token may not use it.
        (
            "JWK alg disagrees with the token",
            sign(Algorithm::PS256, Some("rsa"), &c, RSA_PRIVATE),
            Err(JwtError::UnknownKey),
        ),
    ];

    server.down.store(true, Ordering::SeqCst);
    let failures = reg.refresh_all().await;
    assert!(
        matches!(
            failures.as_slice(),
            [(_, crate::auth::jwks::JwksError::Status(503))]
        ),
        "{failures:?}"
    );
    server.serve("not json".into());
    server.down.store(false, Ordering::SeqCst);
    assert!(
        reg.refresh_all().await.len() == 1,
        "bad JSON is a failure too"
    );
    server.serve(jwks(&[json!({"kty": "oct", "k": "c2VjcmV0", "kid": "a"})]));
    assert!(
        reg.refresh_all().await.len() == 1,
        "no usable key is a failure too"
    );
    server.down.store(true, Ordering::SeqCst);
    assert_eq!(set.keys().len(), 3, "kept");
    for (name, token, want) in cases {
        assert_eq!(outcome(verifier.verify(&token, None).await), want, "{name}");
    }
}

#[tokio::test]
async fn jwks_unavailable_until_a_fetch_works() {
    let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
    server.down.store(true, Ordering::SeqCst);
    let reg = registry();
    let issuer = jwks_issuer(&server.url, &reg, HOUR);
    let verifier = JwtVerifier::new(vec![Arc::clone(&issuer)], TestClock::at(NOW));
    let token = sign(
        Algorithm::ES256,
        Some("a"),
        &claims("https://idp.test"),
        &a.private,
    );
    assert_eq!(
        verifier.verify(&token, None).await,
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(server.hits(), 1, "the first token tried one fetch");
    server.down.store(false, Ordering::SeqCst);
    assert_eq!(
        verifier.verify(&token, None).await,
        Err(JwtError::KeysUnavailable),
        "rate limited"
    );

    assert_eq!(
        reg.refresh_all().await.len(),
        0,
        "an explicit refresh works"
    );
    assert!(verifier.verify(&token, None).await.is_ok());
}

#[tokio::test]
async fn jwks_background_task_fetches_at_start() {
    let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
    let reg = registry();
    let issuer = jwks_issuer(&server.url, &reg, HOUR);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = reg.spawn_refresh(stop_rx);
    let set = Arc::clone(issuer.jwks().unwrap());
    for _ in 0..200 {
        if set.is_loaded() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(set.is_loaded(), "background refresh fetched the set");
    assert_eq!(server.hits(), 1);
    let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
    let token = sign(
        Algorithm::ES256,
        Some("a"),
        &claims("https://idp.test"),
        &a.private,
    );
    assert!(verifier.verify(&token, None).await.is_ok());
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn jwks_sets_are_shared_across_reloads_and_pruned() {
    let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
    let reg = registry();
    let first = jwks_issuer(&server.url, &reg, HOUR);
    let second = jwks_issuer(&server.url, &reg, Duration::from_secs(5));
    assert!(Arc::ptr_eq(first.jwks().unwrap(), second.jwks().unwrap()));
    assert_eq!(reg.sets().len(), 1);
    assert_eq!(
        first.jwks().unwrap().settings().min_refresh_interval,
        Duration::from_secs(5),
        "the last build's settings win"
    );
    reg.refresh_due().await;
    assert_eq!(server.hits(), 1, "due at once");
    reg.refresh_due().await;
    assert_eq!(server.hits(), 1, "not due again");
    drop((first, second));
    reg.refresh_due().await;
    assert!(reg.sets().is_empty(), "unused sets are dropped");
}

#[tokio::test]
async fn jwks_fetch_timeout_and_size_cap() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let reg = registry();
    let uri: http::Uri = format!("http://{addr}/jwks").parse().unwrap();
    let set = reg.get(
        &uri,
        JwksSettings {
            timeout: Duration::from_millis(200),
            ..JwksSettings::default()
        },
    );
    let err = set.refresh().await.unwrap_err();
    assert!(
        matches!(err, crate::auth::jwks::JwksError::Timeout),
        "{err:?}"
    );
    hold.abort();

    let big = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let server = JwksServer::start(big).await;
    let uri: http::Uri = server.url.parse().unwrap();
    let set = reg.get(&uri, JwksSettings::default());
    let err = set.refresh().await.unwrap_err();
    assert!(
        matches!(err, crate::auth::jwks::JwksError::TooLarge),
        "{err:?}"
    );
    assert!(!set.is_loaded());
}
