//! Usage rollups at rest: the types the usage meter writes and reads
//! (`usage_minute` and `usage_day`, migration 0003), and the row
//! conversions both backends share.
//!
//! The counting itself (in memory, per request) and the reports built from
//! these rows are [`crate::usage`]'s. Counts are stored as the databases'
//! BIGINT: a delta above `i64::MAX` is capped there, and a sum that would
//! overflow fails the whole batch (the `CHECK (… >= 0)` constraints and
//! SQLite's STRICT tables refuse it) rather than wrap.

use serde::{Deserialize, Serialize};

use super::{StoreError, Timestamp};

/// What was counted for one consumer and key in one minute or day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounts {
    /// Requests answered (any status).
    pub requests: u64,
    /// Of those, answered 2xx …
    pub status_2xx: u64,
    /// … 3xx …
    pub status_3xx: u64,
    /// … 4xx (the gateway's own refusals included) …
    pub status_4xx: u64,
    /// … and 5xx.
    pub status_5xx: u64,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Requests refused by a rate limit or a quota (429).
    pub rate_limited: u64,
}

impl UsageCounts {
    /// Adds `other` into `self` (saturating).
    pub fn add(&mut self, other: &UsageCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.status_2xx = self.status_2xx.saturating_add(other.status_2xx);
        self.status_3xx = self.status_3xx.saturating_add(other.status_3xx);
        self.status_4xx = self.status_4xx.saturating_add(other.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(other.status_5xx);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
    }

    /// The counts in [`COUNT_COLUMNS`] order.
    pub fn values(&self) -> [u64; 8] {
        [
            self.requests,
            self.status_2xx,
            self.status_3xx,
            self.status_4xx,
            self.status_5xx,
            self.bytes_in,
            self.bytes_out,
            self.rate_limited,
        ]
    }

    /// The counts as BIGINTs, in [`COUNT_COLUMNS`] order (capped at
    /// `i64::MAX`).
    pub(super) fn columns(&self) -> [i64; 8] {
        self.values().map(|n| i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// Counts read back from BIGINT columns (in [`COUNT_COLUMNS`] order).
    pub(super) fn from_columns(c: [i64; 8]) -> Result<UsageCounts, StoreError> {
        let n = |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt("usage count"));
        Ok(UsageCounts {
            requests: n(c[0])?,
            status_2xx: n(c[1])?,
            status_3xx: n(c[2])?,
            status_4xx: n(c[3])?,
            status_5xx: n(c[4])?,
            bytes_in: n(c[5])?,
            bytes_out: n(c[6])?,
            rate_limited: n(c[7])?,
        })
    }
}

/// The count columns, in the order of [`UsageCounts::values`].
pub const COUNT_COLUMNS: &str =
    "requests, status_2xx, status_3xx, status_4xx, status_5xx, bytes_in, bytes_out, rate_limited";

/// `requests = {alias}.requests + excluded.requests, …` for an upsert.
pub(super) fn add_on_conflict(alias: &str) -> String {
    COUNT_COLUMNS
        .split(", ")
        .map(|c| format!("{c} = {alias}.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rollup row as read: key id, start, then the counts.
pub(super) type RawRow = (String, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// A rollup row from its columns.
pub(super) fn from_raw(r: RawRow) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        key_id: r.0,
        start: r.1,
        counts: UsageCounts::from_columns([r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9])?,
    })
}

/// The query for [`super::KeyStore::usage`], with `$1`/`?1` the consumer
/// and `$2`/`?2` the first start (`p` is the placeholder sign).
pub(super) fn select_sql(grain: UsageGrain, p: char) -> String {
    format!(
        "SELECT key_id, start, {COUNT_COLUMNS} FROM {} \
         WHERE consumer_id = {p}1 AND start >= {p}2 ORDER BY start, key_id",
        grain.table()
    )
}

/// One flush's counts for a consumer, key and minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The consumer's id.
    pub consumer_id: String,
    /// The key's id.
    pub key_id: String,
    /// The start of the minute (a multiple of 60).
    pub minute: Timestamp,
    /// What was counted.
    pub counts: UsageCounts,
}

/// Which rollup to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrain {
    /// `usage_minute`.
    Minute,
    /// `usage_day` (UTC days).
    Day,
}

impl UsageGrain {
    /// Seconds per bucket.
    pub fn seconds(self) -> i64 {
        match self {
            UsageGrain::Minute => 60,
            UsageGrain::Day => 86_400,
        }
    }

