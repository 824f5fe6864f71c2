//! The one circuit breaker, shared by the upstreams (`proxy::state`) and
//! the Redis clients (the cluster rate limiter and the quota counter).
//!
//! This module owns the state machine and nothing else: closed → open
//! (after consecutive failures, or a failure rate over a sliding
//! [`Window`]) → after a cool-down, half-open for `probes` probes that must
//! all succeed → closed again; a failed probe opens it again for another
//! cool-down, and probes whose results never came back (their futures were
//! dropped) are replaced after `probe_timeout`, so it cannot stay half-open
//! forever. Each state change is returned as a [`Transition`] exactly once
//! (to whichever caller made it), so the caller logs and counts it; this
//! module logs nothing, reads no clock and knows no config type: every call
//! takes its [`Settings`] (a reload may change them while the state lives
//! on) and the time in milliseconds from the caller's own epoch.
//!
//! Lock-free: the state, the time it was entered and the half-open probe
//! counts are packed in one atomic word, so they change together in one
//! compare-and-swap; nothing is held across an await.

mod window;

pub(crate) use window::Window;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Requests a failure rate needs in its window before it can open the breaker.
pub(crate) const MIN_REQUESTS: u64 = 10;

/// Most half-open probes per round (what the packed word can count).
pub(crate) const MAX_PROBES: u32 = (1 << PROBE_BITS) - 1;

const STATE_BITS: u32 = 2;
const PROBE_BITS: u32 = 11;
const TIME_SHIFT: u32 = STATE_BITS + 2 * PROBE_BITS;
/// Times are kept in 40 bits of milliseconds (≈ 34 years from the caller's
/// epoch); later times are taken as this one.
const TIME_MAX: u64 = (1 << (64 - TIME_SHIFT)) - 1;

/// How a breaker trips and recovers. Passed on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Consecutive failures that open it (0: off).
    pub(crate) failures: u32,
    /// Or this share of failures over `window`, in percent (0: off; needs
    /// at least [`MIN_REQUESTS`] requests in the window).
    pub(crate) failure_rate_percent: u32,
    /// The failure rate's window.
    pub(crate) window: Duration,
    /// How long it stays open before probing.
    pub(crate) open_for: Duration,
    /// Probes per half-open round; all must succeed to close it (at least 1,
    /// at most [`MAX_PROBES`]).
    pub(crate) probes: u32,
    /// How long a half-open round waits for its probes' results before it
    /// takes the missing ones as lost and lets new probes replace them.
    pub(crate) probe_timeout: Duration,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls are refused at once.
    Open,
    /// Probe calls go through; the others are refused.
    HalfOpen,
}

impl State {
    /// A stable lower-case name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a call was let through as; give it back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// An ordinary call, the breaker being closed.
    Normal,
    /// A half-open probe.
    Probe,
}

/// The breaker's answer to "may I call?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Call, and report the outcome with this permit.
    Pass(Permit),
    /// Do not call; try again after this long.
    Refused {
        /// The rest of the cool-down, or (while probing) at most a second.
        retry_after: Duration,
    },
}

/// Why a closed breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trip {
    /// `failures` failures in a row.
    Consecutive {
        /// The run of failures.
        failures: u32,
    },
    /// `failed` of the last `total` calls in the window failed.
    FailureRate {
        /// Failures in the window.
        failed: u64,
        /// Calls in the window.
        total: u64,
    },
}

/// A state change, returned once, to the caller that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Closed → open.
    Opened(Trip),
    /// Open → half-open: the cool-down is over, probing.
    HalfOpened,
    /// Half-open → open: a probe failed.
    Reopened,
    /// Half-open → closed: the probes succeeded.
    Closed,
}

impl Transition {
    /// The state entered.
    pub(crate) fn to(self) -> State {
        match self {
            Transition::Opened(_) | Transition::Reopened => State::Open,
            Transition::HalfOpened => State::HalfOpen,
            Transition::Closed => State::Closed,
        }
    }
}

/// A circuit breaker. Starts closed.
#[derive(Default)]
pub(crate) struct Breaker {
    /// A packed [`Word`].
    word: AtomicU64,
    /// Consecutive failures of normal calls.
    failures: AtomicU32,
    /// Calls (`a`) and failures (`b`) of normal calls, for the failure rate.
    window: Window,
}

/// The unpacked state word: the state, when it was entered, and (while
/// half-open) the probes started and succeeded in this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: State,
    since: u64,
    started: u32,
    ok: u32,
}

impl Word {
    fn entered(state: State, since: u64) -> Word {
        Word {
            state,
            since,
            started: 0,
            ok: 0,
        }
    }

    fn pack(self) -> u64 {
        let state = match self.state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        let mask = u64::from(MAX_PROBES);
        (self.since.min(TIME_MAX) << TIME_SHIFT)
            | ((u64::from(self.ok) & mask) << (STATE_BITS + PROBE_BITS))
            | ((u64::from(self.started) & mask) << STATE_BITS)
            | state
    }

