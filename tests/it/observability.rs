//! Metrics, the status page and their consumers: exact counts on
//! `/metrics`, bounded series, reload gauges, promtool, a real Prometheus
//! scraping the gateway, and the status page in a real browser.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// The value of the sample line `series` (exactly as rendered), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Every series name with its labels (no comments, no values).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

async fn scrape(gw: &TestGateway) -> String {
    let resp = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics text")
}

/// An address nothing listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Routes: `ok` (open), `keyed` (API key), `limited` (2 then 429), `dead`
/// (an upstream that refuses connections).
async fn mixed_gateway(backend: &Backend, extra_main: &str) -> GatewayBuilder {
    GatewayBuilder::new().main(extra_main).policy(
        "a.toml",
        &format!(
            "[[upstream]]\nname = \"good\"\ntargets = [\"{}\"]\n\
             [[upstream]]\nname = \"gone\"\ntargets = [\"{}\"]\n\
             [[route]]\nname = \"ok\"\nprefix = \"/ok\"\nupstream = \"good\"\n\
             [[route]]\nname = \"keyed\"\nprefix = \"/keyed\"\nupstream = \"good\"\nauth = \"api_key\"\n\
             [[route]]\nname = \"limited\"\nprefix = \"/limited\"\nupstream = \"good\"\nrate_limits = [\"p\"]\n\
             [[route]]\nname = \"dead\"\nprefix = \"/dead\"\nupstream = \"gone\"\n\
             [[rate_limit]]\nname = \"p\"\nrate = \"1/min\"\nburst = 2\nkey = \"client_ip\"\n",
            backend.url(),
            dead_url().await,
        ),
    )
}

