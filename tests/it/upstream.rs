//! Upstreams that survive failure: balancing, outlier ejection, health
//! checks, retries under a budget, circuit breakers, target sets and
//! drains, with real loopback backends that die, hang, fail and come back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::support::*;

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const FAIL_503: u8 = 2;
const HANG: u8 = 3;

/// A backend that can be told to fail or hang, killed (listener closed,
/// every connection cut) and brought back on the same port. Health-check
/// requests (`/health`) are counted apart and follow `health`.
struct Flaky {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    health: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

impl Flaky {
    async fn start(name: &'static str) -> Flaky {
        let mut f = Flaky {
            name,
            addr: "127.0.0.1:0".parse().unwrap(),
            mode: Arc::new(AtomicU8::new(OK)),
            health: Arc::new(AtomicU8::new(OK)),
            hits: Arc::new(AtomicUsize::new(0)),
            checks: Arc::new(AtomicUsize::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            tasks: None,
        };
        f.serve(TcpListener::bind("127.0.0.1:0").await.unwrap());
        f
    }

    fn serve(&mut self, listener: TcpListener) {
        self.addr = listener.local_addr().unwrap();
        let mut set = JoinSet::new();
        let (name, mode, health, hits, checks, delay) = (
            self.name,
            self.mode.clone(),
            self.health.clone(),
            self.hits.clone(),
            self.checks.clone(),
            self.delay_ms.clone(),
        );
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (mode, health, hits, checks, delay) = (
                    mode.clone(),
                    health.clone(),
                    hits.clone(),
                    checks.clone(),
                    delay.clone(),
                );
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (mode, health, hits, checks, delay) = (
                            mode.clone(),
                            health.clone(),
                            hits.clone(),
                            checks.clone(),
                            delay.clone(),
                        );
                        async move {
                            let ms = delay.load(Ordering::SeqCst);
                            if ms > 0 && req.uri().path() != "/health" {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let m = if req.uri().path() == "/health" {
                                checks.fetch_add(1, Ordering::SeqCst);
                                health.load(Ordering::SeqCst)
                            } else {
                                hits.fetch_add(1, Ordering::SeqCst);
                                mode.load(Ordering::SeqCst)
                            };
                            Ok::<_, Infallible>(answer(name, m, req).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        self.tasks = Some(set);
    }

    /// Stops accepting and cuts every open connection.
    fn kill(&mut self) {
        self.tasks = None;
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn set_health(&self, mode: u8) {
        self.health.store(mode, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(name: &str, mode: u8, req: Request<Incoming>) -> Response<TestBody> {
    let status = match mode {
        FAIL_500 => 500,
        FAIL_503 => 503,
        HANG => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            200
        }
        _ => 200,
    };
    let deadline = req
        .headers()
        .get("x-request-deadline")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Response::builder()
        .status(status)
        .header("x-target", name)
        .header("x-seen-deadline", deadline)
        .body(full(name.to_owned()))
        .unwrap()
}

fn targets(backends: &[&Flaky]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    format!("[{}]", list.join(", "))
}

/// A policy with upstream `u` (extra TOML appended to it) and route `/`.
fn policy(upstream: &str, route_extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"u\"\n{upstream}\n\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n{route_extra}\n"
    )
}

async fn gateway(policy_text: &str) -> TestGateway {
    GatewayBuilder::new()
        .policy("u.toml", policy_text)
        .start()
        .await
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String) {
    let resp = client()
        .get(gw.url(path))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let target = resp
        .headers()
        .get("x-target")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, target)
}

#[tokio::test]
async fn weighted_round_robin_spreads_by_weight() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let gw = gateway(&policy(
        &format!(
            "targets = [\"{}\", {{ url = \"{}\", weight = 3 }}]",
            a.url(),
            b.url()
        ),
        "",
    ))
    .await;
    for _ in 0..40 {
        assert_eq!(get(&gw, "/x").await.0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (10, 30));
}

#[tokio::test]
async fn gets_keep_succeeding_while_a_target_dies_and_comes_back() {
    let (a, mut b, c) = (
        Flaky::start("a").await,
        Flaky::start("b").await,
        Flaky::start("c").await,
    );
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.retry]\nattempts = 3\nbackoff_base = \"1ms\"\n\
             [upstream.outlier]\nconsecutive_failures = 1\nbase_ejection = \"100ms\"\nmax_ejection = \"300ms\"",
            targets(&[&a, &b, &c])
        ),
        "",
    ))
    .await;
    let mut errors = 0;
    for i in 0..150 {
        if i == 30 {
            b.kill();
        }
        if i == 90 {
            b.restart().await;
        }
        let (status, _) = get(&gw, "/x").await;
        if status != 200 {
            errors += 1;
        }
    }
    assert_eq!(errors, 0, "no client saw the dead target");
    assert!(a.hits() > 40 && c.hits() > 40, "survivors took the load");
    // Once its ejection (at most 300 ms) ends, b takes traffic again.
    let b_before = b.hits();
    let back = eventually(10, || async {
        assert_eq!(get(&gw, "/x").await.0, 200);
        (b.hits() > b_before).then_some(())
    })
    .await;
    assert!(back.is_some(), "the restarted target takes traffic again");
}

#[tokio::test]
async fn a_post_is_not_retried_but_a_get_is() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(FAIL_503);
    b.set(FAIL_503);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.retry]\nattempts = 2\nbackoff_base = \"1ms\"",
            targets(&[&a, &b])
        ),
        "",
    ))
    .await;
    let resp = client()
        .post(gw.url("/x"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "the backend's answer is passed on");
    assert_eq!(a.hits() + b.hits(), 1, "a POST is sent once");
    assert_eq!(get(&gw, "/x").await.0, 503);
    assert_eq!(a.hits() + b.hits(), 3, "a GET is tried twice");
    assert!(
        matches!((a.hits(), b.hits()), (2, 1) | (1, 2)),
        "each try went to a different target"
    );
}

