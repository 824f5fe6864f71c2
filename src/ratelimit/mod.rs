//! Rate limits: how many requests a client may make, decided per request.
//!
//! This module owns the common types — a [`Rate`] and [`Limit`] (GCRA: a
//! steady rate plus a burst), the [`Decision`] for one request and the
//! response headers it produces — and the [`Limiter`] trait with its two
//! implementations: [`local::LocalLimiter`] (governor keyed limiters in this
//! process, memory bounded by pruning) and [`redis::RedisLimiter`] (one
//! budget shared by every gateway instance, decided in one Redis round trip
//! by an atomic script, with a timeout, a circuit breaker and a fallback).
//!
//! [`charge`] charges one request to its route's policies (step 8): the
//! strictest refusal, shadow policies, the answer's headers. Which policies
//! apply to a route is the snapshot's to say. It never sees a
//! credential: keys are built from consumer ids, client addresses, route
//! names or header values chosen by the operator.

pub mod charge;
pub mod local;
pub mod policy;
pub mod quota;
pub mod redis;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// A steady rate: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period (≥ 1).
    pub count: u32,
    /// The period (≥ 1 ms).
    pub period: Duration,
}

impl Rate {
    /// Parses `"100/s"`, `"6000/min"`, `"50/h"`, `"1000/day"` (also `/sec`,
    /// `/second`, `/m`, `/minute`, `/hour`, `/d`, and a number of units like
    /// `"10/5s"` or `"100/15m"`).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (count, per) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid rate {s:?}: expected COUNT/PERIOD like \"100/s\""))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| format!("invalid rate {s:?}: the count must be a whole number ≥ 1"))?;
        let per = per.trim();
        let split = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (n, unit) = per.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("invalid rate {s:?}: bad period"))?
        };
        let unit_secs: u64 = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => {
                return Err(format!(
                    "invalid rate {s:?}: the period unit must be s, min, h or day"
                ));
            }
        };
        Ok(Rate {
            count,
            period: Duration::from_secs(n.saturating_mul(unit_secs)),
        })
    }

    /// Time between two requests at the steady rate (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.period.as_secs())
    }
}

/// A limit: a steady rate and how many requests may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// The steady rate.
    pub rate: Rate,
    /// Requests allowed in a burst (≥ 1): a client that was quiet may send
    /// this many at once, then one per [`Rate::interval`].
    pub burst: u32,
}

/// The answer for one request under one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The burst size (the most requests available at once).
    pub limit: u32,
    /// Requests still available right now after this one.
    pub remaining: u32,
    /// Time until the full burst is available again.
    pub reset: Duration,
    /// When refused: time until one request will be allowed.
    pub retry_after: Option<Duration>,
}

/// Why a limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The shared limiter (Redis) did not answer in time, failed, or its
    /// circuit breaker is open.
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

/// Decides requests against limits, per key.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync + fmt::Debug {
    /// Charges one request to `key` under `limit` and says whether it may
    /// pass. `key` already names the policy (e.g. `api-per-consumer:c_123`).
    async fn check(&self, key: &str, limit: &Limit) -> Result<Decision, LimitError>;
}

/// The rate-limit key part that names a client by its address.
///
/// * IPv4: the address as is (`203.0.113.7`).
/// * IPv4-mapped IPv6 (`::ffff:203.0.113.7`): folded to the IPv4 address,
///   so one client does not get two budgets by switching socket families.
/// * Any other IPv6: its /64 network (`2001:db8:1:2::/64`). A single
///   subscriber usually holds a whole /64 (often more), so keying by the
///   full address would let one client mint 2^64 fresh budgets.
pub fn client_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            format!("{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
    }
}