#[tokio::test]
async fn metrics_count_a_known_mix_exactly() {
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, &fast_api_keys(""))
        .await
        .start()
        .await;
    let c = client();
    let mut statuses = Vec::new();
    for path in [
        "/ok/a", "/ok/b", "/ok/c", "/nope", "/nope/2", "/keyed", "/limited", "/limited",
        "/limited", "/dead",
    ] {
        let resp = c.get(gw.url(path)).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        let _ = resp.bytes().await;
    }
    assert_eq!(statuses, [200, 200, 200, 404, 404, 401, 200, 200, 429, 502]);
    let post = c.post(gw.url("/ok/p")).body("12345").send().await.unwrap();
    assert_eq!(post.status(), 200);
    let _ = post.bytes().await;

    let want = [
        (
            r#"gatehouse_requests_total{route="ok",upstream="good",method="GET",status_class="2xx"}"#,
            3.0,
        ),
        (
            r#"gatehouse_requests_total{route="ok",upstream="good",method="POST",status_class="2xx"}"#,
            1.0,
        ),
        (
            r#"gatehouse_requests_total{route="-",upstream="-",method="GET",status_class="4xx"}"#,
            2.0,
        ),
        (
            r#"gatehouse_requests_total{route="keyed",upstream="good",method="GET",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"gatehouse_requests_total{route="limited",upstream="good",method="GET",status_class="2xx"}"#,
            2.0,
        ),
        (
            r#"gatehouse_requests_total{route="limited",upstream="good",method="GET",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"gatehouse_requests_total{route="dead",upstream="gone",method="GET",status_class="5xx"}"#,
            1.0,
        ),
        (r#"gatehouse_refusals_total{reason="route_not_found"}"#, 2.0),
        (
            r#"gatehouse_refusals_total{reason="missing_credentials"}"#,
            1.0,
        ),
        (r#"gatehouse_refusals_total{reason="rate_limited"}"#, 1.0),
        (r#"gatehouse_refusals_total{reason="upstream_failed"}"#, 1.0),
        (
            r#"gatehouse_auth_total{method="api_key",result="missing_credentials"}"#,
            1.0,
        ),
        (
            r#"gatehouse_ratelimit_decisions_total{policy="p",decision="allowed"}"#,
            2.0,
        ),
        (
            r#"gatehouse_ratelimit_decisions_total{policy="p",decision="limited"}"#,
            1.0,
        ),
        (
            r#"gatehouse_request_bytes_total{route="ok",upstream="good"}"#,
            5.0,
        ),
        (
            r#"gatehouse_request_duration_seconds_count{route="ok",upstream="good"}"#,
            4.0,
        ),
        (
            r#"gatehouse_upstream_duration_seconds_count{route="ok",upstream="good"}"#,
            4.0,
        ),
        (
            r#"gatehouse_upstream_duration_seconds_count{route="dead",upstream="gone"}"#,
            1.0,
        ),
        ("gatehouse_requests_in_flight", 0.0),
        ("gatehouse_config_generation", 1.0),
    ];
    // The last answer's record is written just after its body ends.
    let text = eventually(10, || async {
        let text = scrape(&gw).await;
        want.iter()
            .all(|(s, v)| sample(&text, s) == Some(*v))
            .then_some(text)
    })
    .await;
    let text = match text {
        Some(t) => t,
        None => {
            let text = scrape(&gw).await;
            for (s, v) in want {
                assert_eq!(sample(&text, s), Some(v), "{s}");
            }
            unreachable!()
        }
    };
    // Nothing else was counted as a request.
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("gatehouse_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 11.0);
    let bytes_out = sample(
        &text,
        r#"gatehouse_response_bytes_total{route="ok",upstream="good"}"#,
    )
    .expect("bytes out");
    assert!(bytes_out > 0.0);
    assert!(
        text.contains("# TYPE gatehouse_request_duration_seconds histogram"),
        "latency is a histogram"
    );
    assert!(
        text.contains(r#"le="0.0001""#) && text.contains(r#"le="10""#),
        "buckets from 100 µs to 10 s"
    );
    assert!(text.contains("gatehouse_build_info{version=\""));
    gw.shutdown().await;
}

#[tokio::test]
async fn random_paths_do_not_grow_the_series() {
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "").await.start().await;
    let c = client();
    let warm = c.get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(warm.status(), 404);
    let _ = c.get(gw.url("/ok/x")).send().await.unwrap().bytes().await;
    let before = eventually(5, || async {
        let t = scrape(&gw).await;
        (sample(&t, "gatehouse_requests_in_flight") == Some(0.0)).then_some(series(&t))
    })
    .await
    .expect("settled");
    for i in 0..60 {
        let path = format!(
            "/r{:x}/{i}?k={}",
            rand::random::<u64>(),
            rand::random::<u32>()
        );
        let resp = c.get(gw.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        let ok = c
            .get(gw.url(&format!("/ok/{:x}", rand::random::<u64>())))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let after = series(&scrape(&gw).await);
    assert_eq!(before, after, "random paths added series");
    gw.shutdown().await;
}

#[tokio::test]
async fn reloads_move_the_generation_and_count_failures() {
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "").await.start().await;
    let first = scrape(&gw).await;
    assert_eq!(sample(&first, "gatehouse_config_generation"), Some(1.0));
    let hash1 = sample(&first, "gatehouse_config_hash").expect("hash");

    let path = gw.policy_path("a.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[[route]]\nname = \"more\"\npath = \"/more\"\nrespond = { status = 204 }\n");
    std::fs::write(&path, &text).unwrap();
    gw.running().reload().await.expect("reload");
    let second = scrape(&gw).await;
    assert_eq!(sample(&second, "gatehouse_config_generation"), Some(2.0));
    assert_eq!(
        sample(
            &second,
            r#"gatehouse_config_reloads_total{result="success"}"#
        ),
        Some(1.0)
    );
    assert_ne!(sample(&second, "gatehouse_config_hash"), Some(hash1));

    std::fs::write(&path, "[[route]]\nname = \n").unwrap();
    assert!(gw.running().reload().await.is_err());
    let third = scrape(&gw).await;
    assert_eq!(sample(&third, "gatehouse_config_generation"), Some(2.0));
    assert_eq!(
        sample(
            &third,
            r#"gatehouse_config_reloads_total{result="failure"}"#
        ),
        Some(1.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_negotiate_openmetrics_and_can_require_the_token() {
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = mixed_gateway(&backend, "")
        .await
        .admin_token_hash(&hash)
        .admin("metrics_require_token = true")
        .start()
        .await;
    let c = client();
    let refused = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let om = c
        .get(gw.admin_url("/metrics"))
        .bearer_auth(&token)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(om.status(), 200);
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let body = om.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE gatehouse_config_reloads counter"));
    let plain = c
        .get(gw.admin_url("/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn status_json_shows_config_traffic_and_refused_clients() {
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = mixed_gateway(&backend, "")
        .await
        .admin_token_hash(&hash)
        .start()
        .await;
    let c = client();
    let anonymous = c.get(gw.admin_url("/status.json")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let page = c.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 401);
    assert!(
        page.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"),
        "a browser is asked for the token"
    );
    for _ in 0..3 {
        let _ = c
            .get(gw.url("/limited"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let _ = c.get(gw.url("/ok")).send().await.unwrap().bytes().await;
    // An upstream failure is an error, not a refusal of the client.
    let dead = c.get(gw.url("/dead")).send().await.unwrap();
    assert_eq!(dead.status(), 502);
    let admin = AdminApi::new(&gw, &token);
    let status = eventually(5, || async {
        let (s, v) = admin.get("/status.json").await;
        assert_eq!(s, 200);
        (v["last_minute"]["requests"] == 5).then_some(v)
    })
    .await
    .expect("five requests counted");
    assert_eq!(status["last_minute"]["error_rate"], 0.2);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_minute"]["refused"], 1);
    assert_eq!(status["traffic"].as_array().unwrap().len(), 90);
    let routes: Vec<&str> = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["ok", "keyed", "limited", "dead"]);
    assert_eq!(status["upstreams"][0]["name"], "gone");
    assert_eq!(status["upstreams"][1]["name"], "good");
    let target = &status["upstreams"][1]["targets"][0];
    assert_eq!(target["url"], backend.url());
    assert_eq!(target["healthy"], true);
    assert_eq!(target["ejected"], false);
    assert_eq!(status["upstreams"][1]["breaker"], "closed");
    assert_eq!(status["refused_clients"][0]["client"], "127.0.0.1");
    assert_eq!(status["refused_clients"][0]["last_reason"], "rate_limited");
    assert_eq!(status["listeners"][0]["name"], "http");
    // Basic auth with the token as password opens the page.
    let page = c
        .get(gw.admin_url("/"))
        .basic_auth("admin", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<svg id=\"chart-rate\""));
    assert!(html.contains("<td>limited</td>"));
    gw.shutdown().await;
}

/// A program on PATH (it answers `--version`), or `None` with the reason
/// printed.
fn tool(name: &str, why: &str) -> Option<std::path::PathBuf> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIPPED: `{name}` is not installed ({why}); `.ci/run` installs it");
    }
    found.then(|| name.into())
}

#[tokio::test]
async fn promtool_accepts_the_scrape_and_the_shipped_rules() {
    let Some(promtool) = tool("promtool", "Debian package prometheus") else {
        return;
    };
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "").await.start().await;
    for path in ["/ok", "/nope", "/limited", "/dead"] {
        let _ = client()
            .get(gw.url(path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let text = scrape(&gw).await;
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    gw.shutdown().await;
}

/// Kills and reaps a child process when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_request_count() {
    let Some(prometheus) = tool("prometheus", "Debian package prometheus") else {
        return;
    };
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "").await.start().await;
    for _ in 0..7 {
        let _ = client()
            .get(gw.url("/ok"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: ['{}']\n",
            gw.running().admin_addr
        ),
    )
    .unwrap();
    let port = free_port().await;
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Reaped(child);
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=sum(gatehouse_requests_total{{route=%22ok%22}})"
    );
    let value = eventually(60, || async {
        let resp = client().get(&query).send().await.ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        let value = v["data"]["result"][0]["value"][1].as_str()?.to_owned();
        (value == "7").then_some(value)
    })
    .await;
    if value.is_none() {
        let targets = client()
            .get(format!("http://127.0.0.1:{port}/api/v1/targets"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        panic!("Prometheus never saw 7 requests; its targets: {targets}");
    }
    gw.shutdown().await;
}

/// A minimal WebDriver client (the W3C protocol is JSON over HTTP).
struct WebDriver {
    base: String,
    session: String,
    http: reqwest::Client,
}

impl WebDriver {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn text_of(&self, css: &str) -> String {
        let el = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(serde_json::json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned();
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test]
async fn the_status_page_works_in_a_real_browser() {
    let Some(driver) = tool("chromedriver", "Debian package chromium-driver") else {
        return;
    };
    if tool("chromium", "Debian package chromium").is_none() {
        return;
    }
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = mixed_gateway(&backend, "")
        .await
        .admin_token_hash(&hash)
        .start()
        .await;
    let port = free_port().await;
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Reaped(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let profile = tempfile::tempdir().unwrap();
    let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.path().display())]
        },
        "goog:loggingPrefs": {"browser": "ALL"}
    }}});
    let session = eventually(20, || async {
        let resp = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        v["value"]["sessionId"].as_str().map(str::to_owned)
    })
    .await
    .expect("a WebDriver session");
    let wd = WebDriver {
        base: base.clone(),
        session,
        http: http.clone(),
    };
    let admin = gw.running().admin_addr;
    wd.call(
        reqwest::Method::POST,
        "/url",
        Some(serde_json::json!({"url": format!("http://admin:{token}@{admin}/")})),
    )
    .await;
    let title = wd.call(reqwest::Method::GET, "/title", None).await;
    assert_eq!(title, "gatehouse status");
    let routes = wd.text_of("#routes").await;
    assert!(
        routes.contains("limited") && routes.contains("/ok*"),
        "{routes}"
    );
    let upstreams = wd.text_of("#upstreams").await;
    assert!(
        upstreams.contains("good") && upstreams.contains(&backend.url()),
        "{upstreams}"
    );
    assert!(upstreams.contains("healthy"), "{upstreams}");
    let before: u64 = wd.text_of("#requests-5m").await.parse().unwrap();

    for _ in 0..5 {
        let _ = http.get(gw.url("/ok")).send().await.unwrap().bytes().await;
    }
    // The page refreshes itself every five seconds.
    let after = eventually(20, || async {
        let n: u64 = wd.text_of("#requests-5m").await.parse().ok()?;
        (n >= before + 5).then_some(n)
    })
    .await;
    assert!(after.is_some(), "the page never showed the new requests");
    let refused = wd.text_of("#refused").await;
    assert!(refused.contains("client"), "{refused}");

    let logs = wd
        .call(
            reqwest::Method::POST,
            "/se/log",
            Some(serde_json::json!({"type": "browser"})),
        )
        .await;
    let severe: Vec<&serde_json::Value> = logs
        .as_array()
        .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
        .unwrap_or_default();
    assert!(logs.is_array(), "browser log readable: {logs}");
    assert!(severe.is_empty(), "console errors: {severe:?}");
    let _ = http
        .delete(format!("{base}/session/{}", wd.session))
        .send()
        .await;
    gw.shutdown().await;
}

/// An OTLP/HTTP receiver: decodes every export into spans.
async fn otlp_receiver() -> (
    Backend,
    std::sync::Arc<std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
) {
    use http_body_util::BodyExt;
    use prost::Message;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let backend = Backend::start(move |req| {
        let sink = sink.clone();
        async move {
            let path = req.uri().path().to_owned();
            let ctype = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(path, "/v1/traces");
            assert_eq!(ctype.as_deref(), Some("application/x-protobuf"));
            let export =
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                    body,
                )
                .expect("a valid OTLP export");
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        sink.lock().unwrap().push((service.clone(), span));
                    }
                }
            }
            http::Response::new(full(bytes::Bytes::new()))
        }
    })
    .await;
    (backend, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(
    span: &'a opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> Option<&'a opentelemetry_proto::tonic::common::v1::any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_reach_an_otlp_receiver_with_the_clients_trace() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let (collector, spans) = otlp_receiver().await;
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "")
        .await
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url())
        .env("OTEL_SERVICE_NAME", "edge-test")
        .start()
        .await;
    let resp = client()
        .get(gw.url("/limited/x"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    let sent = echo
        .header("traceparent")
        .expect("traceparent to the backend");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], CLIENT_TRACE,
        "the backend sees the client's trace"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(parts[3], "01");
    assert_eq!(echo.header("tracestate"), Some("vendor=abc"));

    // A request without context starts its own trace.
    let fresh: Echo = client()
        .get(gw.url("/ok"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh_tp = fresh.header("traceparent").expect("a new traceparent");
    assert!(!fresh_tp.contains(CLIENT_TRACE));

    let got = eventually(15, || async {
        let s = spans.lock().unwrap();
        let ours = s
            .iter()
            .filter(|(_, sp)| hex(&sp.trace_id) == CLIENT_TRACE)
            .count();
        (ours >= 3).then(|| s.clone())
    })
    .await
    .expect("three spans of the client's trace exported");
    let ours: Vec<_> = got
        .iter()
        .filter(|(_, sp)| hex(&sp.trace_id) == CLIENT_TRACE)
        .collect();
    assert!(ours.iter().all(|(service, _)| service == "edge-test"));
    let by_name = |name: &str| {
        ours.iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no span {name}: {:?}",
                    ours.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let server = by_name("GET limited");
    assert_eq!(
        hex(&server.parent_span_id),
        CLIENT_SPAN,
        "child of the client's span"
    );
    assert_eq!(server.kind, 2, "SERVER");
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&V::IntValue(200))
    );
    assert_eq!(
        attr(server, "http.route"),
        Some(&V::StringValue("limited".into()))
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    let rate = by_name("rate_limit");
    assert_eq!(rate.parent_span_id, server.span_id);
    let upstream = by_name("upstream");
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(upstream.kind, 3, "CLIENT");
    assert_eq!(
        hex(&upstream.span_id),
        parts[2],
        "the backend's parent is the upstream span"
    );
    assert!(upstream.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(
        ours.len(),
        3,
        "server, rate_limit and upstream only (the route has no auth)"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unsampled_requests_pass_context_on_but_export_nothing() {
    let (collector, spans) = otlp_receiver().await;
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "")
        .await
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url())
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .start()
        .await;
    let echo: Echo = client()
        .get(gw.url("/ok"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = echo.header("traceparent").unwrap();
    assert!(
        tp.starts_with(&format!("00-{CLIENT_TRACE}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    // A sampled request afterwards is exported: once it arrives, the
    // unsampled one (sent first, same exporter) would have too.
    let _ = client()
        .get(gw.url("/ok"))
        .header(
            "traceparent",
            format!("00-{}-{CLIENT_SPAN}-01", "1".repeat(32)),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let all = eventually(15, || async {
        let s = spans.lock().unwrap();
        (!s.is_empty()).then(|| s.clone())
    })
    .await
    .expect("the sampled request exported");
    assert!(
        all.iter().all(|(_, s)| hex(&s.trace_id) != CLIENT_TRACE),
        "the unsampled trace was exported"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_access_log_carries_the_trace_id() {
    let (collector, _spans) = otlp_receiver().await;
    let backend = Backend::echo().await;
    let builder = mixed_gateway(&backend, "").await;
    let config = builder.write();
    let endpoint = collector.url();
    let mut proc = Proc::spawn_with_env(
        &["serve", "--no-watch", "--config", config.to_str().unwrap()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let listening = proc.wait_for("listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let resp = client()
        .get(format!("http://{addr}/ok"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let line = proc.wait_for("access").await;
    assert_eq!(line["trace_id"], CLIENT_TRACE, "{line}");
    proc.signal("-TERM");
    let (status, _) = proc.finish().await;
    assert!(status.success());
}

#[tokio::test]
async fn tls_handshakes_and_certificate_expiry_are_measured() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue("site", &["localhost"]);
    let gw = GatewayBuilder::new()
        .main(&format!(
            "[[listener]]\nname = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .policy(
            "a.toml",
            "[[route]]\nname = \"hello\"\npath = \"/hello\"\nrespond = { status = 200, body = \"hi\" }\n",
        )
        .start()
        .await;
    let addr = gw.addr("tls");
    let https = tls_client(&ca.ca_pem(), &["localhost"], addr);
    for _ in 0..2 {
        let resp = https
            .get(format!("https://localhost:{}/hello", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Plain HTTP to the TLS port: a failed handshake.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink),
    )
    .await;
    let text = eventually(5, || async {
        let t = scrape(&gw).await;
        sample(
            &t,
            r#"gatehouse_tls_handshake_failures_total{listener="tls",reason="protocol"}"#,
        )
        .is_some()
        .then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("no failed handshake counted"));
    // reqwest may reuse its connection: one or two handshakes.
    let done = sample(
        &text,
        r#"gatehouse_tls_handshakes_total{listener="tls",version="TLSv1.3"}"#,
    )
    .expect("handshakes counted");
    assert!((1.0..=2.0).contains(&done), "{done}");
    let expiry = text
        .lines()
        .find(|l| {
            l.starts_with("gatehouse_certificate_expiry_timestamp_seconds{cert=\"site.pem\",name=\"localhost\"}")
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .expect("certificate expiry exported");
    let now = unix_now() as f64;
    assert!(
        expiry > now + 86_400.0 && expiry < now + 400.0 * 86_400.0,
        "{expiry}"
    );
    gw.shutdown().await;
}

/// Every `gatehouse_*` metric name in `text`, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("gatehouse_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn shipped_alerts_and_dashboard_use_only_metrics_gatehouse_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut source = String::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/gatehouse.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file}: {used:?}");
        for name in used {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{file} uses `{name}`, which no code registers"
            );
        }
    }
}

#[tokio::test]
async fn a_certificate_close_to_expiry_is_warned_about_and_exported() {
    let builder = GatewayBuilder::new();
    let dir = builder.path().to_path_buf();
    let ca = TestCa::new(&dir);
    let pair = ca.ca.issue(&["localhost"], 5).unwrap();
    let (cert, key) = (dir.join("soon.pem"), dir.join("soon-key.pem"));
    gatehouse::tls::write_pair(&pair, &cert, &key).unwrap();
    let builder = builder.main(&format!(
            "[[listener]]\nname = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
    // The builder owns the temp dir: it lives until the end of the test.
    let config = builder.write();
    let mut proc = Proc::spawn(&["serve", "--no-watch", "--config", config.to_str().unwrap()]);
    // Written while the config loads, before anything listens.
    let warning = proc.wait_for("certificate expires in under 14 days").await;
    let admin = proc.wait_for("admin listening").await["admin_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let days = warning["days_left"].as_i64().unwrap();
    assert!((3..=5).contains(&days), "{warning}");
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry = text
        .lines()
        .find(|l| l.starts_with("gatehouse_certificate_expiry_timestamp_seconds{cert=\"soon.pem\""))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .expect("expiry gauge");
    let left = expiry - unix_now() as f64;
    assert!(left > 3.0 * 86_400.0 && left < 6.0 * 86_400.0, "{left}");
    proc.signal("-TERM");
    let (status, _) = proc.finish().await;
    assert!(status.success());
}