#[tokio::test]
async fn a_route_may_allow_retrying_posts_with_small_bodies() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(FAIL_503);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.retry]\nattempts = 2\nbackoff_base = \"1ms\"\nbuffer_limit = \"1KiB\"\nbudget_min = 10\n\
             [upstream.outlier]\nconsecutive_failures = 0",
            targets(&[&a, &b])
        ),
        "retry_non_idempotent = true",
    ))
    .await;
    for _ in 0..4 {
        let resp = client()
            .post(gw.url("/x"))
            .body("small payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "retried on the healthy target");
    }
    let big = vec![b'x'; 4096];
    let before = a.hits() + b.hits();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = client()
            .post(gw.url("/x"))
            .body(big.clone())
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(
        a.hits() + b.hits() - before,
        4,
        "large bodies are sent once"
    );
    assert!(statuses.contains(&503), "so a's failure reaches the client");
}

#[tokio::test]
async fn the_retry_budget_caps_amplification_when_every_target_fails() {
    let (a, b, c) = (
        Flaky::start("a").await,
        Flaky::start("b").await,
        Flaky::start("c").await,
    );
    for t in [&a, &b, &c] {
        t.set(FAIL_503);
    }
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.retry]\nattempts = 3\nbackoff_base = \"1ms\"\n\
             budget_percent = 20\nbudget_min = 3\nbudget_window = \"1h\"\n\
             [upstream.outlier]\nconsecutive_failures = 0",
            targets(&[&a, &b, &c])
        ),
        "",
    ))
    .await;
    let n = 50;
    for _ in 0..n {
        assert_eq!(get(&gw, "/x").await.0, 503);
    }
    let hits = a.hits() + b.hits() + c.hits();
    // Without a budget: 3 tries each (150 hits).
    assert!(hits > n, "some retries were made ({hits})");
    assert!(hits <= n + n / 5 + 3, "at most 20% extra (+3): {hits}");
}

#[tokio::test]
async fn the_breaker_opens_then_recovers_through_half_open() {
    let a = Flaky::start("a").await;
    a.set(FAIL_500);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.breaker]\nfailure_threshold = 3\nopen_for = \"1s\"\nhalf_open_probes = 1",
            targets(&[&a])
        ),
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/x").await.0, 500);
    }
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_code(resp).await, "upstream_unavailable");
    assert_eq!(a.hits(), 3, "the open breaker did not touch the backend");

    a.set(OK);
    let recovered = eventually(10, || async {
        (get(&gw, "/x").await.0 == 200).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "a half-open probe closed the breaker");
    for _ in 0..5 {
        assert_eq!(get(&gw, "/x").await.0, 200, "closed again");
    }
}

#[tokio::test]
async fn an_ejected_target_comes_back() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(FAIL_500);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.outlier]\nconsecutive_failures = 2\nbase_ejection = \"2s\"\nmax_ejected_percent = 50",
            targets(&[&a, &b])
        ),
        "",
    ))
    .await;
    for _ in 0..20 {
        get(&gw, "/x").await;
    }
    assert_eq!(a.hits(), 2, "ejected after two failures in a row");
    assert_eq!(b.hits(), 18);
    a.set(OK);
    let back = eventually(10, || async {
        (get(&gw, "/x").await.1 == "a").then_some(())
    })
    .await;
    assert!(back.is_some(), "the ejection ended");
}

