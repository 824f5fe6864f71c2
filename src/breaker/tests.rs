//! Tests of the circuit breaker: the state machine step by step, at given
//! times (no clock, no sleeping), one transition per change under
//! contention, and the counting window.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::*;

/// Opens after 3 failures in a row, open 100 ms, probes lost after 200 ms.
fn settings(probes: u32) -> Settings {
    Settings {
        failures: 3,
        failure_rate_percent: 0,
        window: Duration::from_secs(10),
        open_for: Duration::from_millis(100),
        probes,
        probe_timeout: Duration::from_millis(200),
    }
}

const RATE_50: Settings = Settings {
    failures: 0,
    failure_rate_percent: 50,
    window: Duration::from_millis(1000),
    open_for: Duration::from_millis(100),
    probes: 1,
    probe_timeout: Duration::from_millis(100),
};

#[derive(Debug, Clone, Copy)]
enum Step {
    /// `admit` at a time: the admission and the transition it reports.
    Admit(u64, Admission, Option<Transition>),
    /// `record` of an outcome (`ok`) for a permit at a time.
    Record(Permit, bool, u64, Option<Transition>),
    /// `n` normal outcomes at a time, none reporting a transition.
    Many(u32, bool, u64),
    State(State),
}

use Permit::{Normal, Probe};
use Step::{Admit, Many, Record};

const PASS: Admission = Admission::Pass(Normal);
const PROBE: Admission = Admission::Pass(Probe);

fn refused(ms: u64) -> Admission {
    Admission::Refused {
        retry_after: Duration::from_millis(ms),
    }
}

fn fail(at: u64, t: Option<Transition>) -> Step {
    Record(Normal, false, at, t)
}

fn opened(failures: u32) -> Option<Transition> {
    Some(Transition::Opened(Trip::Consecutive { failures }))
}

/// Three failures at t = 0: open from 0.
fn open_at_0() -> Vec<Step> {
    vec![fail(0, None), fail(0, None), fail(0, opened(3))]
}

fn with(prefix: Vec<Step>, rest: Vec<Step>) -> Vec<Step> {
    prefix.into_iter().chain(rest).collect()
}

