//! Upstream tests: balancing, retries and their budget, breakers, outlier
//! ejection, health checks, hashing, timeouts, config errors.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

use super::*;

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