#[tokio::test]
async fn health_checks_take_a_target_out_and_in() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.health]\npath = \"/health\"\ninterval = \"50ms\"\njitter = \"0s\"\n\
             timeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2",
            targets(&[&a, &b])
        ),
        "",
    ))
    .await;
    a.set_health(FAIL_503);
    let checks = a.checks.clone();
    let out = eventually(5, || async {
        let before = checks.load(Ordering::SeqCst);
        // Wait for two more checks, then see where traffic goes.
        while checks.load(Ordering::SeqCst) < before + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hits = a.hits();
        for _ in 0..6 {
            get(&gw, "/x").await;
        }
        (a.hits() == hits).then_some(())
    })
    .await;
    assert!(out.is_some(), "a failing health check took a out");
    a.set_health(OK);
    let back = eventually(5, || async {
        (get(&gw, "/x").await.1 == "a").then_some(())
    })
    .await;
    assert!(back.is_some(), "passing checks brought a back");
}

#[tokio::test]
async fn when_all_unhealthy_fail_answers_503_and_panic_mode_tries_anyway() {
    for (choice, want) in [("fail", 503), ("try_anyway", 200)] {
        let a = Flaky::start("a").await;
        a.set_health(FAIL_503);
        let gw = gateway(&policy(
            &format!(
                "targets = {}\nwhen_all_unhealthy = \"{choice}\"\n[upstream.health]\ninterval = \"50ms\"\n\
                 jitter = \"0s\"\nunhealthy_threshold = 1",
                targets(&[&a])
            ),
            "",
        ))
        .await;
        let checks = a.checks.clone();
        let seen = eventually(5, || async {
            (checks.load(Ordering::SeqCst) >= 2).then_some(())
        })
        .await;
        assert!(seen.is_some());
        assert_eq!(get(&gw, "/x").await.0, want, "{choice}");
    }
}

#[tokio::test]
async fn hashing_on_a_header_keeps_a_key_on_one_target() {
    let (a, b, c) = (
        Flaky::start("a").await,
        Flaky::start("b").await,
        Flaky::start("c").await,
    );
    let gw = gateway(&policy(
        &format!(
            "targets = {}\nbalance = \"hash\"\nhash_on = \"header:x-user\"",
            targets(&[&a, &b, &c])
        ),
        "",
    ))
    .await;
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let resp = client()
                .get(gw.url("/x"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            seen.insert(resp.headers()["x-target"].to_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "user-{user} stayed on one target");
        owners.extend(seen);
    }
    assert_eq!(owners.len(), 3, "keys spread over every target");
}

#[tokio::test]
async fn backends_learn_the_deadline_and_routes_override_timeouts() {
    let a = Flaky::start("a").await;
    let gw = gateway(&policy(
        &format!("targets = {}\nrequest_timeout = \"20s\"", targets(&[&a])),
        "first_byte_timeout = \"200ms\"\nrequest_timeout = \"5s\"",
    ))
    .await;
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    let left: u64 = resp.headers()["x-seen-deadline"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 0 && left <= 5000, "the route's 5s, in ms: {left}");
    a.set(HANG);
    let resp = client()
        .get(gw.url("/x"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "the route's first-byte timeout");
}

#[tokio::test]
async fn bad_upstream_settings_are_refused_with_their_place() {
    let cases = [
        (
            "hash without key",
            "targets = [\"http://127.0.0.1:1\"]\nbalance = \"hash\"",
            "needs `hash_on`",
        ),
        (
            "bad hash key",
            "targets = [\"http://127.0.0.1:1\"]\nbalance = \"hash\"\nhash_on = \"body\"",
            "`hash_on` must be",
        ),
        (
            "retry status",
            "targets = [\"http://127.0.0.1:1\"]\n[upstream.retry]\non_status = [404]",
            "5xx statuses only",
        ),
        ("no targets", "targets = []", "at least one target"),
        (
            "sets all zero",
            "[[upstream.set]]\nname = \"blue\"\ntargets = [\"http://127.0.0.1:1\"]\nweight = 0",
            "weight above zero",
        ),
        (
            "unknown key",
            "targets = [\"http://127.0.0.1:1\"]\n[upstream.retry]\ntries = 3",
            "unknown field",
        ),
        (
            "dns nameserver",
            "dns = { name = \"api.internal\", port = 80, nameservers = [\"dns.example\"] }",
            "is not an IP address",
        ),
        (
            "dns name",
            "dns = { name = \"api internal\", port = 80 }",
            "not a valid DNS name",
        ),
        (
            "dns ttl bounds",
            "dns = { name = \"api.internal\", port = 80, min_ttl = \"1m\", max_ttl = \"5s\" }",
            "longer than `dns.max_ttl`",
        ),
        (
            "dns two resolvers",
            "dns = { name = \"a.internal\", port = 80, hosts_file = \"h\", nameservers = [\"10.0.0.2\"] }",
            "either `dns.hosts_file` or `dns.nameservers`",
        ),
        (
            "dns without port",
            "dns = { name = \"api.internal\" }",
            "`dns.port` is required",
        ),
        (
            "srv with port",
            "dns = { name = \"_api._tcp.internal\", srv = true, port = 80 }",
            "drop `dns.port`",
        ),
        (
            "srv from a hosts file",
            "dns = { name = \"_api._tcp.internal\", srv = true, hosts_file = \"h\" }",
            "SRV records need DNS",
        ),
        (
            "dns family",
            "dns = { name = \"api.internal\", port = 80, family = \"ipx\" }",
            "unknown variant",
        ),
    ];
    for (name, upstream, want) in cases {
        let b = GatewayBuilder::new().policy("u.toml", &policy(upstream, ""));
        let config = b.write();
        let err = gatehouse::server::check(&config, &gatehouse::config::Environment::default())
            .expect_err(name);
        let text = err.to_string();
        assert!(text.contains(want), "{name}: {text}");
        assert!(text.contains("u.toml:"), "{name}: names the file: {text}");
    }
}

async fn admin_gateway(policy_text: &str) -> (TestGateway, String) {
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .policy("u.toml", policy_text)
        .start()
        .await;
    (gw, token)
}

fn target_state<'a>(status: &'a serde_json::Value, url: &str) -> &'a serde_json::Value {
    status["upstream"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == url)
        .unwrap()
}

