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

mod local;
mod shared_redis;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

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
