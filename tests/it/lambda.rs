//! Lambda upstreams against an in-test server that implements the Lambda
//! Invoke API (`POST /2015-03-31/functions/{name}/invocations`), verifies
//! every call's SigV4 signature with `aws-sigv4` for the test credentials,
//! and runs the handler the function name names.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::support::{Backend, GatewayBuilder, TestGateway, client, error_code, full, unix_now};

const KEY_ID: &str = "AKIDGATEHOUSETEST";
const SECRET: &str = "test-secret-key-never-logged-0123456789";
const REGION: &str = "eu-west-1";
const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
const STACK_TRACE: &str = "at secretInternalFunction (/var/task/index.js:42)";

/// One call the fake Lambda accepted.
#[derive(Debug, Clone)]
struct Call {
    function: String,
    qualifier: Option<String>,
    event: Value,
}

/// The fake Lambda service.
struct FakeLambda {
    backend: Backend,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Calls refused for a missing or wrong signature.
    bad_signatures: Arc<AtomicUsize>,
    /// Calls to `throttled`, counted even though they are refused.
    throttled: Arc<AtomicUsize>,
}

impl FakeLambda {
    async fn start() -> FakeLambda {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(AtomicUsize::new(0));
        let throttled = Arc::new(AtomicUsize::new(0));
        let (c, b, t) = (calls.clone(), bad.clone(), throttled.clone());
        let backend = Backend::start(move |req| {
            let (c, b, t) = (c.clone(), b.clone(), t.clone());
            async move { serve(req, c, b, t).await }
        })
        .await;
        FakeLambda {
            backend,
            calls,
            bad_signatures: bad,
            throttled,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn bad(&self) -> usize {
        self.bad_signatures.load(Ordering::SeqCst)
    }
}

fn lambda_response(
    status: u16,
    headers: &[(&str, &str)],
    body: Value,
) -> Response<crate::support::TestBody> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", "lambda-req-0001");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(body.to_string())).unwrap()
}

async fn serve(
    req: Request<Incoming>,
    calls: Arc<Mutex<Vec<Call>>>,
    bad: Arc<AtomicUsize>,
    throttled: Arc<AtomicUsize>,
) -> Response<crate::support::TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !signature_ok(&parts, &body) {
        bad.fetch_add(1, Ordering::SeqCst);
        return lambda_response(
            403,
            &[("x-amzn-errortype", "InvalidSignatureException")],
            json!({"message": "The request signature we calculated does not match the signature you provided."}),
        );
    }
    let path = parts.uri.path();
    let function = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|p| p.strip_suffix("/invocations"));
    let (Some(function), true) = (function, parts.method == http::Method::POST) else {
        return lambda_response(
            404,
            &[("x-amzn-errortype", "ResourceNotFoundException")],
            json!({"message": "no such route"}),
        );
    };
    let qualifier = parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("Qualifier=").map(str::to_owned))
    });
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let function = function.to_owned();
    if function == "throttled" {
        throttled.fetch_add(1, Ordering::SeqCst);
        return lambda_response(
            429,
            &[
                ("x-amzn-errortype", "TooManyRequestsException"),
                ("retry-after", "7"),
            ],
            json!({"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded", "Type": "User", "message": "Rate Exceeded."}),
        );
    }
    calls.lock().unwrap().push(Call {
        function: function.clone(),
        qualifier,
        event: event.clone(),
    });
    match function.as_str() {
        "echo" => lambda_response(
            200,
            &[],
            json!({
                "statusCode": 200,
                "headers": {"content-type": "application/json", "x-fn": "echo", "connection": "x-hop", "x-hop": "drop-me", "keep-alive": "timeout=5"},
                "body": event.to_string(),
            }),
        ),
        "bare" => lambda_response(200, &[], json!({"bare": true, "n": [1, 2, 3]})),
        "binary" => lambda_response(
            200,
            &[],
            json!({"statusCode": 200, "headers": {"content-type": "image/png"}, "body": B64.encode([0u8, 1, 2, 255]), "isBase64Encoded": true}),
        ),
        "cookies" => lambda_response(
            200,
            &[],
            json!({
                "statusCode": 202,
                "cookies": ["session=abc; HttpOnly", "theme=dark"],
                "multiValueHeaders": {"x-multi": ["one", "two"], "set-cookie": ["v1=a", "v1b=b"]},
                "body": "ok",
            }),
        ),
        "fails" => lambda_response(
            200,
            &[("x-amz-function-error", "Unhandled")],
            json!({"errorMessage": "boom", "errorType": "Error", "stackTrace": [STACK_TRACE]}),
        ),
        "malformed" => lambda_response(200, &[], json!({"statusCode": "not a status", "body": 5})),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            lambda_response(200, &[], json!({"statusCode": 200}))
        }
        _ => lambda_response(
            404,
            &[("x-amzn-errortype", "ResourceNotFoundException")],
            json!({"message": "Function not found"}),
        ),
    }
}

