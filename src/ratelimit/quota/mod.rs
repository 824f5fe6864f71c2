//! Quotas: how many requests a consumer may make per calendar day or month
//! (e.g. `100000/month`), as opposed to the rate limits of the parent module,
//! which shape traffic over seconds.
//!
//! This module owns the [`Quota`] and its calendar periods (UTC, on the
//! `time` crate's calendar: a month is `2026-12`, a day `2026-12-02`), the [`QuotaDecision`] for one request, and
//! the [`QuotaCounter`] trait with two implementations:
//!
//! - [`StoreQuotas`] (the default, one node): counts in memory and writes the
//!   counts to the key store ([`KeyStore::add_quota_usage`](crate::store::KeyStore::add_quota_usage)) in one batch per
//!   flush interval, so a restart resumes from the last flush. The store is
//!   read once per key and period (the first request that needs it, bounded
//!   by a timeout), never per request. Several nodes on one Postgres store
//!   each count their own traffic on top of what was stored when they first
//!   saw the key: for one count across nodes use [`RedisQuotas`].
//! - [`RedisQuotas`] (a cluster): one counter per key and period in Redis,
//!   checked and incremented by one atomic script in one round trip, with a
//!   timeout and a circuit breaker, expiring a day after its period ends.
//!
//! It does not decide which quota applies to a request or what its key is
//! (the policies and the gateway do: keys name the policy and the consumer,
//! never a credential), and it does not decide what to do when a counter is
//! unavailable: it says [`QuotaError::Unavailable`] (or
//! [`QuotaError::BreakerOpen`]) and the caller chooses to fail open or closed.
//!
//! Caveats: [`StoreQuotas`] loses the requests counted since the last flush
//! if the process dies (up to one flush interval of traffic can pass
//! again), and a flush that timed out after its transaction committed is
//! retried, so usage errs towards being counted twice rather than not at
//! all. Its memory grows with the keys seen in the current period (so keys
//! should be consumers, not client addresses); keys of past periods are
//! dropped once flushed.

mod redis_quotas;
mod store_quotas;

pub use redis_quotas::*;
pub use store_quotas::*;

use std::fmt;

use crate::auth::Timestamp;
use crate::store::StoreError;

const SECONDS_PER_DAY: i64 = 86_400;

/// A calendar period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaPeriod {
    /// From midnight to midnight, UTC.
    Day,
    /// From the first of the month, midnight UTC, to the first of the next.
    Month,
}

impl fmt::Display for QuotaPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        })
    }
}

/// A quota: `count` requests per calendar `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Requests allowed per period (≥ 1).
    pub count: u64,
    /// The period.
    pub period: QuotaPeriod,
}

impl Quota {
    /// Parses `"100000/month"` or `"5000/day"`.
    pub fn parse(s: &str) -> Result<Quota, String> {
        let (count, period) = s.trim().split_once('/').ok_or_else(|| {
            format!("invalid quota {s:?}: expected COUNT/PERIOD like \"100000/month\"")
        })?;
        let count = count.trim();
        let count: u64 = count
            .parse()
            .ok()
            .filter(|c| *c >= 1 && count.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("invalid quota {s:?}: the count must be a whole number ≥ 1"))?;
        let period = match period.trim() {
            "day" => QuotaPeriod::Day,
            "month" => QuotaPeriod::Month,
            _ => {
                return Err(format!(
                    "invalid quota {s:?}: the period must be \"day\" or \"month\""
                ));
            }
        };
        Ok(Quota { count, period })
    }

    /// The id of the period `now` falls in: `2026-12` for a month,
    /// `2026-12-02` for a day (UTC). Counters are kept per key and period id.
    pub fn period_id(&self, now: Timestamp) -> String {
        let date = utc_date(now);
        let (year, month, day) = (date.year(), u8::from(date.month()), date.day());
        match self.period {
            QuotaPeriod::Day => format!("{year:04}-{month:02}-{day:02}"),
            QuotaPeriod::Month => format!("{year:04}-{month:02}"),
        }
    }

    /// When the period `now` falls in ends: the start of the next one
    /// (`Timestamp::MAX` for the calendar's last period, which never ends).
    pub fn resets_at(&self, now: Timestamp) -> Timestamp {
        let date = utc_date(now);
        let next = match self.period {
            QuotaPeriod::Day => date.next_day(),
            QuotaPeriod::Month => {
                let month = date.month();
                let year = if month == time::Month::December {
                    date.year().checked_add(1)
                } else {
                    Some(date.year())
                };
                year.and_then(|y| time::Date::from_calendar_date(y, month.next(), 1).ok())
            }
        };
        next.map_or(Timestamp::MAX, |d| {
            d.midnight().assume_utc().unix_timestamp()
        })
    }
}

/// The UTC date of `now`. Times beyond the `time` crate's calendar (years
/// −9999 to 9999) are taken as its first or last second.
fn utc_date(now: Timestamp) -> time::Date {
    let first = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    let last = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
    time::OffsetDateTime::from_unix_timestamp(now.clamp(first, last))
        .map_or(time::Date::MIN, |t| t.date())
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period)
    }
}

/// The answer for one request under one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDecision {
    /// Whether the request may pass (it was counted only if so).
    pub allowed: bool,
    /// The quota's count.
    pub limit: u64,
    /// Requests used in this period, this one included if it was allowed.
    pub used: u64,
    /// Requests left in this period.
    pub remaining: u64,
    /// When the period ends and the count starts again from 0.
    pub resets_at: Timestamp,
}

impl QuotaDecision {
    /// The decision given the usage before this request.
    fn new(quota: &Quota, used_before: u64, resets_at: Timestamp) -> QuotaDecision {
        let allowed = used_before < quota.count;
        let used = if allowed {
            used_before + 1
        } else {
            used_before
        };
        QuotaDecision {
            allowed,
            limit: quota.count,
            used,
            remaining: quota.count.saturating_sub(used),
            resets_at,
        }
    }
}

/// Why a quota could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The counter (Redis, or the store on a first load) did not answer in
    /// time or failed.
    #[error("quota counter unavailable: {0}")]
    Unavailable(String),
    /// The Redis counter's circuit breaker is open: it failed repeatedly
    /// and is not asked again until its cool-down is over.
    #[error("quota counter unavailable: circuit breaker open")]
    BreakerOpen,
    /// The store failed loading a key's usage.
    #[error("quota store error: {0}")]
    Store(#[source] StoreError),
}

/// Counts requests against quotas, per key.
#[async_trait::async_trait]
pub trait QuotaCounter: Send + Sync + fmt::Debug {
    /// Charges one request to `key` under `quota` in the period `now` falls
    /// in. Refuses it (`allowed: false`, not counted) when the period's
    /// usage has reached the quota's count. `key` already names the policy
    /// and the consumer (e.g. `api-monthly:c_123`).
    async fn charge(
        &self,
        key: &str,
        quota: &Quota,
        now: Timestamp,
    ) -> Result<QuotaDecision, QuotaError>;
}

#[cfg(test)]
mod tests;
