//! Edge hardening, requests: what a client sends that must not reach a
//! backend as it is. Each case is written as raw bytes (HTTP/1.1 over TCP
//! and over TLS) or as h2 frames, and asserts the answer and what the
//! backend received — nothing, or exactly the sanitised form.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::support::*;

fn policy(backend: &str) -> String {
    format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n\
         [[route]]\nname = \"public\"\nprefix = \"/public\"\nupstream = \"b\"\n\n\
         [[route]]\nname = \"tenant\"\nprefix = \"/tenant\"\nupstream = \"b\"\nrequired_headers = [\"x-tenant\"]\n\n\
         [[route]]\nname = \"override\"\nprefix = \"/override\"\nupstream = \"b\"\nallow_client_headers = [\"x-http-method-override\"]\n\n\
         [[route]]\nname = \"strict\"\nprefix = \"/strict\"\nupstream = \"b\"\nunderscores_in_headers = \"refuse\"\n"
    )
}

/// A refusal: status and code; the backend must see nothing.
struct Refused {
    name: &'static str,
    request: String,
    status: u16,
    code: &'static str,
}

fn refused_cases() -> Vec<Refused> {
    let r = |name, request: &str, status, code| Refused {
        name,
        request: request.to_owned(),
        status,
        code,
    };
    vec![
        r(
            "trace",
            "TRACE /public/x HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "trace_refused",
        ),
        r(
            "connect",
            "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
            501,
            "connect_not_supported",
        ),
        r(
            "port out of range",
            "GET /public/x HTTP/1.1\r\nHost: x:99999\r\n\r\n",
            400,
            "invalid_host",
        ),
        r(
            "empty port",
            "GET /public/x HTTP/1.1\r\nHost: x:\r\n\r\n",
            400,
            "invalid_host",
        ),
        r(
            "junk host",
            "GET /public/x HTTP/1.1\r\nHost: x y\r\n\r\n",
            400,
            "invalid_host",
        ),
        r(
            "dot segment with path parameters",
            "GET /public/..;/admin HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "invalid_path",
        ),
        r(
            "path parameters where the route does not allow them",
            "GET /public/x;jsessionid=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "invalid_path",
        ),
        r(
            "absolute form disagrees",
            "GET http://other.test/public/x HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "invalid_host",
        ),
        r(
            "a checked header nominated for removal",
            "GET /tenant/x HTTP/1.1\r\nHost: x\r\nX-Tenant: acme\r\nConnection: x-tenant\r\n\r\n",
            400,
            "missing_header",
        ),
        r(
            "underscores refused where the route says so",
            "GET /strict/x HTTP/1.1\r\nHost: x\r\nX_Tenant: acme\r\n\r\n",
            400,
            "invalid_header",
        ),
    ]
}

/// Forwarded, but sanitised: headers the backend must not see, and
/// headers it must see with a value.
struct Sanitised {
    name: &'static str,
    request: String,
    gone: &'static [&'static str],
    want: &'static [(&'static str, &'static str)],
}

fn sanitised_cases() -> Vec<Sanitised> {
    vec![
        Sanitised {
            name: "underscore twins of framing and trust headers",
            request: "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer_Encoding: chunked\r\nX_Forwarded_For: 6.6.6.6\r\n\r\nhi".into(),
            gone: &["transfer_encoding", "x_forwarded_for", "transfer-encoding"],
            want: &[("x-forwarded-for", "127.0.0.1")],
        },
        Sanitised {
            name: "h2c upgrade is neither forwarded nor tunnelled",
            request: "GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".into(),
            gone: &["upgrade", "http2-settings", "connection"],
            want: &[],
        },
        Sanitised {
            name: "websocket on a route that does not tunnel",
            request: "GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".into(),
            gone: &["upgrade", "connection"],
            want: &[],
        },
        Sanitised {
            name: "rewrite and trust headers",
            request: "GET /public/x HTTP/1.1\r\nHost: x\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nX-Forwarded-Port: 8443\r\nX-Forwarded-Prefix: /internal\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n\r\n".into(),
            gone: &[
                "x-original-url",
                "x-rewrite-url",
                "x-http-method-override",
                "x-forwarded-port",
                "x-forwarded-prefix",
                "true-client-ip",
            ],
            want: &[("x-real-ip", "127.0.0.1")],
        },
        Sanitised {
            name: "a route passes the override it allows, not the others",
            request: "GET /override/x HTTP/1.1\r\nHost: x\r\nX-HTTP-Method-Override: PUT\r\nX-Original-URL: /admin\r\n\r\n".into(),
            gone: &["x-original-url"],
            want: &[("x-http-method-override", "PUT")],
        },
        Sanitised {
            name: "a header nominated by Connection is gone upstream too",
            request: "GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n".into(),
            gone: &["x-secret"],
            want: &[],
        },
    ]
}

fn assert_refused(case: &Refused, text: &str, transport: &str) {
    let name = case.name;
    assert!(
        text.starts_with(&format!("HTTP/1.1 {}", case.status)),
        "{transport} {name}: {}",
        text.lines().next().unwrap_or("")
    );
    let body: serde_json::Value = serde_json::from_str(raw_body(text))
        .unwrap_or_else(|e| panic!("{transport} {name}: JSON body: {e}: {text}"));
    assert_eq!(body["error"], case.code, "{transport} {name}");
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{transport} {name}"
    );
}

