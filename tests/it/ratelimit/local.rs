//! Rate-limit tests on one gateway: burst and refill, consumers and plans,
//! shadow policies, client addresses, combined policies, load shedding, quotas.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

use super::*;

#[tokio::test]
async fn burst_passes_then_429_with_retry_after_then_passes_again() {
    let (backend, hits_) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}[[route]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"b\"\n\
                 [[rate_limit]]\nname = \"p\"\nrate = \"1/s\"\nburst = 3\nkey = \"client_ip\"\nroutes = [\"r\"]\n",
                upstream(&backend)
            ),
        )
        .start()
        .await;
    let c = client();
    let url = gw.url("/r/x");
    let started = Instant::now();
    for (i, remaining) in [2u64, 1, 0].into_iter().enumerate() {
        let a = get(&c, &url, &[]).await;
        let case = format!("request {}", i + 1);
        assert_eq!(a.status, 200, "{case}: {}", a.summary());
        assert_eq!(
            a.header("ratelimit-policy"),
            Some(r#""p";q=3;w=3"#),
            "{case}"
        );
        let (name, r, t) = a.rate_limit().expect("RateLimit header");
        assert_eq!((name.as_str(), r), ("p", remaining), "{case}: remaining");
        // The full burst is back after (3 − remaining) intervals; `t` is
        // an upper bound, late by less than one interval.
        let used = 3 - remaining;
        assert!((used..=used + 1).contains(&t), "{case}: t={t}, want {used}");
    }
    assert_eq!(hits(&hits_), 3);

    let a = get(&c, &url, &[]).await;
    let retry = rate_limited("4th request", &a, "p");
    assert_eq!(retry, 1, "one request is back within a second");
    assert_eq!(a.header("ratelimit-policy"), Some(r#""p";q=3;w=3"#));
    let (_, _, t) = a.rate_limit().unwrap();
    assert!((1..=3).contains(&t), "refused: t={t}");
    assert_eq!(
        hits(&hits_),
        3,
        "a refused request never reaches the upstream"
    );

    // One interval after the burst began, one request passes again.
    let deadline = Instant::now() + Duration::from_secs(3);
    let passed = loop {
        let a = get(&c, &url, &[]).await;
        if a.status == 200 {
            break started.elapsed();
        }
        rate_limited("while waiting", &a, "p");
        assert!(Instant::now() < deadline, "no request passed within 3 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        passed >= Duration::from_millis(900),
        "passed again after {passed:?}: too early for 1/s"
    );
    assert_eq!(hits(&hits_), 4);
    // …and only one: the bucket is empty again.
    let a = get(&c, &url, &[]).await;
    rate_limited("right after the refill", &a, "p");
    assert_eq!(hits(&hits_), 4);
}

// ------------------------------------------------- consumers and plans

/// A gateway whose `/c` route needs an API key and carries a per-consumer
/// policy: 2 at once by default, 4 for plan `gold`; rate 1/min so nothing
/// refills during the test.
pub(super) struct ConsumerSetup {
    pub(super) gw: TestGateway,
    pub(super) hits: Arc<AtomicUsize>,
    pub(super) admin: AdminApi,
    pub(super) _backend: Backend,
}

pub(super) async fn consumer_setup(policy_extra: &str) -> ConsumerSetup {
    let (backend, hits) = Backend::counting().await;
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(""))
        .policy(
            "a.toml",
            &format!(
                "{}[[route]]\nname = \"c\"\nprefix = \"/c\"\nupstream = \"b\"\nauth = \"api_key\"\n\
                 rate_limits = [\"per-consumer\"]\n\
                 [[rate_limit]]\nname = \"per-consumer\"\nrate = \"1/min\"\nburst = 2\nkey = \"consumer\"\n\
                 plans = {{ gold = {{ rate = \"1/min\", burst = 4 }} }}\n{policy_extra}\n",
                upstream(&backend)
            ),
        )
        .start()
        .await;
    let admin = AdminApi::new(&gw, &token);
    ConsumerSetup {
        gw,
        hits,
        admin,
        _backend: backend,
    }
}

impl ConsumerSetup {
    /// A new consumer (with `plan`, if any) and one API key for it.
    pub(super) async fn key_for(&self, name: &str, plan: Option<&str>) -> String {
        let body = match plan {
            Some(p) => json!({ "name": name, "plan": p }),
            None => json!({ "name": name }),
        };
        let (s, v) = self.admin.post("/v1/consumers", body).await;
        assert_eq!(s, 201, "create consumer {name}: {}", v["error"]);
        let id = v["consumer"]["id"]
            .as_str()
            .expect("consumer id")
            .to_owned();
        self.admin.create_key(&id, json!({})).await.1
    }

    pub(super) async fn call(&self, key: &str) -> Answer {
        get(&client(), &self.gw.url("/c/x"), &[("x-api-key", key)]).await
    }

    /// `burst` requests pass (with `q=burst` and counting down), the next
    /// one is refused.
    pub(super) async fn spend(&self, case: &str, key: &str, burst: u64) {
        let before = hits(&self.hits);
        for i in 0..burst {
            let a = self.call(key).await;
            assert_eq!(a.status, 200, "{case}: request {}: {}", i + 1, a.summary());
            assert_eq!(
                a.header("ratelimit-policy"),
                Some(format!("\"per-consumer\";q={burst};w={}", burst * 60).as_str()),
                "{case}: request {}",
                i + 1
            );
            let (_, r, _) = a.rate_limit().expect("RateLimit");
            assert_eq!(r, burst - 1 - i, "{case}: request {}: remaining", i + 1);
        }
        assert_eq!(hits(&self.hits) - before, burst as usize, "{case}");
        let a = self.call(key).await;
        let retry = rate_limited(&format!("{case}: beyond the burst"), &a, "per-consumer");
        assert!(
            (50..=60).contains(&retry),
            "{case}: Retry-After {retry}, about a minute at 1/min"
        );
        assert_eq!(
            hits(&self.hits) - before,
            burst as usize,
            "{case}: refused requests never reach the upstream"
        );
    }
}

#[tokio::test]
async fn two_consumers_do_not_share_a_budget() {
    let s = consumer_setup("").await;
    let alice = s.key_for("alice", None).await;
    let bob = s.key_for("bob", None).await;
    s.spend("alice", &alice, 2).await;
    // Alice is out; Bob still has his whole burst.
    s.spend("bob", &bob, 2).await;
    let a = s.call(&alice).await;
    rate_limited("alice, still out", &a, "per-consumer");
    assert_eq!(hits(&s.hits), 4);
}

#[tokio::test]
async fn a_plan_override_applies() {
    let s = consumer_setup("").await;
    let cases = [
        ("gold plan: the plan's burst", Some("gold"), 4),
        ("no plan: the default", None, 2),
        ("unknown plan: the default", Some("bronze"), 2),
    ];
    for (i, (case, plan, burst)) in cases.into_iter().enumerate() {
        let key = s.key_for(&format!("consumer{i}"), plan).await;
        s.spend(case, &key, burst).await;
    }
}

// ----------------------------------------------------------------- shadow

#[tokio::test]
async fn shadow_policy_refuses_nothing_but_logs() {
    let (backend, hits_) = Backend::counting().await;
    let builder = GatewayBuilder::new().policy(
        "a.toml",
        &format!(
            "{}[[route]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"b\"\n\
             rate_limits = [\"try-strict\", \"roomy\"]\n\
             [[rate_limit]]\nname = \"try-strict\"\nrate = \"1/min\"\nburst = 1\nkey = \"client_ip\"\nshadow = true\n\
             [[rate_limit]]\nname = \"roomy\"\nrate = \"100/s\"\nburst = 100\nkey = \"client_ip\"\n",
            upstream(&backend)
        ),
    );
    let config = builder.write();
    let (mut proc, addr) = Proc::serve(&config).await;
    let c = client();
    for i in 1..=5 {
        let a = get(&c, &format!("http://{addr}/r/x"), &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.summary());
        assert_eq!(
            a.header("ratelimit-policy"),
            Some(r#""roomy";q=100;w=1"#),
            "request {i}: only the enforcing policy is reported"
        );
        let (name, _, _) = a.rate_limit().expect("RateLimit");
        assert_eq!(name, "roomy", "request {i}");
    }
    assert_eq!(hits(&hits_), 5, "the shadow policy refused nothing");

    let first = proc.wait_for("shadow rate limit would refuse").await;
    assert_eq!(first["policy"], "try-strict", "{first}");
    assert_eq!(first["route"], "r", "{first}");
    assert!(first["retry_after_secs"].as_u64().is_some_and(|s| s >= 1));
    proc.signal("-TERM");
    let (status, lines) = proc.finish().await;
    assert!(status.success(), "exit {status:?}");
    let shadow: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "shadow rate limit would refuse")
        .collect();
    assert_eq!(
        shadow.len(),
        4,
        "requests 2 to 5 would have been refused: {shadow:?}"
    );
    assert!(shadow.iter().all(|v| v["policy"] == "try-strict"));
}

// ------------------------------------------------------ client addresses

#[tokio::test]
async fn spoofed_forwarded_for_does_not_change_the_key() {
    let (backend, hits_) = Backend::counting().await;
    let policy = format!(
        "{}[[route]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"b\"\n\
         [[rate_limit]]\nname = \"per-ip\"\nrate = \"1/min\"\nburst = 2\nkey = \"client_ip\"\nroutes = [\"r\"]\n",
        upstream(&backend)
    );
    let c = client();

    // The peer (127.0.0.1) is not a trusted proxy: its X-Forwarded-For is
    // ignored, whatever it says.
    let untrusted = GatewayBuilder::new()
        .policy("a.toml", &policy)
        .start()
        .await;
    let url = untrusted.url("/r/x");
    for i in 0..5 {
        let xff = format!(
            "198.51.100.{}, 203.0.113.{}",
            rand::random::<u8>(),
            rand::random::<u8>()
        );
        let a = get(&c, &url, &[("x-forwarded-for", &xff)]).await;
        if i < 2 {
            assert_eq!(
                a.status,
                200,
                "untrusted, request {}: {}",
                i + 1,
                a.summary()
            );
        } else {
            rate_limited(&format!("untrusted, request {}", i + 1), &a, "per-ip");
        }
    }
    assert_eq!(hits(&hits_), 2, "one budget for every spoofed address");

    // Behind a trusted proxy the right-most hop is the client.
    let trusted = GatewayBuilder::new()
        .main("[access]\ntrusted_proxies = [\"127.0.0.1/32\"]\n")
        .policy("a.toml", &policy)
        .start()
        .await;
    let url = trusted.url("/r/x");
    let cases: &[(&str, &str, u16)] = &[
        ("client A, 1", "203.0.113.1", 200),
        ("client A, 2", "203.0.113.1", 200),
        ("client A, out", "203.0.113.1", 429),
        ("client B has its own budget", "203.0.113.2", 200),
        (
            "a left-most hop added by client A changes nothing",
            "198.51.100.77, 203.0.113.1",
            429,
        ),
        (
            "the right-most hop decides: client B",
            "203.0.113.1, 203.0.113.2",
            200,
        ),
        ("client B, out", "203.0.113.2", 429),
    ];
    let before = hits(&hits_);
    let mut passed = 0;
    for (case, xff, status) in cases {
        let a = get(&c, &url, &[("x-forwarded-for", xff)]).await;
        if *status == 200 {
            assert_eq!(a.status, 200, "trusted, {case}: {}", a.summary());
            passed += 1;
        } else {
            rate_limited(&format!("trusted, {case}"), &a, "per-ip");
        }
        assert_eq!(
            hits(&hits_) - before,
            passed,
            "trusted, {case}: backend hits"
        );
    }
}

// ------------------------------------------- several policies, one request

#[tokio::test]
async fn global_and_route_policies_combine_strictest_wins() {
    let (backend, hits_) = Backend::counting().await;
    // `g` applies everywhere (4 at once, then one per 10 s); route `a` adds
    // `tight` (2, then one per minute), route `b` adds `loose` (100 at once).
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "{}[[route]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"b\"\nrate_limits = [\"tight\"]\n\
                 [[route]]\nname = \"b\"\nprefix = \"/b\"\nupstream = \"b\"\nrate_limits = [\"loose\"]\n\
                 [[rate_limit]]\nname = \"g\"\nrate = \"1/10s\"\nburst = 4\nkey = \"client_ip\"\nglobal = true\n\
                 [[rate_limit]]\nname = \"tight\"\nrate = \"1/min\"\nburst = 2\nkey = \"client_ip\"\n\
                 [[rate_limit]]\nname = \"loose\"\nrate = \"1/h\"\nburst = 100\nkey = \"client_ip\"\n",
                upstream(&backend)
            ),
        )
        .start()
        .await;
    let c = client();
    let a_url = gw.url("/a/x");
    let b_url = gw.url("/b/x");
    let both_a = r#""g";q=4;w=40, "tight";q=2;w=120"#;
    let both_b = r#""g";q=4;w=40, "loose";q=100;w=360000"#;

    // Two pass on /a: both policies charged, `tight` is the tighter.
    for (i, (g_left, tight_left)) in [(3u64, 1u64), (2, 0)].into_iter().enumerate() {
        let a = get(&c, &a_url, &[]).await;
        assert_eq!(a.status, 200, "/a {}: {}", i + 1, a.summary());
        assert_eq!(a.header("ratelimit-policy"), Some(both_a));
        let (name, r, _) = a.rate_limit().unwrap();
        assert!(g_left > tight_left);
        assert_eq!((name.as_str(), r), ("tight", tight_left), "/a {}", i + 1);
    }
    // The third: `g` would allow it, `tight` refuses; its wait is `tight`'s.
    let a = get(&c, &a_url, &[]).await;
    let retry = rate_limited("/a 3: tight refuses", &a, "tight");
    assert_eq!(a.header("ratelimit-policy"), Some(both_a));
    assert!(
        (50..=60).contains(&retry),
        "Retry-After {retry} is tight's (about 60 s), not g's"
    );
    assert_eq!(hits(&hits_), 2);

    // On /b, `loose` has room but `g` runs out (the refused /a request was
    // charged to `g` too: every policy of a request is charged).
    let a = get(&c, &b_url, &[]).await;
    assert_eq!(a.status, 200, "/b 1: {}", a.summary());
    assert_eq!(a.header("ratelimit-policy"), Some(both_b));
    let (name, r, _) = a.rate_limit().unwrap();
    assert_eq!((name.as_str(), r), ("g", 0), "/b 1: g is the tightest");
    assert_eq!(hits(&hits_), 3);
    let a = get(&c, &b_url, &[]).await;
    let retry = rate_limited("/b 2: g refuses", &a, "g");
    assert_eq!(a.header("ratelimit-policy"), Some(both_b));
    assert!(
        (1..=10).contains(&retry),
        "Retry-After {retry} is g's (≤ 10 s), not tight's"
    );
    assert_eq!(hits(&hits_), 3, "refused requests never reach the upstream");

    // Back on /a both policies refuse: the longest wait (tight's) decides.
    let a = get(&c, &a_url, &[]).await;
    let retry = rate_limited("/a 4: both refuse", &a, "tight");
    assert!(
        (50..=60).contains(&retry),
        "Retry-After {retry} is the longer wait (tight's)"
    );
    assert_eq!(hits(&hits_), 3);
}

