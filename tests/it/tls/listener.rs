//! TLS tests on the listener: SNI, versions and ALPN, h2 and HTTP/1.1,
//! certificate hot reload (and broken reloads refused), client certificates.

use http::{StatusCode, Version};

use crate::support::*;

use super::tls_listener;
use super::*;

#[tokio::test]
async fn sni_chooses_the_certificate_and_unknown_names_get_the_first() {
    let b = GatewayBuilder::new().policy("a.toml", HELLO);
    let ca = TestCa::new(b.path());
    let a = ca.issue("a", &["a.test"]);
    let bc = ca.issue("b", &["b.test"]);
    let w = ca.issue("w", &["*.w.test"]);
    let gw = b
        .main(&tls_listener(
            "https",
            &[a.clone(), bc.clone(), w.clone()],
            "",
        ))
        .start()
        .await;
    let addr = gw.addr("https");
    let (a, bc, w) = (leaf_in_file(&a.0), leaf_in_file(&bc.0), leaf_in_file(&w.0));
    assert_ne!(a, bc);

    // Names a certificate has: the client verifies chain and name.
    for (sni, want) in [("a.test", &a), ("b.test", &bc), ("x.w.test", &w)] {
        let tls = handshake(rustls_client(&ca.ca_pem(), &[]), addr, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: handshake failed: {e}"));
        let got = presented(&tls);
        assert!(
            got == *want,
            "{sni}: got the certificate for {:?}",
            dns_names(&got)
        );
    }

    // Names no certificate has (and no SNI at all): the first certificate.
    for (sni, what) in [
        ("c.test", "unknown name"),
        ("y.x.w.test", "wildcard covers one label only"),
        ("127.0.0.1", "no SNI"),
    ] {
        let tls = handshake(client_any_name(&ca.ca_pem()), addr, sni)
            .await
            .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
        let got = presented(&tls);
        assert!(
            got == a,
            "{what}: got the certificate for {:?}",
            dns_names(&got)
        );
    }
}

#[tokio::test]
async fn tls13_and_tls12_are_accepted_and_alpn_prefers_h2() {
    let b = GatewayBuilder::new().policy("a.toml", HELLO);
    let ca = TestCa::new(b.path());
    let srv = ca.issue("srv", &["a.test"]);
    let gw = b.main(&tls_listener("https", &[srv], "")).start().await;
    let addr = gw.addr("https");
    let versions: [(
        &'static rustls::SupportedProtocolVersion,
        rustls::ProtocolVersion,
    ); 2] = [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ];
    let alpn_cases: [AlpnCase; 4] = [
        (
            "h2 and http/1.1 offered",
            &[b"h2", b"http/1.1"],
            Some(b"h2"),
            Version::HTTP_2,
        ),
        (
            "client prefers http/1.1",
            &[b"http/1.1", b"h2"],
            Some(b"h2"),
            Version::HTTP_2,
        ),
        (
            "only http/1.1 offered",
            &[b"http/1.1"],
            Some(b"http/1.1"),
            Version::HTTP_11,
        ),
        ("no ALPN", &[], None, Version::HTTP_11),
    ];
    for (version, want_version) in versions {
        for (case, offered, want_alpn, want_http) in alpn_cases {
            let what = format!("{want_version:?}, {case}");
            let cfg = client_with_versions(&ca.ca_pem(), &[version], offered);
            let tls = handshake(cfg, addr, "a.test")
                .await
                .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
            let conn = tls.get_ref().1;
            assert_eq!(conn.protocol_version(), Some(want_version), "{what}");
            assert_eq!(conn.alpn_protocol(), want_alpn, "{what}");
            let (status, http_version, body) = Conn::open(tls).await.get("a.test", "/hello").await;
            assert_eq!(status, StatusCode::OK, "{what}");
            assert_eq!(http_version, want_http, "{what}");
            assert_eq!(body, "hi", "{what}");
        }
    }
}

#[tokio::test]
async fn https_requests_reach_the_backend_over_h2_and_http1() {
    let backend = Backend::echo().await;
    let b = GatewayBuilder::new().policy(
        "a.toml",
        &format!(
            "[[upstream]]\nname = \"echo\"\ntargets = [\"{}\"]\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"echo\"\n",
            backend.url()
        ),
    );
    let ca = TestCa::new(b.path());
    let srv = ca.issue("srv", &["a.test"]);
    let gw = b.main(&tls_listener("https", &[srv], "")).start().await;
    let addr = gw.addr("https");
    let authority = format!("a.test:{}", addr.port());
    for (what, http1_only, want) in [
        ("h2", false, Version::HTTP_2),
        ("http/1.1", true, Version::HTTP_11),
    ] {
        let resp = https_client(&ca.ca_pem(), addr, None, http1_only)
            .get(format!("https://{authority}/echo/x?q=1"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.version(), want, "{what}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.uri, "/echo/x?q=1", "{what}");
        assert_eq!(echo.header("x-forwarded-proto"), Some("https"), "{what}");
        assert_eq!(
            echo.header("x-forwarded-host"),
            Some(authority.as_str()),
            "{what}"
        );
        assert_eq!(
            echo.header("forwarded"),
            Some(format!("for=127.0.0.1;proto=https;host=\"{authority}\"").as_str()),
            "{what}"
        );
        assert_eq!(
            echo.version, "HTTP/1.1",
            "{what}: plain upstreams get HTTP/1.1 whatever the client spoke"
        );
    }
}

#[tokio::test]
async fn certificate_replaced_on_disk_is_served_to_new_connections_only() {
    let b = GatewayBuilder::new().policy("a.toml", HELLO);
    let ca = TestCa::new(b.path());
    let srv = ca.issue("srv", &["a.test"]);
    let gw = b
        .main(&tls_listener("https", std::slice::from_ref(&srv), ""))
        .start_watching()
        .await;
    let addr = gw.addr("https");
    let ca_pem = ca.ca_pem();
    let old = leaf_in_file(&srv.0);

    // Connections opened before the swap, one per protocol, each used once.
    let mut before = Vec::new();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let tls = handshake(rustls_client(&ca_pem, &[alpn]), addr, "a.test")
            .await
            .expect("handshake before the swap");
        assert!(presented(&tls) == old);
        let mut conn = Conn::open(tls).await;
        let (status, _, _) = conn.get("a.test", "/hello").await;
        assert_eq!(status, StatusCode::OK);
        before.push(conn);
    }
    let generation = gw.running().shared().generation();

    let pair = ca.ca.issue(&["a.test"], 30).unwrap();
    gatehouse::tls::write_pair(&pair, &srv.0, &srv.1).unwrap();
    let new = leaf_in_pem(&pair.cert);
    assert!(new != old);

    // A fresh client config each time: no session resumption.
    let served = eventually(10, || {
        let cfg = rustls_client(&ca_pem, &[]);
        let new = new.clone();
        async move {
            let tls = handshake(cfg, addr, "a.test").await.ok()?;
            (presented(&tls) == new).then_some(())
        }
    })
    .await;
    assert!(
        served.is_some(),
        "the new certificate was not served within 10 s"
    );
    assert!(gw.running().shared().generation() > generation);

    for (conn, what) in before.iter_mut().zip(["h2", "http/1.1"]) {
        let (status, _, body) = conn.get("a.test", "/hello").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{what}: connection from before the swap"
        );
        assert_eq!(body, "hi", "{what}");
    }
}

#[tokio::test]
async fn reload_with_a_broken_certificate_is_refused_and_the_old_one_stays() {
    let b = GatewayBuilder::new().policy("a.toml", HELLO);
    let ca = TestCa::new(b.path());
    let srv = ca.issue("srv", &["a.test"]);
    let gw = b
        .main(&tls_listener("https", std::slice::from_ref(&srv), ""))
        .start()
        .await;
    let addr = gw.addr("https");
    let old = leaf_in_file(&srv.0);
    let cert_file = srv.0.display().to_string();

    for (what, garbage) in [
        ("not PEM at all", "this is not a certificate\n"),
        (
            "bad base64 in a PEM block",
            "-----BEGIN CERTIFICATE-----\n@@@ not base64 @@@\n-----END CERTIFICATE-----\n",
        ),
        (
            "a PEM block that is not a certificate",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        ),
    ] {
        std::fs::write(&srv.0, garbage).unwrap();
        let err = match gw.running().reload().await {
            Ok(g) => panic!("{what}: reload accepted (generation {g})"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&cert_file),
            "{what}: error does not name {cert_file}: {err}"
        );
        assert_eq!(gw.running().shared().generation(), 1, "{what}");
        let tls = handshake(rustls_client(&ca.ca_pem(), &[]), addr, "a.test")
            .await
            .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
        assert!(presented(&tls) == old, "{what}: old certificate not served");
        let (status, _, body) = Conn::open(tls).await.get("a.test", "/hello").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hi"), "{what}");
    }

    // A good certificate is then taken: the refusals were about the file.
    let pair = ca.ca.issue(&["a.test"], 30).unwrap();
    gatehouse::tls::write_pair(&pair, &srv.0, &srv.1).unwrap();
    let generation = gw
        .running()
        .reload()
        .await
        .expect("reload with a good certificate");
    assert_eq!(generation, 2);
    let tls = handshake(rustls_client(&ca.ca_pem(), &[]), addr, "a.test")
        .await
        .unwrap();
    assert!(presented(&tls) == leaf_in_pem(&pair.cert));
}

#[tokio::test]
async fn client_certificates_required_and_optional() {
    let b = GatewayBuilder::new().policy("a.toml", HELLO);
    let ca = TestCa::new(b.path());
    let srv = ca.issue("srv", &["a.test"]);
    let other_dir = b.path().join("other-ca");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = TestCa::new(&other_dir);
    let trusted = ca.ca.issue(&["client.test"], 30).unwrap();
    let stranger = other.ca.issue(&["client.test"], 30).unwrap();
    let client_ca = format!("client_ca = {}\n", toml_str(&ca.ca_path()));
    let gw = b
        .main(&tls_listener(
            "required",
            std::slice::from_ref(&srv),
            &client_ca,
        ))
        .main(&tls_listener(
            "optional",
            &[srv],
            &format!("{client_ca}client_auth = \"optional\"\n"),
        ))
        .start()
        .await;

    for (listener, identity, allowed) in [
        ("required", None, false),
        ("required", Some(&trusted), true),
        ("required", Some(&stranger), false),
        ("optional", None, true),
        ("optional", Some(&trusted), true),
        ("optional", Some(&stranger), false),
    ] {
        let who = match identity {
            None => "no certificate",
            Some(p) if std::ptr::eq(p, &trusted) => "certificate from the client CA",
            Some(_) => "certificate from another CA",
        };
        let addr = gw.addr(listener);
        let sent = https_client(&ca.ca_pem(), addr, identity, false)
            .get(format!("https://a.test:{}/hello", addr.port()))
            .send()
            .await;
        match (allowed, sent) {
            (true, Ok(resp)) => {
                assert_eq!(resp.status(), 200, "{listener}, {who}");
                assert_eq!(resp.text().await.unwrap(), "hi", "{listener}, {who}");
            }
            (true, Err(e)) => panic!("{listener}, {who}: refused: {e}"),
            (false, Ok(resp)) => panic!("{listener}, {who}: got {}", resp.status()),
            (false, Err(_)) => {}
        }
    }

    // Under TLS 1.2 the server decides inside the handshake itself.
    let cfg = client_with_versions(&ca.ca_pem(), &[&rustls::version::TLS12], &[]);
    assert!(
        handshake(cfg, gw.addr("required"), "a.test").await.is_err(),
        "TLS 1.2 handshake without a client certificate must fail"
    );
}