#[test]
fn state_machine() {
    use State::{Closed, HalfOpen, Open};
    let half = Some(Transition::HalfOpened);
    let closed = Some(Transition::Closed);
    let reopened = Some(Transition::Reopened);
    let cases: Vec<(&str, Settings, Vec<Step>)> = vec![
        (
            "closed lets calls through",
            settings(1),
            vec![Admit(0, PASS, None), Step::State(Closed)],
        ),
        (
            "opens after 3 consecutive failures, reported once, then refuses for the cool-down",
            settings(1),
            vec![
                Admit(0, PASS, None),
                fail(0, None),
                fail(0, None),
                Step::State(Closed),
                fail(10, opened(3)),
                Step::State(Open),
                fail(11, None),
                Admit(50, refused(60), None),
                Admit(109, refused(1), None),
            ],
        ),
        (
            "a success resets the run of failures",
            settings(1),
            vec![
                fail(0, None),
                fail(0, None),
                Record(Normal, true, 0, None),
                fail(0, None),
                fail(0, None),
                Step::State(Closed),
            ],
        ),
        (
            "failure threshold 0 never opens",
            Settings {
                failures: 0,
                ..settings(1)
            },
            vec![Many(1000, false, 0), Step::State(Closed)],
        ),
        (
            "half-open after the cool-down, one probe only, its success closes",
            settings(1),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Step::State(HalfOpen),
                    Admit(101, refused(100), None),
                    Record(Probe, true, 102, closed),
                    Step::State(Closed),
                    Admit(102, PASS, None),
                    // The run of failures starts again from zero.
                    fail(103, None),
                    fail(103, None),
                    Step::State(Closed),
                ],
            ),
        ),
        (
            "a failed probe opens again for another cool-down",
            settings(1),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Record(Probe, false, 110, reopened),
                    Step::State(Open),
                    Admit(209, refused(1), None),
                    Admit(210, PROBE, half),
                ],
            ),
        ),
        (
            "a lost probe is replaced after the probe timeout",
            settings(1),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Admit(299, refused(100), None),
                    Admit(300, PROBE, None),
                    Step::State(HalfOpen),
                    Admit(301, refused(100), None),
                    Record(Probe, true, 302, closed),
                ],
            ),
        ),
        (
            "three probes: all three must succeed",
            settings(3),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Admit(100, PROBE, None),
                    Admit(100, PROBE, None),
                    Admit(100, refused(100), None),
                    Record(Probe, true, 101, None),
                    Record(Probe, true, 101, None),
                    Step::State(HalfOpen),
                    Record(Probe, true, 102, closed),
                    Step::State(Closed),
                ],
            ),
        ),
        (
            "three probes: one failure after successes opens again",
            settings(3),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Admit(100, PROBE, None),
                    Record(Probe, true, 101, None),
                    Record(Probe, false, 102, reopened),
                    Step::State(Open),
                    // A new round starts from nothing.
                    Admit(202, PROBE, half),
                    Record(Probe, true, 203, None),
                    Step::State(HalfOpen),
                ],
            ),
        ),
        (
            "a lost probe's round keeps its successes: only the lost one is replaced",
            settings(2),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Admit(100, PROBE, None),
                    Record(Probe, true, 101, None),
                    // The second never comes back.
                    Admit(300, PROBE, None),
                    Admit(300, refused(100), None),
                    Record(Probe, true, 301, closed),
                ],
            ),
        ),
        (
            "stragglers neither close nor reopen",
            settings(1),
            with(
                open_at_0(),
                vec![
                    fail(1, None),
                    Record(Normal, true, 1, None),
                    Step::State(Open),
                    Admit(100, PROBE, half),
                    fail(101, None),
                    fail(101, None),
                    fail(101, None),
                    Step::State(HalfOpen),
                ],
            ),
        ),
        (
            "a probe result after the breaker left half-open changes nothing",
            settings(1),
            with(
                open_at_0(),
                vec![
                    Admit(100, PROBE, half),
                    Record(Probe, false, 101, reopened),
                    Record(Probe, true, 102, None),
                    Step::State(Open),
                    Record(Probe, false, 150, None),
                    // The cool-down still counts from 101.
                    Admit(201, PROBE, half),
                ],
            ),
        ),
        (
            "a zero cool-down probes at once",
            Settings {
                open_for: Duration::ZERO,
                ..settings(1)
            },
            with(
                open_at_0(),
                vec![
                    Admit(0, PROBE, half),
                    Admit(0, refused(0), None),
                    Record(Probe, false, 1, reopened),
                    Admit(1, PROBE, half),
                ],
            ),
        ),
        (
            "failure rate: 50% of at least 10 calls opens",
            RATE_50,
            vec![
                Many(5, true, 0),
                Many(4, false, 0),
                fail(
                    0,
                    Some(Transition::Opened(Trip::FailureRate {
                        failed: 5,
                        total: 10,
                    })),
                ),
                Step::State(Open),
            ],
        ),
        (
            "failure rate: fewer than 10 calls never open",
            RATE_50,
            vec![Many(9, false, 0), Step::State(Closed)],
        ),
        (
            "failure rate: below the share stays closed",
            RATE_50,
            vec![Many(6, true, 0), Many(5, false, 0), Step::State(Closed)],
        ),
        (
            "failure rate: calls out of the window no longer count",
            RATE_50,
            vec![
                Many(9, false, 0),
                Many(10, true, 1500),
                Many(9, false, 1500),
                Step::State(Closed),
            ],
        ),
        (
            "failure rate: closing forgets the window",
            RATE_50,
            vec![
                Many(9, false, 0),
                fail(
                    0,
                    Some(Transition::Opened(Trip::FailureRate {
                        failed: 10,
                        total: 10,
                    })),
                ),
                Admit(100, PROBE, half),
                Record(Probe, true, 100, closed),
                Many(9, false, 101),
                Step::State(Closed),
            ],
        ),
    ];
    for (name, s, steps) in cases {
        let b = Breaker::default();
        for (i, step) in steps.iter().enumerate() {
            let at = format!("{name}: step {i} {step:?}");
            match *step {
                Admit(now, want, t) => assert_eq!(b.admit(&s, now), (want, t), "{at}"),
                Record(p, ok, now, t) => assert_eq!(b.record(&s, p, ok, now), t, "{at}"),
                Many(n, ok, now) => {
                    for _ in 0..n {
                        assert_eq!(b.record(&s, Normal, ok, now), None, "{at}");
                    }
                }
                Step::State(want) => assert_eq!(b.state(), want, "{at}"),
            }
        }
    }
}

#[test]
fn the_packed_word_round_trips() {
    let cases = [
        ("closed at 0", Word::entered(State::Closed, 0)),
        ("open, late", Word::entered(State::Open, TIME_MAX)),
        (
            "half-open with counts",
            Word {
                state: State::HalfOpen,
                since: 123_456_789,
                started: MAX_PROBES,
                ok: MAX_PROBES - 1,
            },
        ),
    ];
    for (name, w) in cases {
        assert_eq!(Word::unpack(w.pack()), w, "{name}");
    }
    let late = Word::entered(State::Open, u64::MAX);
    assert_eq!(Word::unpack(late.pack()).since, TIME_MAX, "times saturate");
}

#[test]
fn each_change_is_reported_once_under_contention() {
    let b = Arc::new(Breaker::default());
    let s = settings(1);
    let opened = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (b, opened) = (b.clone(), opened.clone());
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if b.record(&s, Normal, false, 0).is_some() {
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "opened once");
    let probes: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || b.admit(&s, 100))
        })
        .map(|t| t.join().unwrap())
        .collect();
    let passed = probes
        .iter()
        .filter(|(a, _)| *a == Admission::Pass(Probe))
        .count();
    let half = probes.iter().filter(|(_, t)| t.is_some()).count();
    assert_eq!(
        (passed, half),
        (1, 1),
        "one probe, one half-open transition"
    );
}

#[test]
fn window_counts_only_recent_buckets() {
    let w = Window::default();
    let win = Duration::from_millis(1000);
    let cases = [
        ("first", 0, (1, 0)),
        ("same bucket", 50, (2, 0)),
        ("later bucket", 950, (3, 0)),
        ("first buckets fall out", 1150, (2, 0)),
        ("all old", 5000, (1, 0)),
    ];
    for (name, now, want) in cases {
        w.add(now, win, 1, 0);
        assert_eq!(w.sum(now, win), want, "{name}");
    }
}
