//! Lambda tests: events in both payload formats, JWT and API-key callers
//! under the authorizer, answers mapped back to HTTP.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::support::client;

use super::*;

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
