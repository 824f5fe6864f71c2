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
//! It does not decide *which* limits apply to a request or what the key is
//! (the snapshot's policies and the gateway do that), and it never sees a
//! credential: keys are built from consumer ids, client addresses, route
//! names or header values chosen by the operator.

pub mod local;
pub mod redis;

use std::fmt;
use std::time::Duration;

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