/// Recomputes the SigV4 signature of the received request for the test
/// credentials (region `eu-west-1`, service `lambda`, the request's own
/// `X-Amz-Date`) and compares it with the `Authorization` header.
fn signature_ok(parts: &http::request::Parts, body: &[u8]) -> bool {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let Some(auth) = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let field = |name: &str| {
        auth.split([',', ' '])
            .find_map(|p| p.trim().strip_prefix(name).map(str::to_owned))
    };
    let (Some(credential), Some(signed), Some(signature)) = (
        field("Credential="),
        field("SignedHeaders="),
        field("Signature="),
    ) else {
        return false;
    };
    let scope: Vec<&str> = credential.split('/').collect();
    if !auth.starts_with("AWS4-HMAC-SHA256 ")
        || scope.len() != 5
        || scope[0] != KEY_ID
        || scope[2..] != [REGION, "lambda", "aws4_request"]
    {
        return false;
    }
    let Some(time) = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_amz_date)
    else {
        return false;
    };
    let signed: Vec<&str> = signed.split(';').collect();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter(|(k, _)| signed.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let identity =
        aws_credential_types::Credentials::new(KEY_ID, SECRET, None, None, "test").into();
    let Ok(params) = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("lambda")
        .time(time)
        .settings(SigningSettings::default())
        .build()
    else {
        return false;
    };
    let params = params.into();
    let uri = parts.uri.to_string();
    let Ok(signable) = SignableRequest::new(
        parts.method.as_str(),
        uri.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    ) else {
        return false;
    };
    sign(signable, &params).is_ok_and(|out| out.signature() == signature)
}

/// `20261202T052009Z`.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let date = time::Date::from_calendar_date(
        i32::try_from(n(0..4)?).ok()?,
        time::Month::try_from(u8::try_from(n(4..6)?).ok()?).ok()?,
        u8::try_from(n(6..8)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(n(9..11)?).ok()?,
        u8::try_from(n(11..13)?).ok()?,
        u8::try_from(n(13..15)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().into())
}

fn upstream(name: &str, function: &str, lambda: &FakeLambda, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nkind = \"lambda\"\nfunction = \"{function}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n{extra}\n",
        lambda.backend.url()
    )
}

fn route(name: &str, matcher: &str, upstream: &str, extra: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\n{matcher}\nupstream = \"{upstream}\"\n{extra}\n")
}

