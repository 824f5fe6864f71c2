//! Edge hardening, connections: what one client must not be able to hold
//! (connections, TLS handshakes, idle h2 connections, tunnels), the PROXY
//! protocol behind a load balancer, and HSTS.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn echo_policy(backend: &str) -> String {
    format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n\
         [[route]]\nname = \"public\"\nprefix = \"/\"\nupstream = \"b\"\n"
    )
}

/// Whether the peer closes `s` within `secs` without sending anything.
async fn closed_silently(s: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(secs), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// One keep-alive request on `s`; the status line.
async fn get_on(s: &mut TcpStream, path: &str) -> String {
    let (text, _) = raw_exchange(
        &mut *s,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn one_address_cannot_hold_more_connections_than_its_cap() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .main("[server]\nmax_connections_per_ip = 3\n")
        .policy("a.toml", &echo_policy(&backend.url()))
        .start()
        .await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
        assert!(
            get_on(&mut s, "/x").await.starts_with("HTTP/1.1 200"),
            "conn {i}"
        );
        open.push(s);
    }
    let mut fourth = TcpStream::connect(gw.addr("http")).await.unwrap();
    let _ = fourth
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed_silently(&mut fourth, 3).await,
        "the fourth connection is closed"
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_connections_refused_total{listener=\"http\",reason=\"max_connections_per_ip\"}"
        )
        .await,
        Some(1.0)
    );
    // A place given back is a place to take.
    drop(open.pop());
    let again = eventually(5, || async {
        let mut s = TcpStream::connect(gw.addr("http")).await.ok()?;
        get_on(&mut s, "/x")
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    assert!(
        again.is_some(),
        "a new connection is served once one closed"
    );
}

#[tokio::test]
async fn a_trusted_proxy_speaking_for_many_clients_is_not_capped() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .main("[server]\nmax_connections_per_ip = 1\n\n[access]\ntrusted_proxies = [\"127.0.0.1/32\"]\n")
        .policy("a.toml", &echo_policy(&backend.url()))
        .start()
        .await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
        assert!(
            get_on(&mut s, "/x").await.starts_with("HTTP/1.1 200"),
            "conn {i}"
        );
        open.push(s);
    }
}

#[tokio::test]
async fn tls_handshakes_in_progress_are_capped_per_address() {
    let backend = Backend::echo().await;
    let builder = GatewayBuilder::new();
    let ca = TestCa::new(builder.path());
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let gw = builder
        .main("[server]\nmax_tls_handshakes_per_ip = 2\ntls_handshake_timeout = \"10s\"\n")
        .main(&tls_listener("https", &cert, &key, ""))
        .policy("a.toml", &echo_policy(&backend.url()))
        .start()
        .await;
    let addr = gw.addr("https");
    // Two handshakes that never get a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_silently(&mut third, 3).await,
        "a third handshake is refused"
    );
    for s in &mut stalled {
        let mut buf = [0u8; 1];
        let still_open = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(
            still_open.is_err(),
            "the stalled handshakes are still waiting"
        );
    }
    assert_eq!(
        metric(
            &gw,
            "gatehouse_connections_refused_total{listener=\"https\",reason=\"max_tls_handshakes_per_ip\"}"
        )
        .await,
        Some(1.0)
    );
    drop(stalled);
    // Completed handshakes do not count: a real client gets through, twice.
    let c = tls_client(&ca.ca_pem(), &["localhost"], addr);
    for _ in 0..3 {
        let ok = eventually(5, || async {
            let r = c
                .get(format!("https://localhost:{}/x", addr.port()))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        assert!(ok.is_some());
    }
}

#[tokio::test]
async fn an_h2_connection_with_no_open_stream_is_closed_after_the_idle_timeout() {
    // A backend that takes 2.5 s: a stream in flight keeps the connection.
    let backend = Backend::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        Response::new(full("ok"))
    })
    .await;
    let gw = GatewayBuilder::new()
        .main("[server]\nidle_timeout = \"1s\"\n")
        .policy("a.toml", &echo_policy(&backend.url()))
        .start()
        .await;
    let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let uri = format!("http://x:{}/slow", gw.addr("http").port());
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send
        .send_request(http::Request::get(uri).body(()).unwrap(), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a 2.5 s stream outlives a 1 s idle limit"
    );
    drop(resp);
    // Now idle: the gateway sends GOAWAY and closes.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "the idle h2 connection was not closed");
    assert_eq!(
        metric(
            &gw,
            "gatehouse_connections_idle_closed_total{listener=\"http\"}"
        )
        .await,
        Some(1.0)
    );
}

