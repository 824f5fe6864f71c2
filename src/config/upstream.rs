//! The resilience part of an `[[upstream]]`: weighted targets, balancing,
//! health checks, outlier detection, retries, the circuit breaker and named
//! target sets.
//!
//! Only serde types and their defaults live here; [`crate::proxy`] checks the
//! values that need more than types (a `hash_on` key, percentages) and reports
//! them at their place when it builds the upstream.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Dur;

/// A target: a plain URL (weight 1) or `{ url, weight }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum TargetSpec {
    /// `"http://host:port[/base]"`.
    Url(String),
    /// `{ url = "http://…", weight = 3 }`.
    Weighted(WeightedTarget),
}

/// A target with a weight.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// The base URL.
    pub url: String,
    /// Its share of traffic relative to the others (0 takes none).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl TargetSpec {
    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            TargetSpec::Url(u) => u,
            TargetSpec::Weighted(w) => &w.url,
        }
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        match self {
            TargetSpec::Url(_) => 1,
            TargetSpec::Weighted(w) => w.weight,
        }
    }
}

/// How a target is chosen for a request.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest requests in flight (relative to weight) of two random targets.
    LeastRequest,
    /// Consistent hashing on `hash_on` (a ring; sticky, ~1/N keys move when
    /// a target comes or goes).
    Hash,
}

/// The address families a DNS name contributes targets from.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AddressFamily {
    /// A and AAAA.
    #[default]
    Any,
    /// A only (a host without IPv6 routes).
    Ipv4,
    /// AAAA only.
    Ipv6,
}

impl AddressFamily {
    /// Whether `ip` is of an admitted family.
    pub fn admits(self, ip: &std::net::IpAddr) -> bool {
        match self {
            AddressFamily::Any => true,
            AddressFamily::Ipv4 => ip.is_ipv4(),
            AddressFamily::Ipv6 => ip.is_ipv6(),
        }
    }
}

/// What happens when no target is healthy.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllUnhealthy {
    /// Panic mode: use every (undrained) target as if healthy.
    #[default]
    TryAnyway,
    /// Answer 503.
    Fail,
}

/// `[upstream.health]`: active HTTP health checks.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSpec {
    /// Path requested on every target (`GET`).
    pub path: String,
    /// Time between checks.
    pub interval: Dur,
    /// A random extra wait up to this long, so gateways do not check in step.
    pub jitter: Dur,
    /// Time allowed for one check.
    pub timeout: Dur,
    /// Statuses that count as healthy.
    pub expected: Vec<u16>,
    /// Passed checks in a row that bring a target back.
    pub healthy_threshold: u32,
    /// Failed checks in a row that take a target out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: "/health".into(),
            interval: Dur(Duration::from_secs(5)),
            jitter: Dur(Duration::from_millis(500)),
            timeout: Dur(Duration::from_secs(1)),
            expected: vec![200],
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// `[upstream.outlier]`: passive checks on live traffic.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSpec {
    /// Connect failures, resets, timeouts or 5xx in a row that eject a
    /// target (0 turns ejection off).
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Dur,
    /// The longest ejection.
    pub max_ejection: Dur,
    /// At most this share of the targets is ejected at once (rounded down).
    pub max_ejected_percent: u32,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        OutlierSpec {
            consecutive_failures: 5,
            base_ejection: Dur(Duration::from_secs(30)),
            max_ejection: Dur(Duration::from_secs(300)),
            max_ejected_percent: 50,
        }
    }
}

