//! The web console in a real browser (headless Chromium over WebDriver):
//! sign in through the form, create a consumer and a key through the
//! forms, call the gateway with the key shown once and see the calls
//! counted on the consumer's page, rotate it, drain and undrain the
//! upstream's target, revoke the key and disable the consumer through the
//! forms and see the gateway refuse them; and the protections: a form post
//! without the CSRF token or from another origin changes nothing (403), a
//! foreign `Host` is refused (421), the session cookie is `HttpOnly` and
//! `SameSite=Strict`, and it stops working after sign-out.
//!
//! Secrets (the admin token, the new key, the session cookie) are kept in
//! variables and never put in an assertion message.

use crate::support::*;

/// A gateway with API-key routes to an echo backend (`/keyed`, and
/// `/scoped` that needs the scope `orders:write`), usage flushed every
/// second, and the admin token `hash`.
async fn console_gateway(backend: &Backend, hash: &str) -> TestGateway {
    GatewayBuilder::new()
        .main(&fast_api_keys(""))
        .main("[usage]\nflush_interval = \"1s\"\n")
        .admin_token_hash(hash)
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"good\"\ntargets = [\"{}\"]\n\
                 [[route]]\nname = \"keyed\"\nprefix = \"/keyed\"\nupstream = \"good\"\nauth = \"api_key\"\n\
                 [[route]]\nname = \"scoped\"\nprefix = \"/scoped\"\nupstream = \"good\"\nauth = \"api_key\"\nscopes = [\"orders:write\"]\n",
                backend.url()
            ),
        )
        .start()
        .await
}

