//! Target choice: smooth weighted round robin, least outstanding requests
//! (power of two choices) and a consistent-hash ring, over named sets.
//!
//! A [`Members`] value is immutable and built off the request path (config
//! build, discovery update); the request path reads it from an `ArcSwap` and
//! only touches atomics (the round-robin cursor, in-flight counters).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Target;
use super::state::TargetState;
use crate::config::Balance;

/// One target with its weight, set and runtime state.
#[derive(Debug)]
pub struct Member {
    /// Where requests go.
    pub target: Target,
    /// Share within its set.
    pub weight: u32,
    /// Index into [`Members::sets`].
    pub set: usize,
    /// Health, ejection, in-flight.
    pub state: Arc<TargetState>,
    /// The Host sent to it instead of its address (targets discovered
    /// under a DNS name).
    pub host: Option<http::HeaderValue>,
}

/// A named set's schedules.
#[derive(Debug)]
pub struct SetIndex {
    /// Its name.
    pub name: Arc<str>,
    /// Its members (indices into [`Members::members`]).
    pub members: Vec<usize>,
    schedule: Vec<usize>,
    ring: Vec<(u64, usize)>,
}

/// The targets of an upstream at one moment.
#[derive(Debug)]
pub struct Members {
    /// Every target.
    pub members: Vec<Member>,
    /// The sets (one called `default` when the upstream names none).
    pub sets: Vec<SetIndex>,
}

/// Virtual nodes per unit of weight on the hash ring.
const VNODES: u32 = 100;
/// Round-robin schedules longer than this are scaled down.
const MAX_SCHEDULE: u64 = 4096;

