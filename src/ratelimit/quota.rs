//! Quotas: how many requests a consumer may make per calendar day or month
//! (e.g. `100000/month`), as opposed to the rate limits of the parent module,
//! which shape traffic over seconds.
//!
//! This module owns the [`Quota`] and its calendar periods (UTC: a month is
//! `2026-12`, a day `2026-12-02`), the [`QuotaDecision`] for one request, and
//! the [`QuotaCounter`] trait with two implementations:
//!
//! - [`StoreQuotas`] (the default, one node): counts in memory and writes the
//!   counts to the key store ([`KeyStore::add_quota_usage`]) in one batch per
//!   flush interval, so a restart resumes from the last flush. The store is
//!   read once per key and period (the first request that needs it, bounded
//!   by a timeout), never per request. Several nodes on one Postgres store
//!   each count their own traffic on top of what was stored when they first
//!   saw the key: for one count across nodes use [`RedisQuotas`].
//! - [`RedisQuotas`] (a cluster): one counter per key and period in Redis,
//!   checked and incremented by one atomic script in one round trip, with a
//!   timeout, expiring a day after its period ends.
//!
//! It does not decide which quota applies to a request or what its key is
//! (the policies and the gateway do: keys name the policy and the consumer,
//! never a credential), and it does not decide what to do when a counter is
//! unavailable: it says [`QuotaError::Unavailable`] and the caller chooses
//! to fail open or closed.
//!
//! Caveats: [`StoreQuotas`] loses the requests counted since the last flush
//! if the process dies (up to one flush interval of traffic can pass
//! again), and a flush that timed out after its transaction committed is
//! retried, so usage errs towards being counted twice rather than not at
//! all. Its memory grows with the keys seen in the current period (so keys
//! should be consumers, not client addresses); keys of past periods are
//! dropped once flushed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;