/// Opens a tunnel through `addr`; the connection, or the status line of a
/// refusal.
async fn open_tunnel(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err(format!("closed: {}", String::from_utf8_lossy(&head))),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 101") {
        Ok(s)
    } else {
        let mut rest = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut rest))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        Err(format!("{head}{}", String::from_utf8_lossy(&rest[..n])))
    }
}

async fn echo_through(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"PING"
}

fn tunnel_policy(backend: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n\
         [[route]]\nname = \"ws\"\nprefix = \"/ws\"\nupstream = \"b\"\nupgrades = [\"websocket\"]\n{extra}\n"
    )
}

#[tokio::test]
async fn tunnels_are_capped_per_route_idle_out_and_count_as_connections() {
    let backend = Backend::upgrading().await;
    let gw = GatewayBuilder::new()
        .main("[server]\nmax_connections_per_ip = 2\n")
        .policy(
            "a.toml",
            &tunnel_policy(
                &backend.url(),
                "max_tunnels = 1\ntunnel_idle_timeout = \"2s\"",
            ),
        )
        .start()
        .await;
    let addr = gw.addr("http");
    let mut first = open_tunnel(addr).await.expect("first tunnel");
    assert!(echo_through(&mut first).await);
    // The route's one place is taken.
    let second = open_tunnel(addr).await;
    let refusal = second.expect_err("a second tunnel is refused");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("tunnel_limit_reached"), "{refusal}");
    // The tunnel still holds its connection's place: with a cap of two per
    // address, one more connection fits and the next does not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut other = TcpStream::connect(addr).await.unwrap();
    assert!(
        get_on(&mut other, "/nothing")
            .await
            .starts_with("HTTP/1.1 404")
    );
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_silently(&mut over, 3).await,
        "the tunnel counts as a connection"
    );
    drop(other);
    // Kept busy, the tunnel stays; idle, it is closed.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(echo_through(&mut first).await, "busy tunnel closed");
    }
    assert!(
        closed_silently(&mut first, 5).await,
        "the idle tunnel was not closed"
    );
    // Its places came back.
    let again = eventually(5, || async { open_tunnel(addr).await.ok() }).await;
    assert!(again.is_some(), "a new tunnel once the idle one closed");
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_at_the_deadline() {
    let backend = Backend::upgrading().await;
    let gw = GatewayBuilder::new()
        .main("[server]\nshutdown_grace = \"1s\"\n")
        .policy("a.toml", &tunnel_policy(&backend.url(), ""))
        .start()
        .await;
    let mut tunnel = open_tunnel(gw.addr("http")).await.expect("tunnel");
    assert!(echo_through(&mut tunnel).await);
    let started = tokio::time::Instant::now();
    let drained = gw.shutdown().await;
    let took = started.elapsed();
    assert!(
        !drained,
        "a tunnel open past the grace period is not a clean drain"
    );
    assert!(
        took >= Duration::from_millis(900),
        "waited for the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        closed_silently(&mut tunnel, 3).await,
        "the tunnel was leaked"
    );
}

fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

fn pp_gateway(trusted: &str, backend: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .main(&format!(
            "[[listener]]\nname = \"pp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n\n\
             [access]\ntrusted_proxies = [\"{trusted}\"]\ndeny_ips = [\"198.51.100.0/24\"]\n"
        ))
        .policy("a.toml", &echo_policy(backend))
}