/// The `RateLimit-Policy` and `RateLimit` response headers for the limits
/// that applied to one request, in the form of
/// draft-ietf-httpapi-ratelimit-headers (draft 08 and later). Each entry is
/// `(policy name, its limit, the decision under it)`; an empty slice gives
/// no headers.
///
/// ```text
/// RateLimit-Policy: "<name>";q=<burst>;w=<window>, "<name2>";q=<burst2>;w=<window2>
/// RateLimit: "<name>";r=<remaining>;t=<reset>
/// ```
///
/// * `RateLimit-Policy` has one list member per entry, in the given order:
///   `q` is the burst (the decision's `limit`, the most requests available
///   at once) and `w` is the window in whole seconds, `q ×` the rate's
///   interval, rounded up and at least 1 (so `q` requests per `w` seconds
///   is the steady rate, e.g. `100/min` with burst 10 gives `q=10;w=6`).
/// * `RateLimit` names only the most restrictive decision: the lowest
///   `remaining`, ties broken by the longest `reset`, then by order. `r` is
///   the requests still available now, `t` the seconds until the full
///   burst is available again, rounded up.
/// * Names are sent as Structured Field strings: `"` and `\` are escaped
///   with `\`, and any character outside printable ASCII becomes `_`.
///
/// A refused request also needs `Retry-After: <`[`retry_after_secs`]`>`,
/// which this function does not add.
pub fn headers(decisions: &[(&str, &Limit, &Decision)]) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(2);
    if decisions.is_empty() {
        return out;
    }
    let mut policy = String::with_capacity(decisions.len() * 32);
    for (i, (name, limit, decision)) in decisions.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
        }
        push_sf_string(&mut policy, name);
        let window = ceil_secs(limit.rate.interval().saturating_mul(decision.limit)).max(1);
        policy.push_str(&format!(";q={};w={window}", decision.limit));
    }
    if let Ok(value) = HeaderValue::try_from(policy) {
        out.push((HeaderName::from_static("ratelimit-policy"), value));
    }
    let tightest = decisions.iter().min_by(|(_, _, a), (_, _, b)| {
        a.remaining
            .cmp(&b.remaining)
            .then_with(|| b.reset.cmp(&a.reset))
    });
    if let Some((name, _, decision)) = tightest {
        let mut current = String::with_capacity(32);
        push_sf_string(&mut current, name);
        current.push_str(&format!(
            ";r={};t={}",
            decision.remaining,
            ceil_secs(decision.reset)
        ));
        if let Ok(value) = HeaderValue::try_from(current) {
            out.push((HeaderName::from_static("ratelimit"), value));
        }
    }
    out
}

