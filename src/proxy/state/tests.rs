//! Tests of upstream run-time state: retry budgets, breakers, outlier ejection.

use super::*;
use crate::config::Dur;

fn state() -> Arc<UpstreamState> {
    let metrics = Arc::new(Metrics::new().unwrap());
    UpstreamRegistry::new(metrics).upstream("u")
}

#[test]
fn retry_budget_caps_retries() {
    let s = state();
    let win = Duration::from_secs(60);
    for _ in 0..50 {
        s.count_request(win);
    }
    let granted = (0..100).filter(|_| s.take_retry(win, 20, 3)).count();
    assert_eq!(granted, 10, "20% of 50 requests");
    let s = state();
    let granted = (0..100).filter(|_| s.take_retry(win, 20, 3)).count();
    assert_eq!(granted, 3, "the minimum with no requests");
}

#[test]
fn breaker_opens_and_probes() {
    let s = state();
    let spec = BreakerSpec {
        failure_threshold: 3,
        open_for: Dur(Duration::ZERO),
        half_open_probes: 1,
        ..BreakerSpec::default()
    };
    let steps: [(&str, Option<bool>, &str); 6] = [
        ("fail 1", Some(false), "closed"),
        ("fail 2", Some(false), "closed"),
        ("ok resets", Some(true), "closed"),
        ("fail again", Some(false), "closed"),
        ("fail", Some(false), "closed"),
        ("third in a row opens", Some(false), "open"),
    ];
    for (name, outcome, want) in steps {
        if let Some(ok) = outcome {
            s.breaker_record(&spec, ok, false);
        }
        assert_eq!(s.breaker_state(), want, "{name}");
    }
    // open_for is zero: the next admission is a probe.
    assert_eq!(s.admit(&spec), Admit::Yes { probe: true });
    assert!(
        matches!(s.admit(&spec), Admit::No { .. }),
        "one probe at a time"
    );
    s.breaker_record(&spec, false, true);
    assert_eq!(s.breaker_state(), "open", "failed probe reopens");
    assert_eq!(s.admit(&spec), Admit::Yes { probe: true });
    s.breaker_record(&spec, true, true);
    assert_eq!(s.breaker_state(), "closed", "good probe closes");
    assert_eq!(s.admit(&spec), Admit::Yes { probe: false });
}

#[test]
fn ejection_respects_the_share() {
    let s = state();
    let spec = OutlierSpec {
        consecutive_failures: 2,
        base_ejection: Dur(Duration::from_secs(60)),
        max_ejection: Dur(Duration::from_secs(600)),
        max_ejected_percent: 50,
    };
    let all: Vec<_> = ["a", "b", "c", "d"].iter().map(|u| s.target(u)).collect();
    let now = s.now_ms();
    let cases = [
        ("one failure is not enough", 0, 1, false),
        ("two eject a", 0, 1, true),
        ("b ejected too (2 of 4)", 1, 2, true),
        ("c would pass the 50% share", 2, 2, false),
    ];
    for (name, idx, failures, want) in cases {
        for _ in 0..failures {
            s.target_failed(&all[idx], &spec, &all);
        }
        assert_eq!(all[idx].is_ejected(now), want, "{name}");
    }
    let single = [s.target("solo")];
    for _ in 0..10 {
        s.target_failed(&single[0], &spec, &single);
    }
    assert!(!single[0].is_ejected(now), "a lone target is never ejected");
}