    fn unpack(w: u64) -> Word {
        let mask = u64::from(MAX_PROBES);
        let count = |shift: u32| u32::try_from((w >> shift) & mask).unwrap_or(MAX_PROBES);
        Word {
            state: match w & 0b11 {
                0 => State::Closed,
                1 => State::Open,
                _ => State::HalfOpen,
            },
            since: w >> TIME_SHIFT,
            started: count(STATE_BITS),
            ok: count(STATE_BITS + PROBE_BITS),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(TIME_MAX)
}

fn probes(s: &Settings) -> u32 {
    s.probes.clamp(1, MAX_PROBES)
}

impl Breaker {
    fn load(&self) -> Word {
        Word::unpack(self.word.load(Ordering::Acquire))
    }

    fn swap(&self, from: Word, to: Word) -> bool {
        self.word
            .compare_exchange(from.pack(), to.pack(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The state now.
    pub(crate) fn state(&self) -> State {
        self.load().state
    }

    /// Whether a call may go through at `now_ms`, and as what. The call
    /// that ends the cool-down also gets [`Transition::HalfOpened`].
    pub(crate) fn admit(&self, s: &Settings, now_ms: u64) -> (Admission, Option<Transition>) {
        let now = now_ms.min(TIME_MAX);
        loop {
            let w = self.load();
            let next = match w.state {
                State::Closed => return (Admission::Pass(Permit::Normal), None),
                State::Open => {
                    let until = w.since.saturating_add(ms(s.open_for));
                    if now < until {
                        let retry_after = Duration::from_millis(until - now);
                        return (Admission::Refused { retry_after }, None);
                    }
                    Word {
                        started: 1,
                        ..Word::entered(State::HalfOpen, now)
                    }
                }
                State::HalfOpen => {
                    if now >= w.since.saturating_add(ms(s.probe_timeout)) {
                        // The probes not back yet are lost: a new round,
                        // keeping the successes, replaces them.
                        Word {
                            since: now,
                            started: w.ok.saturating_add(1),
                            ..w
                        }
                    } else if w.started < probes(s) {
                        Word {
                            started: w.started + 1,
                            ..w
                        }
                    } else {
                        let retry_after = s.open_for.min(Duration::from_secs(1));
                        return (Admission::Refused { retry_after }, None);
                    }
                }
            };
            if self.swap(w, next) {
                let t = (w.state == State::Open).then_some(Transition::HalfOpened);
                return (Admission::Pass(Permit::Probe), t);
            }
        }
    }

    /// Feeds the outcome of a call let through as `permit` at `now_ms`;
    /// returns the state change it made, if any. Results of normal calls
    /// that finish while the breaker is not closed (stragglers) and of
    /// probes that finish once it is no longer half-open change nothing.
    pub(crate) fn record(
        &self,
        s: &Settings,
        permit: Permit,
        ok: bool,
        now_ms: u64,
    ) -> Option<Transition> {
        let now = now_ms.min(TIME_MAX);
        match permit {
            Permit::Probe => self.record_probe(s, ok, now),
            Permit::Normal => self.record_normal(s, ok, now),
        }
    }

    fn record_probe(&self, s: &Settings, ok: bool, now: u64) -> Option<Transition> {
        loop {
            let w = self.load();
            if w.state != State::HalfOpen {
                return None;
            }
            let (next, t) = if !ok {
                (Word::entered(State::Open, now), Some(Transition::Reopened))
            } else if w.ok.saturating_add(1) >= probes(s) {
                (Word::entered(State::Closed, now), Some(Transition::Closed))
            } else {
                (Word { ok: w.ok + 1, ..w }, None)
            };
            if self.swap(w, next) {
                if t == Some(Transition::Closed) {
                    self.failures.store(0, Ordering::Release);
                    self.window.clear();
                }
                return t;
            }
        }
    }

    fn record_normal(&self, s: &Settings, ok: bool, now: u64) -> Option<Transition> {
        if s.failure_rate_percent > 0 {
            self.window.add(now, s.window, 1, u64::from(!ok));
        }
        if ok {
            self.failures.store(0, Ordering::Release);
            return None;
        }
        let run = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let trip = if s.failures > 0 && run >= s.failures {
            Trip::Consecutive { failures: run }
        } else if s.failure_rate_percent > 0 {
            let (total, failed) = self.window.sum(now, s.window);
            if total < MIN_REQUESTS
                || failed.saturating_mul(100)
                    < total.saturating_mul(u64::from(s.failure_rate_percent))
            {
                return None;
            }
            Trip::FailureRate { failed, total }
        } else {
            return None;
        };
        let w = self.load();
        (w.state == State::Closed && self.swap(w, Word::entered(State::Open, now)))
            .then_some(Transition::Opened(trip))
    }
}

#[cfg(test)]
mod tests;
