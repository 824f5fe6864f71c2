//! Forwarding: routes, rewriting, headers, errors, timeouts, streaming.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn upstream(name: &str, url: &str, extra: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\ntargets = [\"{url}\"]\n{extra}\n")
}

#[tokio::test]
async fn forwards_with_prefix_stripped_and_forwarding_headers() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"public\"\nprefix = \"/public\"\nupstream = \"demo\"\nstrip_prefix = \"/public\"\n\
                 request_headers = {{ set = {{ \"x-added\" = \"yes\" }}, remove = [\"x-drop\"] }}\n\
                 response_headers = {{ set = {{ \"x-resp\" = \"1\" }}, remove = [\"x-backend\"] }}\n",
                upstream("demo", &backend.url(), "")
            ),
        )
        .start()
        .await;
    let resp = client()
        .get(gw.url("/public/a/./b//c?q=1&r=%20"))
        .header("x-drop", "gone")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "client-chosen-id")
        .header("connection", "x-private")
        .header("x-private", "hop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-request-id"], "client-chosen-id");
    assert_eq!(h["x-resp"], "1");
    assert!(h.get("x-backend").is_none(), "removed response header");
    assert!(
        h.get("x-hop").is_none(),
        "hop-by-hop header named in Connection is dropped"
    );
    assert!(h.get_all("via").iter().any(|v| v == "1.1 gatehouse"));
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(
        echo.uri, "/a/b/c?q=1&r=%20",
        "normalised, stripped, query kept"
    );
    assert_eq!(echo.header("x-added"), Some("yes"));
    assert_eq!(echo.header("x-drop"), None);
    assert_eq!(echo.header("x-private"), None);
    assert_eq!(
        echo.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "client-sent XFF replaced"
    );
    assert_eq!(echo.header("x-forwarded-proto"), Some("http"));
    let host = gw.addr("http").to_string();
    assert_eq!(echo.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(
        echo.header("forwarded"),
        Some(format!("for=127.0.0.1;proto=http;host=\"{host}\"").as_str())
    );
    assert_eq!(echo.header("x-request-id"), Some("client-chosen-id"));
    assert_eq!(echo.header("host"), Some(backend.addr.to_string().as_str()));
    assert_eq!(echo.header("via"), Some("1.1 gatehouse"));
}

#[tokio::test]
async fn direct_responses_not_found_and_method_not_allowed() {
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            "[[route]]\nname = \"hello\"\npath = \"/hello\"\nmethods = [\"GET\"]\n\
             respond = { status = 200, body = \"hi\", headers = { \"content-type\" = \"text/plain\" } }\n\
             [[route]]\nname = \"down\"\nprefix = \"/maintenance\"\nrespond = { status = 503, body = \"later\" }\n",
        )
        .start()
        .await;
    let c = client();
    let r = c.get(gw.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "generated request id");
    assert_eq!(r.text().await.unwrap(), "hi");

    let r = c.get(gw.url("/maintenance/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "later");

    let r = c.get(gw.url("/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(error_code(r).await, "route_not_found");

    let r = c.delete(gw.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "HEAD, GET");
    assert_eq!(error_code(r).await, "method_not_allowed");
}

#[tokio::test]
async fn bad_paths_are_refused_before_any_backend() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let backend = Backend::start(move |req| {
        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        echo_response(req)
    })
    .await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"b\"\n",
                upstream("b", &backend.url(), "")
            ),
        )
        .start()
        .await;
    for (raw, what) in [
        ("/a%2Fb", "encoded slash"),
        ("/../etc/passwd", "climbs above root"),
        ("/a%00", "NUL"),
        ("/a%zz", "bad escape"),
        ("/%C3%28", "invalid UTF-8"),
    ] {
        let resp = raw_request(
            gw.addr("http"),
            &format!("GET {raw} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{what}: {resp}");
        assert!(
            resp.contains("\"error\":\"invalid_path\""),
            "{what}: {resp}"
        );
    }
    let resp = raw_request(gw.addr("http"), "GET / HTTP/1.1\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("invalid_host"),
        "no Host: {resp}"
    );
    let resp = raw_request(
        gw.addr("http"),
        "GET http://evil.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("invalid_host"),
        "absolute form: {resp}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    // And a good request does reach it.
    let resp = raw_request(
        gw.addr("http"),
        "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Writes raw bytes and reads the whole answer (the request should close).
pub async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // One response is enough when the server keeps the connection.
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n")
                        && let Some(len) = text[..end].lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        && let Ok(len) = len.trim().parse::<usize>()
                        && buf.len() >= end + 4 + len
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn upstream_down_is_502_and_silent_upstream_is_504() {
    // A port with nothing listening: bind, note the port, close.
    // Port 1 (tcpmux) on loopback: nothing listens there, and unlike a
    // just-released ephemeral port no parallel test can take it.
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    // A backend that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}{}\n[[route]]\nname = \"dead\"\nprefix = \"/dead\"\nupstream = \"dead\"\n\
                 [[route]]\nname = \"silent\"\nprefix = \"/silent\"\nupstream = \"silent\"\n",
                upstream("dead", &format!("http://{dead}"), ""),
                upstream(
                    "silent",
                    &format!("http://{silent_addr}"),
                    "first_byte_timeout = \"300ms\""
                )
            ),
        )
        .start()
        .await;
    let c = client();
    let r = c.get(gw.url("/dead/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("\"error\":\"upstream_failed\""), "{body}");
    assert!(
        !body.to_lowercase().contains("refused"),
        "no upstream error detail leaks: {body}"
    );

    let started = Instant::now();
    let r = c.get(gw.url("/silent/x")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(r).await, "upstream_timeout");
    // Generous bound: the configured 300 ms, not the 30 s default.
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    hold.abort();
}

#[tokio::test]
async fn body_limit_is_enforced_from_header_and_while_streaming() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"small\"\nprefix = \"/\"\nupstream = \"b\"\nmax_body = \"1KiB\"\n",
                upstream("b", &backend.url(), "")
            ),
        )
        .start()
        .await;
    let c = client();
    let r = c
        .post(gw.url("/x"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.body_len, 1024);
    let r = c
        .post(gw.url("/x"))
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "payload_too_large");
    // Chunked: no Content-Length, the limit is found while streaming.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'z'; 512]))).collect();
    let r = c
        .post(gw.url("/x"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    const SIZE: u64 = 512 << 20; // 512 MiB each way
    const CHUNK: usize = 256 << 10;
    // Upload sink counts bytes; download source generates them lazily.
    let backend = Backend::start(|req| async move {
        if req.method() == http::Method::POST {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame.ok().and_then(|f| f.into_data().ok()) {
                    n += d.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        } else {
            let chunk = Bytes::from(vec![b'd'; CHUNK]);
            let count = (SIZE / CHUNK as u64) as usize;
            let stream = futures_util::stream::iter((0..count).map(move |_| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                    chunk.clone(),
                ))
            }));
            Response::new(http_body_util::StreamBody::new(stream).boxed())
        }
    })
    .await;
    // The gateway runs as its own process, so its memory is measured alone.
    let b = GatewayBuilder::new().policy(
        "a.toml",
        &format!(
            "{}\n[[route]]\nname = \"big\"\nprefix = \"/\"\nupstream = \"b\"\nmax_body = \"1GiB\"\n",
            upstream("b", &backend.url(), "request_timeout = \"120s\"")
        ),
    );
    let (proc, addr) = Proc::serve(&b.write()).await;
    let url = |p: &str| format!("http://{addr}{p}");
    let before = proc.peak_rss_kib();
    let c = client();
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let count = (SIZE / CHUNK as u64) as usize;
    let up =
        futures_util::stream::iter((0..count).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = c
        .post(url("/upload"))
        .body(reqwest::Body::wrap_stream(up))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        SIZE.to_string(),
        "every byte arrived"
    );

    let mut r = c.get(url("/download")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut got: u64 = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    assert_eq!(got, SIZE);
    let grew_mib = proc.peak_rss_kib().saturating_sub(before) / 1024;
    // Buffering either body would add at least 512 MiB.
    assert!(grew_mib < 64, "gateway peak memory grew by {grew_mib} MiB");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_after_101() {
    let backend = Backend::upgrading().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"ws\"\nprefix = \"/ws\"\nupstream = \"b\"\nupgrades = [\"websocket\"]\n",
                upstream("b", &backend.url(), "")
            ),
        )
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "connection closed early"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"hello tunnel").await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&buf, b"HELLO TUNNEL");
}