#[tokio::test]
async fn the_admin_api_shows_state_and_drains_survive_a_reload() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    b.set(FAIL_500);
    let text = policy(
        &format!(
            "targets = {}
[upstream.outlier]
consecutive_failures = 1
base_ejection = \"1h\"
             [upstream.breaker]
failure_threshold = 100",
            targets(&[&a, &b])
        ),
        "",
    );
    let (gw, token) = admin_gateway(&text).await;
    let api = AdminApi::new(&gw, &token);
    let (status, _) = AdminApi::new(&gw, "wrong-token").get("/v1/upstreams").await;
    assert_eq!(status, 401, "token required");
    for _ in 0..4 {
        get(&gw, "/x").await;
    }
    let (status, list) = api.get("/v1/upstreams").await;
    assert_eq!(status, 200);
    assert_eq!(list["upstreams"][0]["name"], "u");
    assert_eq!(list["upstreams"][0]["breaker"], "closed");
    let (_, shown) = api.get("/v1/upstreams/u").await;
    let tb = target_state(&shown, &b.url());
    assert_eq!(tb["ejected"], true, "b failed once and was ejected: {tb}");
    assert_eq!(tb["healthy"], true, "no active checks configured");
    let ta = target_state(&shown, &a.url());
    assert_eq!(ta["ejected"], false);
    assert_eq!(ta["in_flight"], 0);
    assert!(ta["requests"].as_u64().unwrap() >= 3);

    let (status, body) = api
        .post(
            "/v1/upstreams/u/targets/drain",
            serde_json::json!({"target": a.url()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(target_state(&body, &a.url())["drained"], true);
    let (status, body) = api
        .post(
            "/v1/upstreams/u/targets/drain",
            serde_json::json!({"target": "http://nowhere:1"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.get("/v1/upstreams/nope").await;
    assert_eq!(status, 404);

    // A reload builds new upstreams; runtime state is kept.
    gw.running().reload().await.unwrap();
    let (_, shown) = api.get("/v1/upstreams/u").await;
    assert_eq!(
        target_state(&shown, &a.url())["drained"],
        true,
        "drain kept"
    );
    assert_eq!(
        target_state(&shown, &b.url())["ejected"],
        true,
        "ejection kept"
    );
    // a drained, b ejected: panic mode would try b; drained targets never.
    let a_hits = a.hits();
    for _ in 0..3 {
        get(&gw, "/x").await;
    }
    assert_eq!(a.hits(), a_hits, "a drained target gets no new requests");
    let (status, _) = api
        .post(
            "/v1/upstreams/u/targets/undrain",
            serde_json::json!({"target": a.url()}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(get(&gw, "/x").await, (200, "a".to_owned()));
}

#[tokio::test]
async fn rainbow_shift_from_blue_to_green_under_load_loses_nothing() {
    let (b1, b2, g1, g2) = (
        Flaky::start("blue1").await,
        Flaky::start("blue2").await,
        Flaky::start("green1").await,
        Flaky::start("green2").await,
    );
    for t in [&b1, &b2, &g1, &g2] {
        t.delay_ms.store(20, Ordering::SeqCst);
    }
    let text = policy(
        &format!(
            "[[upstream.set]]
name = \"blue\"
targets = {}
weight = 100
             [[upstream.set]]
name = \"green\"
targets = {}
weight = 0",
            targets(&[&b1, &b2]),
            targets(&[&g1, &g2])
        ),
        "",
    );
    let (gw, token) = admin_gateway(&text).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = JoinSet::new();
    for _ in 0..4 {
        let (stop, failures, done, url) =
            (stop.clone(), failures.clone(), done.clone(), gw.url("/x"));
        load.spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let ok = c
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false);
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let started = eventually(10, || async {
        (done.load(Ordering::SeqCst) >= 40).then_some(())
    })
    .await;
    assert!(started.is_some());
    assert_eq!(g1.hits() + g2.hits(), 0, "green had no traffic yet");

    // The CLI shifts and waits until blue is idle.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args([
                "upstream",
                "shift",
                "u",
                "--to",
                "green=100",
                "--wait",
                "--wait-timeout",
                "20s",
                "--output",
                "json",
                "--admin-url",
                &gw.admin_url(""),
                "--admin-token",
                &token,
            ])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sets = shown["sets"].as_array().unwrap();
    assert_eq!(sets[0]["name"], "blue");
    assert_eq!(sets[0]["weight"], 0);
    assert_eq!(sets[0]["in_flight"], 0, "reported when blue was idle");
    assert_eq!(sets[1]["weight"], 100);

    let blue_after_idle = b1.hits() + b2.hits();
    let done_at_idle = done.load(Ordering::SeqCst);
    let more = eventually(10, || async {
        (done.load(Ordering::SeqCst) >= done_at_idle + 60).then_some(())
    })
    .await;
    assert!(more.is_some());
    stop.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed");
    assert_eq!(
        b1.hits() + b2.hits(),
        blue_after_idle,
        "blue got nothing new after the shift"
    );
    assert!(g1.hits() > 10 && g2.hits() > 10, "green took the traffic");
    assert!(
        b1.hits() > 5 && b2.hits() > 5,
        "blue served before the shift"
    );
}

/// Two backends, "a" on 127.0.0.1 and "b" on 127.0.0.2, on the same port
/// (so a name's answer alone decides which one gets traffic); `None` where
/// 127.0.0.2 cannot be bound.
async fn two_loopback_backends() -> Option<(Flaky, Flaky, u16)> {
    let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = one.local_addr().unwrap().port();
    let two = TcpListener::bind(("127.0.0.2", port)).await.ok()?;
    let idle = |name| Flaky {
        name,
        addr: "127.0.0.1:0".parse().unwrap(),
        mode: Arc::new(AtomicU8::new(OK)),
        health: Arc::new(AtomicU8::new(OK)),
        hits: Arc::new(AtomicUsize::new(0)),
        checks: Arc::new(AtomicUsize::new(0)),
        delay_ms: Arc::new(AtomicU64::new(0)),
        tasks: None,
    };
    let (mut a, mut b) = (idle("a"), idle("b"));
    a.serve(one);
    b.serve(two);
    Some((a, b, port))
}

#[tokio::test]
async fn a_dns_name_follows_the_resolver_answer() {
    // The hosts-style file (the test's resolver) decides which backend the
    // name points at.
    let Some((_a, b, port)) = two_loopback_backends().await else {
        println!("skipped: 127.0.0.2 cannot be bound here");
        return;
    };
    let builder = GatewayBuilder::new().policy(
        "u.toml",
        &policy(
            &format!(
                "dns = {{ name = \"api.internal\", port = {port}, min_ttl = \"50ms\", max_ttl = \"1s\", hosts_file = \"hosts\" }}"
            ),
            "",
        ),
    );
    let hosts = builder.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 api.internal\n").unwrap();
    let gw = builder.start().await;
    let first = eventually(5, || async {
        (get(&gw, "/x").await == (200, "a".to_owned())).then_some(())
    })
    .await;
    assert!(first.is_some(), "the name resolved to a");
    std::fs::write(&hosts, "127.0.0.2 api.internal\n").unwrap();
    let moved = eventually(5, || async {
        (get(&gw, "/x").await == (200, "b".to_owned())).then_some(())
    })
    .await;
    assert!(moved.is_some(), "a new answer moved the traffic to b");
    // A failed resolution (the name vanished) keeps the last good set.
    std::fs::write(&hosts, "# nothing\n").unwrap();
    let b_hits = b.hits();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&gw, "/x").await, (200, "b".to_owned()));
    }
    assert_eq!(b.hits(), b_hits + 10);
}

/// DNS records by (lower-case name, type): TTL and record data.
type Zone = std::collections::HashMap<(String, u16), (u32, Vec<Vec<u8>>)>;

/// A DNS server on a loopback UDP port serving a zone the test changes:
/// names it holds get their records (none for other types: "no data"),
/// other names NXDOMAIN. The time of every query of `logged` type is
/// logged.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<std::sync::Mutex<Zone>>,
    queries: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

const DNS_A: u16 = 1;
const DNS_SRV: u16 = 33;

fn dns_wire_name(name: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire
}

/// The dotted, lower-case name of a query's question, and where it ends.
fn dns_question(q: &[u8]) -> (String, usize) {
    let mut at = 12;
    let mut labels = Vec::new();
    while q[at] != 0 {
        let len = q[at] as usize;
        labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + len]).to_lowercase());
        at += 1 + len;
    }
    (labels.join("."), at + 1)
}