async fn gateway(lambda: &FakeLambda, secret: &str) -> TestGateway {
    let policy = [
        upstream("echo2", "echo", lambda, "qualifier = \"live\""),
        upstream("echo1", "echo", lambda, "payload_format = \"1.0\""),
        upstream("bare", "bare", lambda, ""),
        upstream("binary", "binary", lambda, ""),
        upstream("cookies2", "cookies", lambda, ""),
        upstream("cookies1", "cookies", lambda, "payload_format = \"1.0\""),
        upstream("fails", "fails", lambda, ""),
        upstream("malformed", "malformed", lambda, ""),
        upstream("throttled", "throttled", lambda, "retries = 2"),
        upstream("hang", "hang", lambda, "request_timeout = \"1s\""),
        route(
            "v2",
            "template = \"/v2/orders/{id}\"",
            "echo2",
            "max_body = \"10MiB\"",
        ),
        route("v1", "template = \"/v1/orders/{id}\"", "echo1", ""),
        route(
            "jwt",
            "prefix = \"/secure\"",
            "echo2",
            "auth = \"jwt\"\njwt_issuers = [\"hs\"]",
        ),
        route("bare", "path = \"/bare\"", "bare", ""),
        route("binary", "path = \"/binary\"", "binary", ""),
        route("cookies2", "path = \"/cookies2\"", "cookies2", ""),
        route("cookies1", "path = \"/cookies1\"", "cookies1", ""),
        route("fails", "path = \"/fails\"", "fails", ""),
        route("malformed", "path = \"/malformed\"", "malformed", ""),
        route("throttled", "path = \"/throttled\"", "throttled", ""),
        route("hang", "path = \"/hang\"", "hang", ""),
    ]
    .concat();
    GatewayBuilder::new()
        .main(
            "[[jwt_issuer]]\nname = \"hs\"\nissuer = \"https://hs.test\"\naudiences = [\"gatehouse-tests\"]\n\
             algorithms = [\"HS256\"]\nhmac_secret_env = \"TEST_HS_SECRET\"\n",
        )
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("TEST_HS_SECRET", HS_SECRET)
        .policy("lambda.toml", &policy)
        .start()
        .await
}