/// The `Retry-After` value in whole seconds: the decision's `retry_after`
/// rounded up, and at least 1 for a refused request (a refused decision
/// without a `retry_after` gives 1). An allowed request gives 0.
pub fn retry_after_secs(d: &Decision) -> u64 {
    let secs = d.retry_after.map_or(0, ceil_secs);
    if d.allowed { secs } else { secs.max(1) }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Appends `s` as a Structured Field string (RFC 9651 §3.3.3).
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: &str, burst: u32) -> Limit {
        Limit {
            rate: Rate::parse(rate).unwrap(),
            burst,
        }
    }

    fn allowed(limit: u32, remaining: u32, reset_ms: u64) -> Decision {
        Decision {
            allowed: true,
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: None,
        }
    }

    fn refused(limit: u32, reset_ms: u64, retry_ms: u64) -> Decision {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset: Duration::from_millis(reset_ms),
            retry_after: Some(Duration::from_millis(retry_ms)),
        }
    }

    #[test]
    fn client_key_cases() {
        let cases: &[(&str, &str, &str)] = &[
            ("ipv4 as is", "203.0.113.7", "203.0.113.7"),
            (
                "ipv4-mapped ipv6 folds to ipv4",
                "::ffff:203.0.113.7",
                "203.0.113.7",
            ),
            (
                "ipv6 keyed by its /64",
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                "2001:db8:1:2::/64",
            ),
            (
                "same /64, other host: same key",
                "2001:db8:1:2::1",
                "2001:db8:1:2::/64",
            ),
            (
                "neighbouring /64: other key",
                "2001:db8:1:3::1",
                "2001:db8:1:3::/64",
            ),
            ("ipv6 loopback", "::1", "::/64"),
            (
                "ipv4-compatible (deprecated) is not folded",
                "::203.0.113.7",
                "::/64",
            ),
        ];
        for (name, ip, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(client_key(ip), *want, "{name}");
        }
    }

    #[test]
    fn client_key_groups_a_64_and_splits_different_64s() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:1:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
    }

    #[test]
    fn header_cases() {
        let per_min = limit("100/min", 10); // interval 600 ms, window 6 s
        let per_sec = limit("5/s", 5); // interval 200 ms, window 1 s
        let per_day = limit("1/day", 2); // window 2 days
        let fine = allowed(10, 9, 600);
        let low = allowed(5, 1, 800);
        let empty_long = allowed(10, 0, 6_000);
        let empty_short = allowed(5, 0, 1_000);
        let no = refused(5, 1_100, 300);
        let day = allowed(2, 1, 86_400_000);
        struct Case<'a> {
            name: &'a str,
            input: Vec<(&'a str, &'a Limit, &'a Decision)>,
            policy: Option<&'a str>,
            current: Option<&'a str>,
        }
        let cases = [
            Case {
                name: "no limits, no headers",
                input: vec![],
                policy: None,
                current: None,
            },
            Case {
                name: "one policy",
                input: vec![("per-consumer", &per_min, &fine)],
                policy: Some(r#""per-consumer";q=10;w=6"#),
                current: Some(r#""per-consumer";r=9;t=1"#),
            },
            Case {
                name: "two policies: the one with less remaining is reported",
                input: vec![("minute", &per_min, &fine), ("second", &per_sec, &low)],
                policy: Some(r#""minute";q=10;w=6, "second";q=5;w=1"#),
                current: Some(r#""second";r=1;t=1"#),
            },
            Case {
                name: "equal remaining: the longest reset is reported",
                input: vec![
                    ("second", &per_sec, &empty_short),
                    ("minute", &per_min, &empty_long),
                ],
                policy: Some(r#""second";q=5;w=1, "minute";q=10;w=6"#),
                current: Some(r#""minute";r=0;t=6"#),
            },
            Case {
                name: "refused decision: r=0, reset rounded up",
                input: vec![("minute", &per_min, &fine), ("second", &per_sec, &no)],
                policy: Some(r#""minute";q=10;w=6, "second";q=5;w=1"#),
                current: Some(r#""second";r=0;t=2"#),
            },
            Case {
                name: "long window",
                input: vec![("daily", &per_day, &day)],
                policy: Some(r#""daily";q=2;w=172800"#),
                current: Some(r#""daily";r=1;t=86400"#),
            },
            Case {
                name: "names are escaped as structured field strings",
                input: vec![("a\"b\\c\u{e9}\n", &per_sec, &low)],
                policy: Some(r#""a\"b\\c__";q=5;w=1"#),
                current: Some(r#""a\"b\\c__";r=1;t=1"#),
            },
        ];
        for case in cases {
            let got = headers(&case.input);
            let find = |name: &str| {
                got.iter()
                    .find(|(n, _)| n.as_str() == name)
                    .map(|(_, v)| v.to_str().unwrap().to_owned())
            };
            assert_eq!(
                find("ratelimit-policy").as_deref(),
                case.policy,
                "{}",
                case.name
            );
            assert_eq!(find("ratelimit").as_deref(), case.current, "{}", case.name);
            assert_eq!(
                got.len(),
                usize::from(case.policy.is_some()) + usize::from(case.current.is_some()),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn retry_after_cases() {
        let cases = [
            ("allowed: 0", allowed(10, 3, 500), 0),
            ("refused, 300 ms: rounds up to 1", refused(5, 1_100, 300), 1),
            ("refused, exactly 2 s: 2", refused(5, 3_000, 2_000), 2),
            ("refused, 2.001 s: 3", refused(5, 3_000, 2_001), 3),
            (
                "refused, 0 s (already due): at least 1",
                refused(5, 800, 0),
                1,
            ),
            (
                "refused without retry_after: 1",
                Decision {
                    retry_after: None,
                    ..refused(5, 800, 0)
                },
                1,
            ),
        ];
        for (name, d, want) in cases {
            assert_eq!(retry_after_secs(&d), want, "{name}");
        }
    }
}
