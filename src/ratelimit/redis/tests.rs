//! Tests of ratelimit::redis.

use super::*;
use crate::ratelimit::Rate;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

use redis::Client;

use crate::breaker::{Admission, Breaker, Permit, Transition, Trip};
use crate::ratelimit::{Decision, Limit, LimitError, Limiter};

/// The one place tests read the environment.
#[allow(clippy::disallowed_methods)]
fn test_redis_url() -> Option<String> {
    let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        println!("skipped: GATEHOUSE_TEST_REDIS_URL is not set");
    }
    url
}

fn random_prefix() -> String {
    format!("gatehouse:test:{:016x}:", rand::random::<u64>())
}

fn limit(count: u32, period_ms: u64, burst: u32) -> Limit {
    Limit {
        rate: Rate {
            count,
            period: Duration::from_millis(period_ms),
        },
        burst,
    }
}

async fn limiter(url: &str, prefix: &str) -> RedisLimiter {
    RedisLimiter::connect(RedisOptions {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        // Generous: these tests are about the decision, not the timeout,
        // and the machine may be busy.
        timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    })
    .await
    .unwrap()
}

/// `PTTL key` on a separate connection (-2: no such key).
async fn pttl(url: &str, key: &str) -> i64 {
    let query = async {
        let mut c = Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("PTTL").arg(key).query_async::<i64>(&mut c).await
    };
    tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .unwrap()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `Limiter` that allows everything and counts its calls.
#[derive(Debug, Default)]
struct CountingLimiter {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Limiter for CountingLimiter {
    async fn check(&self, _key: &str, limit: &Limit) -> Result<Decision, LimitError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Decision {
            allowed: true,
            limit: limit.burst,
            remaining: limit.burst.saturating_sub(1),
            reset: Duration::ZERO,
            retry_after: None,
        })
    }
}

// -- pure ---------------------------------------------------------------

/// The limiter's breaker (the shared one, with the settings of a link).
#[derive(Debug)]
enum Step {
    Admit(u64, Option<Permit>),
    Fail(Permit, u64, Option<Transition>),
    Succeed(Permit, Option<Transition>),
    State(BreakerState),
}

#[test]
fn breaker_state_machine() {
    use BreakerState::{Closed, HalfOpen, Open};
    use Permit::{Normal, Probe};
    use Step::*;
    let opened = Some(Transition::Opened(Trip::Consecutive { failures: 3 }));
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "opens after 3 consecutive failures, then refuses",
            vec![
                Admit(0, Some(Normal)),
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                State(Closed),
                Fail(Normal, 10, opened),
                State(Open),
                Admit(50, None),
                Admit(109, None),
            ],
        ),
        (
            "a success resets the count",
            vec![
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                Succeed(Normal, None),
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                State(Closed),
            ],
        ),
        (
            "half-open after open_for, one probe only, success closes",
            vec![
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                Fail(Normal, 0, opened),
                Admit(100, Some(Probe)),
                State(HalfOpen),
                Admit(101, None),
                Succeed(Probe, Some(Transition::Closed)),
                State(Closed),
                Admit(102, Some(Normal)),
                // The count starts again from zero.
                Fail(Normal, 103, None),
                State(Closed),
            ],
        ),
        (
            "a failed probe opens again for open_for",
            vec![
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                Fail(Normal, 0, opened),
                Admit(100, Some(Probe)),
                Fail(Probe, 110, Some(Transition::Reopened)),
                State(Open),
                Admit(209, None),
                Admit(210, Some(Probe)),
            ],
        ),
        (
            "a lost probe is replaced after open_for",
            vec![
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                Fail(Normal, 0, opened),
                Admit(100, Some(Probe)),
                Admit(199, None),
                Admit(200, Some(Probe)),
                State(HalfOpen),
            ],
        ),
        (
            "stragglers neither close nor reopen",
            vec![
                Fail(Normal, 0, None),
                Fail(Normal, 0, None),
                Fail(Normal, 0, opened),
                Fail(Normal, 1, None),
                Succeed(Normal, None),
                State(Open),
                Admit(100, Some(Probe)),
                Fail(Normal, 101, None),
                State(HalfOpen),
            ],
        ),
    ];
    for (name, steps) in cases {
        let b = Breaker::default();
        let s = link::breaker_settings(3, Duration::from_millis(100));
        let mut now = 0;
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Admit(at, want) => {
                    now = at;
                    let got = match b.admit(&s, at).0 {
                        Admission::Pass(p) => Some(p),
                        Admission::Refused { .. } => None,
                    };
                    assert_eq!(got, want, "{name}: step {i} {step:?}");
                }
                Fail(p, at, want) => {
                    now = at;
                    assert_eq!(
                        b.record(&s, p, false, at),
                        want,
                        "{name}: step {i} {step:?}"
                    )
                }
                Succeed(p, want) => {
                    assert_eq!(
                        b.record(&s, p, true, now),
                        want,
                        "{name}: step {i} {step:?}"
                    )
                }
                State(want) => assert_eq!(b.state(), want, "{name}: step {i} {step:?}"),
            }
        }
    }
}

