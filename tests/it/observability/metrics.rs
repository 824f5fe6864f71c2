//! Observability tests: the Prometheus scrape, series bounds, reloads,
//! OpenMetrics and the token, the status JSON, promtool and a real Prometheus.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

use super::*;

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