impl DnsServer {
    async fn start(logged: u16) -> DnsServer {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(std::sync::Mutex::new(Zone::new()));
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (z, log) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = &buf[..n];
                let (qname, at) = dns_question(q);
                let qtype = u16::from_be_bytes([q[at], q[at + 1]]);
                if qtype == logged {
                    log.lock().unwrap().push(tokio::time::Instant::now());
                }
                let (known, records) = {
                    let zone = z.lock().unwrap();
                    let known = zone.keys().any(|(n, _)| *n == qname);
                    (known, zone.get(&(qname, qtype)).cloned())
                };
                let (ttl, data) = records.unwrap_or((0, Vec::new()));
                // Header: same id, QR + RD + RA, NXDOMAIN for unknown names.
                let mut reply = q[0..2].to_vec();
                reply.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
                reply.extend_from_slice(&[0, 1, 0, data.len() as u8, 0, 0, 0, 0]);
                reply.extend_from_slice(&q[12..at + 4]);
                for d in data {
                    reply.extend_from_slice(&[0xC0, 12]);
                    reply.extend_from_slice(&qtype.to_be_bytes());
                    reply.extend_from_slice(&[0, 1]);
                    reply.extend_from_slice(&ttl.to_be_bytes());
                    reply.extend_from_slice(&(d.len() as u16).to_be_bytes());
                    reply.extend_from_slice(&d);
                }
                let _ = sock.send_to(&reply, from).await;
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
            task,
        }
    }

    fn set(&self, name: &str, qtype: u16, ttl: u32, data: Vec<Vec<u8>>) {
        let key = (name.to_lowercase(), qtype);
        self.zone.lock().unwrap().insert(key, (ttl, data));
    }

    fn set_a(&self, name: &str, ip: [u8; 4], ttl: u32) {
        self.set(name, DNS_A, ttl, vec![ip.to_vec()]);
    }

    fn queries(&self) -> Vec<tokio::time::Instant> {
        self.queries.lock().unwrap().clone()
    }

    /// Waits (up to `secs`) for more than `n` logged queries; returns them.
    async fn wait_for_queries(&self, n: usize, secs: u64) -> Vec<tokio::time::Instant> {
        eventually(secs, || async {
            let q = self.queries();
            (q.len() > n).then_some(q)
        })
        .await
        .unwrap_or_else(|| panic!("fewer than {} DNS queries in {secs}s", n + 1))
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_dns_answer_is_kept_for_its_ttl_within_floor_and_ceiling() {
    let Some((a, b, port)) = two_loopback_backends().await else {
        println!("skipped: 127.0.0.2 cannot be bound here");
        return;
    };
    let dns = DnsServer::start(DNS_A).await;
    dns.set_a("api.internal", [127, 0, 0, 1], 3);
    let gw = gateway(&policy(
        &format!(
            "dns = {{ name = \"api.internal\", port = {port}, nameservers = [\"{}\"], \
             min_ttl = \"200ms\", max_ttl = \"4s\" }}",
            dns.addr
        ),
        "",
    ))
    .await;
    let first = eventually(5, || async {
        (get(&gw, "/x").await == (200, "a".to_owned())).then_some(())
    })
    .await;
    assert!(
        first.is_some(),
        "the name resolved to a through our DNS server"
    );
    let t0 = dns.queries()[0];

    // The answer changes at once, but the gateway holds the old one for its
    // 3s TTL (not the 200ms floor): a keeps the traffic until then.
    dns.set_a("api.internal", [127, 0, 0, 2], 3);
    while t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            get(&gw, "/x").await,
            (200, "a".to_owned()),
            "within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dns.queries().len(), 1, "no query before the TTL ran out");
    let moved = eventually(5, || async {
        (get(&gw, "/x").await == (200, "b".to_owned())).then_some(())
    })
    .await;
    assert!(
        moved.is_some(),
        "after the TTL the new answer moved traffic to b"
    );
    let q = dns.queries();
    assert!(
        q[1] - q[0] >= Duration::from_millis(2950),
        "asked again after the TTL: {:?}",
        q[1] - q[0]
    );
    let a_hits = a.hits();

    // A zero TTL is raised to the floor: queries every 200ms, not a storm.
    dns.set_a("api.internal", [127, 0, 0, 2], 0);
    let before = dns.queries().len();
    dns.wait_for_queries(before, 5).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let q = dns.queries();
    let fast = &q[before..];
    assert!(
        fast.len() >= 3,
        "re-asked at the floor: {} queries",
        fast.len()
    );
    for w in fast.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(190),
            "never below the floor: {:?}",
            w[1] - w[0]
        );
    }

    // A day-long TTL is cut to the 4s ceiling.
    dns.set_a("api.internal", [127, 0, 0, 2], 86_400);
    let n = dns.queries().len();
    dns.wait_for_queries(n, 5).await;
    let q = dns.wait_for_queries(n + 1, 8).await;
    let gap = q[n + 1] - q[n];
    assert!(
        gap >= Duration::from_millis(3950),
        "held up to the ceiling: {gap:?}"
    );
    assert_eq!(a.hits(), a_hits, "a got nothing once the answer moved");
    assert!(b.hits() > 0);
}

