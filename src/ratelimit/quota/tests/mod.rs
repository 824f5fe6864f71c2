//! Tests of quotas: fixtures here; parsing and period math, the store
//! counter and the Redis counter in the files beside.

mod periods;
mod redis_quotas;
mod store_quotas;

use super::*;

use crate::auth::Timestamp;

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
