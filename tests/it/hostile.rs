//! Hostile clients: each request is written as raw bytes, and each test
//! asserts the answer, whether the connection was closed, and that the
//! backend saw nothing it should not have.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

struct Counted {
    backend: Backend,
    hits: Arc<AtomicUsize>,
}

async fn counting_backend() -> Counted {
    let (backend, hits) = Backend::counting().await;
    Counted { backend, hits }
}

fn policy(backend: &str) -> String {
    format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n\
         [[route]]\nname = \"public\"\nprefix = \"/public\"\nupstream = \"b\"\nmax_body = \"100B\"\n"
    )
}

struct Case {
    name: &'static str,
    request: String,
    status: u16,
    code: Option<&'static str>,
    closes: bool,
}

fn case(
    name: &'static str,
    request: impl Into<String>,
    status: u16,
    code: Option<&'static str>,
    closes: bool,
) -> Case {
    Case {
        name,
        request: request.into(),
        status,
        code,
        closes,
    }
}

fn hostile_cases() -> Vec<Case> {
    let h = "Host: x\r\n";
    vec![
        case(
            "dot-dot out of the prefix",
            format!("GET /public/../admin HTTP/1.1\r\n{h}\r\n"),
            404,
            Some("route_not_found"),
            false,
        ),
        case(
            "encoded dot-dot",
            format!("GET /public/%2e%2e/admin HTTP/1.1\r\n{h}\r\n"),
            404,
            Some("route_not_found"),
            false,
        ),
        case(
            "encoded slash",
            format!("GET /public/%2Fadmin HTTP/1.1\r\n{h}\r\n"),
            400,
            Some("invalid_path"),
            false,
        ),
        case(
            "dot-dot then encoded slash",
            format!("GET /public/..%2f HTTP/1.1\r\n{h}\r\n"),
            400,
            Some("invalid_path"),
            false,
        ),
        case(
            "content-length with transfer-encoding",
            format!(
                "POST /public/x HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
            Some("ambiguous_framing"),
            true,
        ),
        case(
            "transfer-encoding first",
            format!(
                "POST /public/x HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
            400,
            Some("ambiguous_framing"),
            true,
        ),
        case(
            "two content-lengths",
            format!(
                "POST /public/x HTTP/1.1\r\n{h}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            400,
            Some("ambiguous_framing"),
            true,
        ),
        case(
            "chunked, identity",
            format!(
                "POST /public/x HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
            ),
            400,
            Some("ambiguous_framing"),
            true,
        ),
        case(
            "bare CR in a header",
            format!("GET /public/x HTTP/1.1\r\n{h}X-A: a\rb\r\n\r\n"),
            400,
            Some("malformed_request"),
            true,
        ),
        case(
            "100 kB header",
            format!(
                "GET /public/x HTTP/1.1\r\n{h}X-Big: {}\r\n\r\n",
                "a".repeat(100_000)
            ),
            431,
            Some("headers_too_large"),
            true,
        ),
        case(
            "1000 headers",
            format!(
                "GET /public/x HTTP/1.1\r\n{h}{}\r\n",
                "X-A: 1\r\n".repeat(1000)
            ),
            431,
            Some("headers_too_large"),
            true,
        ),
        case(
            "9 kB target",
            format!("GET /public/{} HTTP/1.1\r\n{h}\r\n", "a".repeat(9000)),
            414,
            Some("uri_too_long"),
            true,
        ),
        case(
            "body one byte over the limit",
            format!(
                "POST /public/x HTTP/1.1\r\n{h}Content-Length: 101\r\n\r\n{}",
                "a".repeat(101)
            ),
            413,
            Some("payload_too_large"),
            false,
        ),
        case(
            "absolute-form host differs",
            "GET http://evil.test/public/x HTTP/1.1\r\nHost: good.test\r\n\r\n",
            400,
            Some("invalid_host"),
            false,
        ),
    ]
}

fn check(case: &Case, text: &str, closed: bool, transport: &str) {
    let name = case.name;
    let status_line = format!("HTTP/1.1 {}", case.status);
    assert!(
        text.starts_with(&status_line),
        "{transport} {name}: {}",
        text.lines().next().unwrap_or("")
    );
    if let Some(code) = case.code {
        assert!(
            text.contains(&format!("\"error\":\"{code}\"")),
            "{transport} {name}: {text:.300}"
        );
        assert!(text.contains("\"request_id\":\""), "{transport} {name}");
    }
    if case.closes {
        assert!(closed, "{transport} {name}: connection must be closed");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{transport} {name}"
        );
    }
}

#[tokio::test]
async fn hostile_requests_over_tcp_never_reach_the_backend() {
    let b = counting_backend().await;
    let gw = GatewayBuilder::new()
        .policy("a.toml", &policy(&b.backend.url()))
        .start()
        .await;
    for case in hostile_cases() {
        let s = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let (text, closed) = raw_exchange_until(s, case.request.as_bytes(), case.closes).await;
        check(&case, &text, closed, "tcp");
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "no hostile request reached the backend"
    );
    // The same connection-level checks do not get in the way of good requests.
    let s = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (text, _) = raw_exchange_until(
        s,
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET //public/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        true,
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(
        text.contains("\"uri\":\"/public/y\""),
        "merged slashes: {text}"
    );
    assert_eq!(b.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_smuggled_second_request_is_refused_after_the_first_is_served() {
    let b = counting_backend().await;
    let gw = GatewayBuilder::new()
        .policy("a.toml", &policy(&b.backend.url()))
        .start()
        .await;
    let s = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (text, closed) = raw_exchange_until(
        s,
        b"GET /public/first HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /public/second HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /public/third HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    assert!(text.contains("ambiguous_framing"), "{text}");
    assert!(
        !text.contains("/public/third"),
        "nothing after the refusal is served: {text}"
    );
    assert!(closed);
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        1,
        "only the first request reached the backend"
    );
}

#[tokio::test]
async fn hostile_requests_over_tls_are_refused_the_same_way() {
    let b = counting_backend().await;
    let builder = GatewayBuilder::new();
    let ca = TestCa::new(builder.path());
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let gw = builder
        .main(&tls_listener("https", &cert, &key, ""))
        .policy("a.toml", &policy(&b.backend.url()))
        .start()
        .await;
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&ca.ca_pem(), &[b"http/1.1"]));
    let addr: SocketAddr = gw.addr("https");
    for case in hostile_cases().into_iter().filter(|c| c.closes) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (text, closed) = raw_exchange_until(tls, case.request.as_bytes(), true).await;
        check(&case, &text, closed, "tls");
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_cut_off_while_normal_clients_are_served() {
    let b = counting_backend().await;
    let gw = GatewayBuilder::new()
        .main("[server]\nheader_read_timeout = \"1s\"\n")
        .policy("a.toml", &policy(&b.backend.url()))
        .start()
        .await;
    let addr = gw.addr("http");
    // Twenty slow clients dribble one header byte every 200 ms.
    let mut lorises = Vec::new();
    for _ in 0..20 {
        lorises.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let started = tokio::time::Instant::now();
            let head = b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head {
                if s.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A closed connection shows as EOF on a non-blocking read.
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
                    return Some(started.elapsed());
                }
            }
            None
        }));
    }
    // Meanwhile normal requests keep succeeding.
    let c = client();
    for i in 0..20 {
        let r = c
            .get(gw.url(&format!("/public/ok{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in lorises {
        let cut = l.await.unwrap();
        let Some(after) = cut else {
            panic!("a slow-loris connection was never closed");
        };
        assert!(
            after < Duration::from_secs(8),
            "closed only after {after:?}"
        );
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        20,
        "only the normal requests reached the backend"
    );
}

#[tokio::test]
async fn listeners_can_override_the_head_limits() {
    let b = counting_backend().await;
    let gw = GatewayBuilder::new()
        .main("[[listener]]\nname = \"strict\"\naddr = \"127.0.0.1:0\"\n[listener.limits]\nmax_header_bytes = \"1KiB\"\nmax_uri_bytes = 100\n")
        .policy("a.toml", &policy(&b.backend.url()))
        .start()
        .await;
    let big_header = format!(
        "GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let long_uri = format!(
        "GET /public/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(150)
    );
    for (listener, request, want) in [
        ("http", &big_header, "HTTP/1.1 200"),
        ("strict", &big_header, "HTTP/1.1 431"),
        ("http", &long_uri, "HTTP/1.1 200"),
        ("strict", &long_uri, "HTTP/1.1 414"),
    ] {
        let s = tokio::net::TcpStream::connect(gw.addr(listener))
            .await
            .unwrap();
        let (text, _) = raw_exchange_until(s, request.as_bytes(), false).await;
        assert!(
            text.starts_with(want),
            "{listener}: {}",
            text.lines().next().unwrap_or("")
        );
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn h2_clients_get_the_configured_stream_limit() {
    let gw = GatewayBuilder::new()
        .main("[[listener]]\nname = \"h2\"\naddr = \"127.0.0.1:0\"\n[listener.limits]\nh2_max_concurrent_streams = 7\n")
        .policy("a.toml", "[[route]]\nname = \"h\"\npath = \"/hello\"\nrespond = { status = 200, body = \"hi\" }\n")
        .start()
        .await;
    for (listener, want) in [("h2", 7), ("http", 100)] {
        // h2c with prior knowledge: the framing guard steps aside for it.
        let tcp = tokio::net::TcpStream::connect(gw.addr(listener))
            .await
            .unwrap();
        let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/hello", gw.addr(listener)))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{listener}");
        assert_eq!(
            send.current_max_send_streams(),
            want,
            "{listener}: SETTINGS_MAX_CONCURRENT_STREAMS"
        );
        driver.abort();
    }
}

#[tokio::test]
async fn a_lone_upgrade_header_cannot_smuggle_a_request_behind_it() {
    let b = counting_backend().await;
    let gw = GatewayBuilder::new()
        .policy("a.toml", &policy(&b.backend.url()))
        .start()
        .await;
    // The guard stops parsing after any Upgrade header, so the gateway must
    // close the connection unless the upstream switched protocols.
    let s = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (text, closed) = raw_exchange_until(
        s,
        b"GET /public/first HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\
          POST /public/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        true,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "only one answer: {text}"
    );
    assert!(closed);
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        1,
        "the smuggled request never reached the backend"
    );
}

/// The JSON error body of one raw response.
fn json_body(text: &str) -> serde_json::Value {
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn path_parameter_tricks_never_reach_the_backend() {
    let b = counting_backend().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"legacy\"\nprefix = \"/legacy\"\nupstream = \"b\"\nallow_path_params = true\n",
                policy(&b.backend.url())
            ),
        )
        .start()
        .await;
    let dot = "dot segment with path parameters";
    let params = "path parameters (;) are not accepted on this route";
    let cases = [
        ("dot dot params", "/public/..;/admin", dot),
        ("dot params", "/public/.;/admin", dot),
        ("encoded dot dot params", "/public/%2e%2e;/admin", dot),
        ("half-encoded dot dot params", "/public/.%2e;x/admin", dot),
        (
            "jsessionid on dot dot",
            "/public/..;jsessionid=1/admin",
            dot,
        ),
        ("dot dot params last", "/public/..;", dot),
        (
            "dot dot params on a route that allows params",
            "/legacy/..;/admin",
            dot,
        ),
        (
            "params on a plain segment",
            "/public/x;jsessionid=1",
            params,
        ),
        ("lone semicolon", "/public/;/x", params),
        ("params mid-path", "/public/a;v=1/b", params),
    ];
    for (name, path, message) in cases {
        let s = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (text, _) = raw_exchange_until(s, request.as_bytes(), false).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{name}: {text:.300}");
        let v = json_body(&text);
        assert_eq!(v["error"], "invalid_path", "{name}: {text:.300}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(message)),
            "{name}: {v}"
        );
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "no path-parameter trick reached the backend"
    );

    // Allowed on the route that opts in; an encoded %3B is data everywhere.
    for (name, path) in [
        ("params on an opted-in route", "/legacy/cart;jsessionid=1"),
        ("encoded semicolon", "/public/a%3Bb"),
    ] {
        let s = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (text, _) = raw_exchange_until(s, request.as_bytes(), false).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text:.300}");
        assert_eq!(
            json_body(&text)["uri"],
            path,
            "{name}: forwarded as checked"
        );
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_with_a_repeated_key_never_reaches_the_backend() {
    let b = counting_backend().await;
    let builder = GatewayBuilder::new().policy(
        "a.toml",
        &format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
             [[route]]\nname = \"signup\"\npath = \"/signup\"\nupstream = \"b\"\n\
             json_schema = \"signup.json\"\n",
            b.backend.url()
        ),
    );
    std::fs::create_dir_all(builder.path().join("policies")).unwrap();
    // The schema only lets "user" through; a first-key-wins backend would
    // read whatever came first.
    std::fs::write(
        builder.path().join("policies/signup.json"),
        r#"{"type": "object", "properties": {
            "role": {"enum": ["user"]},
            "profile": {"type": "object", "properties": {"role": {"enum": ["user"]}}},
            "members": {"type": "array", "items": {"type": "object", "properties": {"role": {"enum": ["user"]}}}}
        }}"#,
    )
    .unwrap();
    let gw = builder.start().await;
    let cases = [
        ("top level", r#"{"role":"admin","role":"user"}"#, "/role"),
        (
            "escaped equal key",
            r#"{"role":"admin","\u0072ole":"user"}"#,
            "/role",
        ),
        (
            "nested object",
            r#"{"profile":{"role":"admin","role":"user"}}"#,
            "/profile/role",
        ),
        (
            "array of objects",
            r#"{"members":[{"role":"user"},{"role":"admin","role":"user"}]}"#,
            "/members/1/role",
        ),
    ];
    for (name, body, pointer) in cases {
        let s = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let request = format!(
            "POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (text, _) = raw_exchange_until(s, request.as_bytes(), false).await;
        assert!(text.starts_with("HTTP/1.1 422"), "{name}: {text:.300}");
        let v = json_body(&text);
        assert_eq!(v["error"], "schema_violation", "{name}: {v}");
        assert_eq!(v["errors"][0]["pointer"], pointer, "{name}: {v}");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("duplicate") && m.contains(pointer)),
            "{name}: {v}"
        );
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "no body with a repeated key reached the backend"
    );

    // The same key in different objects is fine.
    let body =
        r#"{"role":"user","profile":{"role":"user"},"members":[{"role":"user"},{"role":"user"}]}"#;
    let s = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let request = format!(
        "POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (text, _) = raw_exchange_until(s, request.as_bytes(), false).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.300}");
    assert_eq!(json_body(&text)["body_len"], body.len());
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}
