//! Runtime state of upstreams that outlives config reloads: per-target
//! health, ejections, in-flight counts and latency; per-upstream breaker,
//! retry budget and health-check tasks.
//!
//! The [`UpstreamRegistry`] is built once per running gateway (like the JWKS
//! registry) and handed to every snapshot build, which takes the state of
//! each upstream and target by name and URL: a reload keeps health verdicts,
//! ejections and drain flags. Everything read or written on the request path
//! is an atomic; the registry's maps are locked only while a snapshot is
//! built or applied, never per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::breaker::{self, Admission, Breaker, Permit, Transition, Trip, Window};
use crate::config::{BreakerSpec, OutlierSpec};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{Counter, Gauge};

/// The tracing target every upstream decision is logged under.
pub const LOG_TARGET: &str = "gatehouse::upstream";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Per-upstream and per-target state, kept across reloads.
#[derive(Clone)]
pub struct UpstreamRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    epoch: Instant,
    metrics: Arc<Metrics>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamState>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for UpstreamRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = lock(&self.inner.upstreams).keys().cloned().collect();
        f.debug_struct("UpstreamRegistry")
            .field("upstreams", &names)
            .finish()
    }
}

impl UpstreamRegistry {
    /// An empty registry recording into `metrics` (describes the metrics).
    pub fn new(metrics: Arc<Metrics>) -> UpstreamRegistry {
        describe(&metrics);
        UpstreamRegistry {
            inner: Arc::new(RegistryInner {
                epoch: Instant::now(),
                metrics,
                upstreams: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The state of upstream `name`, created on first use.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamState> {
        let mut map = lock(&self.inner.upstreams);
        map.entry(name.to_owned())
            .or_insert_with(|| {
                let labels = [("upstream", name)];
                let m = &self.inner.metrics;
                Arc::new(UpstreamState {
                    name: name.into(),
                    epoch: self.inner.epoch,
                    metrics: m.clone(),
                    targets: Mutex::new(HashMap::new()),
                    discovered: Mutex::new(None),
                    in_flight: AtomicU64::new(0),
                    pending: AtomicU64::new(0),
                    breaker: Breaker::default(),
                    budget: Window::default(),
                    m: UpstreamMetrics {
                        retries: m.counter("gatehouse_upstream_retries_total", &labels),
                        retries_refused: m
                            .counter("gatehouse_upstream_retry_budget_exhausted_total", &labels),
                        breaker_state: m.gauge("gatehouse_upstream_breaker_state", &labels),
                        breaker_transitions: m
                            .counter("gatehouse_upstream_breaker_transitions_total", &labels),
                        rejected: m.counter("gatehouse_upstream_rejected_total", &labels),
                    },
                })
            })
            .clone()
    }

    /// Starts the background work of the upstreams now in service (health
    /// checks) and stops that of the previous generation; forgets the state
    /// of upstreams no longer configured. Call after a snapshot is swapped in.
    pub fn apply(
        &self,
        upstreams: &HashMap<String, Arc<super::Upstream>>,
        stop: &watch::Receiver<bool>,
    ) {
        lock(&self.inner.upstreams).retain(|name, _| upstreams.contains_key(name));
        let mut tasks = lock(&self.inner.tasks);
        for t in tasks.drain(..) {
            t.abort();
        }
        for u in upstreams.values() {
            if let Some(source) = &u.discovery {
                tasks.push(tokio::spawn(super::discovery::run(
                    u.clone(),
                    source.clone(),
                    stop.clone(),
                )));
            }
            if let Some(spec) = &u.health {
                tasks.push(tokio::spawn(super::health::run(
                    u.clone(),
                    spec.clone(),
                    stop.clone(),
                )));
            }
        }
    }

    /// Stops every background task.
    pub fn stop(&self) {
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
    }
}

fn describe(m: &Metrics) {
    m.describe_counter(
        "gatehouse_upstream_retries_total",
        "Retries sent to another (or the same) target.",
    );
    m.describe_counter(
        "gatehouse_upstream_retry_budget_exhausted_total",
        "Retries not sent because the upstream's retry budget was spent.",
    );
    m.describe_gauge(
        "gatehouse_upstream_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
    );
    m.describe_counter(
        "gatehouse_upstream_breaker_transitions_total",
        "Circuit breaker state changes.",
    );
    m.describe_counter(
        "gatehouse_upstream_rejected_total",
        "Requests answered 503 by the breaker or the concurrency limits without touching a target.",
    );
    m.describe_gauge(
        "gatehouse_upstream_target_healthy",
        "1 when the target passes its active health checks.",
    );
    m.describe_counter(
        "gatehouse_upstream_ejections_total",
        "Targets ejected by outlier detection.",
    );
    m.describe_counter(
        "gatehouse_upstream_health_checks_total",
        "Active health checks by result.",
    );
    m.describe_gauge(
        "gatehouse_upstream_target_in_flight",
        "Requests in flight to the target.",
    );
}

struct UpstreamMetrics {
    retries: Counter,
    retries_refused: Counter,
    breaker_state: Gauge,
    breaker_transitions: Counter,
    rejected: Counter,
}

/// One upstream's state.
pub struct UpstreamState {
    /// The upstream's name.
    pub name: Arc<str>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
    discovered: Mutex<Option<Vec<super::discovery::Found>>>,
    /// Requests in flight (until the response body ends).
    pub in_flight: AtomicU64,
    /// Requests waiting for their response head.
    pub pending: AtomicU64,
    breaker: Breaker,
    /// Requests (`a`) and retries (`b`) over the budget window.
    budget: Window,
    m: UpstreamMetrics,
}

impl std::fmt::Debug for UpstreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamState")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamState {
    /// Milliseconds since the registry was made (never 0).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// The state of the target `url`, created on first use.
    pub fn target(&self, url: &str) -> Arc<TargetState> {
        let mut map = lock(&self.targets);
        map.entry(url.to_owned())
            .or_insert_with(|| {
                let labels = [("upstream", &*self.name), ("target", url)];
                let m = &self.metrics;
                let healthy = m.gauge("gatehouse_upstream_target_healthy", &labels);
                healthy.set(1.0);
                Arc::new(TargetState {
                    url: url.into(),
                    in_flight: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                    pass_streak: AtomicU32::new(0),
                    fail_streak: AtomicU32::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    latency_ewma_us: AtomicU64::new(0),
                    drained: AtomicBool::new(false),
                    requests: AtomicU64::new(0),
                    m: TargetMetrics {
                        healthy,
                        ejections: m.counter("gatehouse_upstream_ejections_total", &labels),
                        checks_ok: m.counter(
                            "gatehouse_upstream_health_checks_total",
                            &[("upstream", &*self.name), ("target", url), ("result", "ok")],
                        ),
                        checks_failed: m.counter(
                            "gatehouse_upstream_health_checks_total",
                            &[
                                ("upstream", &*self.name),
                                ("target", url),
                                ("result", "failed"),
                            ],
                        ),
                        in_flight: m.gauge("gatehouse_upstream_target_in_flight", &labels),
                    },
                })
            })
            .clone()
    }

    /// The last targets discovery found (kept across reloads so a new
    /// snapshot starts with them).
    pub fn discovered(&self) -> Option<Vec<super::discovery::Found>> {
        lock(&self.discovered).clone()
    }

    /// Records what discovery found.
    pub fn set_discovered(&self, list: Vec<super::discovery::Found>) {
        *lock(&self.discovered) = Some(list);
    }

    /// Counts a request against the retry budget's window.
    pub fn count_request(&self, window: Duration) {
        self.budget.add(self.now_ms(), window, 1, 0);
    }

    /// Takes one retry from the budget, or says it is spent.
    pub fn take_retry(&self, window: Duration, percent: u32, min: u32) -> bool {
        let now = self.now_ms();
        let (requests, retries) = self.budget.sum(now, window);
        let allowed = (requests * u64::from(percent) / 100).max(u64::from(min));
        if retries >= allowed {
            self.m.retries_refused.increment(1);
            tracing::info!(target: LOG_TARGET, upstream = %self.name, requests, retries, "retry budget spent; not retrying");
            return false;
        }
        self.budget.add(now, window, 0, 1);
        self.m.retries.increment(1);
        true
    }

    /// Counts a request refused without touching a target.
    pub fn count_rejected(&self) {
        self.m.rejected.increment(1);
    }

    /// Whether the breaker lets a request through.
    pub fn admit(&self, spec: &BreakerSpec) -> Admit {
        let (admission, change) = self.breaker.admit(&breaker_settings(spec), self.now_ms());
        if let Some(t) = change {
            self.breaker_changed(t);
        }
        match admission {
            Admission::Pass(permit) => Admit::Yes {
                probe: permit == Permit::Probe,
            },
            Admission::Refused { retry_after } => Admit::No { retry_after },
        }
    }

    /// Feeds an outcome to the breaker.
    pub fn breaker_record(&self, spec: &BreakerSpec, ok: bool, probe: bool) {
        let permit = if probe { Permit::Probe } else { Permit::Normal };
        let settings = breaker_settings(spec);
        if let Some(t) = self.breaker.record(&settings, permit, ok, self.now_ms()) {
            self.breaker_changed(t);
        }
    }

    fn breaker_changed(&self, t: Transition) {
        let why = match t {
            Transition::Opened(Trip::Consecutive { .. }) => "consecutive failures",
            Transition::Opened(Trip::FailureRate { .. }) => "failure rate",
            Transition::HalfOpened => "open period over; probing",
            Transition::Reopened => "probe failed",
            Transition::Closed => "probes succeeded",
        };
        let to = t.to();
        self.m.breaker_state.set(match to {
            breaker::State::Closed => 0.0,
            breaker::State::Open => 1.0,
            breaker::State::HalfOpen => 2.0,
        });
        self.m.breaker_transitions.increment(1);
        tracing::warn!(target: LOG_TARGET, upstream = %self.name, state = to.as_str(), reason = why, "circuit breaker changed");
    }

    /// The breaker's state: `closed`, `open` or `half_open`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.state().as_str()
    }

    /// Records a failed attempt on `t`; may eject it if fewer than the
    /// allowed share of `all` are ejected.
    pub fn target_failed(&self, t: &TargetState, spec: &OutlierSpec, all: &[Arc<TargetState>]) {
        let run = t.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if spec.consecutive_failures == 0 || run < spec.consecutive_failures {
            return;
        }
        let now = self.now_ms();
        if t.is_ejected(now) {
            return;
        }
        let ejected = all.iter().filter(|s| s.is_ejected(now)).count();
        let max = all.len() * spec.max_ejected_percent.min(100) as usize / 100;
        if ejected >= max {
            tracing::info!(target: LOG_TARGET, upstream = %self.name, target_url = %t.url, ejected, max, "not ejecting: too many targets ejected already");
            return;
        }
        let n = t.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let period = spec
            .base_ejection
            .0
            .saturating_mul(1 << n)
            .min(spec.max_ejection.0.max(spec.base_ejection.0));
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX / 2);
        t.ejected_until.store(now + ms, Ordering::Release);
        t.consecutive_failures.store(0, Ordering::Release);
        t.m.ejections.increment(1);
        tracing::warn!(target: LOG_TARGET, upstream = %self.name, target_url = %t.url, failures = run, ejection_ms = ms, "target ejected");
    }

    /// Records a good attempt on `t`.
    pub fn target_ok(&self, t: &TargetState, latency: Duration, spec: &OutlierSpec) {
        t.consecutive_failures.store(0, Ordering::Release);
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX / 8);
        let old = t.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        t.latency_ewma_us.store(new, Ordering::Relaxed);
        // A target that stayed good for a whole longest ejection after its
        // last one starts again from the base period.
        let until = t.ejected_until.load(Ordering::Acquire);
        if until != 0 {
            let max = u64::try_from(spec.max_ejection.0.as_millis()).unwrap_or(u64::MAX / 2);
            if self.now_ms() > until.saturating_add(max) {
                t.ejections.store(0, Ordering::Release);
                t.ejected_until.store(0, Ordering::Release);
            }
        }
    }