/// A client that shows redirects instead of following them.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn consumer_names(gw: &TestGateway) -> Vec<String> {
    let store = open_store(gw.dir.path()).await;
    store
        .list_consumers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect()
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let Some(wd) = Browser::start().await else {
        return;
    };
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = console_gateway(&backend, &hash).await;
    let admin = gw.running().admin_addr;
    let base = format!("http://{admin}");

    // Not signed in: every page sends the browser to the sign-in form.
    wd.goto(&format!("{base}/console/consumers")).await;
    assert!(
        wd.url().await.ends_with("/console/sign-in"),
        "{}",
        wd.url().await
    );
    assert_eq!(
        wd.title_becomes("Sign in · gatehouse console").await,
        "Sign in · gatehouse console"
    );

    // A wrong token is refused on the page.
    wd.type_into("#token", "not-the-admin-token").await;
    wd.click("#sign-in-submit").await;
    assert!(wd.wait_for("#sign-in-error").await, "the refusal is shown");
    let error = wd.text_of("#sign-in-error").await;
    assert!(error.contains("not the admin token"), "{error}");

    wd.type_into("#token", &token).await;
    wd.click("#sign-in-submit").await;
    assert_eq!(
        wd.title_becomes("Consumers · gatehouse console").await,
        "Consumers · gatehouse console"
    );

    let cookies = wd.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "gatehouse_console")
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true, "HttpOnly");
    assert_eq!(session["sameSite"], "Strict", "SameSite");
    assert_eq!(session["path"], "/console", "Path");
    assert_eq!(session["secure"], false, "plain HTTP admin listener");
    let session_cookie = format!(
        "gatehouse_console={}",
        session["value"].as_str().expect("cookie value")
    );
    assert!(
        session["value"].as_str().is_some_and(|v| v.len() == 43),
        "256 bits, base64url"
    );

    // A consumer and a key through the forms.
    wd.type_into("#consumer-name", "acme").await;
    wd.type_into("#consumer-plan", "gold").await;
    wd.click("#create-consumer").await;
    assert_eq!(
        wd.title_becomes("acme · gatehouse console").await,
        "acme · gatehouse console"
    );
    assert_eq!(wd.text_of("#plan").await, "gold");
    wd.type_into("#key-name", "ci").await;
    wd.type_into("#key-scopes", "orders:read").await;
    wd.click("#create-key").await;
    assert_eq!(
        wd.title_becomes("Key created · gatehouse console").await,
        "Key created · gatehouse console"
    );
    let key = wd.text_of("#secret").await;
    assert!(key.starts_with("gth_"), "the page shows a key");
    let key_id = wd.text_of("#key-id").await;
    assert!(
        wd.text_of("#secret-note").await.contains("only this once"),
        "the once-only note"
    );

    // The key works on the gateway.
    let http = client();
    let call_at = |path: &'static str, k: String| {
        let http = http.clone();
        let url = gw.url(path);
        async move {
            http.get(url)
                .header("x-api-key", k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let call = |k: String| call_at("/keyed/orders", k);
    assert_eq!(call(key.clone()).await, 200, "the new key is accepted");
    assert_eq!(
        call_at("/scoped", key.clone()).await,
        403,
        "the key lacks orders:write"
    );

    // The consumer page lists the key, without its secret.
    wd.click("#back").await;
    assert_eq!(
        wd.title_becomes("acme · gatehouse console").await,
        "acme · gatehouse console"
    );
    let keys = wd.text_of("#keys").await;
    assert!(
        keys.contains(&key_id) && keys.contains("orders:read"),
        "{keys}"
    );
    assert!(!keys.contains(&key[4..]), "the secret is not shown again");

    // Both calls are counted on the consumer's page (reloaded until the
    // meter's next flush), and the 403 is among the recent refusals.
    let counted = eventually(20, || async {
        wd.goto(&format!("{base}/console/consumers/acme")).await;
        let n: u64 = wd.text_of("#usage-24h-requests").await.parse().ok()?;
        (n >= 2).then_some(n)
    })
    .await;
    assert_eq!(counted, Some(2), "the page shows the two calls");
    let hourly = wd.text_of("#usage-hourly").await;
    assert!(hourly.contains("2 in all"), "{hourly}");
    let refusals = wd.text_of("#refusals").await;
    assert!(
        refusals.contains("insufficient_scope") && refusals.contains(&key_id),
        "{refusals}"
    );

    // A form post without the CSRF token, or with a wrong one, or from
    // another origin, is refused and changes nothing.
    let csrf = wd
        .attribute("#new-key input[name=csrf]", "value")
        .await
        .expect("the form's CSRF token");
    let raw = raw_client();
    let post = |body: String, origin: Option<&'static str>| {
        let mut req = raw
            .post(format!("{base}/console/consumers"))
            .header("cookie", &session_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap() }
    };
    let cases = [
        ("no token", "name=evil1".to_owned(), None, "evil1"),
        (
            "wrong token",
            "name=evil2&csrf=AAAA".to_owned(),
            None,
            "evil2",
        ),
        (
            "right token, foreign origin",
            format!("name=evil3&csrf={csrf}"),
            Some("http://evil.example"),
            "evil3",
        ),
    ];
    for (name, body, origin, consumer) in cases {
        let resp = post(body, origin).await;
        assert_eq!(resp.status(), 403, "{name}");
        let page = resp.text().await.unwrap();
        assert!(page.contains("id=\"refusal\""), "{name}: a clear page");
        assert!(
            !consumer_names(&gw).await.iter().any(|n| n == consumer),
            "{name}: nothing created"
        );
    }
    // The same post with the token is accepted (so the cases above could fail).
    let resp = post(format!("name=good1&csrf={csrf}"), None).await;
    assert_eq!(resp.status(), 303);
    assert!(consumer_names(&gw).await.iter().any(|n| n == "good1"));

    // Rotate through the form: a new key, shown once; the old one keeps
    // working for the grace period.
    wd.goto(&format!("{base}/console/consumers/acme")).await;
    wd.type_into(&format!("#key-{key_id} input[name=grace]"), "1h")
        .await;
    wd.click(&format!("#key-{key_id} form[action$='/rotate'] button"))
        .await;
    assert_eq!(
        wd.title_becomes("Key rotated · gatehouse console").await,
        "Key rotated · gatehouse console"
    );
    let rotated = wd.text_of("#secret").await;
    assert!(rotated.starts_with("gth_") && rotated != key, "a new key");
    assert_eq!(call(rotated.clone()).await, 200, "the rotated key works");
    assert_eq!(
        call(key.clone()).await,
        200,
        "the old key, within its grace"
    );

    // Drain the upstream's only target, then undrain it.
    wd.goto(&format!("{base}/console/upstreams")).await;
    wd.click("#targets-good form button").await;
    let drained = eventually(10, || async {
        let t = wd.text("#targets-good").await?;
        t.contains("drained").then_some(t)
    })
    .await;
    assert!(drained.is_some(), "the target shows as drained");
    assert_eq!(call(rotated.clone()).await, 503, "no target to send to");
    wd.click("#targets-good form button").await;
    let undrained = eventually(10, || async {
        let t = wd.text("#targets-good").await?;
        t.contains("healthy").then_some(t)
    })
    .await;
    assert!(undrained.is_some(), "the target is back");
    assert_eq!(call(rotated.clone()).await, 200, "sent again");

    // Revoke through the form: the next gateway call is refused.
    wd.goto(&format!("{base}/console/consumers/acme")).await;
    wd.click(&format!("#key-{key_id} form[action$='/revoke'] button"))
        .await;
    // The answer is the consumer's page again, now with a revocation time.
    let revoked = eventually(10, || async {
        let t = wd.text(&format!("#key-{key_id} .revoked")).await?;
        t.ends_with('Z').then_some(t)
    })
    .await;
    assert!(revoked.is_some(), "the key shows as revoked");
    assert_eq!(
        call(key.clone()).await,
        401,
        "a revoked key is refused at once"
    );

    // Disable the consumer: its other key stops working too.
    wd.click("form[action$='/disable'] button").await;
    let disabled = eventually(10, || async {
        let t = wd.text("#state").await?;
        t.contains("disabled").then_some(t)
    })
    .await;
    assert!(disabled.is_some(), "the consumer shows as disabled");
    assert_eq!(
        call(rotated.clone()).await,
        401,
        "a disabled consumer's key"
    );

    // Search and the audit log.
    wd.goto(&format!("{base}/console/consumers?q=GOOD")).await;
    let found = wd.text_of("#consumers").await;
    assert!(
        found.contains("good1") && !found.contains("acme"),
        "{found}"
    );
    wd.goto(&format!("{base}/console/audit")).await;
    let audit = wd.text_of("#audit").await;
    for action in [
        "console.sign_in",
        "consumer.create",
        "key.create",
        "key.revoke",
    ] {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    assert!(
        audit.contains("console 127.0.0.1"),
        "actor and client: {audit}"
    );
    assert!(
        audit.contains("unauthorized"),
        "the failed sign-in: {audit}"
    );

    // A foreign Host (DNS rebinding) is refused before anything else.
    let request = format!(
        "GET /console/consumers HTTP/1.1\r\nHost: evil.example:{}\r\nCookie: {session_cookie}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (answer, _) = raw_exchange(tcp, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 421"),
        "foreign Host: {}",
        answer.lines().next().unwrap_or("")
    );
    assert!(
        !answer.contains("acme"),
        "no page content for a foreign Host"
    );

    // The pages are not cached and cannot be framed.
    let consumers_page = || {
        raw.get(format!("{base}/console/consumers"))
            .header("cookie", &session_cookie)
            .send()
    };
    let resp = consumers_page().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );

    // Sign out: the old cookie no longer works.
    wd.click("nav button").await;
    assert_eq!(
        wd.title_becomes("Sign in · gatehouse console").await,
        "Sign in · gatehouse console"
    );
    let resp = consumers_page().await.unwrap();
    assert_eq!(resp.status(), 303, "signed out");
    assert_eq!(resp.headers()["location"], "/console/sign-in");

    // The one error expected: the wrong token's 401 answer.
    let severe: Vec<_> = wd
        .severe_logs()
        .await
        .into_iter()
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or_default();
            !(m.contains("/console/sign-in") && m.contains("status of 401"))
        })
        .collect();
    assert!(severe.is_empty(), "browser console errors: {severe:?}");
    wd.quit().await;
    gw.shutdown().await;
}