// ------------------------------------------------------------ load shedding

#[tokio::test]
async fn load_shedding_answers_503_at_once() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let hits_ = Arc::new(AtomicUsize::new(0));
    let h = hits_.clone();
    // Holds every answer until released.
    let backend = Backend::start(move |req| {
        h.fetch_add(1, Ordering::SeqCst);
        let mut release = release_rx.clone();
        let entered = entered_tx.clone();
        async move {
            let _ = entered.send(());
            let _ = release.wait_for(|go| *go).await;
            echo_response(req).await
        }
    })
    .await;
    let gw = GatewayBuilder::new()
        .main("[server]\nmax_concurrent_requests = 1\n")
        .policy(
            "a.toml",
            &format!(
                "{}[[route]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"b\"\n",
                upstream(&backend)
            ),
        )
        .start()
        .await;
    let url = gw.url("/r/x");
    let first = {
        let url = url.clone();
        tokio::spawn(async move { get(&client(), &url, &[]).await })
    };
    tokio::time::timeout(Duration::from_secs(5), entered_rx.recv())
        .await
        .expect("the first request reaches the backend")
        .expect("backend alive");

    // The only slot is taken: the next requests are shed at once.
    let c = client();
    for i in 1..=3 {
        let sent = Instant::now();
        let a = get(&c, &url, &[]).await;
        let took = sent.elapsed();
        refused(&format!("shed {i}"), &a, 503, "overloaded");
        assert_eq!(a.retry_after(), Some(1), "shed {i}");
        assert!(
            took < Duration::from_secs(1),
            "shed {i}: answered after {took:?}, not at once"
        );
        assert!(!first.is_finished(), "the first request is still held");
    }
    assert_eq!(hits(&hits_), 1, "shed requests never reach the upstream");

    release_tx.send(true).expect("release");
    let a = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the first request finishes once released")
        .expect("first task");
    assert_eq!(a.status, 200, "first: {}", a.summary());

    // The slot is free again (its permit goes with the finished response).
    let back = eventually(3, || async {
        let a = get(&c, &url, &[]).await;
        match a.status {
            200 => Some(()),
            503 => None,
            other => panic!("after release: unexpected {other}: {}", a.summary()),
        }
    })
    .await;
    assert!(back.is_some(), "requests pass again after the release");
    for i in 0..3 {
        let a = get(&c, &url, &[]).await;
        assert_eq!(a.status, 200, "after release {i}: {}", a.summary());
    }
}