#[tokio::test]
async fn srv_records_give_targets_ports_and_weights() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let dns = DnsServer::start(DNS_SRV).await;
    let srv = |priority: u16, weight: u16, port: u16, host: &str| {
        let mut d = Vec::new();
        for v in [priority, weight, port] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d.extend_from_slice(&dns_wire_name(host));
        d
    };
    // a and b share the top priority 3:1; c (priority 20) is a backup that
    // is not used while they are listed.
    dns.set(
        "_api._tcp.internal",
        DNS_SRV,
        1,
        vec![
            srv(10, 3, a.addr.port(), "a.internal"),
            srv(10, 1, b.addr.port(), "b.internal"),
            srv(20, 1, 9, "c.internal"),
        ],
    );
    for host in ["a.internal", "b.internal", "c.internal"] {
        dns.set_a(host, [127, 0, 0, 1], 60);
    }
    let gw = gateway(&policy(
        &format!(
            "dns = {{ name = \"_api._tcp.internal\", srv = true, nameservers = [\"{}\"], \
             min_ttl = \"100ms\", max_ttl = \"1s\" }}",
            dns.addr
        ),
        "",
    ))
    .await;
    let ready = eventually(5, || async {
        (get(&gw, "/x").await.0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the service resolved");
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..40 {
        assert_eq!(get(&gw, "/x").await.0, 200);
    }
    assert_eq!(
        (a.hits() - a0, b.hits() - b0),
        (30, 10),
        "the SRV weights, on the SRV ports"
    );

    // b leaves the service: after the 1s TTL only a is asked.
    dns.set(
        "_api._tcp.internal",
        DNS_SRV,
        1,
        vec![srv(10, 3, a.addr.port(), "a.internal")],
    );
    let moved = eventually(5, || async {
        let b_before = b.hits();
        for _ in 0..5 {
            get(&gw, "/x").await;
        }
        (b.hits() == b_before).then_some(())
    })
    .await;
    assert!(
        moved.is_some(),
        "b got no more traffic after leaving the SRV set"
    );
}

#[tokio::test]
async fn health_checks_of_a_dns_name_send_it_as_host() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let backend = Backend::start(move |req| {
        let log = log.clone();
        async move {
            if req.uri().path() == "/health" {
                let host = req
                    .headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_owned());
                log.lock().unwrap().push(host);
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let port = backend.addr.port();
    let builder = GatewayBuilder::new().policy(
        "u.toml",
        &policy(
            &format!(
                "dns = {{ name = \"api.internal\", port = {port}, hosts_file = \"hosts\", min_ttl = \"50ms\" }}\n\
                 [upstream.health]\npath = \"/health\"\ninterval = \"50ms\"\njitter = \"0s\""
            ),
            "",
        ),
    );
    std::fs::write(builder.path().join("hosts"), "127.0.0.1 api.internal\n").unwrap();
    let _gw = builder.start().await;
    let checked = eventually(5, || async { seen.lock().unwrap().first().cloned() }).await;
    assert_eq!(checked, Some(Some(format!("api.internal:{port}"))));
}

#[tokio::test]
async fn a_watched_targets_file_changes_the_set_without_a_reload() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let builder = GatewayBuilder::new().policy(
        "u.toml",
        &policy(
            "targets_file = \"targets.json\"\ntargets_file_poll = \"50ms\"",
            "",
        ),
    );
    let file = builder.path().join("targets.json");
    std::fs::write(&file, format!("[\"{}\"]", a.url())).unwrap();
    let gw = builder.start().await;
    assert_eq!(get(&gw, "/x").await, (200, "a".to_owned()), "read at start");
    let generation = gw.running().shared().generation();

    std::fs::write(
        &file,
        format!("[{{\"url\": \"{}\", \"weight\": 1}}]", b.url()),
    )
    .unwrap();
    let moved = eventually(5, || async {
        (get(&gw, "/x").await == (200, "b".to_owned())).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the new file moved the traffic to b");
    assert_eq!(gw.running().shared().generation(), generation, "no reload");

    // A broken file keeps the last good set.
    std::fs::write(&file, "[not json").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(&gw, "/x").await, (200, "b".to_owned()));

    // An empty list is an answer: 503 with the JSON body.
    std::fs::write(&file, "[]").unwrap();
    let empty = eventually(5, || async {
        let resp = client().get(gw.url("/x")).send().await.unwrap();
        (resp.status() == 503).then_some(resp)
    })
    .await
    .expect("an empty set answers 503");
    assert_eq!(error_code(empty).await, "no_upstream_target");
}

/// A target that accepts connections and closes them before answering.
async fn slammer() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            s.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
            drop(tcp);
        }
    });
    (addr, seen, task)
}

