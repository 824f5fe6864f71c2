//! Configuration: the main file (`gatehouse.toml`) and the policy files.
//!
//! This module owns the serde types, their safe defaults, loading them from
//! disk and reporting every problem as `file:line:column: reason`. It does not
//! compile routes or build clients: that is [`crate::snapshot`]'s job, which
//! reports its own problems through the same [`Problems`] type. Unknown keys
//! are errors everywhere (`deny_unknown_fields`). Paths in the main file are
//! relative to the file's own directory.

mod environment;
mod jwt;
mod listener;
mod load;
mod openapi;
mod policy;
mod route;
mod server;
pub mod units;
mod upstream;
mod usage;

pub use environment::*;
pub use listener::*;
pub use policy::*;
pub use route::*;
pub use server::*;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use validator::Validate;

pub use jwt::*;
pub use load::{Loaded, LoadedPolicy, Problem, Problems, SourceFile, load, parse_policy};
pub use openapi::{OpenApiSpec, OperationOverride};
pub use units::{ByteSize, Dur};
pub use upstream::*;
pub use usage::UsageConfig;

/// The main config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Directory of policy files (`*.toml`), relative to the config file.
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// The public listeners.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Connection-level limits and timeouts shared by all listeners.
    #[serde(default)]
    pub server: ServerConfig,
    /// Defaults for routes and upstreams that do not set their own.
    #[serde(default)]
    pub defaults: Defaults,
    /// Who may connect, and which proxies are trusted to say who did.
    #[serde(default)]
    pub access: AccessConfig,
    /// Where consumers and API keys are stored (restart to change).
    #[serde(default)]
    pub store: StoreConfig,
    /// How API keys are hashed, cached and throttled (restart to change).
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// JWT issuers routes may accept (reloadable).
    #[serde(default, rename = "jwt_issuer")]
    pub jwt_issuers: Vec<Spanned<JwtIssuerSpec>>,
    /// Where rate-limit counters live (restart to change).
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Usage metering per consumer and key.
    #[serde(default)]
    pub usage: UsageConfig,
}

/// Where rate-limit decisions are made.
#[derive(Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// `local` (each gateway counts for itself) or `redis` (one budget per
    /// key shared by every gateway on the same Redis).
    pub backend: RateLimitBackend,
    /// The Redis URL for `backend = "redis"`.
    pub redis_url: Option<String>,
    /// Time allowed for one Redis decision.
    pub redis_timeout: Dur,
    /// When Redis is slow or down: `local` (decide with this gateway's own
    /// counters) or `deny` (answer 503).
    pub on_redis_failure: RedisFailure,
    /// Consecutive Redis failures that open the circuit breaker.
    #[validate(range(min = 1, max = 1000))]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe.
    pub breaker_open_for: Dur,
    /// How often idle local counters are dropped.
    pub prune_interval: Dur,
}

impl std::fmt::Debug for RateLimitsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitsConfig")
            .field("backend", &self.backend)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_timeout", &self.redis_timeout)
            .field("on_redis_failure", &self.on_redis_failure)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open_for", &self.breaker_open_for)
            .field("prune_interval", &self.prune_interval)
            .finish()
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            backend: RateLimitBackend::Local,
            redis_url: None,
            redis_timeout: Dur(Duration::from_millis(50)),
            on_redis_failure: RedisFailure::Local,
            breaker_failures: 5,
            breaker_open_for: Dur(Duration::from_secs(5)),
            prune_interval: Dur(Duration::from_secs(60)),
        }
    }
}

/// Where rate-limit counters live.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    /// In this process.
    Local,
    /// In Redis, shared by every gateway.
    Redis,
}

/// What happens when the Redis limiter cannot decide.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    /// Fall back to the local limiter.
    Local,
    /// Answer 503.
    Deny,
}