    /// Records an active health check; logs and counts a change.
    pub fn health_result(
        &self,
        t: &TargetState,
        ok: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) {
        if ok {
            t.m.checks_ok.increment(1);
            t.fail_streak.store(0, Ordering::Release);
            let run = t.pass_streak.fetch_add(1, Ordering::AcqRel) + 1;
            if run >= healthy_after.max(1) && !t.healthy.swap(true, Ordering::AcqRel) {
                t.m.healthy.set(1.0);
                tracing::warn!(target: LOG_TARGET, upstream = %self.name, target_url = %t.url, passes = run, "target healthy again");
            }
        } else {
            t.m.checks_failed.increment(1);
            t.pass_streak.store(0, Ordering::Release);
            let run = t.fail_streak.fetch_add(1, Ordering::AcqRel) + 1;
            if run >= unhealthy_after.max(1) && t.healthy.swap(false, Ordering::AcqRel) {
                t.m.healthy.set(0.0);
                tracing::warn!(target: LOG_TARGET, upstream = %self.name, target_url = %t.url, failures = run, "target unhealthy");
            }
        }
    }

    /// Sets or clears a target's drain flag; logs a change.
    pub fn set_drained(&self, t: &TargetState, drained: bool) {
        if t.drained.swap(drained, Ordering::AcqRel) != drained {
            tracing::info!(target: LOG_TARGET, upstream = %self.name, target_url = %t.url, drained, "target drain changed");
        }
    }