fn assert_sanitised(case: &Sanitised, text: &str, transport: &str) {
    let name = case.name;
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{transport} {name}: {text:.200}"
    );
    let echo: Echo = serde_json::from_str(raw_body(text))
        .unwrap_or_else(|e| panic!("{transport} {name}: echo body: {e}: {text}"));
    for h in case.gone {
        assert!(
            echo.header(h).is_none(),
            "{transport} {name}: {h} reached the backend"
        );
    }
    for (h, v) in case.want {
        assert_eq!(echo.header(h), Some(*v), "{transport} {name}: {h}");
    }
}

async fn tls_stream(
    addr: SocketAddr,
    ca: &TestCa,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&ca.ca_pem(), &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn ambiguous_and_spoofing_requests_over_tcp_and_tls() {
    let (backend, hits) = Backend::counting().await;
    let builder = GatewayBuilder::new();
    let ca = TestCa::new(builder.path());
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let gw = builder
        .main(&tls_listener("https", &cert, &key, ""))
        .policy("a.toml", &policy(&backend.url()))
        .start()
        .await;
    for case in refused_cases() {
        let tcp = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let (text, _) = raw_exchange(tcp, case.request.as_bytes()).await;
        assert_refused(&case, &text, "tcp");
        let tls = tls_stream(gw.addr("https"), &ca).await;
        let (text, _) = raw_exchange(tls, case.request.as_bytes()).await;
        assert_refused(&case, &text, "tls");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no refused request reached the backend"
    );
    let mut forwarded = 0;
    for case in sanitised_cases() {
        let tcp = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let (text, _) = raw_exchange(tcp, case.request.as_bytes()).await;
        assert_sanitised(&case, &text, "tcp");
        let tls = tls_stream(gw.addr("https"), &ca).await;
        let (text, _) = raw_exchange(tls, case.request.as_bytes()).await;
        assert_sanitised(&case, &text, "tls");
        forwarded += 2;
    }
    assert_eq!(hits.load(Ordering::SeqCst), forwarded);
}

#[tokio::test]
async fn method_names_outside_the_token_grammar_are_400() {
    let (backend, hits) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .policy("a.toml", &policy(&backend.url()))
        .start()
        .await;
    for method in ["G@T", "GE(T", "GET\u{7f}", "\"GET\""] {
        let tcp = tokio::net::TcpStream::connect(gw.addr("http"))
            .await
            .unwrap();
        let request = format!("{method} /public/x HTTP/1.1\r\nHost: x\r\n\r\n");
        let (text, _) = raw_exchange(tcp, request.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{method:?}: {text:.200}");
        assert!(
            text.contains("\"request_id\""),
            "{method:?}: JSON body: {text}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn h2_requests_are_held_to_the_same_rules() {
    let (backend, hits) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .policy("a.toml", &policy(&backend.url()))
        .start()
        .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let authority = format!("http://x:{}", gw.addr("http").port());
    let call = |method: http::Method, path: &str, headers: &[(&str, &str)]| {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{authority}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(()).unwrap();
        let send = send.clone();
        async move {
            let mut send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    // Refused: never forwarded.
    let (status, body) = call(http::Method::TRACE, "/public/x", &[]).await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("trace_refused"), "{body}");
    let (status, body) = call(http::Method::GET, "/public/x", &[("host", "other.test")]).await;
    assert_eq!(status, 400, "Host differs from :authority: {body}");
    assert!(body.contains("invalid_host"), "{body}");
    let (status, body) = call(http::Method::GET, "/public/%2e%2e;/admin", &[]).await;
    assert_eq!(status, 400, "dot segment with parameters: {body}");
    assert!(body.contains("invalid_path"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Sanitised.
    let (status, body) = call(
        http::Method::GET,
        "/public/x",
        &[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-real-ip", "6.6.6.6"),
            ("x-keep", "yes"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert!(echo.header("x_forwarded_for").is_none());
    assert!(echo.header("x-original-url").is_none());
    assert_eq!(echo.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(echo.header("x-keep"), Some("yes"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    driver.abort();
}

#[tokio::test]
async fn route_settings_that_would_open_a_hole_are_config_errors() {
    let cases = [
        (
            "h2c upgrade",
            "upgrades = [\"h2c\"]",
            "h2c is never tunnelled",
        ),
        (
            "gateway-owned header",
            "allow_client_headers = [\"x-real-ip\"]",
            "always set by the gateway",
        ),
        (
            "zero tunnels",
            "upgrades = [\"websocket\"]\nmax_tunnels = 0",
            "above zero",
        ),
    ];
    for (name, extra, want) in cases {
        let b = GatewayBuilder::new().policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"http://127.0.0.1:9\"]\n\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"b\"\n{extra}\n"
            ),
        );
        let path = b.write();
        let problems = gatehouse::server::check(&path, &gatehouse::config::Environment::default())
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let text = problems.to_string();
        assert!(text.contains(want), "{name}: {text}");
        assert!(text.contains("a.toml:"), "{name}: file and line: {text}");
    }
}
