//! A policy file's tables: `[[rate_limit]]` and plans, `[[upstream]]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use validator::Validate;

use super::*;

/// One policy file: upstreams and routes.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Upstreams declared in this file.
    #[serde(default)]
    pub upstream: Vec<Spanned<UpstreamSpec>>,
    /// Routes declared in this file.
    #[serde(default)]
    pub route: Vec<Spanned<RouteSpec>>,
    /// Rate-limit policies declared in this file.
    #[serde(default)]
    pub rate_limit: Vec<Spanned<RateLimitSpec>>,
    /// OpenAPI documents whose operations become routes.
    #[serde(default)]
    pub openapi: Vec<Spanned<OpenApiSpec>>,
}

/// A named rate-limit policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Unique name: in logs and the `RateLimit-Policy` header.
    pub name: Spanned<String>,
    /// The steady rate: `"100/s"`, `"6000/min"`, `"50/h"`, `"1000/day"`.
    pub rate: Spanned<String>,
    /// Requests allowed at once (default: the rate's count).
    pub burst: Option<Spanned<u32>>,
    /// What is counted: `consumer` (the API key's consumer or the JWT
    /// subject; the client address when unauthenticated), `client_ip`,
    /// `route` (all callers of a route together) or `header:NAME`.
    #[serde(default = "default_limit_key")]
    pub key: Spanned<String>,
    /// Routes (by name) it applies to, besides routes that list it.
    #[serde(default)]
    pub routes: Vec<Spanned<String>>,
    /// Apply to every route.
    #[serde(default)]
    pub global: bool,
    /// Log and count what would be refused, refuse nothing.
    #[serde(default)]
    pub shadow: bool,
    /// Per-plan overrides: `gold = { rate = "1000/s", burst = 2000 }`.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanLimitSpec>,
    /// A count per calendar day or month (UTC) on the same key, e.g.
    /// `"100000/month"`; kept across restarts (the store, or Redis).
    pub quota: Option<Spanned<String>>,
}

pub(super) fn default_limit_key() -> Spanned<String> {
    Spanned::new(0..0, "consumer".to_owned())
}

/// A plan's own rate and burst.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PlanLimitSpec {
    /// The plan's rate.
    pub rate: Spanned<String>,
    /// The plan's burst (default: the rate's count).
    pub burst: Option<u32>,
}

/// How the gateway speaks to an upstream.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over plain TCP; over TLS, h2 or HTTP/1.1 by ALPN.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (prior knowledge on plain TCP, ALPN h2 over TLS).
    H2,
}

/// An upstream: where allowed requests go.
#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Unique name, referenced by routes.
    pub name: Spanned<String>,
    /// What the upstream is: HTTP targets (default) or an AWS Lambda function.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Base URLs (`http://host:port[/base]` or `https://…`), or
    /// `{ url, weight }` tables (`http` upstreams only).
    #[serde(default)]
    pub targets: Vec<Spanned<TargetSpec>>,
    /// Targets from a DNS name: `{ name, port, scheme, min_ttl, max_ttl,
    /// hosts_file }`, re-resolved in the background.
    pub dns: Option<DnsSpec>,
    /// Targets from a JSON or TOML list (relative to the config file),
    /// re-read when it changes, without a reload.
    pub targets_file: Option<Spanned<PathBuf>>,
    /// How often `targets_file` is checked for changes.
    #[serde(default = "default_targets_file_poll")]
    pub targets_file_poll: Dur,
    /// Named target sets with traffic shares (blue/green, canary).
    #[serde(default, rename = "set")]
    pub sets: Vec<SetSpec>,
    /// How a target is picked.
    #[serde(default)]
    pub balance: Balance,
    /// For `balance = "hash"`: `client_ip`, `header:NAME` or `cookie:NAME`.
    pub hash_on: Option<Spanned<String>>,
    /// Active health checks (off unless set).
    pub health: Option<HealthSpec>,
    /// Passive outlier detection (on by default).
    #[serde(default)]
    pub outlier: OutlierSpec,
    /// Retries (none by default).
    #[serde(default)]
    pub retry: RetrySpec,
    /// Circuit breaker (off unless set).
    pub breaker: Option<BreakerSpec>,
    /// When every target is unhealthy: `try_anyway` (default) or `fail`.
    #[serde(default)]
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Protocol towards the targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// PEM CA bundle for `https` targets; default: the public web roots.
    pub tls_ca: Option<Spanned<PathBuf>>,
    /// Connect timeout (default from `[defaults]`).
    pub connect_timeout: Option<Dur>,
    /// Time to the response head (default from `[defaults]`).
    pub first_byte_timeout: Option<Dur>,
    /// Time for the whole exchange (default from `[defaults]`).
    pub request_timeout: Option<Dur>,
    /// Idle pooled connections kept per target.
    #[serde(default = "default_pool_idle")]
    #[validate(range(max = 10_000))]
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
    /// Send the client's Host header instead of the target's authority.
    #[serde(default)]
    pub preserve_host: bool,
    // `kind = "lambda"` only (see `proxy::lambda`):
    /// The function's name, partial ARN or full ARN.
    pub function: Option<Spanned<String>>,
    /// Version or alias to invoke (default: `$LATEST`, or the ARN's own).
    pub qualifier: Option<Spanned<String>>,
    /// The AWS region, e.g. `eu-west-1`.
    pub region: Option<Spanned<String>>,
    /// Another Lambda endpoint (local emulators, tests): `http(s)://host:port`.
    pub endpoint_url: Option<Spanned<String>>,
    /// API Gateway payload format: `"2.0"` (HTTP API, default) or `"1.0"` (REST API).
    pub payload_format: Option<Spanned<String>>,
    /// Extra attempts after Lambda throttled the call or the network failed
    /// before it was made (never after the function ran). Default 2.
    pub retries: Option<Spanned<u32>>,
}

/// The kind of an upstream.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// HTTP targets.
    #[default]
    Http,
    /// An AWS Lambda function, invoked with the API Gateway proxy event.
    Lambda,
}

pub(super) fn default_pool_idle() -> usize {
    256
}

pub(super) fn default_pool_idle_timeout() -> Dur {
    Dur(Duration::from_secs(90))
}
