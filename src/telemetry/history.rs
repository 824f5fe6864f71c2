//! The last fifteen minutes in memory, for the status page: requests,
//! errors and latency per ten-second slot, and the clients refused most.
//!
//! Recording a request is a few relaxed atomic adds into the slot of the
//! current ten seconds (a slot is reused 15 minutes later: the first writer
//! of a new period resets it, so a request racing that reset may be lost —
//! a display figure, not an account). The refused-clients table is only
//! touched by refused requests, under a `try_lock` that skips counting
//! rather than wait, and holds at most [`MAX_CLIENTS`] addresses (the
//! least refused is replaced, as in the space-saving algorithm), so a
//! flood of addresses cannot grow it. It is shown to admins only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds per slot.
pub const SLOT_SECS: u64 = 10;
/// Slots kept: fifteen minutes.
pub const SLOTS: usize = 90;
/// Addresses kept in the refused-clients table.
pub const MAX_CLIENTS: usize = 1000;

/// Upper bounds (µs) of the latency buckets used for percentiles.
const LATENCY_BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

#[derive(Debug, Default)]
struct Slot {
    period: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
    latency_us: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

impl Slot {
    fn reset(&self) {
        for c in [
            &self.requests,
            &self.errors,
            &self.refused,
            &self.latency_us,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// One ten-second slot as read.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Point {
    /// Unix time of the slot's start.
    pub at: u64,
    /// Requests finished.
    pub requests: u64,
    /// Of which answered 5xx.
    pub errors: u64,
    /// Of which refused by the gateway (validation, auth, limits, shedding;
    /// not upstream failures).
    pub refused: u64,
    /// Mean latency, milliseconds.
    pub mean_ms: f64,
    /// 95th percentile latency (bucket upper bound), milliseconds.
    pub p95_ms: f64,
}

/// A refused client.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RefusedClient {
    /// Its address (through trusted proxies).
    pub client: IpAddr,
    /// Refusals counted (an upper bound once the table has been full).
    pub refusals: u64,
    /// The last refusal's error code.
    pub last_reason: &'static str,
    /// Unix time of the last refusal.
    pub last_at: u64,
}

/// Recent traffic.
#[derive(Debug)]
pub struct History {
    slots: Vec<Slot>,
    refused: Mutex<HashMap<IpAddr, (u64, &'static str, u64)>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            refused: Mutex::new(HashMap::new()),
        }
    }
}

/// What one finished request adds.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Unix seconds when it finished.
    pub now: u64,
    /// The status sent.
    pub status: u16,
    /// Whether the gateway answered itself with an error.
    pub refused: bool,
    /// Its duration, µs.
    pub latency_us: u64,
}

impl History {
    fn slot(&self, period: u64) -> Option<&Slot> {
        self.slots
            .get(usize::try_from(period % SLOTS as u64).unwrap_or(0))
    }

