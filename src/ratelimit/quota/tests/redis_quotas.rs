//! Quota tests: [`RedisQuotas`] against a real Redis (skipped with a message
//! when `GATEHOUSE_TEST_REDIS_URL` is unset).

use std::time::Instant;

use rand::Rng;

use super::*;
use std::time::Duration;

use crate::auth::Timestamp;

/// The Redis server for tests, if the environment names one.
#[allow(clippy::disallowed_methods)]
fn redis_url() -> Option<String> {
    let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        println!("skipped: GATEHOUSE_TEST_REDIS_URL is not set");
    }
    url
}

fn random_key() -> String {
    format!("test:{:016x}", rand::rng().random::<u64>())
}

fn now_utc() -> Timestamp {
    use crate::auth::Clock;
    crate::auth::SystemClock.now()
}

/// A plain connection, to look at and clean up the counters.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn delete(url: &str, key: &str, quota: &Quota, now: Timestamp) {
    let name = format!("{REDIS_PREFIX}{key}:{}", quota.period_id(now));
    let _: () = redis::cmd("DEL")
        .arg(name)
        .query_async(&mut raw(url).await)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_redis_quotas_share_one_count() {
    let Some(url) = redis_url() else { return };
    let key = random_key();
    let quota = Quota {
        count: 6,
        period: QuotaPeriod::Day,
    };
    let now = now_utc();
    let a = RedisQuotas::connect(&url, Duration::from_secs(2)).unwrap();
    let b = RedisQuotas::connect(&url, Duration::from_secs(2)).unwrap();

    let from = |q: &RedisQuotas| {
        let q = q.clone();
        let key = key.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..5 {
                out.push(q.charge(&key, &quota, now).await.unwrap());
            }
            out
        }
    };
    let (da, db) = tokio::join!(from(&a), from(&b));
    let all: Vec<QuotaDecision> = da.into_iter().chain(db).collect();
    let allowed: Vec<u64> = all.iter().filter(|d| d.allowed).map(|d| d.used).collect();
    let mut sorted = allowed.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [1, 2, 3, 4, 5, 6],
        "exactly six pass, each a new count"
    );
    for d in all.iter().filter(|d| !d.allowed) {
        assert_eq!((d.used, d.remaining), (6, 0), "refused: {d:?}");
    }
    for d in &all {
        assert_eq!(d.limit, 6);
        assert_eq!(d.resets_at, quota.resets_at(now));
    }
    delete(&url, &key, &quota, now).await;
}

#[tokio::test]
async fn redis_counters_expire_a_day_after_their_period() {
    let Some(url) = redis_url() else { return };
    let now = now_utc();
    let mut conn = raw(&url).await;
    for period in [QuotaPeriod::Day, QuotaPeriod::Month] {
        let key = random_key();
        let quota = Quota { count: 1, period };
        let quotas = RedisQuotas::connect(&url, Duration::from_secs(2)).unwrap();
        assert!(quotas.charge(&key, &quota, now).await.unwrap().allowed);
        assert!(!quotas.charge(&key, &quota, now).await.unwrap().allowed);

        let name = format!("{REDIS_PREFIX}{key}:{}", quota.period_id(now));
        let (value, pttl): (u64, i64) = redis::pipe()
            .get(&name)
            .pttl(&name)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, 1, "{period}: the refused request is not counted");
        let want_ms = (quota.resets_at(now) + SECONDS_PER_DAY - now) * 1000;
        assert!(
            pttl > 0 && pttl <= want_ms && pttl > want_ms - 60_000,
            "{period}: PTTL {pttl} ms, want about {want_ms} ms"
        );
        delete(&url, &key, &quota, now).await;
    }
}

#[tokio::test]
async fn a_dead_redis_is_unavailable_within_the_timeout() {
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let quotas = RedisQuotas::connect("redis://:hunter2@127.0.0.1:1", timeout).unwrap();
    for attempt in ["first", "second"] {
        let err = quotas
            .charge("api:c_a", &MONTHLY_3, now_utc())
            .await
            .unwrap_err();
        let QuotaError::Unavailable(text) = &err else {
            panic!("{attempt}: {err:?}")
        };
        assert!(!text.contains("hunter2"), "{attempt}: {text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_bad_redis_url_is_refused_without_echoing_it() {
    for url in ["", "http://:hunter2@example.com", "not a url"] {
        let err = RedisQuotas::connect(url, Duration::from_secs(1)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, QuotaError::Unavailable(_)), "case {url:?}");
        assert!(!text.contains("hunter2"), "case {url:?}: {text}");
    }
}

#[tokio::test]
async fn a_dead_redis_opens_the_breaker_and_charges_stop_reaching_it() {
    use crate::ratelimit::redis::BreakerState;
    // A closed port: bound by us, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let open_for = Duration::from_secs(600);
    let quotas =
        RedisQuotas::connect_with_breaker(&url, Duration::from_millis(300), 3, open_for).unwrap();
    for attempt in 1..=3 {
        assert_eq!(quotas.breaker_state(), BreakerState::Closed, "{attempt}");
        let err = quotas
            .charge("api:c_a", &MONTHLY_3, now_utc())
            .await
            .unwrap_err();
        assert!(
            matches!(err, QuotaError::Unavailable(_)),
            "failure {attempt} went to the network: {err:?}"
        );
    }
    assert_eq!(quotas.breaker_state(), BreakerState::Open);
    // While open (600 s), no charge reaches the connection: each is refused
    // by the breaker, clones included (they share it).
    let clone = quotas.clone();
    for (name, q) in [("same", &quotas), ("clone", &clone)] {
        for attempt in 0..5 {
            let err = q
                .charge("api:c_a", &MONTHLY_3, now_utc())
                .await
                .unwrap_err();
            assert!(
                matches!(err, QuotaError::BreakerOpen),
                "{name} {attempt}: {err:?}"
            );
            assert!(err.to_string().contains("circuit breaker open"), "{err}");
        }
    }
    assert_eq!(quotas.breaker_state(), BreakerState::Open);
}