/// The `Set-Cookie` of `resp` for cookie `name` (its whole value line).
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

#[tokio::test]
async fn on_a_tls_admin_listener_the_cookies_are_secure() {
    let (token, hash) = admin_token();
    let builder = GatewayBuilder::new();
    let ca = TestCa::new(builder.path());
    let (cert, key) = ca.issue("admin", &["localhost"]);
    let gw = builder
        .admin_token_hash(&hash)
        .main(&format!(
            "[admin.tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .start()
        .await;
    let admin = gw.running().admin_addr;
    let https = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .resolve("localhost", admin)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", admin.port());
    let health = https.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the admin API over TLS");
    let plain = client().get(format!("http://{admin}/healthz")).send().await;
    assert!(
        plain.map_or(true, |r| r.status() != 200),
        "no plain HTTP on a TLS admin listener"
    );

    let form = https
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let pre = set_cookie(&form, "gatehouse_console_pre").expect("the pre-session cookie");
    assert!(pre.ends_with("; Secure"), "pre-session cookie is Secure");
    let pre = pre.split(';').next().unwrap().to_owned();
    let page = form.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form's CSRF field")
        .to_owned();
    let signed_in = https
        .post(format!("{base}/console/sign-in"))
        .header("cookie", &pre)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "signed in");
    let session = set_cookie(&signed_in, "gatehouse_console").expect("a session cookie");
    for attr in [
        "; HttpOnly",
        "; SameSite=Strict",
        "; Path=/console",
        "; Secure",
    ] {
        assert!(session.contains(attr), "session cookie has {attr}");
    }
    let session = session.split(';').next().unwrap().to_owned();
    let page = https
        .get(format!("{base}/console/consumers"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the session works");
    gw.shutdown().await;
}
