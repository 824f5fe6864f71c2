//! Rate limits, quotas and load shedding, end to end: bursts and refills,
//! per-consumer budgets and plans, shadow policies, client addresses behind
//! (un)trusted proxies, several policies on one request, the in-flight
//! limit, quotas across a restart, budgets shared through a real Redis and
//! what happens when that Redis dies and comes back, and config errors.
//!
//! Every refusal is checked for its status, JSON code, `Retry-After` and
//! `RateLimit` headers, and for never reaching the upstream (the backend
//! counts what it gets). API keys are secrets: they are never put in a
//! failure message, and neither are the bodies of forwarded answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

// ---------------------------------------------------------------- helpers

/// One answer, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// The JSON error body of a refusal (`Null` for other answers, which
    /// are not kept: a forwarded echo shows what the backend got).
    error: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` as whole seconds, if present and numeric.
    fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }

    /// The `r` and `t` of the `RateLimit` header, with its policy name.
    fn rate_limit(&self) -> Option<(String, u64, u64)> {
        parse_rate_limit(self.header("ratelimit")?)
    }

    /// What a failure message may show: the status and the error code.
    fn summary(&self) -> String {
        format!(
            "status {} error {} message {}",
            self.status, self.error["error"], self.error["message"]
        )
    }
}

/// `"name";r=<remaining>;t=<reset>` → `(name, r, t)`.
fn parse_rate_limit(v: &str) -> Option<(String, u64, u64)> {
    let mut parts = v.split(';');
    let name = parts.next()?.trim().trim_matches('"').to_owned();
    let mut r = None;
    let mut t = None;
    for p in parts {
        match p.trim().split_once('=')? {
            ("r", n) => r = n.parse().ok(),
            ("t", n) => t = n.parse().ok(),
            _ => {}
        }
    }
    Some((name, r?, t?))
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .expect("an answer within 10 s")
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let error = if (200..300).contains(&status) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        error,
    }
}

/// Checks a refusal: status, JSON code, a request id, `Retry-After` (≥ 1).
/// Returns the `Retry-After` seconds.
#[track_caller]
fn refused(case: &str, a: &Answer, status: u16, code: &str) -> u64 {
    assert_eq!(a.status, status, "{case}: {}", a.summary());
    assert_eq!(a.error["error"], code, "{case}: {}", a.summary());
    assert!(
        a.error["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{case}: a request id"
    );
    let retry = a
        .retry_after()
        .unwrap_or_else(|| panic!("{case}: a numeric Retry-After, got {:?}", a.headers));
    assert!(retry >= 1, "{case}: Retry-After {retry}");
    retry
}

/// A 429 `rate_limited` by `policy`, with both RateLimit headers naming
/// it as the tightest. Returns the `Retry-After` seconds.
#[track_caller]
fn rate_limited(case: &str, a: &Answer, policy: &str) -> u64 {
    let retry = refused(case, a, 429, "rate_limited");
    assert_eq!(
        a.error["message"],
        format!("rate limit `{policy}` exceeded"),
        "{case}: the refusing policy is named"
    );
    assert!(
        a.header("ratelimit-policy")
            .is_some_and(|v| v.contains(&format!("\"{policy}\";q="))),
        "{case}: RateLimit-Policy lists `{policy}`: {:?}",
        a.header("ratelimit-policy")
    );
    let (name, r, _) = a
        .rate_limit()
        .unwrap_or_else(|| panic!("{case}: a RateLimit header, got {:?}", a.headers));
    assert_eq!((name.as_str(), r), (policy, 0), "{case}: RateLimit");
    retry
}

fn hits(h: &AtomicUsize) -> usize {
    h.load(Ordering::SeqCst)
}

fn upstream(backend: &Backend) -> String {
    format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n",
        backend.url()
    )
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

// ------------------------------------------------------ burst and refill

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
struct ConsumerSetup {
    gw: TestGateway,
    hits: Arc<AtomicUsize>,
    admin: AdminApi,
    _backend: Backend,
}

async fn consumer_setup(policy_extra: &str) -> ConsumerSetup {
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
    async fn key_for(&self, name: &str, plan: Option<&str>) -> String {
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

    async fn call(&self, key: &str) -> Answer {
        get(&client(), &self.gw.url("/c/x"), &[("x-api-key", key)]).await
    }

    /// `burst` requests pass (with `q=burst` and counting down), the next
    /// one is refused.
    async fn spend(&self, case: &str, key: &str, burst: u64) {
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

// ------------------------------------------------------------------- Redis

/// The shared Redis server for tests, if the environment names one. The
/// URL may carry a password: it is never printed.
#[allow(clippy::disallowed_methods)]
fn redis_url() -> Option<String> {
    let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    if url.is_none() {
        println!("skipped: GATEHOUSE_TEST_REDIS_URL is not set");
    }
    url
}

/// Keys matching `pattern` in the Redis at `url` (bounded by 2 s).
async fn redis_keys(url: &str, pattern: &str) -> Result<Vec<String>, String> {
    let query = async {
        let mut c = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async::<Vec<String>>(&mut c)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(2), query).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    }
}

fn redis_section(url: &str, extra: &str) -> String {
    format!(
        "[rate_limits]\nbackend = \"redis\"\nredis_url = {}\n{extra}\n",
        toml::Value::String(url.to_owned())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_redis_budget() {
    let Some(url) = redis_url() else { return };
    const RATE: f64 = 50.0;
    const BURST: f64 = 10.0;
    let (backend, hits_) = Backend::counting().await;
    // A policy name of its own: counters of earlier runs cannot interfere.
    let name = random_name("shared");
    let policy = format!(
        "{}[[route]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"b\"\n\
         [[rate_limit]]\nname = \"{name}\"\nrate = \"50/s\"\nburst = 10\nkey = \"route\"\nroutes = [\"r\"]\n",
        upstream(&backend)
    );
    // Generous timeout, and `deny` so that a Redis failure shows as a 503
    // instead of silently deciding with local counters.
    let main = redis_section(
        &url,
        "redis_timeout = \"500ms\"\non_redis_failure = \"deny\"\n",
    );
    let mut gateways = Vec::new();
    for _ in 0..2 {
        gateways.push(
            GatewayBuilder::new()
                .main(&main)
                .policy("a.toml", &policy)
                .start()
                .await,
        );
    }

    let started = Instant::now();
    let until = started + Duration::from_millis(1000);
    let mut tasks = Vec::new();
    for (g, gw) in gateways.iter().enumerate() {
        let c = client();
        for _ in 0..3 {
            let (c, url) = (c.clone(), gw.url("/r/x"));
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited, mut other) = (0u64, 0u64, Vec::new());
                while Instant::now() < until {
                    let a = get(&c, &url, &[]).await;
                    match a.status {
                        200 => ok += 1,
                        429 => {
                            assert!(
                                a.retry_after().is_some_and(|s| s >= 1)
                                    && a.rate_limit().is_some()
                                    && a.error["error"] == "rate_limited",
                                "a refusal: {}",
                                a.summary()
                            );
                            limited += 1;
                        }
                        _ => other.push(a.summary()),
                    }
                }
                (g, ok, limited, other)
            }));
        }
    }
    let mut allowed = [0u64; 2];
    let mut limited = 0;
    let mut others = Vec::new();
    for t in tasks {
        let (g, ok, l, other) = t.await.expect("hammer task");
        allowed[g] += ok;
        limited += l;
        others.extend(other);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = allowed[0] + allowed[1];
    let expected = BURST + elapsed * RATE;
    println!(
        "redis sharing: allowed {total} ({} + {}), refused {limited}, in {elapsed:.3} s; \
         expected burst + elapsed × rate = {expected:.1} ({:+.1}%)",
        allowed[0],
        allowed[1],
        (total as f64 - expected) / expected * 100.0
    );
    assert!(others.is_empty(), "only 200 and 429: {others:?}");
    assert!(
        limited > total,
        "the hammering went well beyond the budget ({limited} refused)"
    );
    assert!(
        allowed[0] > 0 && allowed[1] > 0,
        "both gateways were served: {allowed:?}"
    );
    assert!(
        (total as f64 - expected).abs() <= expected * 0.15,
        "allowed {total}, expected {expected:.1} ± 15% (two separate budgets would give about {:.0})",
        2.0 * expected
    );
    assert_eq!(
        hits(&hits_) as u64,
        total,
        "the upstream got exactly the allowed requests"
    );
    let keys = redis_keys(&url, &format!("gatehouse:rl:{name}|*"))
        .await
        .expect("Redis answers");
    assert_eq!(
        keys,
        vec![format!("gatehouse:rl:{name}|r|r")],
        "one shared counter"
    );
}

/// A `redis-server` of this test's own on a loopback port, killed on drop.
struct RedisServer {
    child: tokio::process::Child,
    port: u16,
}

impl RedisServer {
    /// Starts one on `port` (a free one when `None`) and waits for PING.
    /// `None` when `redis-server` is not installed.
    async fn start(port: Option<u16>) -> Option<RedisServer> {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        });
        let spawned = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("spawn redis-server: {e}"),
        };
        let server = RedisServer { child, port };
        let up = eventually(5, || async {
            let ping = async {
                let mut c = redis::Client::open(server.url().as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            };
            match tokio::time::timeout(Duration::from_millis(500), ping).await {
                Ok(Ok(pong)) if pong == "PONG" => Some(()),
                _ => None,
            }
        })
        .await;
        assert!(up.is_some(), "redis-server on port {port} answers PING");
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (by its pid) and waits for it to exit.
    async fn kill(mut self) {
        self.child.start_kill().expect("kill redis-server");
        tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .expect("redis-server exits in time")
            .expect("wait for redis-server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_test_falls_back_and_recovers() {
    if redis_url().is_none() {
        return;
    }
    let Some(redis) = RedisServer::start(None).await else {
        println!("skipped: redis-server is not on PATH");
        return;
    };
    let port = redis.port;
    let url = redis.url();
    let (backend, hits_) = Backend::counting().await;
    // Keyed on a header so that every phase starts with a fresh budget:
    // 3 at once, then one per minute.
    let policy = |name: &str| {
        format!(
            "{}[[route]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"b\"\n\
             [[rate_limit]]\nname = \"{name}\"\nrate = \"1/min\"\nburst = 3\nkey = \"header:x-client\"\nroutes = [\"r\"]\n",
            upstream(&backend)
        )
    };
    let breaker = "redis_timeout = \"200ms\"\nbreaker_failures = 2\nbreaker_open_for = \"300ms\"\n";
    let local_name = random_name("down-local");
    let deny_name = random_name("down-deny");
    let local = GatewayBuilder::new()
        .main(&redis_section(
            &url,
            &format!("{breaker}on_redis_failure = \"local\""),
        ))
        .policy("a.toml", &policy(&local_name))
        .start()
        .await;
    let deny = GatewayBuilder::new()
        .main(&redis_section(
            &url,
            &format!("{breaker}on_redis_failure = \"deny\""),
        ))
        .policy("a.toml", &policy(&deny_name))
        .start()
        .await;
    let c = client();
    let call = |gw: &TestGateway, who: &str| {
        let (c, url, who) = (c.clone(), gw.url("/r/x"), who.to_owned());
        async move { get(&c, &url, &[("x-client", &who)]).await }
    };
    let local_keys = format!("gatehouse:rl:{local_name}|*");

    // Redis up: both decide through it.
    for (gw, name) in [(&local, "local"), (&deny, "deny")] {
        let a = call(gw, "before").await;
        assert_eq!(a.status, 200, "{name}, Redis up: {}", a.summary());
    }
    let keys = redis_keys(&url, &local_keys).await.expect("Redis answers");
    assert_eq!(keys.len(), 1, "the local-fallback gateway counts in Redis");
    assert_eq!(hits(&hits_), 2);

    // Redis dies.
    redis.kill().await;
    let before = hits(&hits_);
    for i in 1..=6 {
        let a = call(&local, "during").await;
        if i <= 3 {
            assert_eq!(a.status, 200, "fallback, request {i}: {}", a.summary());
        } else {
            rate_limited(&format!("fallback, request {i}"), &a, &local_name);
        }
    }
    assert_eq!(
        hits(&hits_) - before,
        3,
        "the local fallback keeps the limit"
    );
    for i in 1..=3 {
        let a = call(&deny, &format!("during-{i}")).await;
        refused(
            &format!("deny, request {i}"),
            &a,
            503,
            "rate_limiter_unavailable",
        );
        assert_eq!(a.retry_after(), Some(1), "deny, request {i}");
    }
    assert_eq!(
        hits(&hits_) - before,
        3,
        "denied requests never reach the upstream"
    );

    // Redis comes back on the same port; nobody restarts the gateways.
    let restarted = RedisServer::start(Some(port))
        .await
        .expect("redis-server restarts");
    let recovered = Instant::now();
    let deny_back = eventually(10, || async {
        let a = call(&deny, "after").await;
        match a.status {
            200 => Some(()),
            503 => None,
            other => panic!("deny, recovering: unexpected {other}: {}", a.summary()),
        }
    })
    .await;
    assert!(
        deny_back.is_some(),
        "the deny gateway answers again within 10 s"
    );
    // The restarted Redis is empty: a counter of the local-fallback
    // gateway in it proves that gateway decides through Redis again.
    let mut n = 0;
    let local_back = eventually(10, || {
        n += 1;
        let who = format!("after-{n}");
        let (call, local_keys, url) = (&call, &local_keys, &url);
        let local = &local;
        async move {
            let a = call(local, &who).await;
            assert_eq!(a.status, 200, "local, recovering: {}", a.summary());
            let keys = redis_keys(url, local_keys).await.ok()?;
            (!keys.is_empty()).then_some(keys)
        }
    })
    .await;
    let keys = local_back.expect("the local-fallback gateway uses Redis again within 10 s");
    println!(
        "redis back: both gateways decide through it again after {:?} ({} counter(s) of the local-fallback gateway)",
        recovered.elapsed(),
        keys.len()
    );
    drop(restarted);
}

// ----------------------------------------------------------- config errors

#[tokio::test]
async fn rate_limit_config_errors_name_file_and_line() {
    const ROUTE: &str = "[[route]]\nname = \"r\"\npath = \"/r\"\nrespond = { status = 200 }\n";
    struct Case {
        name: &'static str,
        policy: String,
        /// The reported line is the (last) line containing this.
        at: &'static str,
        reason: &'static str,
    }
    let limit = |body: &str| format!("{ROUTE}\n[[rate_limit]]\nname = \"p\"\n{body}\n");
    let cases = [
        Case {
            name: "bad rate",
            policy: limit("rate = \"fast\"\nroutes = [\"r\"]"),
            at: "\"fast\"",
            reason: "invalid rate",
        },
        Case {
            name: "burst 0",
            policy: limit("rate = \"10/s\"\nburst = 0\nroutes = [\"r\"]"),
            at: "burst = 0",
            reason: "`burst` must be at least 1",
        },
        Case {
            name: "unknown key kind",
            policy: limit("rate = \"10/s\"\nkey = \"ip\"\nroutes = [\"r\"]"),
            at: "key = \"ip\"",
            reason: "unknown key `ip`",
        },
        Case {
            name: "unknown route in routes",
            policy: limit("rate = \"10/s\"\nroutes = [\"r\", \"nope\"]"),
            at: "\"nope\"",
            reason: "unknown route `nope`",
        },
        Case {
            name: "unknown policy in a route's rate_limits",
            policy: format!(
                "{ROUTE}rate_limits = [\"missing\"]\n[[rate_limit]]\nname = \"p\"\nrate = \"1/s\"\n"
            ),
            at: "\"missing\"",
            reason: "unknown rate_limit `missing`",
        },
        Case {
            name: "duplicate policy names",
            policy: format!(
                "{}[[rate_limit]]\nname = \"p\"\nrate = \"2/s\"\n",
                limit("rate = \"1/s\"")
            ),
            at: "name = \"p\"",
            reason: "rate_limit `p` is already defined at",
        },
        Case {
            name: "bad quota",
            policy: limit("rate = \"10/s\"\nquota = \"lots\"\nroutes = [\"r\"]"),
            at: "\"lots\"",
            reason: "invalid quota",
        },
        Case {
            name: "quota per client address",
            policy: limit(
                "rate = \"10/s\"\nkey = \"client_ip\"\nquota = \"5/day\"\nroutes = [\"r\"]",
            ),
            at: "\"5/day\"",
            reason: "`quota` needs `key = \"consumer\"`",
        },
        Case {
            name: "credential header as key",
            policy: limit("rate = \"10/s\"\nkey = \"header:authorization\"\nroutes = [\"r\"]"),
            at: "header:authorization",
            reason: "carries credentials",
        },
        Case {
            name: "bad plan rate",
            policy: limit(
                "rate = \"10/s\"\nroutes = [\"r\"]\n[rate_limit.plans.gold]\nrate = \"quick\"",
            ),
            at: "\"quick\"",
            reason: "plan `gold`: invalid rate",
        },
    ];
    for case in cases {
        let builder = GatewayBuilder::new().policy("limits.toml", &case.policy);
        let config = builder.write();
        let file = builder.path().join("policies").join("limits.toml");
        let want_line = case
            .policy
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(case.at))
            .map(|(i, _)| i + 1)
            .last()
            .expect("the case names a line");
        let err = gatehouse::server::check(&config, &Default::default()).expect_err(case.name);
        let found = err
            .0
            .iter()
            .find(|p| p.message.contains(case.reason))
            .unwrap_or_else(|| panic!("{}: no `{}` in:\n{err}", case.name, case.reason));
        assert_eq!(found.file, file, "{}: the policy file", case.name);
        assert!(found.line > 0, "{}: a line number", case.name);
        assert_eq!(found.line, want_line, "{}: the line\n{err}", case.name);
        assert!(
            found.message.contains("rate_limit `"),
            "{}: names the policy: {}",
            case.name,
            found.message
        );
    }
}

#[tokio::test]
async fn redis_backend_without_a_url_is_a_config_error() {
    let b = GatewayBuilder::new().main("[rate_limits]\nbackend = \"redis\"\n");
    let config = b.write();
    let err = gatehouse::server::check(&config, &Default::default())
        .expect_err("redis without a URL must be refused");
    let p = err
        .0
        .iter()
        .find(|p| p.message.contains("needs `redis_url`"))
        .unwrap_or_else(|| panic!("no redis_url problem in:\n{err}"));
    assert_eq!(p.file, config);
    let text = std::fs::read_to_string(&config).unwrap();
    let want_line = text.lines().position(|l| l == "[rate_limits]").unwrap() + 1;
    assert_eq!(p.line, want_line, "{err}");
}
