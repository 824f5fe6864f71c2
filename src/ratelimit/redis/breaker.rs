//! The circuit breaker in front of Redis: closed, open for a cool-down after
//! consecutive failures, then half-open for one probe. Lock-free: state and
//! the time it was entered are packed in one atomic word.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

pub(super) const CLOSED: u64 = 0;
pub(super) const OPEN: u64 = 1;
pub(super) const HALF_OPEN: u64 = 2;

/// A circuit breaker in two atomics: `word` packs the state (low 2 bits)
/// with the time it was entered (ms since `epoch`, the high bits), so that
/// state and time change together in one compare-and-swap; `failures`
/// counts consecutive failures while closed. Nothing is locked, so nothing
/// is held across an await.
pub(super) struct Breaker {
    pub(super) word: AtomicU64,
    pub(super) failures: AtomicU32,
    pub(super) threshold: u32,
    pub(super) open_for_ms: u64,
    pub(super) epoch: Instant,
}

/// What a call was admitted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Permit {
    Normal,
    Probe,
}

/// A state change, to be logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    Opened { failures: u32 },
    Reopened,
    HalfOpened,
    Closed,
}

pub(super) fn pack(state: u64, at_ms: u64) -> u64 {
    (at_ms << 2) | state
}

impl Breaker {
    pub(super) fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            word: AtomicU64::new(pack(CLOSED, 0)),
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            open_for_ms: u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX >> 2),
            epoch: Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
    }

    pub(super) fn state(&self) -> BreakerState {
        match self.word.load(Ordering::Acquire) & 0b11 {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to Redis now, and as what. While open, after
    /// `open_for` exactly one caller wins the probe. A probe whose result
    /// never came back (its future was dropped) is replaced after another
    /// `open_for`, so the breaker cannot stay half-open forever.
    pub(super) fn admit(&self, now_ms: u64) -> Option<Permit> {
        let w = self.word.load(Ordering::Acquire);
        match w & 0b11 {
            CLOSED => Some(Permit::Normal),
            _ => {
                let since = w >> 2;
                if now_ms.saturating_sub(since) < self.open_for_ms {
                    return None;
                }
                let won = self
                    .word
                    .compare_exchange(
                        w,
                        pack(HALF_OPEN, now_ms),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                if won && w & 0b11 == OPEN {
                    log_transition(Transition::HalfOpened, self);
                }
                won.then_some(Permit::Probe)
            }
        }
    }

    pub(super) fn on_success(&self, permit: Permit) -> Option<Transition> {
        self.failures.store(0, Ordering::Release);
        if permit != Permit::Probe {
            return None;
        }
        let w = self.word.load(Ordering::Acquire);
        (w & 0b11 == HALF_OPEN
            && self
                .word
                .compare_exchange(w, pack(CLOSED, 0), Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then_some(Transition::Closed)
    }

    pub(super) fn on_failure(&self, permit: Permit, now_ms: u64) -> Option<Transition> {
        let w = self.word.load(Ordering::Acquire);
        match permit {
            Permit::Probe => (w & 0b11 == HALF_OPEN
                && self
                    .word
                    .compare_exchange(w, pack(OPEN, now_ms), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
            .then_some(Transition::Reopened),
            Permit::Normal => {
                let failures = self
                    .failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                (failures >= self.threshold
                    && w & 0b11 == CLOSED
                    && self
                        .word
                        .compare_exchange(
                            w,
                            pack(OPEN, now_ms),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok())
                .then_some(Transition::Opened { failures })
            }
        }
    }
}