#[tokio::test]
async fn h2_to_upstream_with_prior_knowledge_and_h2_from_clients_over_tls() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"h2\"\nprefix = \"/\"\nupstream = \"b\"\n",
                upstream("b", &backend.url(), "protocol = \"h2\"")
            ),
        )
        .start()
        .await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.version, "HTTP/2.0", "the backend was spoken to in h2");
}

#[tokio::test]
async fn http_listener_can_redirect_to_https() {
    let gw = GatewayBuilder::new()
        .main("[[listener]]\nname = \"redirect\"\naddr = \"127.0.0.1:0\"\nredirect_https_port = 8443\n")
        .policy("a.toml", "[[route]]\nname = \"h\"\npath = \"/hello\"\nrespond = { status = 200 }\n")
        .start()
        .await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c
        .get(format!("http://{}/a/../hello?x=1", gw.addr("redirect")))
        .header("host", "api.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://api.test:8443/hello?x=1");
    // The plain listener still serves.
    let r = client().get(gw.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let gw = GatewayBuilder::new().start().await;
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["generation"], 1);
    // The admin listener never proxies.
    let r = client()
        .get(gw.admin_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn host_bound_routes_and_templates_with_rewrite() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"api\"\nhost = \"api.test\"\nprefix = \"/\"\nupstream = \"b\"\n\
                 [[route]]\nname = \"posts\"\ntemplate = \"/users/{{id}}/posts/{{*rest}}\"\nupstream = \"b\"\nrewrite_path = \"/v2/posts/{{rest}}/by/{{id}}\"\n",
                upstream("b", &backend.url(), "")
            ),
        )
        .start()
        .await;
    let c = client();
    let r = c.get(gw.url("/users/42/posts/a/b")).send().await.unwrap();
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.uri, "/v2/posts/a/b/by/42");
    let r = c
        .get(gw.url("/anything"))
        .header("host", "API.test:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "host match is case-insensitive and ignores the port"
    );
    let r = c.get(gw.url("/anything")).send().await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "other hosts do not match the host-bound route"
    );
}

#[tokio::test]
async fn first_byte_timeout_starts_after_the_upload_is_sent() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}\n[[route]]\nname = \"up\"\nprefix = \"/\"\nupstream = \"b\"\n",
                upstream("b", &backend.url(), "first_byte_timeout = \"300ms\"")
            ),
        )
        .start()
        .await;
    // Six chunks, 150 ms apart: the upload takes ~900 ms, three times the
    // first-byte timeout, and must still succeed.
    let trickle = futures_util::stream::unfold(0u8, |i| async move {
        if i == 6 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(vec![b't'; 100])), i + 1))
    });
    let r = client()
        .post(gw.url("/slow-upload"))
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.body_len, 600);
}