fn hs_token(scope: &str) -> String {
    let now = unix_now();
    let claims = json!({"sub": "alice", "iss": "https://hs.test", "aud": "gatehouse-tests", "iat": now, "exp": now + 600, "scope": scope});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn events_carry_the_request_in_both_payload_formats() {
    let lambda = FakeLambda::start().await;
    let gw = gateway(&lambda, SECRET).await;
    let c = client();

    // 2.0, with a qualifier, a template parameter, multi-value headers, cookies and a JSON body.
    let resp = c
        .post(gw.url("/v2/orders/42?a=1&a=2&q=hello%20world"))
        .header("content-type", "application/json")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("cookie", "s=1; t=2")
        .header("x-request-id", "req-lambda-1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-consumer-id", "spoofed")
        .body("{\"order\":42}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-fn"], "echo");
    assert!(
        !h.contains_key("x-hop"),
        "hop-by-hop named in Connection dropped"
    );
    assert!(!h.contains_key("keep-alive"), "hop-by-hop dropped");
    assert_eq!(h["x-request-id"], "req-lambda-1");
    let ev: Value = resp.json().await.unwrap();
    let cases: &[(&str, &str, Value)] = &[
        ("version", "/version", json!("2.0")),
        ("route key", "/routeKey", json!("POST /v2/orders/{id}")),
        ("raw path", "/rawPath", json!("/v2/orders/42")),
        (
            "raw query",
            "/rawQueryString",
            json!("a=1&a=2&q=hello%20world"),
        ),
        ("query joined", "/queryStringParameters/a", json!("1,2")),
        (
            "query decoded",
            "/queryStringParameters/q",
            json!("hello world"),
        ),
        ("multi header", "/headers/x-multi", json!("one,two")),
        ("cookies", "/cookies", json!(["s=1", "t=2"])),
        (
            "request id header",
            "/headers/x-request-id",
            json!("req-lambda-1"),
        ),
        (
            "trace context",
            "/headers/traceparent",
            json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ),
        (
            "forwarded for",
            "/headers/x-forwarded-for",
            json!("127.0.0.1"),
        ),
        (
            "forwarded proto",
            "/headers/x-forwarded-proto",
            json!("http"),
        ),
        (
            "spoofed identity removed",
            "/headers/x-auth-sub",
            Value::Null,
        ),
        ("path parameter", "/pathParameters/id", json!("42")),
        ("text body", "/body", json!("{\"order\":42}")),
        ("not base64", "/isBase64Encoded", json!(false)),
        ("method", "/requestContext/http/method", json!("POST")),
        (
            "source ip",
            "/requestContext/http/sourceIp",
            json!("127.0.0.1"),
        ),
        (
            "request id",
            "/requestContext/requestId",
            json!("req-lambda-1"),
        ),
        ("no authorizer", "/requestContext/authorizer", Value::Null),
    ];
    for (name, pointer, want) in cases {
        assert_eq!(
            ev.pointer(pointer).unwrap_or(&Value::Null),
            want,
            "2.0 {name}: {ev}"
        );
    }
    assert!(ev["requestContext"]["timeEpoch"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(
        ev["headers"]["host"],
        json!(gw.addr("http").to_string()),
        "the client's Host"
    );

    // 1.0: multi-value headers and query, resource, binary body base64-encoded.
    let resp = c
        .put(gw.url("/v1/orders/7?a=1&a=2"))
        .header("content-type", "application/octet-stream")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(vec![0u8, 159, 146, 150, 255])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ev: Value = resp.json().await.unwrap();
    let cases: &[(&str, &str, Value)] = &[
        ("version", "/version", json!("1.0")),
        ("resource", "/resource", json!("/v1/orders/{id}")),
        ("path", "/path", json!("/v1/orders/7")),
        ("method", "/httpMethod", json!("PUT")),
        ("last header", "/headers/x-multi", json!("two")),
        (
            "multi header",
            "/multiValueHeaders/x-multi",
            json!(["one", "two"]),
        ),
        ("last query", "/queryStringParameters/a", json!("2")),
        (
            "multi query",
            "/multiValueQueryStringParameters/a",
            json!(["1", "2"]),
        ),
        ("path parameter", "/pathParameters/id", json!("7")),
        (
            "base64 body",
            "/body",
            json!(B64.encode([0u8, 159, 146, 150, 255])),
        ),
        ("base64 flag", "/isBase64Encoded", json!(true)),
        (
            "source ip",
            "/requestContext/identity/sourceIp",
            json!("127.0.0.1"),
        ),
        (
            "resource path",
            "/requestContext/resourcePath",
            json!("/v1/orders/{id}"),
        ),
    ];
    for (name, pointer, want) in cases {
        assert_eq!(
            ev.pointer(pointer).unwrap_or(&Value::Null),
            want,
            "1.0 {name}: {ev}"
        );
    }

    let calls = lambda.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].function, "echo");
    assert_eq!(
        calls[0].qualifier.as_deref(),
        Some("live"),
        "qualifier sent"
    );
    assert_eq!(calls[1].qualifier, None);
    assert_eq!(calls[1].event["version"], "1.0");
    assert_eq!(
        lambda.bad(),
        0,
        "every call carried a valid SigV4 signature"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_jwt_caller_appears_under_the_authorizer() {
    let lambda = FakeLambda::start().await;
    let gw = gateway(&lambda, SECRET).await;
    let c = client();
    let resp = c.get(gw.url("/secure/me")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(lambda.calls().is_empty(), "refused requests never invoke");

    let token = hs_token("orders:read orders:write");
    let resp = c
        .get(gw.url("/secure/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ev: Value = resp.json().await.unwrap();
    let auth = &ev["requestContext"]["authorizer"]["jwt"];
    assert_eq!(auth["claims"]["sub"], "alice", "{ev}");
    assert_eq!(auth["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(ev["routeKey"], "GET /secure/{proxy+}");
    assert_eq!(ev["pathParameters"]["proxy"], "me", "{ev}");
    assert_eq!(
        ev["headers"].get("authorization"),
        None,
        "the token is not forwarded"
    );
    assert!(
        !ev.to_string().contains(&token),
        "the raw token never reaches the function"
    );
    assert_eq!(lambda.bad(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn answers_map_back_to_http() {
    let lambda = FakeLambda::start().await;
    let gw = gateway(&lambda, SECRET).await;
    let c = client();

    // The 2.0 shortcut: a bare JSON value is a 200 JSON answer.
    let resp = c.get(gw.url("/bare")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"bare": true, "n": [1, 2, 3]}));

    // A base64 body is decoded.
    let resp = c.get(gw.url("/binary")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &[0u8, 1, 2, 255]);

    // 2.0 cookies become Set-Cookie; multi-value headers keep every value.
    for (path, cookies) in [
        (
            "/cookies2",
            vec!["v1=a", "v1b=b", "session=abc; HttpOnly", "theme=dark"],
        ),
        ("/cookies1", vec!["v1=a", "v1b=b"]),
    ] {
        let resp = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 202, "{path}");
        let multi: Vec<_> = resp
            .headers()
            .get_all("x-multi")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(multi, ["one", "two"], "{path}");
        let set: Vec<_> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(set, cookies, "{path}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert_eq!(lambda.bad(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn function_errors_throttling_and_timeouts() {
    let lambda = FakeLambda::start().await;
    let gw = gateway(&lambda, SECRET).await;
    let c = client();

    // A function error is a 502 with the JSON body; the stack trace stays out.
    let resp = c.post(gw.url("/fails")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("secretInternalFunction") && !text.contains("boom"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "upstream_failed");
    assert_eq!(
        lambda
            .calls()
            .iter()
            .filter(|c| c.function == "fails")
            .count(),
        1,
        "a function that ran is never retried"
    );

    // A malformed answer is a 502.
    let resp = c.get(gw.url("/malformed")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(error_code(resp).await, "upstream_failed");

    // Throttling: retried as configured (1 + 2 attempts), then 429 with Retry-After.
    let resp = c.get(gw.url("/throttled")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(error_code(resp).await, "upstream_throttled");
    assert_eq!(
        lambda.throttled.load(Ordering::SeqCst),
        3,
        "first attempt plus 2 retries"
    );

    // A hanging function: 504 at the upstream's request timeout (1 s).
    let resp = tokio::time::timeout(Duration::from_secs(10), c.get(gw.url("/hang")).send())
        .await
        .expect("the gateway answers before the hang ends")
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(error_code(resp).await, "upstream_timeout");
    assert_eq!(lambda.bad(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_payload_limit_never_invoke() {
    let lambda = FakeLambda::start().await;
    let gw = gateway(&lambda, SECRET).await;
    let c = client();
    // The route allows 10 MiB; Lambda takes 6 MB.
    let resp = c
        .post(gw.url("/v2/orders/1"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 6 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(error_code(resp).await, "payload_too_large");
    // Under the limit as bytes, over it once base64-encoded in the event.
    let resp = c
        .post(gw.url("/v2/orders/1"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(lambda.calls().is_empty(), "the function saw no call");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_fails_the_signature_check() {
    let lambda = FakeLambda::start().await;
    let gw = gateway(&lambda, "not-the-right-secret-0123456789").await;
    let resp = client().get(gw.url("/v2/orders/1")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("not-the-right-secret"), "{text}");
    assert_eq!(lambda.bad(), 1, "the fake Lambda refused the bad signature");
    assert!(lambda.calls().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_lambda_config_is_refused_with_its_place() {
    let cases = [
        (
            "function on http",
            "[[upstream]]\nname = \"u\"\ntargets = [\"http://127.0.0.1:1\"]\nfunction = \"f\"\n",
            "`function` is only for kind = \"lambda\"",
        ),
        (
            "targets on lambda",
            "[[upstream]]\nname = \"u\"\nkind = \"lambda\"\nfunction = \"f\"\nregion = \"eu-west-1\"\ntargets = [\"http://127.0.0.1:1\"]\n",
            "`targets` is only for http upstreams",
        ),
        (
            "health checks on lambda",
            "[[upstream]]\nname = \"u\"\nkind = \"lambda\"\nfunction = \"f\"\nregion = \"eu-west-1\"\n[upstream.health]\npath = \"/h\"\n",
            "`health` is only for http upstreams",
        ),
        (
            "missing region",
            "[[upstream]]\nname = \"u\"\nkind = \"lambda\"\nfunction = \"f\"\n",
            "needs `region`",
        ),
        (
            "bad arn",
            "[[upstream]]\nname = \"u\"\nkind = \"lambda\"\nfunction = \"arn:aws:lambda:eu-west-1:12:function:f\"\n",
            "is not a function name",
        ),
        (
            "bad endpoint",
            "[[upstream]]\nname = \"u\"\nkind = \"lambda\"\nfunction = \"f\"\nregion = \"eu-west-1\"\nendpoint_url = \"localhost:9000\"\n",
            "needs http:// or https://",
        ),
        (
            "bad format",
            "[[upstream]]\nname = \"u\"\nkind = \"lambda\"\nfunction = \"f\"\nregion = \"eu-west-1\"\npayload_format = \"3.0\"\n",
            "must be \"1.0\" or \"2.0\"",
        ),
    ];
    for (name, policy, want) in cases {
        let b = GatewayBuilder::new().policy("bad.toml", policy);
        let config = b.write();
        let err = gatehouse::server::check(&config, &gatehouse::config::Environment::default())
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let text = err.to_string();
        assert!(text.contains(want), "{name}: {text}");
        assert!(
            text.contains("bad.toml:"),
            "{name}: names file and line: {text}"
        );
    }
}

#[tokio::test]
async fn a_missing_status_is_malformed_in_format_1() {
    // Format 1.0 has no bare-value shortcut: the `bare` function is a 502 there.
    let lambda = FakeLambda::start().await;
    let policy = [
        upstream("bare1", "bare", &lambda, "payload_format = \"1.0\""),
        route("bare1", "path = \"/bare1\"", "bare1", ""),
    ]
    .concat();
    let gw = GatewayBuilder::new()
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .policy("lambda.toml", &policy)
        .start()
        .await;
    let resp = client().get(gw.url("/bare1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY.as_u16());
    assert_eq!(lambda.calls().len(), 1);
    gw.shutdown().await;
}

/// The example function (`examples/lambda-hello`, written with `lambda_http`)
/// under `cargo lambda watch`, called through the gateway. Skipped, saying
/// why, when `cargo-lambda` is not installed.
#[tokio::test]
async fn cargo_lambda_watch_end_to_end() {
    // As a cargo subcommand it takes its own name first.
    let probe = std::process::Command::new("cargo-lambda")
        .args(["lambda", "--version"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: cargo-lambda is not on PATH (cargo install cargo-lambda --locked to run it)"
        );
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lambda-hello");
    // Build first (bounded), so the emulator's first invocation is quick.
    let built = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::process::Command::new("cargo")
            .arg("build")
            .current_dir(&dir)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("the example builds within 15 minutes")
    .expect("cargo build runs");
    assert!(built.success(), "the example builds");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _watch = tokio::process::Command::new("cargo")
        .args([
            "lambda",
            "watch",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cargo lambda watch starts");
    let up = crate::support::eventually(120, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(up.is_some(), "cargo lambda watch listens on {port}");
    let policy = format!(
        "[[upstream]]\nname = \"hello\"\nkind = \"lambda\"\nfunction = \"lambda-hello\"\nregion = \"{REGION}\"\n\
         endpoint_url = \"http://127.0.0.1:{port}\"\nrequest_timeout = \"120s\"\n\
         [[route]]\nname = \"hello\"\ntemplate = \"/hello/{{name}}\"\nupstream = \"hello\"\n"
    );
    let gw = GatewayBuilder::new()
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .policy("hello.toml", &policy)
        .start()
        .await;
    let resp = client()
        .get(gw.url("/hello/ada"))
        .header("x-request-id", "e2e-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-request-id"], "e2e-1");
    assert_eq!(resp.text().await.unwrap(), "hello, ada");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_api_key_consumer_appears_under_the_authorizer_in_format_1() {
    use crate::support::{AdminApi, admin_token, fast_api_keys};
    let lambda = FakeLambda::start().await;
    let (token, hash) = admin_token();
    let policy = [
        upstream("echo1", "echo", &lambda, "payload_format = \"1.0\""),
        route(
            "keyed",
            "template = \"/keyed/{id}\"",
            "echo1",
            "auth = \"api_key\"",
        ),
    ]
    .concat();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(""))
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .policy("lambda.toml", &policy)
        .start()
        .await;
    let admin = AdminApi::new(&gw, &token);
    let consumer = admin.create_consumer("acme").await;
    let (key_id, key) = admin.create_key(&consumer, json!({})).await;
    let resp = client()
        .get(gw.url("/keyed/9"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ev: Value = resp.json().await.unwrap();
    let auth = &ev["requestContext"]["authorizer"];
    assert_eq!(auth["principalId"], json!(consumer), "{ev}");
    assert_eq!(auth["consumerName"], "acme");
    assert_eq!(auth["keyId"], json!(key_id));
    assert_eq!(ev["pathParameters"]["id"], "9");
    assert_eq!(
        ev["headers"].get("x-api-key"),
        None,
        "the key is not forwarded"
    );
    assert!(
        !ev.to_string().contains(&key),
        "the key never reaches the function"
    );
    assert_eq!(lambda.bad(), 0);
    gw.shutdown().await;
}