/// A stable 64-bit hash (SipHash with fixed keys): the same in every build
/// of one binary, which is what a ring needs.
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Members {
    /// Builds the schedules of `members` grouped into `set_names`.
    pub fn new(members: Vec<Member>, set_names: &[Arc<str>]) -> Members {
        let sets = set_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let idx: Vec<usize> = members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.set == i)
                    .map(|(j, _)| j)
                    .collect();
                SetIndex {
                    name: name.clone(),
                    schedule: smooth_wrr(&members, &idx),
                    ring: ring(&members, &idx),
                    members: idx,
                }
            })
            .collect();
        Members { members, sets }
    }

    /// Of two members, the one with fewer requests in flight per weight.
    fn lighter(&self, a: usize, b: usize) -> usize {
        let (Some(ma), Some(mb)) = (self.members.get(a), self.members.get(b)) else {
            return a;
        };
        // in_flight / weight, compared without division.
        let la = (ma.state.in_flight() + 1) * u64::from(mb.weight);
        let lb = (mb.state.in_flight() + 1) * u64::from(ma.weight);
        if la <= lb { a } else { b }
    }

    /// The states of every member.
    pub fn states(&self) -> Vec<Arc<TargetState>> {
        self.members.iter().map(|m| m.state.clone()).collect()
    }

    /// Picks a member of set `set` among those `ok` accepts.
    pub fn pick_in(
        &self,
        set: usize,
        balance: Balance,
        cursor: &AtomicUsize,
        hash: Option<u64>,
        ok: &dyn Fn(usize, &Member) -> bool,
    ) -> Option<usize> {
        let s = self.sets.get(set)?;
        let fits = |i: usize| {
            self.members
                .get(i)
                .is_some_and(|m| m.weight > 0 && ok(i, m))
        };
        match (balance, hash) {
            (Balance::Hash, Some(h)) if !s.ring.is_empty() => {
                let start = s.ring.partition_point(|(p, _)| *p < h);
                (0..s.ring.len())
                    .filter_map(|k| s.ring.get((start + k) % s.ring.len()))
                    .map(|(_, i)| *i)
                    .find(|i| fits(*i))
            }
            (Balance::LeastRequest, _) => {
                // Two random members that both fit (the common case) need
                // no list of candidates.
                let n = s.members.len();
                if n >= 2 {
                    let a = rand::random_range(0..n);
                    let mut b = rand::random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    if let (Some(&a), Some(&b)) = (s.members.get(a), s.members.get(b))
                        && fits(a)
                        && fits(b)
                    {
                        return Some(self.lighter(a, b));
                    }
                }
                let cands: Vec<usize> = s.members.iter().copied().filter(|i| fits(*i)).collect();
                match cands.len() {
                    0 => None,
                    1 => cands.first().copied(),
                    n => {
                        let a = rand::random_range(0..n);
                        let mut b = rand::random_range(0..n - 1);
                        if b >= a {
                            b += 1;
                        }
                        Some(self.lighter(*cands.get(a)?, *cands.get(b)?))
                    }
                }
            }
            _ => {
                if s.schedule.is_empty() {
                    return None;
                }
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..s.schedule.len())
                    .filter_map(|k| s.schedule.get((start + k) % s.schedule.len()))
                    .copied()
                    .find(|i| fits(*i))
            }
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The smooth weighted round-robin order (nginx's): weights 5,1,1 give
/// a a b a c a a — no bursts to one target.
fn smooth_wrr(members: &[Member], idx: &[usize]) -> Vec<usize> {
    let mut weights: Vec<(usize, u64)> = idx
        .iter()
        .filter_map(|i| members.get(*i).map(|m| (*i, u64::from(m.weight))))
        .filter(|(_, w)| *w > 0)
        .collect();
    let g = weights.iter().fold(0, |g, (_, w)| gcd(g, *w));
    if g == 0 {
        return Vec::new();
    }
    for (_, w) in &mut weights {
        *w /= g;
    }
    let total: u64 = weights.iter().map(|(_, w)| *w).sum();
    if total > MAX_SCHEDULE {
        for (_, w) in &mut weights {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|(_, w)| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (k, (_, w)) in weights.iter().enumerate() {
            if let Some(c) = current.get_mut(k) {
                *c += *w as i64;
            }
            if current.get(k) > current.get(best) {
                best = k;
            }
        }
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        if let Some((i, _)) = weights.get(best) {
            out.push(*i);
        }
    }
    out
}

/// A consistent-hash ring: `VNODES × weight` points per target, placed by
/// the target's URL, so a target's points do not depend on the others.
fn ring(members: &[Member], idx: &[usize]) -> Vec<(u64, usize)> {
    let mut points = Vec::new();
    for i in idx {
        let Some(m) = members.get(*i) else { continue };
        for v in 0..VNODES.saturating_mul(m.weight.min(100)) {
            let key = format!("{}#{v}", m.target.label());
            points.push((hash_bytes(key.as_bytes()), *i));
        }
    }
    points.sort_unstable();
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::state::UpstreamRegistry;
    use crate::telemetry::Metrics;

    fn members(spec: &[(&str, u32)]) -> Members {
        let reg = UpstreamRegistry::new(Arc::new(Metrics::new().unwrap()));
        let up = reg.upstream("u");
        let ms = spec
            .iter()
            .map(|(url, w)| Member {
                target: Target::parse(url).unwrap(),
                weight: *w,
                set: 0,
                state: up.target(url),
                host: None,
            })
            .collect();
        Members::new(ms, &["default".into()])
    }

    fn counts(m: &Members, balance: Balance, n: usize) -> Vec<usize> {
        let cursor = AtomicUsize::new(0);
        let mut c = vec![0; m.members.len()];
        for _ in 0..n {
            let i = m.pick_in(0, balance, &cursor, None, &|_, _| true).unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn round_robin_follows_weights() {
        let cases = [
            (
                "equal",
                vec![("http://a", 1), ("http://b", 1)],
                vec![50, 50],
            ),
            (
                "weighted",
                vec![("http://a", 3), ("http://b", 1)],
                vec![75, 25],
            ),
            (
                "zero weight",
                vec![("http://a", 1), ("http://b", 0)],
                vec![100, 0],
            ),
        ];
        for (name, spec, want) in cases {
            let m = members(&spec);
            assert_eq!(counts(&m, Balance::RoundRobin, 100), want, "{name}");
        }
    }

    #[test]
    fn smooth_order_interleaves() {
        let m = members(&[("http://a", 5), ("http://b", 1), ("http://c", 1)]);
        let order: Vec<usize> = m.sets[0].schedule.clone();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn unavailable_targets_are_skipped() {
        let m = members(&[("http://a", 1), ("http://b", 1), ("http://c", 1)]);
        let cursor = AtomicUsize::new(0);
        for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Hash] {
            for k in 0..30u64 {
                let i = m
                    .pick_in(0, balance, &cursor, Some(k * 7919), &|_, t| {
                        t.target.label() != "http://b"
                    })
                    .unwrap();
                assert_ne!(i, 1, "{balance:?} picked the excluded target");
            }
            assert_eq!(
                m.pick_in(0, balance, &cursor, Some(1), &|_, _| false),
                None,
                "{balance:?} with nothing available"
            );
        }
    }

    #[test]
    fn least_request_prefers_idle_targets() {
        let m = members(&[("http://a", 1), ("http://b", 1)]);
        let up = UpstreamRegistry::new(Arc::new(Metrics::new().unwrap())).upstream("u");
        let _busy: Vec<_> = (0..5)
            .map(|_| crate::proxy::state::InFlight::start(&up, &m.members[0].state))
            .collect();
        assert_eq!(counts(&m, Balance::LeastRequest, 20), vec![0, 20]);
    }

    #[test]
    fn hashing_is_sticky_and_moves_few_keys() {
        let urls: Vec<String> = (0..5).map(|i| format!("http://10.0.0.{i}:80")).collect();
        let spec: Vec<(&str, u32)> = urls.iter().map(|u| (u.as_str(), 1)).collect();
        let five = members(&spec);
        let four = members(&spec[..4]);
        let cursor = AtomicUsize::new(0);
        let label = |m: &Members, key: u64| {
            let i = m
                .pick_in(0, Balance::Hash, &cursor, Some(key), &|_, _| true)
                .unwrap();
            m.members[i].target.label().to_owned()
        };
        let keys: Vec<u64> = (0..2000u32).map(|k| hash_bytes(&k.to_be_bytes())).collect();
        let mut moved = 0;
        let mut per_target = std::collections::HashMap::new();
        for k in &keys {
            let a = label(&five, *k);
            assert_eq!(a, label(&five, *k), "same key, same target");
            *per_target.entry(a.clone()).or_insert(0) += 1;
            if a != label(&four, *k) {
                moved += 1;
                assert_eq!(
                    a, "http://10.0.0.4:80",
                    "only the removed target's keys move"
                );
            }
        }
        // ~1/5 of the keys lived on the removed target.
        assert!(moved > 2000 / 10 && moved < 2000 * 3 / 10, "moved {moved}");
        assert_eq!(per_target.len(), 5, "every target gets keys");
    }
}