    pub(super) fn table(self) -> &'static str {
        match self {
            UsageGrain::Minute => "usage_minute",
            UsageGrain::Day => "usage_day",
        }
    }

    /// The bucket `at` falls in.
    pub fn start_of(self, at: Timestamp) -> Timestamp {
        at - at.rem_euclid(self.seconds())
    }
}

/// One stored rollup row of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The key's id.
    pub key_id: String,
    /// The bucket's start.
    pub start: Timestamp,
    /// What was counted in it.
    pub counts: UsageCounts,
}

/// The rows a flush adds: each delta once per rollup, deltas of the same
/// bucket summed first (an upsert may touch a row only once per
/// statement on Postgres). Sorted, so concurrent flushes lock rows in the
/// same order.
pub(super) fn rollup(
    batch: &[UsageDelta],
    grain: UsageGrain,
) -> Vec<(&str, &str, Timestamp, UsageCounts)> {
    let mut rows: std::collections::BTreeMap<(&str, Timestamp, &str), UsageCounts> =
        std::collections::BTreeMap::new();
    for d in batch {
        rows.entry((
            d.consumer_id.as_str(),
            grain.start_of(d.minute),
            d.key_id.as_str(),
        ))
        .or_default()
        .add(&d.counts);
    }
    rows.into_iter()
        .map(|((consumer, start, key), counts)| (consumer, key, start, counts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(consumer: &str, key: &str, minute: Timestamp, requests: u64) -> UsageDelta {
        UsageDelta {
            consumer_id: consumer.to_owned(),
            key_id: key.to_owned(),
            minute,
            counts: UsageCounts {
                requests,
                ..UsageCounts::default()
            },
        }
    }

    #[test]
    fn rollups_sum_deltas_of_one_bucket() {
        let day = 1_764_806_400; // 2025-12-04T00:00:00Z
        let batch = [
            delta("c_a", "k1", day + 60, 1),
            delta("c_a", "k1", day + 120, 2),
            delta("c_a", "k2", day + 60, 4),
            delta("c_a", "k1", day + 60, 8),
            delta("c_a", "k1", day - 60, 16),
        ];
        let minutes: Vec<(&str, Timestamp, u64)> = rollup(&batch, UsageGrain::Minute)
            .into_iter()
            .map(|(_, k, s, c)| (k, s, c.requests))
            .collect();
        assert_eq!(
            minutes,
            [
                ("k1", day - 60, 16),
                ("k1", day + 60, 9),
                ("k2", day + 60, 4),
                ("k1", day + 120, 2)
            ]
        );
        let days: Vec<(&str, Timestamp, u64)> = rollup(&batch, UsageGrain::Day)
            .into_iter()
            .map(|(_, k, s, c)| (k, s, c.requests))
            .collect();
        assert_eq!(
            days,
            [("k1", day - 86_400, 16), ("k1", day, 11), ("k2", day, 4)]
        );
    }

    #[test]
    fn counts_survive_the_columns_and_cap_at_bigint() {
        let counts = UsageCounts {
            requests: 1,
            status_2xx: 2,
            status_3xx: 3,
            status_4xx: 4,
            status_5xx: 5,
            bytes_in: 6,
            bytes_out: u64::MAX,
            rate_limited: 8,
        };
        let cols = counts.columns();
        assert_eq!(cols, [1, 2, 3, 4, 5, 6, i64::MAX, 8]);
        let back = UsageCounts::from_columns(cols).unwrap();
        assert_eq!(back.bytes_out, i64::MAX as u64);
        assert_eq!(back.status_4xx, 4);
        assert!(UsageCounts::from_columns([0, 0, 0, -1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn buckets_start_on_their_boundary() {
        let cases = [
            ("minute, mid", UsageGrain::Minute, 125, 120),
            ("minute, on it", UsageGrain::Minute, 120, 120),
            ("day, mid", UsageGrain::Day, 86_400 + 5, 86_400),
            ("day, before the epoch", UsageGrain::Day, -1, -86_400),
        ];
        for (name, grain, at, want) in cases {
            assert_eq!(grain.start_of(at), want, "case {name}");
        }
    }
}
