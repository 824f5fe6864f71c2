//! Step 8's policy logic: the strictest refusal decides, shadow policies
//! never refuse, an unavailable limiter or counter refuses or passes as
//! configured, and the headers name only enforced policies.

use std::collections::HashMap;

use super::*;
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::quota::{Quota, QuotaDecision, QuotaError};
use crate::ratelimit::{LimitError, Rate};
use crate::telemetry::Metrics;
use crate::telemetry::requests::PolicyMeters;

fn policy(
    name: &str,
    rate: &str,
    burst: u32,
    shadow: bool,
    quota: Option<&str>,
) -> Arc<RatePolicy> {
    let metrics = Metrics::disabled();
    Arc::new(RatePolicy {
        name: name.into(),
        limit: Limit {
            rate: Rate::parse(rate).unwrap_or_else(|e| panic!("{e}")),
            burst,
        },
        plans: HashMap::new(),
        key: KeyKind::ClientIp,
        shadow,
        quota: quota.map(|q| Quota::parse(q).unwrap_or_else(|e| panic!("{e}"))),
        meters: PolicyMeters::new(&metrics, name),
    })
}

fn charge<'a>(policies: &'a [Arc<RatePolicy>], headers: &'a HeaderMap) -> Charge<'a> {
    Charge {
        route: "r",
        policies,
        principal: None,
        client: IpAddr::from([192, 0, 2, 1]),
        headers,
        request_id: "rid",
    }
}

#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl Limiter for Down {
    async fn check(&self, _: &str, _: &Limit) -> Result<Decision, LimitError> {
        Err(LimitError::Unavailable("down".into()))
    }
}

#[async_trait::async_trait]
impl QuotaCounter for Down {
    async fn charge(&self, _: &str, _: &Quota, _: Timestamp) -> Result<QuotaDecision, QuotaError> {
        Err(QuotaError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn the_longest_wait_decides_and_shadows_never_refuse() {
    let policies = [
        policy("minute", "1/min", 1, false, None),
        policy("hour", "1/h", 1, false, None),
        policy("watch", "1/day", 1, true, None),
        policy("loose", "100/s", 100, false, None),
    ];
    let headers = HeaderMap::new();
    let limiter = LocalLimiter::new();
    let c = charge(&policies, &headers);
    let (first, rate_headers) = rate_limits(&c, &limiter).await;
    assert_eq!(first, Ok(()), "the first request passes every policy");
    let named: Vec<String> = rate_headers
        .iter()
        .filter(|(n, _)| n == "ratelimit-policy")
        .filter_map(|(_, v)| v.to_str().ok().map(str::to_owned))
        .collect();
    assert!(
        !named.is_empty(),
        "a RateLimit-Policy header: {rate_headers:?}"
    );
    assert!(
        named.iter().all(|v| !v.contains("watch")),
        "a shadow policy is not announced: {named:?}"
    );
    let (second, _) = rate_limits(&c, &limiter).await;
    match second {
        Err(Refused::Limited {
            policy,
            retry_after_secs,
        }) => {
            assert_eq!(&*policy, "hour", "the longest wait decides");
            assert!(retry_after_secs > 60, "{retry_after_secs}");
        }
        other => panic!("second request: {other:?}"),
    }
    let shadow_only = [policy("watch", "1/day", 1, true, None)];
    let c = charge(&shadow_only, &headers);
    for i in 0..3 {
        assert_eq!(
            rate_limits(&c, &limiter).await.0,
            Ok(()),
            "shadow request {i}"
        );
    }
}

#[tokio::test]
async fn an_unavailable_limiter_refuses_unless_the_policy_only_watches() {
    let headers = HeaderMap::new();
    let enforced = [policy("p", "1/s", 1, false, None)];
    assert_eq!(
        rate_limits(&charge(&enforced, &headers), &Down).await.0,
        Err(Refused::Unavailable)
    );
    let watching = [policy("p", "1/s", 1, true, None)];
    assert_eq!(
        rate_limits(&charge(&watching, &headers), &Down).await.0,
        Ok(())
    );
}

#[tokio::test]
async fn an_unavailable_quota_counter_refuses_or_passes_as_configured() {
    let headers = HeaderMap::new();
    let policies = [policy("q", "100/s", 100, false, Some("10/day"))];
    let c = charge(&policies, &headers);
    let now: Timestamp = 1_700_000_000;
    assert_eq!(
        quotas(&c, &Down, now, false).await,
        Err(Refused::Unavailable)
    );
    assert_eq!(quotas(&c, &Down, now, true).await, Ok(()), "fail open");
    // A consumer's quota is not charged to an unauthenticated caller.
    let mut consumer = (*policy("q", "100/s", 100, false, Some("10/day"))).clone();
    consumer.key = KeyKind::Consumer;
    let consumer = [Arc::new(consumer)];
    assert_eq!(
        quotas(&charge(&consumer, &headers), &Down, now, false).await,
        Ok(())
    );
}