/// The consumer and key store.
#[derive(Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A SQLite file (relative to the config file; created and migrated on
    /// start), `sqlite://PATH`, or `postgres://user@host/db` for a store
    /// shared by several gateways.
    pub url: String,
    /// Postgres only: the schema for gatehouse's tables (default `public`).
    pub schema: Option<String>,
    /// Most pooled database connections.
    #[validate(range(min = 1, max = 1000))]
    pub max_connections: u32,
    /// Time allowed to get a database connection.
    pub connect_timeout: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "gatehouse.db".to_owned(),
            schema: None,
            max_connections: 8,
            connect_timeout: Dur(Duration::from_secs(5)),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl StoreConfig {
    /// Store options, with a relative SQLite path resolved against the
    /// config file's directory `base_dir`.
    pub fn options(&self, base_dir: &std::path::Path) -> crate::store::StoreOptions {
        let resolve = |p: &str| base_dir.join(p).to_string_lossy().into_owned();
        let url = match self.url.strip_prefix("sqlite://") {
            Some(path) => resolve(path),
            None if self.url.contains("://") => self.url.clone(),
            None => resolve(&self.url),
        };
        crate::store::StoreOptions {
            url,
            schema: self.schema.clone(),
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout.0,
        }
    }
}

/// API-key hashing, caching and throttling.
#[derive(Debug, Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// Argon2id memory cost in KiB (OWASP: 19456).
    #[validate(range(min = 8, max = 4194304))]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations (OWASP: 2).
    #[validate(range(min = 1, max = 100))]
    pub argon2_iterations: u32,
    /// Argon2id parallelism (OWASP: 1).
    #[validate(range(min = 1, max = 64))]
    pub argon2_parallelism: u32,
    /// How long a verified key stays in the in-memory cache after its last
    /// use (default `"5m"`; at most 24 h).
    pub cache_ttl: Dur,
    /// Most verified keys cached.
    #[validate(range(min = 1))]
    pub cache_capacity: u64,
    /// Argon2 verifications running at once (0: one per CPU).
    pub max_concurrent_verifications: usize,
    /// How long a request waits for a verification slot before 503.
    pub verify_wait: Dur,
    /// Failed key attempts allowed per client address per minute, after
    /// the burst; beyond them 429 before any hashing.
    #[validate(range(min = 1))]
    pub failures_per_minute: u32,
    /// Failed attempts allowed in a burst.
    #[validate(range(min = 1))]
    pub failure_burst: u32,
    /// Failed attempts allowed per key id per minute, after the burst,
    /// whichever addresses made them (default 5); beyond them, attempts
    /// for that id that miss the verified-key cache get 429 before any
    /// hashing, while cached (already verified) keys keep working.
    #[validate(range(min = 1))]
    pub key_failures_per_minute: u32,
    /// Failed attempts allowed per key id in a burst (default 10).
    #[validate(range(min = 1))]
    pub key_failure_burst: u32,
    /// How often `last used` times are written, in one batch.
    pub last_used_flush: Dur,
    /// Default time an old key keeps working after `keys rotate`.
    pub rotation_grace: Dur,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            cache_ttl: Dur(Duration::from_secs(300)),
            cache_capacity: 100_000,
            max_concurrent_verifications: 0,
            verify_wait: Dur(Duration::from_secs(2)),
            failures_per_minute: 10,
            failure_burst: 20,
            key_failures_per_minute: 5,
            key_failure_burst: 10,
            last_used_flush: Dur(Duration::from_secs(5)),
            rotation_grace: Dur(Duration::from_secs(24 * 3600)),
        }
    }
}

/// Client-address rules for every route (reloadable).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Proxies (CIDR) whose `X-Forwarded-For` is believed; the client is the
    /// right-most hop that is not one of them.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Only these client networks are served (empty: all not denied).
    pub allow_ips: Vec<Spanned<String>>,
    /// These client networks are refused with 403.
    pub deny_ips: Vec<Spanned<String>>,
}

fn default_policies() -> PathBuf {
    PathBuf::from("policies")
}

#[cfg(test)]
mod tests;