    /// Adds a finished request.
    pub fn record(&self, s: Sample) {
        let period = s.now / SLOT_SECS;
        let Some(slot) = self.slot(period) else {
            return;
        };
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && seen < period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.reset();
        }
        if slot.period.load(Ordering::Acquire) != period {
            return; // a later period already owns the slot: too old to count
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if s.status >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        if s.refused {
            slot.refused.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency_us.fetch_add(s.latency_us, Ordering::Relaxed);
        let b = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| s.latency_us <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        if let Some(bucket) = slot.buckets.get(b) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refusal of `client`.
    pub fn refused(&self, client: IpAddr, reason: &'static str, now: u64) {
        let Ok(mut table) = self.refused.try_lock() else {
            return;
        };
        if let Some(entry) = table.get_mut(&client) {
            *entry = (entry.0 + 1, reason, now);
            return;
        }
        if table.len() < MAX_CLIENTS {
            table.insert(client, (1, reason, now));
            return;
        }
        // Space-saving: the least refused address makes room, and the new
        // one inherits its count (so counts are upper bounds).
        let least = table
            .iter()
            .min_by_key(|(_, (n, _, _))| *n)
            .map(|(ip, (n, _, _))| (*ip, *n));
        if let Some((ip, n)) = least {
            table.remove(&ip);
            table.insert(client, (n + 1, reason, now));
        }
    }

    /// The last fifteen minutes, oldest first, ending with the slot of `now`.
    pub fn points(&self, now: u64) -> Vec<Point> {
        let current = now / SLOT_SECS;
        let first = current.saturating_sub(SLOTS as u64 - 1);
        (first..=current)
            .map(|period| {
                let mut p = Point {
                    at: period * SLOT_SECS,
                    ..Point::default()
                };
                if let Some(slot) = self.slot(period)
                    && slot.period.load(Ordering::Acquire) == period
                {
                    p.requests = slot.requests.load(Ordering::Relaxed);
                    p.errors = slot.errors.load(Ordering::Relaxed);
                    p.refused = slot.refused.load(Ordering::Relaxed);
                    if p.requests > 0 {
                        p.mean_ms = slot.latency_us.load(Ordering::Relaxed) as f64
                            / p.requests as f64
                            / 1000.0;
                        p.p95_ms = percentile(&slot.buckets, p.requests, 0.95);
                    }
                }
                p
            })
            .collect()
    }

    /// The `n` clients refused most, most first.
    pub fn top_refused(&self, n: usize) -> Vec<RefusedClient> {
        let Ok(table) = self.refused.lock() else {
            return Vec::new();
        };
        let mut all: Vec<RefusedClient> = table
            .iter()
            .map(|(ip, (count, reason, at))| RefusedClient {
                client: *ip,
                refusals: *count,
                last_reason: reason,
                last_at: *at,
            })
            .collect();
        drop(table);
        all.sort_by(|a, b| b.refusals.cmp(&a.refusals).then(a.client.cmp(&b.client)));
        all.truncate(n);
        all
    }
}

fn percentile(buckets: &[AtomicU64], total: u64, q: f64) -> f64 {
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, b) in buckets.iter().enumerate() {
        seen += b.load(Ordering::Relaxed);
        if seen >= want {
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1]);
            return bound as f64 / 1000.0;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(now: u64, status: u16, latency_us: u64) -> Sample {
        Sample {
            now,
            status,
            refused: status == 429,
            latency_us,
        }
    }

    #[test]
    fn slots_count_and_roll_over() {
        let h = History::default();
        let t0 = 1_000_000;
        h.record(sample(t0, 200, 1_000));
        h.record(sample(t0 + 1, 502, 3_000));
        h.record(sample(t0 + 2, 429, 100));
        h.record(sample(t0 + 10, 200, 400));
        let pts = h.points(t0 + 10);
        assert_eq!(pts.len(), SLOTS);
        let last = pts[SLOTS - 1];
        let prev = pts[SLOTS - 2];
        assert_eq!((prev.requests, prev.errors, prev.refused), (3, 1, 1));
        assert!((prev.mean_ms - 1.366).abs() < 0.01, "{}", prev.mean_ms);
        assert_eq!(prev.p95_ms, 5.0, "3 ms falls in the ≤5 ms bucket");
        assert_eq!(last.requests, 1);
        // Fifteen minutes later the same slot is reused and starts empty.
        let later = t0 + SLOT_SECS * SLOTS as u64;
        h.record(sample(later, 200, 100));
        let pts = h.points(later);
        assert_eq!(pts[SLOTS - 1].requests, 1, "old counts were reset");
        assert_eq!(pts[0].requests, 1, "t0 + 10 s is still in the window");
        assert_eq!(pts.iter().map(|p| p.requests).sum::<u64>(), 2);
        // A late sample for a period whose slot was taken over is dropped.
        h.record(sample(t0, 200, 100));
        assert_eq!(h.points(later)[SLOTS - 1].requests, 1);
    }

    #[test]
    fn refused_clients_are_bounded_and_ranked() {
        let h = History::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            h.refused(a, "rate_limited", 1);
        }
        h.refused(b, "invalid_credentials", 2);
        for i in 0..(MAX_CLIENTS as u32 + 50) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            h.refused(ip, "ip_denied", 3);
        }
        let top = h.top_refused(2);
        assert_eq!(top[0].client, a);
        assert_eq!(top[0].refusals, 3);
        assert_eq!(top[0].last_reason, "rate_limited");
        assert_eq!(h.refused.lock().unwrap().len(), MAX_CLIENTS);
    }
}
