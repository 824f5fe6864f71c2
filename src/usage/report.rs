//! Usage reports: a consumer's stored rollups, by hour or by day, as the
//! CLI (`gatehouse usage`), the admin API
//! (`GET /v1/consumers/{id}/usage`) and the console read them.
//!
//! Hourly buckets are summed from the minute rollup, so they reach back as
//! far as `[usage] minute_retention` (7 days by default); daily buckets
//! come from the day rollup. Counts still in a gateway's memory (up to one
//! flush interval) are not in a report yet.

use serde::Serialize;

use crate::store::{KeyStore, StoreError, Timestamp, UsageCounts, UsageGrain};

/// A bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// Hours (from the minute rollup).
    Hour,
    /// UTC days (from the day rollup).
    Day,
}

impl By {
    /// Seconds per bucket.
    pub fn seconds(self) -> i64 {
        match self {
            By::Hour => 3_600,
            By::Day => 86_400,
        }
    }

    fn grain(self) -> UsageGrain {
        match self {
            By::Hour => UsageGrain::Minute,
            By::Day => UsageGrain::Day,
        }
    }
}

impl std::str::FromStr for By {
    type Err = String;

    fn from_str(s: &str) -> Result<By, String> {
        match s {
            "hour" => Ok(By::Hour),
            "day" => Ok(By::Day),
            other => Err(format!(
                "unknown bucket {other:?} (expected `hour` or `day`)"
            )),
        }
    }
}

/// What to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The consumer's id.
    pub consumer_id: String,
    /// The first bucket is the one `since` falls in.
    pub since: Timestamp,
    /// Bucket size.
    pub by: By,
    /// One bucket per key (else the consumer's keys summed).
    pub per_key: bool,
}

/// One bucket of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Its start (Unix seconds, UTC).
    pub start: Timestamp,
    /// The key, when the report is per key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// What was counted in it.
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// The consumer's usage: only buckets that have data, oldest first (then
/// by key).
pub async fn report(store: &dyn KeyStore, q: &Query) -> Result<Vec<Bucket>, StoreError> {
    let size = q.by.seconds();
    let since = q.since - q.since.rem_euclid(size);
    let rows = store.usage(&q.consumer_id, since, q.by.grain()).await?;
    let mut buckets: std::collections::BTreeMap<(Timestamp, Option<String>), UsageCounts> =
        std::collections::BTreeMap::new();
    for row in rows {
        let start = row.start - row.start.rem_euclid(size);
        let key = q.per_key.then_some(row.key_id);
        buckets.entry((start, key)).or_default().add(&row.counts);
    }
    Ok(buckets
        .into_iter()
        .map(|((start, key_id), counts)| Bucket {
            start,
            key_id,
            counts,
        })
        .collect())
}

/// The buckets summed.
pub fn total(buckets: &[Bucket]) -> UsageCounts {
    let mut sum = UsageCounts::default();
    for b in buckets {
        sum.add(&b.counts);
    }
    sum
}

/// The report as CSV: a header line, then one line per bucket, the start
/// as RFC 3339 (UTC). Key ids are `[A-Za-z0-9_]`, so nothing is quoted.
pub fn to_csv(buckets: &[Bucket], per_key: bool) -> String {
    let mut out = String::from(if per_key { "start,key_id," } else { "start," });
    out.push_str(&crate::store::usage::COUNT_COLUMNS.replace(", ", ","));
    out.push('\n');
    for b in buckets {
        out.push_str(&rfc3339(b.start));
        out.push(',');
        if per_key {
            out.push_str(&csv_field(b.key_id.as_deref().unwrap_or("")));
            out.push(',');
        }
        let values: Vec<String> = b.counts.values().iter().map(u64::to_string).collect();
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or line break (key
/// ids never do; this is so a surprise cannot break the columns).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// When a report starts: a duration back from `now` (`7d`, `24h`, `90m`),
/// a UTC date (`2026-12-01`), or Unix seconds.
pub fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        let back = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        return Ok(now.saturating_sub(back));
    }
    if let Some(at) = parse_date(s) {
        return Ok(at);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("{s:?} is too large"));
    }
    Err(format!(
        "invalid since {s:?}: expected a duration (`7d`, `24h`), a date (`2026-12-01`) or Unix seconds"
    ))
}

/// Midnight UTC of `YYYY-MM-DD`.
fn parse_date(s: &str) -> Option<Timestamp> {
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// `2026-12-04T10:00:00Z`.
pub fn rfc3339(at: Timestamp) -> String {
    match time::OffsetDateTime::from_unix_timestamp(at) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => at.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_one_line_per_bucket() {
        let buckets = [
            Bucket {
                start: 1_796_342_400,
                key_id: Some("k_1".to_owned()),
                counts: UsageCounts {
                    requests: 3,
                    status_2xx: 2,
                    status_4xx: 1,
                    bytes_out: 42,
                    rate_limited: 1,
                    ..UsageCounts::default()
                },
            },
            Bucket {
                start: 1_796_346_000,
                key_id: Some("odd,\"key\"".to_owned()),
                counts: UsageCounts::default(),
            },
        ];
        let csv = to_csv(&buckets, true);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "start,key_id,requests,status_2xx,status_3xx,status_4xx,status_5xx,bytes_in,bytes_out,rate_limited",
                "2026-12-04T00:00:00Z,k_1,3,2,0,1,0,0,42,1",
                "2026-12-04T01:00:00Z,\"odd,\"\"key\"\"\",0,0,0,0,0,0,0,0",
            ]
        );
        assert!(to_csv(&buckets, false).starts_with("start,requests,"));
        assert_eq!(total(&buckets).requests, 3);
    }

    #[test]
    fn since_parses_durations_dates_and_seconds() {
        let now = 1_796_342_400 + 3_600;
        let cases = [
            ("a week back", "7d", Ok(now - 7 * 86_400)),
            ("hours", "24h", Ok(now - 86_400)),
            ("a date is UTC midnight", "2026-12-04", Ok(1_796_342_400)),
            ("unix seconds", "1796342400", Ok(1_796_342_400)),
            ("no such day", "2026-02-30", Err(())),
            ("words", "last week", Err(())),
            ("empty", "", Err(())),
        ];
        for (name, input, want) in cases {
            assert_eq!(parse_since(input, now).map_err(|_| ()), want, "case {name}");
        }
    }

    #[test]
    fn bucket_names_parse() {
        assert_eq!("hour".parse::<By>(), Ok(By::Hour));
        assert_eq!("day".parse::<By>(), Ok(By::Day));
        assert!("week".parse::<By>().is_err());
    }
}
