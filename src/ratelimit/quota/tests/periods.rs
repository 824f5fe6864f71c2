//! Quota tests: parsing and calendar period math.

use super::*;

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
        (
            "a 31-day month's last second",
            Month,
            utc(2026, 7, 31, 23, 59, 59),
            "2026-07",
            midnight(2026, 8, 1),
        ),
        (
            "January's last second rolls over into February",
            Month,
            utc(2027, 1, 31, 23, 59, 59),
            "2027-01",
            midnight(2027, 2, 1),
        ),
        (
            "month: 2000 is a leap year (divisible by 400)",
            Month,
            utc(2000, 2, 29, 23, 59, 59),
            "2000-02",
            midnight(2000, 3, 1),
        ),
        (
            "month: 1900 is no leap year (divisible by 100)",
            Month,
            utc(1900, 2, 28, 23, 59, 59),
            "1900-02",
            midnight(1900, 3, 1),
        ),
        (
            "month: the day after a leap day is in March",
            Month,
            midnight(2024, 3, 1),
            "2024-03",
            midnight(2024, 4, 1),
        ),
        (
            "day: a leap day's last second",
            Day,
            utc(2024, 2, 29, 23, 59, 59),
            "2024-02-29",
            midnight(2024, 3, 1),
        ),
        (
            "day: a common year's February 28th",
            Day,
            utc(2026, 2, 28, 0, 0, 0),
            "2026-02-28",
            midnight(2026, 3, 1),
        ),
        (
            "day: the calendar's last day never resets",
            Day,
            utc(9999, 12, 31, 12, 0, 0),
            "9999-12-31",
            Timestamp::MAX,
        ),
        (
            "month: the calendar's last month never resets",
            Month,
            utc(9999, 12, 1, 0, 0, 0),
            "9999-12",
            Timestamp::MAX,
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
