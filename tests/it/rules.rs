//! Per-route rules, client-address lists, CORS and body pacing: each
//! refusal carries the JSON error body and never reaches the backend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::support::*;

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["qty", "sku"],
  "properties": {
    "qty": {"type": "integer", "minimum": 1},
    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}
  },
  "additionalProperties": false
}"#;

#[tokio::test]
async fn route_rules_refuse_before_the_backend() {
    let (backend, hits) = Backend::counting().await;
    let builder = GatewayBuilder::new().policy(
        "orders.toml",
        &format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
             [[route]]\nname = \"orders\"\nprefix = \"/orders\"\nupstream = \"b\"\n\
             required_headers = [\"x-tenant\"]\njson_schema = \"schemas/order.json\"\n\
             query = {{ allowed = [\"dry_run\"], max_params = 2 }}\n",
            backend.url()
        ),
    );
    std::fs::create_dir_all(builder.path().join("policies/schemas")).unwrap();
    std::fs::write(builder.path().join("policies/schemas/order.json"), SCHEMA).unwrap();
    let gw = builder.start().await;
    let c = client();
    let post = |body: &'static str| {
        c.post(gw.url("/orders"))
            .header("x-tenant", "t1")
            .header("content-type", "application/json")
            .body(body)
    };

    let r = post(r#"{"qty": 2, "sku": "ABC-1"}"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(
        echo.body_len,
        r#"{"qty": 2, "sku": "ABC-1"}"#.len(),
        "the buffered body is forwarded whole"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let r = post(r#"{"qty": 0, "sku": "abc", "extra": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "schema_violation");
    let pointers: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert!(
        pointers.contains(&"/qty") && pointers.contains(&"/sku"),
        "{v}"
    );

    let r = post("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "invalid_json");

    let r = c
        .post(gw.url("/orders"))
        .header("x-tenant", "t1")
        .header("content-type", "text/plain")
        .body("qty=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(error_code(r).await, "unsupported_media_type");

    let r = c
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "missing_header");

    let r = post(r#"{"qty": 2, "sku": "ABC-1"}"#);
    let r = r.query(&[("debug", "1")]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "invalid_query");

    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no refused request reached the backend"
    );
}

#[tokio::test]
async fn a_broken_schema_is_a_config_error() {
    let builder = GatewayBuilder::new().policy(
        "a.toml",
        "[[route]]\nname = \"r\"\npath = \"/r\"\nrespond = { status = 200 }\njson_schema = \"bad.json\"\n\
         [[route]]\nname = \"s\"\npath = \"/s\"\nrespond = { status = 200 }\njson_schema = \"invalid.json\"\n",
    );
    std::fs::create_dir_all(builder.path().join("policies")).unwrap();
    std::fs::write(
        builder.path().join("policies/bad.json"),
        "{\n  \"type\": \n}",
    )
    .unwrap();
    std::fs::write(
        builder.path().join("policies/invalid.json"),
        r#"{"type": "no-such-type"}"#,
    )
    .unwrap();
    let err = gatehouse::server::check(&builder.write(), &Default::default())
        .expect_err("broken schemas are refused");
    let text = err.to_string();
    let bad = builder.path().join("policies/bad.json");
    assert!(
        text.contains(&format!("{}:3:1: invalid JSON schema", bad.display())),
        "{text}"
    );
    assert!(
        text.contains("invalid.json:0:0: invalid JSON schema"),
        "{text}"
    );
}

#[tokio::test]
async fn client_addresses_are_checked_through_trusted_proxies_only() {
    let (backend, hits) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .main("[access]\ntrusted_proxies = [\"127.0.0.1\"]\ndeny_ips = [\"203.0.113.66\"]\n")
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\
                 [[route]]\nname = \"internal\"\nprefix = \"/internal\"\nupstream = \"b\"\nallow_ips = [\"10.0.0.0/8\"]\n\
                 [[route]]\nname = \"open\"\nprefix = \"/open\"\nupstream = \"b\"\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let c = client();
    let get = |path: &str, xff: &'static str| c.get(gw.url(path)).header("x-forwarded-for", xff);
    let cases = [
        (
            "allowed network through the proxy",
            "/internal/x",
            "10.1.2.3",
            200,
            None,
        ),
        (
            "outside the route allow list",
            "/internal/x",
            "198.51.100.7",
            403,
            Some("ip_denied"),
        ),
        (
            "globally denied",
            "/open/x",
            "203.0.113.66",
            403,
            Some("ip_denied"),
        ),
        (
            "spoofed left-most hop is ignored",
            "/open/x",
            "10.1.1.1, 203.0.113.66",
            403,
            Some("ip_denied"),
        ),
        ("any other client", "/open/x", "198.51.100.7", 200, None),
    ];
    for (name, path, xff, status, code) in cases {
        let r = get(path, xff).send().await.unwrap();
        assert_eq!(r.status(), status, "{name}");
        if let Some(code) = code {
            assert_eq!(error_code(r).await, code, "{name}");
        } else {
            let echo: Echo = r.json().await.unwrap();
            // The chain is extended, not replaced, behind a trusted proxy.
            assert_eq!(
                echo.header("x-forwarded-for"),
                Some(format!("{xff}, 127.0.0.1").as_str()),
                "{name}"
            );
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cors_preflights_are_answered_at_the_gateway() {
    let (backend, hits) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\
                 [[route]]\nname = \"api\"\nprefix = \"/api\"\nmethods = [\"GET\", \"PUT\"]\nupstream = \"b\"\n\
                 cors = {{ allow_origins = [\"https://app.test\"], allow_headers = [\"content-type\"], expose_headers = [\"x-request-id\"], max_age = \"10m\" }}\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let c = client();
    let preflight = |origin: &'static str, method: &'static str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/api/items"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "Content-Type")
    };
    let r = preflight("https://app.test", "PUT").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.test");
    assert_eq!(h["access-control-allow-methods"], "HEAD, GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert_eq!(h["access-control-max-age"], "600");

    let r = preflight("https://evil.test", "PUT").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "cors_rejected");
    let r = preflight("https://app.test", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "preflights never reach the backend"
    );

    let r = c
        .get(gw.url("/api/items"))
        .header("origin", "https://app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.test"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-request-id");
    let r = c
        .get(gw.url("/api/items"))
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// A backend that answers CORS itself, wrongly: it echoes any origin and
/// allows credentials. On a route with a CORS policy only the gateway's
/// policy reaches the browser.
#[tokio::test]
async fn a_backends_own_cors_headers_never_widen_the_routes_policy() {
    let backend = Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let origin = req
            .headers()
            .get("origin")
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static("*"));
        let mut resp = http::Response::new(full("hi"));
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", origin);
        h.insert(
            "access-control-allow-credentials",
            http::HeaderValue::from_static("true"),
        );
        h.insert(
            "access-control-expose-headers",
            http::HeaderValue::from_static("x-secret"),
        );
        resp
    })
    .await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\
                 [[route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"b\"\n\
                 cors = {{ allow_origins = [\"https://app.test\"], expose_headers = [\"x-request-id\"] }}\n\
                 [[route]]\nname = \"plain\"\nprefix = \"/plain\"\nupstream = \"b\"\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let c = client();
    let get = |path: &str, origin: Option<&'static str>| {
        let mut r = c.get(gw.url(path));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let r = get("/api/x", Some("https://evil.test")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    assert!(r.headers().get("access-control-expose-headers").is_none());

    let r = get("/api/x", Some("https://app.test")).await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.test"
    );
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-request-id");

    let r = get("/api/x", None).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // A route without a CORS policy leaves CORS to its backend.
    let r = get("/plain/x", Some("https://evil.test")).await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://evil.test"
    );
}

#[tokio::test]
async fn a_stalled_upload_gets_408() {
    let (backend, _hits) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .main("[server]\nbody_timeout = \"400ms\"\n")
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"b\"\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let stalled = futures_util::stream::unfold(0u8, |i| async move {
        match i {
            0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first")), 1)),
            _ => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                None
            }
        }
    });
    let r = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(error_code(r).await, "request_timeout");
}