#[tokio::test]
async fn a_reset_before_the_response_is_retried_elsewhere() {
    let (bad, seen, task) = slammer().await;
    let good = Flaky::start("good").await;
    for (attempts, want_all_ok) in [(2, true), (1, false)] {
        let gw = gateway(&policy(
            &format!(
                "targets = [\"http://{bad}\", \"{}\"]\n[upstream.retry]\nattempts = {attempts}\n\
                 backoff_base = \"1ms\"\nbudget_min = 100\n[upstream.outlier]\nconsecutive_failures = 0",
                good.url()
            ),
            "",
        ))
        .await;
        let before = seen.load(Ordering::SeqCst);
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(get(&gw, "/x").await.0);
        }
        assert!(
            seen.load(Ordering::SeqCst) > before,
            "the bad target was tried"
        );
        if want_all_ok {
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        } else {
            assert!(statuses.contains(&502), "no retries: {statuses:?}");
        }
    }
    task.abort();
}

#[tokio::test]
async fn the_concurrency_limit_answers_503_without_touching_the_backend() {
    let a = Flaky::start("a").await;
    a.set(HANG);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.breaker]\nmax_concurrent = 2\nfailure_threshold = 0",
            targets(&[&a])
        ),
        "first_byte_timeout = \"20s\"",
    ))
    .await;
    let mut hung = JoinSet::new();
    for _ in 0..2 {
        let url = gw.url("/x");
        hung.spawn(async move {
            let _ = client()
                .get(url)
                .timeout(Duration::from_secs(20))
                .send()
                .await;
        });
    }
    let busy = eventually(5, || async { (a.hits() == 2).then_some(()) }).await;
    assert!(busy.is_some(), "two requests are in flight");
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_code(resp).await, "upstream_unavailable");
    assert_eq!(a.hits(), 2, "the third request never reached the backend");
    hung.abort_all();
}