use crate::auth::Timestamp;
use crate::store::{KeyStore, StoreError};

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
        let (year, month, day) = civil_from_days(now.div_euclid(SECONDS_PER_DAY));
        match self.period {
            QuotaPeriod::Day => format!("{year:04}-{month:02}-{day:02}"),
            QuotaPeriod::Month => format!("{year:04}-{month:02}"),
        }
    }

    /// When the period `now` falls in ends: the start of the next one.
    pub fn resets_at(&self, now: Timestamp) -> Timestamp {
        let today = now.div_euclid(SECONDS_PER_DAY);
        let next = match self.period {
            QuotaPeriod::Day => today + 1,
            QuotaPeriod::Month => {
                let (year, month, _) = civil_from_days(today);
                if month == 12 {
                    days_from_civil(year + 1, 1, 1)
                } else {
                    days_from_civil(year, month + 1, 1)
                }
            }
        };
        next.saturating_mul(SECONDS_PER_DAY)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1–12,
/// `day` 1–31). Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month, day) of a day counted from 1970-01-01. Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

// ------------------------------------------------------------ StoreQuotas

/// Quotas counted in memory and saved to the key store in batches: the
/// default, and what survives a restart on one node.
///
/// Call [`StoreQuotas::spawn_flush`] (or [`StoreQuotas::flush`]) to save
/// the counts; without it nothing is written.
#[derive(Debug)]
pub struct StoreQuotas {
    store: Arc<dyn KeyStore>,
    /// Bounds each store call: a first load, a flush.
    timeout: Duration,
    /// Counters by period id, then by key.
    periods: Mutex<HashMap<String, PeriodCounters>>,
    /// The latest `now` charged: periods that ended before it are dropped
    /// once flushed.
    latest: AtomicI64,
}

/// The counters of one period.
#[derive(Debug)]
struct PeriodCounters {
    /// When the period ends.
    resets_at: Timestamp,
    counters: HashMap<String, Arc<Counter>>,
}

/// One key's counter in one period.
#[derive(Debug, Default)]
struct Counter {
    /// The usage stored before this process counted: loaded once, by the
    /// first request (the others wait for that load rather than start their
    /// own).
    stored: OnceCell<u64>,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Requests this process allowed since the load.
    counted: u64,
    /// Of those, not yet handed to a flush.
    pending: u64,
    /// Handed to a flush that has not finished.
    in_flight: u64,
    /// Dropped from the map: a charge that still holds it starts over.
    retired: bool,
}

/// A flush's share of one counter.
struct Delta {
    counter: Arc<Counter>,
    key: String,
    period: String,
    count: u64,
}

/// How often a charge starts over after its counter was dropped under it
/// (only around the end of a period) before giving up.
const CHARGE_ATTEMPTS: usize = 3;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StoreQuotas {
    /// Counts in memory over `store`, bounding each store call (a key's
    /// first load in a period, a flush) by `timeout`.
    pub fn new(store: Arc<dyn KeyStore>, timeout: Duration) -> StoreQuotas {
        StoreQuotas {
            store,
            timeout,
            periods: Mutex::new(HashMap::new()),
            latest: AtomicI64::new(i64::MIN),
        }
    }

    /// Saves the counts every `every` until `stop` turns true (or its sender
    /// is dropped), then once more.
    pub fn spawn_flush(
        self: &Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let quotas = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !*stop.borrow_and_update() {
                tokio::select! {
                    _ = ticks.tick() => quotas.flush().await,
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
            quotas.flush().await;
        })
    }

    /// Adds the requests counted since the last flush to the store, in one
    /// batch, then drops the counters of periods that have ended. On a store
    /// error (or timeout) the counts are kept for the next flush, and the
    /// error is logged.
    pub async fn flush(&self) {
        let deltas = self.take_pending();
        if !deltas.is_empty() {
            let batch: Vec<(String, String, u64)> = deltas
                .iter()
                .map(|d| (d.key.clone(), d.period.clone(), d.count))
                .collect();
            let result = tokio::time::timeout(self.timeout, self.store.add_quota_usage(&batch))
                .await
                .map_err(|_| QuotaError::Unavailable(self.timed_out()))
                .and_then(|r| r.map_err(QuotaError::Store));
            let saved = result.is_ok();
            for delta in &deltas {
                let mut counts = lock(&delta.counter.counts);
                counts.in_flight = counts.in_flight.saturating_sub(delta.count);
                if !saved {
                    counts.pending += delta.count;
                }
            }
            if let Err(err) = result {
                tracing::warn!(
                    error = %err,
                    keys = batch.len(),
                    "could not save quota usage; keeping it for the next flush"
                );
                return;
            }
        }
        self.drop_ended();
    }

    /// Hands every counter's pending requests to a flush.
    fn take_pending(&self) -> Vec<Delta> {
        let periods = lock(&self.periods);
        let mut deltas = Vec::new();
        for (period, counters) in periods.iter() {
            for (key, counter) in &counters.counters {
                let mut counts = lock(&counter.counts);
                if counts.pending > 0 {
                    deltas.push(Delta {
                        counter: Arc::clone(counter),
                        key: key.clone(),
                        period: period.clone(),
                        count: counts.pending,
                    });
                    counts.in_flight += counts.pending;
                    counts.pending = 0;
                }
            }
        }
        deltas
    }

    /// Drops the saved counters of periods that ended before the latest
    /// charge.
    fn drop_ended(&self) {
        let latest = self.latest.load(Ordering::Relaxed);
        let mut periods = lock(&self.periods);
        periods.retain(|_, period| {
            if period.resets_at > latest {
                return true;
            }
            period.counters.retain(|_, counter| {
                let mut counts = lock(&counter.counts);
                if counts.pending == 0 && counts.in_flight == 0 {
                    counts.retired = true;
                    false
                } else {
                    true
                }
            });
            !period.counters.is_empty()
        });
    }

    /// The counter of `key` in `period`, created if new.
    fn counter(&self, key: &str, period: &str, resets_at: Timestamp) -> Arc<Counter> {
        let mut periods = lock(&self.periods);
        let counters = periods
            .entry(period.to_owned())
            .or_insert_with(|| PeriodCounters {
                resets_at,
                counters: HashMap::new(),
            });
        if let Some(counter) = counters.counters.get(key) {
            return Arc::clone(counter);
        }
        Arc::clone(counters.counters.entry(key.to_owned()).or_default())
    }

    /// Reads the stored usage of `key` in `period`, bounded by the timeout.
    async fn load(&self, key: &str, period: &str) -> Result<u64, QuotaError> {
        tokio::time::timeout(self.timeout, self.store.quota_usage(key, period))
            .await
            .map_err(|_| QuotaError::Unavailable(self.timed_out()))?
            .map_err(QuotaError::Store)
    }

    fn timed_out(&self) -> String {
        format!("the store did not answer within {:?}", self.timeout)
    }
}

#[async_trait::async_trait]
impl QuotaCounter for StoreQuotas {
    async fn charge(
        &self,
        key: &str,
        quota: &Quota,
        now: Timestamp,
    ) -> Result<QuotaDecision, QuotaError> {
        let period = quota.period_id(now);
        let resets_at = quota.resets_at(now);
        self.latest.fetch_max(now, Ordering::Relaxed);
        for _ in 0..CHARGE_ATTEMPTS {
            let counter = self.counter(key, &period, resets_at);
            let stored = *counter
                .stored
                .get_or_try_init(|| self.load(key, &period))
                .await?;
            let mut counts = lock(&counter.counts);
            if counts.retired {
                continue;
            }
            let decision =
                QuotaDecision::new(quota, stored.saturating_add(counts.counted), resets_at);
            if decision.allowed {
                counts.counted += 1;
                counts.pending += 1;
            }
            return Ok(decision);
        }
        Err(QuotaError::Unavailable(
            "the quota period ended while counting".to_owned(),
        ))
    }
}

// ------------------------------------------------------------ RedisQuotas

/// Quotas counted in Redis: one count per key and period, shared by every
/// gateway that uses the same Redis.
///
/// Keys are `gatehouse:quota:<key>:<period id>` and expire a day after
/// their period ends (a day's grace for clocks that disagree).
#[derive(Clone)]
pub struct RedisQuotas {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

/// Prefix of every quota key in Redis.
const REDIS_PREFIX: &str = "gatehouse:quota:";

/// Reads the count; refuses at the limit without counting; else counts and
/// (re)sets the expiry. KEYS[1] = counter, ARGV[1] = limit, ARGV[2] = expiry
/// (Unix seconds). Returns {allowed (0|1), used}.
const CHARGE_SCRIPT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {1, used}
";

impl fmt::Debug for RedisQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotas")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisQuotas {
    /// Prepares a client for the Redis at `url` (`redis://…` or
    /// `rediss://…`), bounding every charge by `timeout`.
    ///
    /// The connection is made on the first charge, and made again after it
    /// is lost, so a gateway starts while Redis is down and its charges say
    /// [`QuotaError::Unavailable`] until Redis answers. Fails only for a URL
    /// that cannot be used (the error does not repeat it: it may hold a
    /// password).
    pub fn connect(url: &str, timeout: Duration) -> Result<RedisQuotas, QuotaError> {
        let client = redis::Client::open(url)
            .map_err(|_| QuotaError::Unavailable("invalid Redis URL".to_owned()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| QuotaError::Unavailable(format!("redis: {err}")))?;
        Ok(RedisQuotas {
            conn,
            script: redis::Script::new(CHARGE_SCRIPT),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl QuotaCounter for RedisQuotas {
    async fn charge(
        &self,
        key: &str,
        quota: &Quota,
        now: Timestamp,
    ) -> Result<QuotaDecision, QuotaError> {
        let resets_at = quota.resets_at(now);
        let redis_key = format!("{REDIS_PREFIX}{key}:{}", quota.period_id(now));
        let expire_at = resets_at.saturating_add(SECONDS_PER_DAY);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(redis_key);
        invocation.arg(quota.count).arg(expire_at);
        let (allowed, used): (i64, u64) =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| {
                    QuotaError::Unavailable(format!(
                        "redis did not answer within {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|err| QuotaError::Unavailable(format!("redis: {err}")))?;
        Ok(QuotaDecision {
            allowed: allowed == 1,
            limit: quota.count,
            used,
            remaining: quota.count.saturating_sub(used),
            resets_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use futures_util::future::join_all;
    use rand::Rng;

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ApiKey, AuditEntry, Consumer, KeySet, StoreOptions};

    /// A UTC time as Unix seconds, computed by the `time` crate (an oracle
    /// independent of this module's calendar math).
    fn utc(y: i32, m: u8, d: u8, h: u8, min: u8, s: u8) -> Timestamp {
        let month = time::Month::try_from(m).unwrap();
        time::Date::from_calendar_date(y, month, d)
            .unwrap()
            .with_hms(h, min, s)
            .unwrap()
            .assume_utc()
            .unix_timestamp()
    }

    fn midnight(y: i32, m: u8, d: u8) -> Timestamp {
        utc(y, m, d, 0, 0, 0)
    }

    const MONTHLY_3: Quota = Quota {
        count: 3,
        period: QuotaPeriod::Month,
    };

    // ------------------------------------------------------------ parsing

    #[test]
    fn parse_accepts_count_per_day_or_month() {
        let cases = [
            ("month", "100000/month", 100_000, QuotaPeriod::Month),
            ("day", "5000/day", 5000, QuotaPeriod::Day),
            ("one", "1/day", 1, QuotaPeriod::Day),
            ("spaces around", " 7 / month ", 7, QuotaPeriod::Month),
            (
                "largest",
                "18446744073709551615/day",
                u64::MAX,
                QuotaPeriod::Day,
            ),
        ];
        for (name, text, count, period) in cases {
            let quota = Quota::parse(text).unwrap_or_else(|e| panic!("case {name}: {e}"));
            assert_eq!(quota, Quota { count, period }, "case {name}");
            assert_eq!(
                Quota::parse(&quota.to_string()).unwrap(),
                quota,
                "case {name}: Display parses back"
            );
        }
    }

    #[test]
    fn parse_refuses_anything_else_saying_why() {
        let cases = [
            ("empty", "", "expected COUNT/PERIOD"),
            ("no period", "100", "expected COUNT/PERIOD"),
            ("zero", "0/day", "whole number ≥ 1"),
            ("negative", "-1/day", "whole number ≥ 1"),
            ("plus sign", "+5/day", "whole number ≥ 1"),
            ("fraction", "1.5/day", "whole number ≥ 1"),
            ("not a number", "many/day", "whole number ≥ 1"),
            ("too large", "18446744073709551616/day", "whole number ≥ 1"),
            ("no count", "/month", "whole number ≥ 1"),
            ("week", "100/week", "\"day\" or \"month\""),
            ("plural", "100/months", "\"day\" or \"month\""),
            ("upper case", "100/Month", "\"day\" or \"month\""),
            ("abbreviation", "100/d", "\"day\" or \"month\""),
            ("a rate, not a quota", "100/s", "\"day\" or \"month\""),
            ("two slashes", "1/2/day", "\"day\" or \"month\""),
        ];
        for (name, text, want) in cases {
            let err = Quota::parse(text).unwrap_err();
            assert!(err.contains(want), "case {name}: {err}");
            assert!(err.contains(&format!("{text:?}")), "case {name}: {err}");
        }
    }

    // -------------------------------------------------------- period math

    #[test]
    fn period_ids_and_resets() {
        use QuotaPeriod::{Day, Month};
        let cases = [
            (
                "mid month",
                Month,
                utc(2026, 12, 2, 13, 45, 0),
                "2026-12",
                midnight(2027, 1, 1),
            ),
            (
                "December's last second rolls over into January",
                Month,
                utc(2026, 12, 31, 23, 59, 59),
                "2026-12",
                midnight(2027, 1, 1),
            ),
            (
                "January's first second",
                Month,
                midnight(2027, 1, 1),
                "2027-01",
                midnight(2027, 2, 1),
            ),
            (
                "leap February: the 29th is in February",
                Month,
                utc(2028, 2, 29, 12, 0, 0),
                "2028-02",
                midnight(2028, 3, 1),
            ),
            (
                "common February ends on the 28th",
                Month,
                utc(2026, 2, 28, 23, 59, 59),
                "2026-02",
                midnight(2026, 3, 1),
            ),
            (
                "a 30-day month",
                Month,
                utc(2026, 4, 30, 23, 59, 59),
                "2026-04",
                midnight(2026, 5, 1),
            ),
            (
                "day: the last second",
                Day,
                utc(2026, 12, 2, 23, 59, 59),
                "2026-12-02",
                midnight(2026, 12, 3),
            ),
            (
                "day: midnight starts the next",
                Day,
                midnight(2026, 12, 3),
                "2026-12-03",
                midnight(2026, 12, 4),
            ),
            (
                "day: New Year's Eve",
                Day,
                utc(2026, 12, 31, 12, 0, 0),
                "2026-12-31",
                midnight(2027, 1, 1),
            ),
            (
                "day: leap day",
                Day,
                utc(2028, 2, 29, 0, 0, 1),
                "2028-02-29",
                midnight(2028, 3, 1),
            ),
            (
                "day: 2100 is no leap year",
                Day,
                utc(2100, 2, 28, 6, 0, 0),
                "2100-02-28",
                midnight(2100, 3, 1),
            ),
            (
                "day: 2000 is a leap year",
                Day,
                utc(2000, 2, 28, 6, 0, 0),
                "2000-02-28",
                midnight(2000, 2, 29),
            ),
            ("day: the epoch", Day, 0, "1970-01-01", SECONDS_PER_DAY),
            ("day: before the epoch", Day, -1, "1969-12-31", 0),
            ("month: before the epoch", Month, -1, "1969-12", 0),
        ];
        for (name, period, now, id, resets_at) in cases {
            let quota = Quota { count: 1, period };
            assert_eq!(quota.period_id(now), id, "case {name}");
            assert_eq!(quota.resets_at(now), resets_at, "case {name}");
        }
    }

    #[test]
    fn period_math_agrees_with_the_time_crate_for_every_day_of_three_centuries() {
        let day = Quota {
            count: 1,
            period: QuotaPeriod::Day,
        };
        let month = Quota {
            count: 1,
            period: QuotaPeriod::Month,
        };
        let mut date = time::Date::from_calendar_date(1900, time::Month::January, 1).unwrap();
        let end = time::Date::from_calendar_date(2200, time::Month::January, 1).unwrap();
        while date < end {
            let start = date.midnight().assume_utc().unix_timestamp();
            let next_day = date.next_day().unwrap();
            let next_month = date
                .replace_day(1)
                .unwrap()
                .checked_add(time::Duration::days(i64::from(
                    date.month().length(date.year()),
                )))
                .unwrap();
            for now in [start, start + 43_200, start + SECONDS_PER_DAY - 1] {
                let (y, m, d) = (date.year(), u8::from(date.month()), date.day());
                assert_eq!(
                    day.period_id(now),
                    format!("{y:04}-{m:02}-{d:02}"),
                    "{date}"
                );
                assert_eq!(month.period_id(now), format!("{y:04}-{m:02}"), "{date}");
                assert_eq!(
                    day.resets_at(now),
                    next_day.midnight().assume_utc().unix_timestamp(),
                    "{date}"
                );
                assert_eq!(
                    month.resets_at(now),
                    next_month.midnight().assume_utc().unix_timestamp(),
                    "{date}"
                );
            }
            date = next_day;
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for period in [QuotaPeriod::Day, QuotaPeriod::Month] {
            let quota = Quota { count: 1, period };
            for now in [i64::MIN, i64::MAX] {
                let _ = quota.period_id(now);
                let _ = quota.resets_at(now);
            }
        }
    }

    // ------------------------------------------------------- StoreQuotas

    /// A SQLite store that records quota calls, and can be told to fail
    /// writes or to answer loads slowly.
    #[derive(Debug)]
    struct RecordingStore {
        inner: SqliteStore,
        batches: Mutex<Vec<Vec<(String, String, u64)>>>,
        loads: AtomicI64,
        fail_writes: AtomicBool,
        load_delay: Mutex<Duration>,
    }

    impl RecordingStore {
        fn batches(&self) -> Vec<Vec<(String, String, u64)>> {
            lock(&self.batches).clone()
        }
    }

    #[async_trait::async_trait]
    impl KeyStore for RecordingStore {
        async fn create_consumer(&self, c: &Consumer) -> Result<(), StoreError> {
            self.inner.create_consumer(c).await
        }
        async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
            self.inner.list_consumers().await
        }
        async fn consumer(&self, id_or_name: &str) -> Result<Option<Consumer>, StoreError> {
            self.inner.consumer(id_or_name).await
        }
        async fn disable_consumer(&self, id: &str, at: Timestamp) -> Result<Consumer, StoreError> {
            self.inner.disable_consumer(id, at).await
        }
        async fn create_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
            self.inner.create_key(key, hash).await
        }
        async fn rotate_key(
            &self,
            old_id: &str,
            old_expires_at: Timestamp,
            new: &ApiKey,
            new_hash: &str,
        ) -> Result<ApiKey, StoreError> {
            self.inner
                .rotate_key(old_id, old_expires_at, new, new_hash)
                .await
        }
        async fn list_keys(&self, consumer_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
            self.inner.list_keys(consumer_id).await
        }
        async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
            self.inner.key(id).await
        }
        async fn revoke_key(&self, id: &str, at: Timestamp) -> Result<ApiKey, StoreError> {
            self.inner.revoke_key(id, at).await
        }
        async fn update_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
            self.inner.update_hash(id, hash).await
        }
        async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
            self.inner.touch_keys(used).await
        }
        async fn key_set(&self) -> Result<KeySet, StoreError> {
            self.inner.key_set().await
        }
        async fn revision(&self) -> Result<i64, StoreError> {
            self.inner.revision().await
        }
        async fn wait_for_change(&self, seen: i64, max_wait: Duration) -> Result<i64, StoreError> {
            self.inner.wait_for_change(seen, max_wait).await
        }
        async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
            self.inner.record_audit(entry).await
        }
        async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
            self.inner.audit(limit).await
        }
        async fn quota_usage(&self, key: &str, period: &str) -> Result<u64, StoreError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let delay = *lock(&self.load_delay);
            tokio::time::sleep(delay).await;
            self.inner.quota_usage(key, period).await
        }
        async fn add_quota_usage(&self, batch: &[(String, String, u64)]) -> Result<(), StoreError> {
            lock(&self.batches).push(batch.to_vec());
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(StoreError::Corrupt("test store told to fail"));
            }
            self.inner.add_quota_usage(batch).await
        }
    }

    /// A SQLite file in a temporary directory.
    struct Db {
        dir: tempfile::TempDir,
    }

    impl Db {
        fn new() -> Db {
            Db {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// Opens the file (again: a new process, in real life).
        async fn open(&self) -> Arc<RecordingStore> {
            let path = self.dir.path().join("gatehouse.db");
            let opts = StoreOptions {
                url: path.to_str().unwrap().to_owned(),
                schema: None,
                max_connections: 2,
                connect_timeout: Duration::from_secs(5),
            };
            Arc::new(RecordingStore {
                inner: SqliteStore::open(&path, &opts).await.unwrap(),
                batches: Mutex::new(Vec::new()),
                loads: AtomicI64::new(0),
                fail_writes: AtomicBool::new(false),
                load_delay: Mutex::new(Duration::ZERO),
            })
        }

        /// A gateway's quotas over a freshly opened store.
        async fn quotas(&self) -> (Arc<StoreQuotas>, Arc<RecordingStore>) {
            let store = self.open().await;
            let quotas = StoreQuotas::new(store.clone(), Duration::from_secs(5));
            (Arc::new(quotas), store)
        }
    }

    async fn charges(
        quotas: &dyn QuotaCounter,
        key: &str,
        quota: &Quota,
        now: Timestamp,
        n: usize,
    ) -> Vec<(bool, u64, u64)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let d = quotas.charge(key, quota, now).await.unwrap();
            out.push((d.allowed, d.used, d.remaining));
        }
        out
    }

    #[tokio::test]
    async fn store_quotas_refuse_at_the_count_and_survive_a_restart() {
        let db = Db::new();
        let now = utc(2026, 12, 2, 10, 0, 0);
        let (quotas, store) = db.quotas().await;

        assert_eq!(
            charges(&*quotas, "api:c_a", &MONTHLY_3, now, 4).await,
            [(true, 1, 2), (true, 2, 1), (true, 3, 0), (false, 3, 0)],
            "three pass, the fourth is refused and not counted"
        );
        let refused = quotas.charge("api:c_a", &MONTHLY_3, now).await.unwrap();
        assert_eq!(
            refused,
            QuotaDecision {
                allowed: false,
                limit: 3,
                used: 3,
                remaining: 0,
                resets_at: midnight(2027, 1, 1),
            }
        );
        quotas.flush().await;
        assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 3);
        drop((quotas, store));

        // A restart: a new process opens the same file.
        let (quotas, store) = db.quotas().await;
        assert_eq!(
            charges(&*quotas, "api:c_a", &MONTHLY_3, now + 60, 1).await,
            [(false, 3, 0)],
            "still refused after the restart"
        );
        let bigger = Quota {
            count: 5,
            ..MONTHLY_3
        };
        assert_eq!(
            charges(&*quotas, "api:c_a", &bigger, now + 60, 3).await,
            [(true, 4, 1), (true, 5, 0), (false, 5, 0)],
            "a raised quota counts on from the stored usage"
        );
        assert_eq!(store.loads.load(Ordering::SeqCst), 1, "loaded once");
    }

    #[tokio::test]
    async fn a_new_period_starts_from_zero_and_the_old_one_is_dropped() {
        let db = Db::new();
        let (quotas, store) = db.quotas().await;
        let december = utc(2026, 12, 31, 23, 59, 59);
        let january = midnight(2027, 1, 1);

        charges(&*quotas, "api:c_a", &MONTHLY_3, december, 3).await;
        assert_eq!(
            charges(&*quotas, "api:c_a", &MONTHLY_3, january, 2).await,
            [(true, 1, 2), (true, 2, 1)],
            "January starts from 0"
        );
        quotas.flush().await;

        let cases = [("December", "2026-12", 3), ("January", "2027-01", 2)];
        for (name, period, want) in cases {
            assert_eq!(
                store.quota_usage("api:c_a", period).await.unwrap(),
                want,
                "case {name}"
            );
        }
        let periods: Vec<String> = lock(&quotas.periods).keys().cloned().collect();
        assert_eq!(periods, ["2027-01"], "December is dropped once flushed");

        // A late request still stamped December loads it again from the store.
        assert_eq!(
            charges(&*quotas, "api:c_a", &MONTHLY_3, december, 1).await,
            [(false, 3, 0)]
        );
    }

    #[tokio::test]
    async fn flush_writes_one_batch_of_what_is_new() {
        let db = Db::new();
        let (quotas, store) = db.quotas().await;
        let now = utc(2026, 12, 2, 10, 0, 0);
        let daily = Quota {
            count: 100,
            period: QuotaPeriod::Day,
        };
        charges(&*quotas, "api:c_a", &MONTHLY_3, now, 2).await;
        charges(&*quotas, "api:c_b", &MONTHLY_3, now, 5).await;
        charges(&*quotas, "day:c_a", &daily, now, 1).await;

        quotas.flush().await;
        let mut batches = store.batches();
        assert_eq!(batches.len(), 1, "one batch");
        batches[0].sort();
        assert_eq!(
            batches[0],
            [
                ("api:c_a".to_owned(), "2026-12".to_owned(), 2),
                ("api:c_b".to_owned(), "2026-12".to_owned(), 3),
                ("day:c_a".to_owned(), "2026-12-02".to_owned(), 1),
            ],
            "the refused requests are not in it"
        );

        quotas.flush().await;
        assert_eq!(store.batches().len(), 1, "nothing new: no write");

        charges(&*quotas, "api:c_a", &MONTHLY_3, now, 1).await;
        quotas.flush().await;
        assert_eq!(
            store.batches().last().cloned().unwrap_or_default(),
            [("api:c_a".to_owned(), "2026-12".to_owned(), 1)],
            "only what was counted since"
        );
        assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 3);
    }

    #[tokio::test]
    async fn keys_are_independent() {
        let db = Db::new();
        let (quotas, _store) = db.quotas().await;
        let now = utc(2026, 12, 2, 10, 0, 0);
        let cases = [
            (
                "first key spends its quota",
                "api:c_a",
                4,
                vec![true, true, true, false],
            ),
            (
                "another key still has all of its",
                "api:c_b",
                3,
                vec![true, true, true],
            ),
            (
                "the same consumer under another policy",
                "other:c_a",
                1,
                vec![true],
            ),
        ];
        for (name, key, n, want) in cases {
            let got: Vec<bool> = charges(&*quotas, key, &MONTHLY_3, now, n)
                .await
                .into_iter()
                .map(|(allowed, _, _)| allowed)
                .collect();
            assert_eq!(got, want, "case {name}");
        }
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_counts_for_the_next() {
        let db = Db::new();
        let (quotas, store) = db.quotas().await;
        let now = utc(2026, 12, 2, 10, 0, 0);
        charges(&*quotas, "api:c_a", &MONTHLY_3, now, 2).await;

        store.fail_writes.store(true, Ordering::SeqCst);
        quotas.flush().await;
        assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 0);
        charges(&*quotas, "api:c_a", &MONTHLY_3, now, 2).await;

        store.fail_writes.store(false, Ordering::SeqCst);
        quotas.flush().await;
        assert_eq!(
            store.quota_usage("api:c_a", "2026-12").await.unwrap(),
            3,
            "the kept two and the one since (the fourth was refused)"
        );
        assert_eq!(store.batches().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_first_charges_load_once_and_never_overcount() {
        let db = Db::new();
        let (quotas, store) = db.quotas().await;
        let now = utc(2026, 12, 2, 10, 0, 0);
        store
            .add_quota_usage(&[("api:c_a".to_owned(), "2026-12".to_owned(), 5)])
            .await
            .unwrap();
        *lock(&store.load_delay) = Duration::from_millis(100);
        let quota = Quota {
            count: 10,
            period: QuotaPeriod::Month,
        };

        let results = join_all((0..20).map(|_| quotas.charge("api:c_a", &quota, now))).await;
        let allowed = results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|d| d.allowed))
            .count();
        assert_eq!(allowed, 5, "10 allowed, 5 stored: 5 more");
        assert_eq!(store.loads.load(Ordering::SeqCst), 1, "one load");
    }

    #[tokio::test]
    async fn a_slow_store_is_unavailable_within_the_timeout() {
        let db = Db::new();
        let store = db.open().await;
        *lock(&store.load_delay) = Duration::from_secs(10);
        let quotas = StoreQuotas::new(store.clone(), Duration::from_millis(100));
        let started = Instant::now();
        let err = quotas
            .charge("api:c_a", &MONTHLY_3, utc(2026, 12, 2, 10, 0, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, QuotaError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // The next request tries the load again.
        *lock(&store.load_delay) = Duration::ZERO;
        let decision = quotas
            .charge("api:c_a", &MONTHLY_3, utc(2026, 12, 2, 10, 0, 0))
            .await
            .unwrap();
        assert_eq!((decision.allowed, decision.used), (true, 1));
        assert_eq!(store.loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_flush_task_flushes_once_more_on_stop() {
        let db = Db::new();
        let (quotas, store) = db.quotas().await;
        let (stop_tx, stop) = watch::channel(false);
        let task = quotas.spawn_flush(Duration::from_secs(3600), stop);
        charges(
            &*quotas,
            "api:c_a",
            &MONTHLY_3,
            utc(2026, 12, 2, 10, 0, 0),
            2,
        )
        .await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 2);
        assert_eq!(store.batches().len(), 1);
    }

    #[tokio::test]
    async fn the_flush_task_flushes_every_interval() {
        let db = Db::new();
        let (quotas, store) = db.quotas().await;
        let (_stop_tx, stop) = watch::channel(false);
        let task = quotas.spawn_flush(Duration::from_millis(50), stop);
        charges(
            &*quotas,
            "api:c_a",
            &MONTHLY_3,
            utc(2026, 12, 2, 10, 0, 0),
            1,
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.batches().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.quota_usage("api:c_a", "2026-12").await.unwrap(), 1);
        task.abort();
    }

    // ------------------------------------------------------- RedisQuotas

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
}
