//! `[usage]`: usage metering per consumer and key (see [`crate::usage`]).
//! Read at start: changing it needs a restart.

use std::time::Duration;

use serde::Deserialize;
use validator::{Validate, ValidationError, ValidationErrors};

use super::Dur;

/// Usage metering: what is counted per consumer and API key, how often it
/// is saved, and how long it is kept.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Count requests, status classes, bytes and rate-limit refusals per
    /// consumer and key (API-key callers).
    pub enabled: bool,
    /// Time between flushes to the store: the most a crash can lose.
    /// 1 s to 1 h.
    pub flush_interval: Dur,
    /// How long per-minute rows are kept; hourly reports reach back this
    /// far. At least 1 h.
    pub minute_retention: Dur,
    /// How long per-day rows are kept. At least 1 day.
    pub day_retention: Dur,
    /// Most consumer, key and minute entries counted between two flushes;
    /// requests of further entries are counted as dropped.
    pub max_entries: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            flush_interval: Dur(Duration::from_secs(10)),
            minute_retention: Dur(Duration::from_secs(7 * 86_400)),
            day_retention: Dur(Duration::from_secs(400 * 86_400)),
            max_entries: 100_000,
        }
    }
}

impl Validate for UsageConfig {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let checks = [
            ("flush_interval", valid_flush_interval(&self.flush_interval)),
            ("minute_retention", at_least_an_hour(&self.minute_retention)),
            ("day_retention", at_least_a_day(&self.day_retention)),
            ("max_entries", valid_max_entries(self.max_entries)),
        ];
        for (field, check) in checks {
            if let Err(e) = check {
                errors.add(field, e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn valid_max_entries(n: usize) -> Result<(), ValidationError> {
    if (1..=10_000_000).contains(&n) {
        Ok(())
    } else {
        Err(ValidationError::new("range").with_message("must be 1 to 10000000".into()))
    }
}

fn within(
    d: &Dur,
    min: Duration,
    max: Duration,
    message: &'static str,
) -> Result<(), ValidationError> {
    if d.0 >= min && d.0 <= max {
        Ok(())
    } else {
        Err(ValidationError::new("range").with_message(message.into()))
    }
}

fn valid_flush_interval(d: &Dur) -> Result<(), ValidationError> {
    within(
        d,
        Duration::from_secs(1),
        Duration::from_secs(3_600),
        "must be 1s to 1h",
    )
}

fn at_least_an_hour(d: &Dur) -> Result<(), ValidationError> {
    within(
        d,
        Duration::from_secs(3_600),
        Duration::MAX,
        "must be at least 1h",
    )
}

fn at_least_a_day(d: &Dur) -> Result<(), ValidationError> {
    within(
        d,
        Duration::from_secs(86_400),
        Duration::MAX,
        "must be at least 1d",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let ok = UsageConfig::default();
        assert!(ok.validate().is_ok());
        let cases = [
            (
                "flush too often",
                UsageConfig {
                    flush_interval: Dur(Duration::from_millis(500)),
                    ..ok.clone()
                },
            ),
            (
                "flush too rarely",
                UsageConfig {
                    flush_interval: Dur(Duration::from_secs(7_200)),
                    ..ok.clone()
                },
            ),
            (
                "minutes kept too briefly",
                UsageConfig {
                    minute_retention: Dur(Duration::from_secs(60)),
                    ..ok.clone()
                },
            ),
            (
                "days kept too briefly",
                UsageConfig {
                    day_retention: Dur(Duration::from_secs(3_600)),
                    ..ok.clone()
                },
            ),
            (
                "no entries",
                UsageConfig {
                    max_entries: 0,
                    ..ok.clone()
                },
            ),
        ];
        for (name, config) in cases {
            assert!(config.validate().is_err(), "case {name}");
        }
    }
}