#[test]
fn decision_from_script_reply() {
    let ms = Duration::from_millis;
    let cases: Vec<(&str, Vec<i64>, Option<Decision>)> = vec![
        (
            "allowed",
            vec![1, 2, 0, 300_000],
            Some(Decision {
                allowed: true,
                limit: 5,
                remaining: 2,
                reset: ms(300),
                retry_after: None,
            }),
        ),
        (
            "refused",
            vec![0, 0, 99_500, 499_500],
            Some(Decision {
                allowed: false,
                limit: 5,
                remaining: 0,
                reset: Duration::from_micros(499_500),
                retry_after: Some(Duration::from_micros(99_500)),
            }),
        ),
        (
            "out-of-range values are clamped",
            vec![1, 99, -1, -5],
            Some(Decision {
                allowed: true,
                limit: 5,
                remaining: 5,
                reset: Duration::ZERO,
                retry_after: None,
            }),
        ),
        ("too short", vec![1, 2], None),
        ("too long", vec![1, 2, 3, 4, 5], None),
    ];
    for (name, reply, want) in cases {
        let got = decision_from_reply(&reply, 5).ok();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn debug_redacts_the_url_password() {
    let cases = [
        (
            "no credentials",
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379",
        ),
        (
            "password",
            "redis://:s3cret@h:6379/0",
            "redis://***@h:6379/0",
        ),
        ("user and password", "redis://u:p@ss@h", "redis://***@h"),
        ("not a url", "s3cret@h", "s3cret@h"),
    ];
    for (name, url, want) in cases {
        assert_eq!(redact_url(url), want, "{name}");
        let opts = RedisOptions {
            url: url.to_owned(),
            ..RedisOptions::default()
        };
        let debug = format!("{opts:?}");
        assert!(debug.contains(want), "{name}: {debug}");
        if url.contains("://") {
            assert!(!debug.contains("s3cret"), "{name}: {debug}");
        }
    }
}

// -- no server needed ---------------------------------------------------

#[tokio::test]
async fn bad_urls_are_refused_at_connect() {
    let cases = [
        ("not a url", "definitely not a url"),
        ("other scheme", "http://127.0.0.1:6379"),
        ("tls without a tls feature", "rediss://127.0.0.1:6379"),
    ];
    for (name, url) in cases {
        let got = RedisLimiter::connect(RedisOptions {
            url: url.to_owned(),
            ..RedisOptions::default()
        })
        .await;
        assert!(got.is_err(), "{name}: {got:?}");
    }
}

#[tokio::test]
async fn starts_with_redis_down_and_fails_fast() {
    let port = free_port();
    let timeout = Duration::from_millis(50);
    let start = Instant::now();
    let limiter = RedisLimiter::connect(RedisOptions {
        url: format!("redis://127.0.0.1:{port}"),
        timeout,
        connect_timeout: Duration::from_millis(500),
        breaker_failures: 2,
        breaker_open_for: Duration::from_secs(60),
        key_prefix: random_prefix(),
    })
    .await
    .unwrap();
    assert!(start.elapsed() < Duration::from_millis(500) + timeout);
    let lim = limit(10, 1000, 5);
    for _ in 0..3 {
        let t = Instant::now();
        let got = limiter.check("k", &lim).await;
        assert!(matches!(got, Err(LimitError::Unavailable(_))), "{got:?}");
        assert!(t.elapsed() < timeout * 2, "{:?}", t.elapsed());
    }
    assert_eq!(limiter.breaker_state(), BreakerState::Open);
}

// -- against GATEHOUSE_TEST_REDIS_URL ------------------------------------

#[tokio::test]
async fn a_burst_passes_then_the_next_is_refused() {
    let Some(url) = test_redis_url() else { return };
    let prefix = random_prefix();
    let l = limiter(&url, &prefix).await;
    let cases = [
        ("10/s, burst 3", limit(10, 1000, 3)),
        ("20/s, burst 1", limit(20, 1000, 1)),
        ("5/s, burst 10", limit(5, 1000, 10)),
        ("1/min, burst 2", limit(1, 60_000, 2)),
    ];
    for (i, (name, lim)) in cases.iter().enumerate() {
        let key = format!("burst-{i}");
        let t = lim.rate.interval();
        let burst = lim.burst;
        let start = Instant::now();
        for n in 1..=burst {
            let d = l.check(&key, lim).await.unwrap();
            let slack = start.elapsed() + Duration::from_millis(2);
            assert!(d.allowed, "{name}: request {n}");
            assert_eq!(d.limit, burst, "{name}");
            assert_eq!(d.remaining, burst - n, "{name}: remaining counts down");
            assert_eq!(d.retry_after, None, "{name}");
            let full = t * n;
            assert!(
                d.reset <= full && d.reset + slack >= full,
                "{name}: reset {:?}",
                d.reset
            );
        }
        let d = l.check(&key, lim).await.unwrap();
        let slack = start.elapsed() + Duration::from_millis(2);
        assert!(!d.allowed, "{name}: request {} must be refused", burst + 1);
        assert_eq!(d.remaining, 0, "{name}");
        let retry = d.retry_after.unwrap();
        assert!(
            retry <= t && retry + slack >= t,
            "{name}: retry_after {retry:?} vs interval {t:?}"
        );
        // The key lives until the bucket is full again.
        let ttl = pttl(&url, &format!("{prefix}{key}")).await;
        let full_ms = i64::try_from((t * burst).as_millis()).unwrap();
        // The TTL keeps running until PTTL answers.
        let ttl_slack = start.elapsed() + Duration::from_millis(2);
        let slack_ms = i64::try_from(ttl_slack.as_millis()).unwrap() + 1;
        assert!(
            ttl > 0 && ttl <= full_ms && ttl + slack_ms >= full_ms,
            "{name}: PTTL {ttl} vs {full_ms}"
        );
        if t <= Duration::from_millis(200) {
            tokio::time::sleep(retry + Duration::from_millis(3)).await;
            let d = l.check(&key, lim).await.unwrap();
            assert!(d.allowed, "{name}: allowed again after retry_after");
            assert_eq!(d.remaining, 0, "{name}");
        }
    }
}

#[tokio::test]
async fn keys_expire_once_the_bucket_is_full() {
    let Some(url) = test_redis_url() else { return };
    let prefix = random_prefix();
    let l = limiter(&url, &prefix).await;
    let key = format!("{prefix}idle");
    // T = 50 ms, burst 4: after two requests the bucket is full again in 100 ms.
    let lim = limit(20, 1000, 4);
    l.check("idle", &lim).await.unwrap();
    l.check("idle", &lim).await.unwrap();
    let ttl = pttl(&url, &key).await;
    assert!((90..=100).contains(&ttl), "PTTL {ttl}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(pttl(&url, &key).await, -2, "the key is gone");
    let d = l.check("idle", &lim).await.unwrap();
    assert_eq!(d.remaining, 3, "a fresh, full bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let Some(url) = test_redis_url() else { return };
    let prefix = random_prefix();
    // Two limiters, two connections: two gateways.
    let gateways = [limiter(&url, &prefix).await, limiter(&url, &prefix).await];
    let lim = limit(200, 1000, 20); // T = 5 ms
    let run_for = Duration::from_millis(1000);
    let allowed = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let refused = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let which = task % 2;
        let l = gateways[which].clone();
        let (allowed, refused, errors) = (allowed.clone(), refused.clone(), errors.clone());
        tasks.spawn(async move {
            while start.elapsed() < run_for {
                match l.check("shared", &lim).await {
                    Ok(d) if d.allowed => allowed[which].fetch_add(1, Ordering::Relaxed),
                    Ok(_) => refused.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = start.elapsed();
    let by_gateway = [
        allowed[0].load(Ordering::Relaxed),
        allowed[1].load(Ordering::Relaxed),
    ];
    let total = by_gateway[0] + by_gateway[1];
    let t = lim.rate.interval();
    let expected = f64::from(lim.burst) + elapsed.as_secs_f64() / t.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let deviation = (total as f64 - expected) / expected;
    println!(
        "shared budget: allowed {total} ({} + {}), refused {}, errors {}, elapsed {elapsed:?}, \
         GCRA allows {expected:.1}, deviation {:+.2}%",
        by_gateway[0],
        by_gateway[1],
        refused.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        deviation * 100.0
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(
        refused.load(Ordering::Relaxed) > 10 * total,
        "the key was hammered"
    );
    assert!(
        by_gateway[0] > 0 && by_gateway[1] > 0,
        "both gateways took part"
    );
    assert!(
        deviation.abs() < 0.03,
        "deviation {:+.2}%",
        deviation * 100.0
    );
}

// -- against a redis-server of our own ------------------------------------

async fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

async fn answers_ping(url: &str) -> bool {
    let ping = async {
        let mut c = Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(200), ping).await,
        Ok(Ok(pong)) if pong == "PONG"
    )
}

/// Starts `redis-server` on `port` and waits (≤ 5 s) until it answers.
async fn start_redis_server(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers_ping(&url).await {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not answer PING in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// How Redis goes away, and how it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGKILL, then a new redis-server on the same port: connections
    /// are refused, calls fail at once.
    Killed,
    /// SIGSTOP, then SIGCONT: the socket stays open and nothing answers,
    /// calls fail by timeout.
    Frozen,
}

async fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

#[tokio::test]
async fn redis_stopped_mid_test_then_back() {
    if !redis_server_on_path().await {
        println!("skipped: redis-server is not on PATH");
        return;
    }
    for outage in [Outage::Killed, Outage::Frozen] {
        outage_then_recovery(outage).await;
    }
}

async fn outage_then_recovery(outage: Outage) {
    let name = format!("{outage:?}");
    let port = free_port();
    let mut server = start_redis_server(port).await;
    let timeout = Duration::from_millis(50);
    let failures = 3;
    let open_for = Duration::from_millis(300);
    let limiter = RedisLimiter::connect(RedisOptions {
        url: format!("redis://127.0.0.1:{port}"),
        timeout,
        connect_timeout: Duration::from_millis(200),
        key_prefix: random_prefix(),
        breaker_failures: failures,
        breaker_open_for: open_for,
    })
    .await
    .unwrap();
    let lim = limit(1000, 1000, 100);
    assert!(limiter.check("k", &lim).await.unwrap().allowed, "{name}");
    assert_eq!(limiter.breaker_state(), BreakerState::Closed, "{name}");

    // Redis goes away, by its pid.
    let pid = server.id().unwrap();
    match outage {
        Outage::Killed => {
            signal(pid, "KILL").await;
            server.wait().await.unwrap();
        }
        Outage::Frozen => signal(pid, "STOP").await,
    }

    // Each call fails within about `timeout`; then the breaker opens.
    let mut failing = Vec::new();
    for _ in 0..failures {
        let t = Instant::now();
        let got = limiter.check("k", &lim).await;
        failing.push(t.elapsed());
        assert!(
            matches!(got, Err(LimitError::Unavailable(_))),
            "{name}: {got:?}"
        );
    }
    assert!(
        failing.iter().all(|e| *e < timeout * 2),
        "{name}: {failing:?}"
    );
    if outage == Outage::Frozen {
        assert!(
            failing.iter().all(|e| *e >= timeout),
            "{name}: by timeout: {failing:?}"
        );
    }
    assert_eq!(limiter.breaker_state(), BreakerState::Open, "{name}");

    // While open: at once, without the network.
    let mut open = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let got = limiter.check("k", &lim).await;
        open.push(t.elapsed());
        assert!(
            matches!(got, Err(LimitError::Unavailable(_))),
            "{name}: {got:?}"
        );
    }
    open.sort();
    let open_median = open[open.len() / 2];
    assert!(open_median < Duration::from_millis(5), "{name}: {open:?}");

    // The two documented behaviours.
    let counting = Arc::new(CountingLimiter::default());
    let local = Fallback {
        primary: limiter.clone(),
        fallback: counting.clone(),
        deny_on_failure: false,
    };
    let deny = Fallback {
        primary: limiter.clone(),
        fallback: counting.clone(),
        deny_on_failure: true,
    };
    assert!(local.degraded() && deny.degraded(), "{name}");
    assert!(local.check("k", &lim).await.unwrap().allowed, "{name}");
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "{name}: the fallback decided"
    );
    let got = deny.check("k", &lim).await;
    assert!(
        matches!(got, Err(LimitError::Unavailable(_))),
        "{name}: {got:?}"
    );
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "{name}: deny does not fall back"
    );

    // Redis comes back: the limiter recovers by itself.
    let _server = match outage {
        Outage::Killed => start_redis_server(port).await,
        Outage::Frozen => {
            signal(pid, "CONT").await;
            server
        }
    };
    let back = Instant::now();
    let deadline = back + open_for * 2 + Duration::from_secs(2);
    loop {
        if limiter.check("k", &lim).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no recovery within {:?}",
            deadline - back
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovered_in = back.elapsed();
    assert_eq!(limiter.breaker_state(), BreakerState::Closed, "{name}");
    assert!(!local.degraded(), "{name}");
    assert!(local.check("k", &lim).await.unwrap().allowed, "{name}");
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "{name}: redis decides again"
    );
    println!(
        "breaker ({name}): redis-server pid {pid}; failing calls took {failing:?}; \
         calls while open: median {open_median:?}, max {:?}; recovered {recovered_in:?} \
         after redis was back (open_for {open_for:?})",
        open[open.len() - 1]
    );
}
