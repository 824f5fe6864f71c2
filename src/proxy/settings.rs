//! Config checks of an upstream's settings (timeouts, pools, health, outlier
//! detection, retries, breaker) and its file paths.

use std::path::{Path, PathBuf};

use crate::config::{Problem, SourceFile, UpstreamSpec};

pub(super) fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Values no type can check: reported at the upstream's name.
pub(super) fn check_settings(
    spec: &UpstreamSpec,
    source: &SourceFile,
    problems: &mut Vec<Problem>,
) {
    let at = spec.name.span();
    let mut bad = |cond: bool, msg: &str| {
        if cond {
            problems.push(source.problem(at.clone(), msg.to_owned()));
        }
    };
    if let Some(h) = &spec.health {
        bad(
            !h.path.starts_with('/'),
            "`health.path` must start with `/`",
        );
        bad(
            h.interval.0.is_zero(),
            "`health.interval` must be above zero",
        );
        bad(h.timeout.0.is_zero(), "`health.timeout` must be above zero");
        bad(h.expected.is_empty(), "`health.expected` needs a status");
        bad(
            h.expected.iter().any(|s| !(100..=599).contains(s)),
            "`health.expected` statuses are 100 to 599",
        );
    }
    let o = &spec.outlier;
    bad(
        o.max_ejected_percent > 100,
        "`outlier.max_ejected_percent` is at most 100",
    );
    let r = &spec.retry;
    bad(
        !(1..=10).contains(&r.attempts),
        "`retry.attempts` is 1 to 10",
    );
    bad(
        r.on_status.iter().any(|s| !(500..=599).contains(s)),
        "`retry.on_status` lists 5xx statuses only",
    );
    bad(
        r.budget_window.0.is_zero(),
        "`retry.budget_window` must be above zero",
    );
    if let Some(b) = &spec.breaker {
        bad(
            b.failure_rate_percent > 100,
            "`breaker.failure_rate_percent` is at most 100",
        );
        bad(b.window.0.is_zero(), "`breaker.window` must be above zero");
    }
}

pub(super) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}