#[tokio::test]
async fn a_trusted_balancer_names_the_client_with_proxy_protocol_v1_and_v2() {
    let (backend, hits_seen) = Backend::counting().await;
    let gw = pp_gateway("127.0.0.1/32", &backend.url()).start().await;
    let addr = gw.addr("pp");
    let request = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n".to_vec();
    v1.extend_from_slice(request);
    let mut v2 = v2_header([192, 0, 2, 44], 40000);
    v2.extend_from_slice(request);
    for (name, bytes, client) in [("v1", v1, "203.0.113.7"), ("v2", v2, "192.0.2.44")] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (text, _) = raw_exchange(tcp, &bytes).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text:.200}");
        let echo: Echo = serde_json::from_str(raw_body(&text)).unwrap();
        assert_eq!(echo.header("x-real-ip"), Some(client), "{name}");
        assert_eq!(
            echo.header("x-forwarded-for"),
            Some(client),
            "{name}: the client's own X-Forwarded-For is not believed"
        );
    }
    // The named address is the one IP rules see.
    let mut denied = v2_header([198, 51, 100, 9], 40000);
    denied.extend_from_slice(request);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (text, _) = raw_exchange(tcp, &denied).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text:.200}");
    assert!(text.contains("ip_denied"), "{text}");
    // A trusted peer must send the header.
    let mut missing = TcpStream::connect(addr).await.unwrap();
    let _ = missing.write_all(request).await;
    assert!(
        closed_silently(&mut missing, 3).await,
        "no PROXY header: refused"
    );
    assert_eq!(hits_seen.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric(
            &gw,
            "gatehouse_connections_refused_total{listener=\"pp\",reason=\"proxy_protocol_missing\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_is_refused() {
    let (backend, hits) = Backend::counting().await;
    let gw = pp_gateway("10.200.0.1/32", &backend.url()).start().await;
    let addr = gw.addr("pp");
    let mut spoofed =
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n"
            .to_vec();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&spoofed).await;
    assert!(
        closed_silently(&mut s, 3).await,
        "v1 from an untrusted peer"
    );
    spoofed = v2_header([203, 0, 113, 7], 1);
    spoofed.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&spoofed).await;
    assert!(
        closed_silently(&mut s, 3).await,
        "v2 from an untrusted peer"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Without a header the peer is served as itself.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (text, _) = raw_exchange(tcp, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
    let echo: Echo = serde_json::from_str(raw_body(&text)).unwrap();
    assert_eq!(echo.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(
        metric(
            &gw,
            "gatehouse_connections_refused_total{listener=\"pp\",reason=\"proxy_protocol_untrusted\"}"
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn tls_listeners_send_hsts_when_configured() {
    let backend = Backend::echo().await;
    let builder = GatewayBuilder::new();
    let ca = TestCa::new(builder.path());
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let gw = builder
        .main(&tls_listener(
            "https",
            &cert,
            &key,
            "hsts = { max_age = \"365d\", include_subdomains = true }",
        ))
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n[[route]]\nname = \"p\"\nprefix = \"/p\"\nupstream = \"b\"\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let addr = gw.addr("https");
    let c = tls_client(&ca.ca_pem(), &["localhost"], addr);
    for path in ["/p/x", "/nowhere"] {
        let r = c
            .get(format!("https://localhost:{}{path}", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000; includeSubDomains"),
            "{path} ({})",
            r.status()
        );
    }
    let plain = client().get(gw.url("/p/x")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn listener_settings_that_cannot_work_are_config_errors() {
    let cases = [
        (
            "proxy protocol without trusted proxies",
            "[[listener]]\nname = \"pp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n",
            "needs `[access] trusted_proxies`",
        ),
        (
            "hsts preload without subdomains",
            "[[listener]]\nname = \"s\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = []\nhsts = { preload = true }\n",
            "preload",
        ),
    ];
    for (name, main, want) in cases {
        let b = GatewayBuilder::new().main(main);
        let path = b.write();
        let problems = gatehouse::server::check(&path, &gatehouse::config::Environment::default())
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let text = problems.to_string();
        assert!(text.contains(want), "{name}: {text}");
        assert!(
            text.contains("gatehouse.toml:"),
            "{name}: file and line: {text}"
        );
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn a_real_haproxy_in_front_names_the_client_with_v1_and_v2() {
    let Ok(haproxy) = which_haproxy() else {
        println!("skipped: haproxy is not installed (.ci/run installs it)");
        return;
    };
    let backend = Backend::echo().await;
    let gw = pp_gateway("127.0.0.1/32", &backend.url()).start().await;
    for send_proxy in ["send-proxy", "send-proxy-v2"] {
        let port = free_port();
        let config = gw.dir.path().join(format!("haproxy-{send_proxy}.cfg"));
        std::fs::write(
            &config,
            format!(
                "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
                 backend b\n  server gw {} {send_proxy}\n",
                gw.addr("pp")
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        // The client connects from 127.0.0.5: only the PROXY header can
        // tell the gateway, whose peer is HAProxy on 127.0.0.1.
        let answer = eventually(10, || async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind("127.0.0.5:0".parse().ok()?).ok()?;
            let tcp = socket
                .connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .ok()?;
            let (text, _) = raw_exchange(tcp, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
            text.starts_with("HTTP/1.1 200").then_some(text)
        })
        .await
        .unwrap_or_else(|| panic!("{send_proxy}: no answer through haproxy"));
        let echo: Echo = serde_json::from_str(raw_body(&answer)).unwrap();
        assert_eq!(echo.header("x-real-ip"), Some("127.0.0.5"), "{send_proxy}");
        assert_eq!(
            echo.header("x-forwarded-for"),
            Some("127.0.0.5"),
            "{send_proxy}"
        );
        let _ = child.kill().await;
    }
}

fn which_haproxy() -> Result<std::path::PathBuf, ()> {
    [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
    .ok_or(())
}
