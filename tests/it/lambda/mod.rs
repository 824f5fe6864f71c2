//! Lambda upstreams against an in-test server that implements the Lambda
//! Invoke API (`POST /2015-03-31/functions/{name}/invocations`), verifies
//! every call's SigV4 signature with `aws-sigv4` for the test credentials,
//! and runs the handler the function name names.

mod events;
mod failures;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::support::{Backend, GatewayBuilder, TestGateway, full, unix_now};

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
        .aws_keys(KEY_ID, secret)
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