#[tokio::test]
async fn decisions_are_counted_in_the_metrics_registry() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(FAIL_503);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.retry]\nattempts = 2\nbackoff_base = \"1ms\"\n\
             [upstream.outlier]\nconsecutive_failures = 1\nbase_ejection = \"1h\"",
            targets(&[&a, &b])
        ),
        "",
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(get(&gw, "/x").await.0, 200);
    }
    let text = gw.running().shared().metrics().render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
    };
    assert_eq!(
        value("gatehouse_upstream_retries_total{upstream=\"u\"}"),
        1.0
    );
    let ejected = format!(
        "gatehouse_upstream_ejections_total{{upstream=\"u\",target=\"{}\"}}",
        a.url()
    );
    assert_eq!(value(&ejected), 1.0);
    assert_eq!(
        value("gatehouse_upstream_breaker_state{upstream=\"u\"}"),
        0.0
    );
    assert!(text.contains("# HELP gatehouse_upstream_retries_total"));
}

#[tokio::test]
async fn a_canary_header_picks_its_set_whatever_the_weights() {
    let (stable, canary) = (Flaky::start("stable").await, Flaky::start("canary").await);
    let gw = gateway(&policy(
        &format!(
            "[[upstream.set]]\nname = \"stable\"\ntargets = {}\n\
             [[upstream.set]]\nname = \"canary\"\ntargets = {}\nweight = 0\n\
             match_header = {{ name = \"x-canary\", value = \"1\" }}",
            targets(&[&stable]),
            targets(&[&canary])
        ),
        "",
    ))
    .await;
    for (header, want) in [
        (None, "stable"),
        (Some("1"), "canary"),
        (Some("0"), "stable"),
    ] {
        for _ in 0..3 {
            let mut req = client().get(gw.url("/x"));
            if let Some(v) = header {
                req = req.header("x-canary", v);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-target"], want, "x-canary: {header:?}");
        }
    }
    assert_eq!((stable.hits(), canary.hits()), (6, 3));
}

#[tokio::test]
async fn a_route_connect_timeout_overrides_the_upstreams() {
    // A loopback listener whose accept queue is full and never drained:
    // Linux then drops new SYNs, so connecting hangs until the timeout.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    if probe.is_ok() {
        println!("SKIPPED: this kernel accepts connections past a full accept queue");
        return;
    }
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"stuck\"\ntargets = [\"http://{addr}\"]\nconnect_timeout = \"20s\"\n\
                 [[route]]\nname = \"quick\"\nprefix = \"/quick\"\nupstream = \"stuck\"\n\
                 connect_timeout = \"200ms\"\nrequest_timeout = \"20s\"\n"
            ),
        )
        .start()
        .await;
    let started = std::time::Instant::now();
    let resp = client().get(gw.url("/quick")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(error_code(resp).await, "upstream_timeout");
    // The upstream's own 20 s connect timeout and the route's 20 s
    // deadline would both take 20 s: the route's 200 ms one answered.
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    drop(fillers);
    drop(listener);
    gw.shutdown().await;
}
