//! Rate-limit tests with Redis: two gateways share one budget, Redis dying
//! mid-test falls back and recovers; config errors.

use std::time::{Duration, Instant};

use crate::support::*;

use super::*;

/// The shared Redis server for tests, if the environment names one. The
/// URL may carry a password: it is never printed.
#[allow(clippy::disallowed_methods)]
pub(super) fn redis_url() -> Option<String> {
    let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    if url.is_none() {
        println!("skipped: GATEHOUSE_TEST_REDIS_URL is not set");
    }
    url
}

/// Keys matching `pattern` in the Redis at `url` (bounded by 2 s).
pub(super) async fn redis_keys(url: &str, pattern: &str) -> Result<Vec<String>, String> {
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

pub(super) fn redis_section(url: &str, extra: &str) -> String {
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
pub(super) struct RedisServer {
    pub(super) child: tokio::process::Child,
    pub(super) port: u16,
}

impl RedisServer {
    /// Starts one on `port` (a free one when `None`) and waits for PING.
    /// `None` when `redis-server` is not installed.
    pub(super) async fn start(port: Option<u16>) -> Option<RedisServer> {
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

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (by its pid) and waits for it to exit.
    pub(super) async fn kill(mut self) {
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