    /// Milliseconds until `t`'s ejection ends (0: not ejected).
    pub fn ejected_for_ms(&self, t: &TargetState) -> u64 {
        t.ejected_until
            .load(Ordering::Acquire)
            .saturating_sub(self.now_ms())
    }
}

/// The breaker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send; `probe` when this is a half-open probe.
    Yes {
        /// A half-open probe.
        probe: bool,
    },
    /// Do not send; try again after this long.
    No {
        /// When to try again.
        retry_after: Duration,
    },
}

/// The shared breaker's settings for an upstream's `[breaker]`: a lost
/// half-open probe is replaced after `open_for`, but no sooner than 1 s.
fn breaker_settings(spec: &BreakerSpec) -> breaker::Settings {
    breaker::Settings {
        failures: spec.failure_threshold,
        failure_rate_percent: spec.failure_rate_percent,
        window: spec.window.0,
        open_for: spec.open_for.0,
        probes: spec.half_open_probes,
        probe_timeout: spec.open_for.0.max(Duration::from_secs(1)),
    }
}

struct TargetMetrics {
    healthy: Gauge,
    ejections: Counter,
    checks_ok: Counter,
    checks_failed: Counter,
    in_flight: Gauge,
}

/// One target's state.
pub struct TargetState {
    /// `scheme://authority[/base]` as configured.
    pub url: Arc<str>,
    in_flight: AtomicU64,
    healthy: AtomicBool,
    pass_streak: AtomicU32,
    fail_streak: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    latency_ewma_us: AtomicU64,
    drained: AtomicBool,
    requests: AtomicU64,
    m: TargetMetrics,
}

impl std::fmt::Debug for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetState")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TargetState {
    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether active checks pass.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether it is drained.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has it ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Whether it may take new requests at `now_ms`.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_healthy() && !self.is_drained() && !self.is_ejected(now_ms)
    }

    /// The latency average (EWMA) of response heads, in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        self.latency_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Holds one request's place in the in-flight counts of its target and
/// upstream; released on drop (when the response body is done).
#[derive(Debug)]
pub struct InFlight {
    target: Arc<TargetState>,
    upstream: Arc<UpstreamState>,
}

impl InFlight {
    /// Counts a request to `target`.
    pub fn start(upstream: &Arc<UpstreamState>, target: &Arc<TargetState>) -> InFlight {
        let n = target.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        target.m.in_flight.set(n as f64);
        target.requests.fetch_add(1, Ordering::Relaxed);
        upstream.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            target: target.clone(),
            upstream: upstream.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.target.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.target.m.in_flight.set(n as f64);
        self.upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
