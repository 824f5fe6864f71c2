//! Tests of proxy::lambda.

use super::*;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::auth::{AuthMethod, Principal};

#[test]
fn function_references() {
    type Parts<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);
    let cases: &[(&str, &str, Result<Parts<'_>, ()>)] = &[
        (
            "name",
            "orders-fn",
            Ok(("orders-fn", "orders-fn", None, None)),
        ),
        (
            "partial arn",
            "123456789012:function:orders",
            Ok(("123456789012:function:orders", "orders", None, None)),
        ),
        (
            "full arn",
            "arn:aws:lambda:eu-west-1:123456789012:function:orders",
            Ok((
                "arn:aws:lambda:eu-west-1:123456789012:function:orders",
                "orders",
                Some("eu-west-1"),
                None,
            )),
        ),
        (
            "arn with alias",
            "arn:aws:lambda:us-east-2:123456789012:function:orders:live",
            Ok((
                "arn:aws:lambda:us-east-2:123456789012:function:orders",
                "orders",
                Some("us-east-2"),
                Some("live"),
            )),
        ),
        ("empty", "", Err(())),
        ("slash", "orders/fn", Err(())),
        (
            "bad account",
            "arn:aws:lambda:eu-west-1:123:function:x",
            Err(()),
        ),
        (
            "not lambda",
            "arn:aws:s3:eu-west-1:123456789012:function:x",
            Err(()),
        ),
        (
            "bad region",
            "arn:aws:lambda:EU:123456789012:function:x",
            Err(()),
        ),
        ("too long", &"a".repeat(65), Err(())),
    ];
    for (name, input, want) in cases {
        let got = parse_function(input).map_err(|_| ());
        let want = want.map(|(f, n, r, q)| FunctionRef {
            function: f.to_owned(),
            name: n.to_owned(),
            region: r.map(str::to_owned),
            qualifier: q.map(str::to_owned),
        });
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn endpoints_and_regions() {
    let endpoints = [
        ("http", "http://127.0.0.1:9001", true),
        ("https slash", "https://lambda.local/", true),
        ("no scheme", "127.0.0.1:9001", false),
        ("ftp", "ftp://h", false),
        ("userinfo", "http://a:b@h", false),
        ("path", "http://h/x", false),
        ("query", "http://h/?a", false),
    ];
    for (name, input, ok) in endpoints {
        assert_eq!(check_endpoint(input).is_ok(), ok, "{name}");
    }
    let regions = [
        ("eu", "eu-west-1", true),
        ("gov", "us-gov-west-1", true),
        ("upper", "EU-WEST-1", false),
        ("no number", "eu-west", false),
        ("word", "frankfurt", false),
    ];
    for (name, input, ok) in regions {
        assert_eq!(valid_region(input), ok, "{name}");
    }
}

fn principal(method: AuthMethod) -> Principal {
    Principal {
        method,
        subject: "consumer-1".into(),
        consumer_name: Some("acme".into()),
        plan: Some("gold".into()),
        credential_id: "key-1".into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        roles: vec![],
        headers: vec![],
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
            HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
        );
    }
    h
}

fn input<'a>(
    format: PayloadFormat,
    h: &'a HeaderMap,
    body: &'a [u8],
    params: &'a [(String, String)],
    principal: Option<&'a Principal>,
) -> EventInput<'a> {
    EventInput {
        format,
        method: &Method::POST,
        path: "/orders/42",
        query: Some("a=1&a=2&q=hello%20world&b=x+y"),
        headers: h,
        resource: "/orders/{id}",
        params,
        tail_param: crate::route::TAIL,
        principal,
        request_id: "rid-1",
        source_ip: IpAddr::from([203, 0, 113, 9]),
        host: Some("api.example.test:8443"),
        protocol: "HTTP/1.1",
        body,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

#[test]
fn event_v2() {
    let h = headers(&[
        ("content-type", "application/json"),
        ("x-multi", "a"),
        ("x-multi", "b"),
        ("cookie", "s=1; t=2"),
        ("user-agent", "ua/1"),
    ]);
    let params = [("id".to_owned(), "42".to_owned())];
    let p = principal(AuthMethod::Jwt);
    let ev = event(&input(
        PayloadFormat::V2,
        &h,
        b"{\"x\":1}",
        &params,
        Some(&p),
    ));
    let cases: &[(&str, &str, Value)] = &[
        ("version", "/version", json!("2.0")),
        ("route key", "/routeKey", json!("POST /orders/{id}")),
        ("raw path", "/rawPath", json!("/orders/42")),
        (
            "raw query",
            "/rawQueryString",
            json!("a=1&a=2&q=hello%20world&b=x+y"),
        ),
        ("multi header joined", "/headers/x-multi", json!("a,b")),
        ("cookies split", "/cookies", json!(["s=1", "t=2"])),
        ("no cookie header", "/headers/cookie", Value::Null),
        ("query joined", "/queryStringParameters/a", json!("1,2")),
        (
            "query decoded",
            "/queryStringParameters/q",
            json!("hello world"),
        ),
        ("plus is space", "/queryStringParameters/b", json!("x y")),
        ("path param", "/pathParameters/id", json!("42")),
        ("text body", "/body", json!("{\"x\":1}")),
        ("not base64", "/isBase64Encoded", json!(false)),
        ("method", "/requestContext/http/method", json!("POST")),
        (
            "source ip",
            "/requestContext/http/sourceIp",
            json!("203.0.113.9"),
        ),
        (
            "user agent",
            "/requestContext/http/userAgent",
            json!("ua/1"),
        ),
        ("request id", "/requestContext/requestId", json!("rid-1")),
        (
            "domain",
            "/requestContext/domainName",
            json!("api.example.test"),
        ),
        ("prefix", "/requestContext/domainPrefix", json!("api")),
        (
            "epoch",
            "/requestContext/timeEpoch",
            json!(1_700_000_000_000u64),
        ),
        (
            "time",
            "/requestContext/time",
            json!("14/Nov/2023:22:13:20 +0000"),
        ),
        (
            "jwt sub",
            "/requestContext/authorizer/jwt/claims/sub",
            json!("consumer-1"),
        ),
        (
            "jwt scopes",
            "/requestContext/authorizer/jwt/scopes",
            json!(["orders:read", "orders:write"]),
        ),
    ];
    for (name, pointer, want) in cases {
        assert_eq!(ev.pointer(pointer).unwrap_or(&Value::Null), want, "{name}");
    }
}

#[test]
fn event_v1() {
    let h = headers(&[
        ("content-type", "application/octet-stream"),
        ("x-multi", "a"),
        ("x-multi", "b"),
    ]);
    let p = principal(AuthMethod::ApiKey);
    let ev = event(&input(
        PayloadFormat::V1,
        &h,
        &[0, 159, 146, 150],
        &[],
        Some(&p),
    ));
    let cases: &[(&str, &str, Value)] = &[
        ("version", "/version", json!("1.0")),
        ("resource", "/resource", json!("/orders/{id}")),
        ("path", "/path", json!("/orders/42")),
        ("method", "/httpMethod", json!("POST")),
        ("last header", "/headers/x-multi", json!("b")),
        (
            "multi header",
            "/multiValueHeaders/x-multi",
            json!(["a", "b"]),
        ),
        ("last query", "/queryStringParameters/a", json!("2")),
        (
            "multi query",
            "/multiValueQueryStringParameters/a",
            json!(["1", "2"]),
        ),
        ("no params", "/pathParameters", Value::Null),
        ("binary base64", "/body", json!("AJ+Slg==")),
        ("base64 flag", "/isBase64Encoded", json!(true)),
        (
            "source ip",
            "/requestContext/identity/sourceIp",
            json!("203.0.113.9"),
        ),
        (
            "principal",
            "/requestContext/authorizer/principalId",
            json!("consumer-1"),
        ),
        (
            "consumer",
            "/requestContext/authorizer/consumerName",
            json!("acme"),
        ),
        ("key id", "/requestContext/authorizer/keyId", json!("key-1")),
    ];
    for (name, pointer, want) in cases {
        assert_eq!(ev.pointer(pointer).unwrap_or(&Value::Null), want, "{name}");
    }
}

#[test]
fn empty_body_and_query() {
    let h = HeaderMap::new();
    let mut i = input(PayloadFormat::V2, &h, b"", &[], None);
    i.query = None;
    let ev = event(&i);
    assert_eq!(ev.get("body"), None);
    assert_eq!(ev.get("queryStringParameters"), None);
    assert_eq!(ev["rawQueryString"], json!(""));
    assert_eq!(ev["requestContext"].get("authorizer"), None);
    i.format = PayloadFormat::V1;
    let ev = event(&i);
    assert_eq!(ev["body"], Value::Null);
    assert_eq!(ev["queryStringParameters"], Value::Null);
}

#[test]
fn answers() {
    type Want = Result<(u16, Vec<(&'static str, &'static str)>, &'static [u8]), ()>;
    let cases: Vec<(&str, PayloadFormat, Value, Want)> = vec![
        (
            "structured",
            PayloadFormat::V2,
            json!({"statusCode": 201, "headers": {"x-a": "1", "content-length": "99"}, "body": "hi"}),
            Ok((201, vec![("x-a", "1")], b"hi")),
        ),
        (
            "bare value 2.0",
            PayloadFormat::V2,
            json!({"hello": "world"}),
            Ok((
                200,
                vec![("content-type", "application/json")],
                b"{\"hello\":\"world\"}",
            )),
        ),
        (
            "bare value 1.0",
            PayloadFormat::V1,
            json!({"hello": "world"}),
            Err(()),
        ),
        (
            "base64",
            PayloadFormat::V2,
            json!({"statusCode": 200, "body": "AJ+Slg==", "isBase64Encoded": true}),
            Ok((200, vec![], &[0, 159, 146, 150])),
        ),
        (
            "cookies",
            PayloadFormat::V2,
            json!({"statusCode": 200, "cookies": ["a=1", "b=2; Secure"]}),
            Ok((
                200,
                vec![("set-cookie", "a=1"), ("set-cookie", "b=2; Secure")],
                b"",
            )),
        ),
        (
            "multi value wins",
            PayloadFormat::V1,
            json!({"statusCode": "404", "headers": {"x-m": "z"}, "multiValueHeaders": {"x-m": ["a", "b"]}}),
            Ok((404, vec![("x-m", "a"), ("x-m", "b")], b"")),
        ),
        (
            "status out of range",
            PayloadFormat::V2,
            json!({"statusCode": 700}),
            Err(()),
        ),
        (
            "informational",
            PayloadFormat::V2,
            json!({"statusCode": 101}),
            Err(()),
        ),
        (
            "bad base64",
            PayloadFormat::V2,
            json!({"statusCode": 200, "body": "!!", "isBase64Encoded": true}),
            Err(()),
        ),
        (
            "body not string",
            PayloadFormat::V1,
            json!({"statusCode": 200, "body": {"a": 1}}),
            Err(()),
        ),
        (
            "bad header",
            PayloadFormat::V2,
            json!({"statusCode": 200, "headers": {"x": "a\nb"}}),
            Err(()),
        ),
    ];
    for (name, format, payload, want) in cases {
        let bytes = serde_json::to_vec(&payload).unwrap_or_default();
        let got = answer(format, &bytes).map_err(|_| ()).map(|a| {
            let hs: Vec<(String, String)> = a
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
                .collect();
            (a.status.as_u16(), hs, a.body.to_vec())
        });
        let want = want.map(|(s, hs, b)| {
            (
                s,
                hs.into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<Vec<_>>(),
                b.to_vec(),
            )
        });
        assert_eq!(got, want, "{name}");
    }
    assert!(answer(PayloadFormat::V2, b"not json").is_err(), "not JSON");
}

#[test]
fn errors_name_the_lambda_request_id_and_what_is_retried() {
    let cases = [
        (
            "function error",
            LambdaError::Function {
                kind: "Unhandled".into(),
                request_id: Some("lambda-rid-1".into()),
            },
            Some("lambda-rid-1"),
            false,
        ),
        (
            "malformed",
            LambdaError::Malformed {
                why: "body is not a string",
                request_id: Some("lambda-rid-2".into()),
            },
            Some("lambda-rid-2"),
            false,
        ),
        (
            "throttled",
            LambdaError::Throttled {
                retry_after_secs: 1,
            },
            None,
            true,
        ),
        ("network", LambdaError::Network("reset".into()), None, true),
        ("timeout", LambdaError::Timeout, None, false),
    ];
    for (name, err, id, retryable) in cases {
        if let Some(id) = id {
            assert!(err.to_string().contains(id), "{name}: {err}");
        }
        assert_eq!(err.retryable(), retryable, "{name}");
    }
}

#[test]
fn backoff_is_bounded() {
    for attempt in 0..20 {
        let d = backoff(attempt);
        assert!(d <= Duration::from_secs(1), "attempt {attempt}: {d:?}");
        assert!(d >= Duration::from_millis(25), "attempt {attempt}: {d:?}");
    }
}