/// `[upstream.retry]`: trying another target when one fails.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Tries in all, the first included (1: no retries).
    pub attempts: u32,
    /// Response statuses that are retried (besides connect failures and
    /// resets before a response).
    pub on_status: Vec<u16>,
    /// The first backoff's ceiling (full jitter: a random wait up to it).
    pub backoff_base: Dur,
    /// The largest backoff ceiling.
    pub backoff_max: Dur,
    /// Retries allowed, as a percentage of requests over `budget_window`.
    pub budget_percent: u32,
    /// Retries always allowed per window, whatever the percentage says.
    pub budget_min: u32,
    /// The sliding window of the budget.
    pub budget_window: Dur,
    /// Request bodies up to this size are buffered so they can be resent;
    /// larger (or unsized) bodies stream and are never retried.
    pub buffer_limit: super::ByteSize,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 1,
            on_status: vec![502, 503, 504],
            backoff_base: Dur(Duration::from_millis(25)),
            backoff_max: Dur(Duration::from_millis(250)),
            budget_percent: 20,
            budget_min: 3,
            budget_window: Dur(Duration::from_secs(10)),
            buffer_limit: super::ByteSize(64 * 1024),
        }
    }
}

/// `[upstream.breaker]`: stop sending to an upstream that is failing.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Requests in flight to the upstream at most (0: no limit).
    pub max_concurrent: u32,
    /// Requests waiting for a connection or response head at most (0: no
    /// limit).
    pub max_pending_connects: u32,
    /// Failures in a row that open the breaker (0: off).
    pub failure_threshold: u32,
    /// Or this share of failed requests over `window` (0: off; needs at
    /// least 10 requests in the window).
    pub failure_rate_percent: u32,
    /// The window of the failure rate.
    pub window: Dur,
    /// How long the breaker stays open before probing.
    pub open_for: Dur,
    /// Successful probes that close it again.
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            max_concurrent: 0,
            max_pending_connects: 0,
            failure_threshold: 5,
            failure_rate_percent: 0,
            window: Dur(Duration::from_secs(10)),
            open_for: Dur(Duration::from_secs(5)),
            half_open_probes: 1,
        }
    }
}

/// `[[upstream.set]]`: a named group of targets (blue, green, canary) with
/// a share of the traffic.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    /// The set's name.
    pub name: Spanned<String>,
    /// Its targets.
    pub targets: Vec<Spanned<TargetSpec>>,
    /// Its share of traffic relative to the other sets (0 drains it).
    #[serde(default = "hundred")]
    pub weight: u32,
    /// Requests with this header value go to this set whatever the
    /// weights say (a canary): `{ name = "x-canary", value = "1" }`.
    pub match_header: Option<Spanned<HeaderMatch>>,
}

/// A request header and the value it must have.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Exact value.
    pub value: String,
}

fn hundred() -> u32 {
    100
}

/// `dns = { name, port, … }`: targets from a DNS name, re-resolved in the
/// background.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// The host name (with `srv = true`, the service name:
    /// `_http._tcp.api.example`).
    pub name: String,
    /// The port of every target (not with `srv`: SRV records name ports).
    pub port: Option<u16>,
    /// Look up SRV records: targets, ports and weights from DNS.
    #[serde(default)]
    pub srv: bool,
    /// `http` or `https`.
    #[serde(default = "http_scheme")]
    pub scheme: String,
    /// Re-resolve at least this often apart.
    #[serde(default = "min_ttl")]
    pub min_ttl: Dur,
    /// Re-resolve at most this long apart.
    #[serde(default = "max_ttl")]
    pub max_ttl: Dur,
    /// Resolve with this hosts-style file (`ADDRESS NAME…` lines, relative
    /// to the config file, read on every resolution) instead of DNS.
    pub hosts_file: Option<std::path::PathBuf>,
    /// Ask these DNS servers (`ip`, `ip:port`, `[ipv6]:port`) instead of
    /// those of `/etc/resolv.conf` (no search list is applied then).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// `any`, `ipv4` (A records only) or `ipv6` (AAAA only).
    #[serde(default)]
    pub family: AddressFamily,
    /// How long one of `nameservers` gets to answer one query (resolv.conf
    /// has its own `options timeout:`).
    #[serde(default = "dns_timeout")]
    pub timeout: Dur,
}

fn http_scheme() -> String {
    "http".into()
}

fn dns_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

fn min_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}

fn max_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}

/// How often a targets file is looked at.
pub fn default_targets_file_poll() -> Dur {
    Dur(Duration::from_secs(1))
}