// ------------------------------------------------------------------ quotas

#[tokio::test]
async fn quota_is_enforced_and_survives_a_restart() {
    let (backend, hits_) = Backend::counting().await;
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(""))
        .policy(
            "a.toml",
            &format!(
                "{}[[route]]\nname = \"q\"\nprefix = \"/q\"\nupstream = \"b\"\nauth = \"api_key\"\n\
                 [[rate_limit]]\nname = \"daily\"\nrate = \"100/s\"\nburst = 100\nkey = \"consumer\"\n\
                 quota = \"3/day\"\nroutes = [\"q\"]\n",
                upstream(&backend)
            ),
        )
        .start()
        .await;
    let admin = AdminApi::new(&gw, &token);
    let consumer = admin.create_consumer("acme").await;
    let (_, key) = admin.create_key(&consumer, json!({})).await;
    let c = client();
    let headers = [("x-api-key", key.as_str())];

    /// A 429 `quota_exceeded` until the end of the UTC day.
    fn quota_refused(case: &str, a: &Answer) {
        let retry = refused(case, a, 429, "quota_exceeded");
        assert_eq!(a.error["message"], "quota of `daily` exhausted", "{case}");
        let until_midnight = 86_400 - unix_now().rem_euclid(86_400) as u64;
        assert!(
            retry <= 86_400 && retry.abs_diff(until_midnight) <= 5,
            "{case}: Retry-After {retry}, the day ends in {until_midnight} s"
        );
        let rl = a.rate_limit();
        assert!(
            a.header("ratelimit-policy") == Some(r#""daily";q=100;w=1"#)
                && rl.as_ref().is_some_and(|(n, _, _)| n == "daily"),
            "{case}: RateLimit headers: {:?} {rl:?}",
            a.header("ratelimit-policy")
        );
    }

    for i in 1..=3 {
        let a = get(&c, &gw.url("/q/x"), &headers).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.summary());
    }
    for i in 4..=5 {
        let a = get(&c, &gw.url("/q/x"), &headers).await;
        quota_refused(&format!("request {i}"), &a);
    }
    assert_eq!(hits(&hits_), 3);

    // Stop (the counter is flushed to the store) and start a new gateway
    // on the same files and SQLite store.
    let (drained, dir) = gw.stop_keeping_dir().await;
    assert!(drained, "the first gateway drained");
    let gw = start_in(dir).await;
    let a = get(&c, &gw.url("/q/x"), &headers).await;
    quota_refused("after the restart", &a);
    assert_eq!(hits(&hits_), 3, "nothing passed after the restart");
}
