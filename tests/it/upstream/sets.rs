//! Upstream tests: state and drains over the admin API, blue/green shifts
//! under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::support::*;

use super::*;

pub(super) async fn admin_gateway(policy_text: &str) -> (TestGateway, String) {
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .policy("u.toml", policy_text)
        .start()
        .await;
    (gw, token)
}

pub(super) fn target_state<'a>(status: &'a serde_json::Value, url: &str) -> &'a serde_json::Value {
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
