//! Lambda tests: function errors, throttling and timeouts, the payload limit,
//! signatures, config errors, malformed answers, cargo lambda end to end.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::{GatewayBuilder, client, error_code};

use super::*;

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
        .aws_keys(KEY_ID, SECRET)
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
        .aws_keys("local", "local")
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
        .aws_keys(KEY_ID, SECRET)
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
