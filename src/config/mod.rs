//! Configuration: the main file (`gatehouse.toml`) and the policy files.
//!
//! This module owns the serde types, their safe defaults, loading them from
//! disk and reporting every problem as `file:line:column: reason`. It does not
//! compile routes or build clients: that is [`crate::snapshot`]'s job, which
//! reports its own problems through the same [`Problems`] type. Unknown keys
//! are errors everywhere (`deny_unknown_fields`). Paths in the main file are
//! relative to the file's own directory.

mod jwt;
mod load;
mod openapi;
pub mod units;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
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

impl ApiKeysConfig {
    /// The authenticator's settings.
    pub fn settings(&self) -> crate::auth::api_key::ApiKeySettings {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        crate::auth::api_key::ApiKeySettings {
            argon2: self.argon2(),
            cache_ttl: self.cache_ttl.0,
            cache_capacity: self.cache_capacity,
            max_concurrent_verifications: if self.max_concurrent_verifications == 0 {
                cpus
            } else {
                self.max_concurrent_verifications
            },
            verify_wait: self.verify_wait.0,
            failures_per_minute: self.failures_per_minute,
            failure_burst: self.failure_burst,
            key_failures_per_minute: self.key_failures_per_minute,
            key_failure_burst: self.key_failure_burst,
            last_used_flush: self.last_used_flush.0,
        }
    }

    /// The argon2id parameters new hashes are made with.
    pub fn argon2(&self) -> crate::auth::api_key::Argon2Settings {
        crate::auth::api_key::Argon2Settings {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
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

/// One public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A unique name, used in logs.
    pub name: String,
    /// Address to bind, e.g. `127.0.0.1:8443` (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Terminate TLS on this listener.
    pub tls: Option<TlsConfig>,
    /// On a plain listener: answer every request with a 308 redirect to
    /// HTTPS on this port instead of serving it.
    pub redirect_https_port: Option<u16>,
    /// This listener's own connection limits (default: `[server]`).
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Expect a PROXY protocol header (v1 or v2) from peers in
    /// `[access] trusted_proxies` (an L4 load balancer such as AWS NLB or
    /// HAProxy) and take the client address from it. Off by default. A
    /// trusted peer that sends none, and an untrusted peer that sends one,
    /// are refused (the connection is closed and counted).
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Per-listener overrides of the `[server]` connection limits.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Overrides `[server] header_read_timeout`.
    pub header_read_timeout: Option<Dur>,
    /// Overrides `[server] max_header_count`.
    pub max_header_count: Option<usize>,
    /// Overrides `[server] max_header_bytes`.
    pub max_header_bytes: Option<ByteSize>,
    /// Overrides `[server] max_uri_bytes`.
    pub max_uri_bytes: Option<ByteSize>,
    /// Overrides `[server] h2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: Option<u32>,
}

impl ListenerLimits {
    /// The server settings with this listener's overrides applied.
    pub fn apply(&self, server: &ServerConfig) -> ServerConfig {
        ServerConfig {
            header_read_timeout: self
                .header_read_timeout
                .unwrap_or(server.header_read_timeout),
            max_header_count: self.max_header_count.unwrap_or(server.max_header_count),
            max_header_bytes: self.max_header_bytes.unwrap_or(server.max_header_bytes),
            max_uri_bytes: self.max_uri_bytes.unwrap_or(server.max_uri_bytes),
            h2_max_concurrent_streams: self
                .h2_max_concurrent_streams
                .unwrap_or(server.h2_max_concurrent_streams),
            ..server.clone()
        }
    }
}

/// TLS settings of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; chosen by SNI from their DNS names, the first is the default.
    pub certs: Vec<CertConfig>,
    /// If a cert or key file is missing, write a local dev CA and a
    /// certificate for localhost/127.0.0.1 there (quickstart only).
    #[serde(default)]
    pub dev_certs: bool,
    /// PEM bundle of CAs that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required or only verified when sent.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Send `Strict-Transport-Security` on every answer of this listener
    /// (off unless set; on in the quickstart).
    pub hsts: Option<HstsConfig>,
}

/// The `Strict-Transport-Security` header of a TLS listener.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// How long browsers remember to use HTTPS only (default one year).
    #[serde(default = "default_hsts_max_age")]
    pub max_age: Dur,
    /// Also for every subdomain.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Ask to be put on the browsers' preload lists (needs
    /// `include_subdomains` and a `max_age` of at least a year).
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> Dur {
    Dur(Duration::from_secs(365 * 86_400))
}

impl HstsConfig {
    /// The header value, or why the settings are refused.
    pub fn header_value(&self) -> Result<http::HeaderValue, String> {
        let secs = self.max_age.0.as_secs();
        if self.preload && (!self.include_subdomains || secs < 365 * 86_400) {
            return Err(
                "`hsts.preload` needs `include_subdomains = true` and a `max_age` of at least a year"
                    .to_owned(),
            );
        }
        let mut value = format!("max-age={secs}");
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        http::HeaderValue::from_str(&value).map_err(|e| e.to_string())
    }
}

/// What happens to request header names containing `_` (e.g.
/// `X_Forwarded_For`): CGI, WSGI and PHP backends fold `_` into `-`, so such
/// a header could pass for a framing or trust header the gateway checked.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Remove them before any check, as nginx does (default).
    #[default]
    Drop,
    /// Answer 400 `invalid_header`.
    Refuse,
    /// Keep them.
    Allow,
}

/// Client-certificate policy of a TLS listener.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Clients must present a certificate chaining to `client_ca`.
    #[default]
    Required,
    /// A certificate is verified if sent, but not required.
    Optional,
}

/// A certificate chain and its private key.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names; default: the certificate's DNS subject alternative names.
    #[serde(default)]
    pub names: Vec<String>,
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to bind; loopback by default.
    #[serde(default = "default_admin_addr")]
    pub addr: SocketAddr,
    /// Argon2id PHC hash of the admin bearer token (`gatehouse hash-secret`
    /// prints one). Without it the consumer and key endpoints are refused.
    #[serde(default)]
    pub token_hash: Option<Spanned<String>>,
    /// Require the admin token for `/metrics` too. Off by default: a
    /// Prometheus server scrapes the loopback admin port without one.
    #[serde(default)]
    pub metrics_require_token: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: default_admin_addr(),
            token_hash: None,
            metrics_require_token: false,
        }
    }
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Connection-level settings. Changing them needs a restart.
#[derive(Debug, Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Open connections across all listeners; beyond it new ones are closed.
    #[validate(range(min = 1))]
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Dur,
    /// Time allowed to receive a request head (also the keep-alive idle limit).
    pub header_read_timeout: Dur,
    /// Most header fields in a request.
    #[validate(range(min = 1, max = 1000))]
    pub max_header_count: usize,
    /// Largest request head (request line plus headers); beyond it 431.
    pub max_header_bytes: ByteSize,
    /// Longest request target (path and query); beyond it 414.
    pub max_uri_bytes: ByteSize,
    /// Longest pause while receiving a request body; also the grace period
    /// before `body_min_rate` applies. Beyond it 408.
    pub body_timeout: Dur,
    /// Slowest average body rate, in bytes per second, after `body_timeout`.
    pub body_min_rate: ByteSize,
    /// Fold repeated slashes (`//`) into one before routing and forwarding.
    pub merge_slashes: bool,
    /// HTTP/2 streams per connection.
    #[validate(range(min = 1))]
    pub h2_max_concurrent_streams: u32,
    /// Requests handled at once across all listeners; beyond it new
    /// requests get a fast 503 instead of queueing.
    #[validate(range(min = 1))]
    pub max_concurrent_requests: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Dur,
    /// Open connections one client address (IPv4, or IPv6 /64) may hold;
    /// beyond it new ones are closed at once. Behind a PROXY protocol
    /// balancer the address is the one the header names.
    #[validate(range(min = 1))]
    pub max_connections_per_ip: u32,
    /// TLS handshakes one client address may have in progress at once.
    #[validate(range(min = 1))]
    pub max_tls_handshakes_per_ip: u32,
    /// An HTTP/2 connection with no open stream for this long is closed
    /// (GOAWAY); also the default idle limit of upgraded (WebSocket) tunnels.
    pub idle_timeout: Dur,
    /// Request header names with `_`: `drop` (default), `refuse` (400) or
    /// `allow`. A route may set its own.
    pub underscores_in_headers: UnderscoreHeaders,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            tls_handshake_timeout: Dur(Duration::from_secs(10)),
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_header_count: 100,
            max_header_bytes: ByteSize(16 * 1024),
            max_uri_bytes: ByteSize(8 * 1024),
            body_timeout: Dur(Duration::from_secs(10)),
            body_min_rate: ByteSize(1024),
            merge_slashes: true,
            h2_max_concurrent_streams: 100,
            max_concurrent_requests: 10_000,
            shutdown_grace: Dur(Duration::from_secs(30)),
            max_connections_per_ip: 256,
            max_tls_handshakes_per_ip: 32,
            idle_timeout: Dur(Duration::from_secs(60)),
            underscores_in_headers: UnderscoreHeaders::Drop,
        }
    }
}

/// Defaults for routes and upstreams.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Largest request body a route accepts.
    pub max_body: ByteSize,
    /// Upstream connect timeout.
    pub connect_timeout: Dur,
    /// Time from sending the request to the upstream's response head.
    pub first_byte_timeout: Dur,
    /// Time for the whole exchange, response body included.
    pub request_timeout: Dur,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_body: ByteSize(1 << 20),
            connect_timeout: Dur(Duration::from_secs(5)),
            first_byte_timeout: Dur(Duration::from_secs(30)),
            request_timeout: Dur(Duration::from_secs(60)),
        }
    }
}

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

fn default_limit_key() -> Spanned<String> {
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

fn default_pool_idle() -> usize {
    256
}

fn default_pool_idle_timeout() -> Dur {
    Dur(Duration::from_secs(90))
}

/// A route: which requests it matches and what happens to them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name, used in logs and metrics.
    pub name: Spanned<String>,
    /// Match only this host (case-insensitive, port ignored).
    pub host: Option<Spanned<String>>,
    /// Match exactly this path.
    pub path: Option<Spanned<String>>,
    /// Match this path and everything below it.
    pub prefix: Option<Spanned<String>>,
    /// Match a template: `/users/{id}`, with an optional tail `/{*rest}`.
    pub template: Option<Spanned<String>>,
    /// Allowed methods; empty means all.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Forward to this upstream.
    pub upstream: Option<Spanned<String>>,
    /// Or answer directly.
    pub respond: Option<Spanned<RespondSpec>>,
    /// Remove this prefix from the path before forwarding.
    pub strip_prefix: Option<Spanned<String>>,
    /// Replace the path; `{name}` inserts a template parameter.
    pub rewrite_path: Option<Spanned<String>>,
    /// Headers to set on / remove from the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderEdits,
    /// Headers to set on / remove from the response.
    #[serde(default)]
    pub response_headers: HeaderEdits,
    /// Largest request body (default from `[defaults]`).
    pub max_body: Option<ByteSize>,
    /// Headers every request must carry (400 otherwise).
    #[serde(default)]
    pub required_headers: Vec<String>,
    /// Media types accepted for request bodies (415 otherwise).
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Query-string rules.
    pub query: Option<QuerySpec>,
    /// JSON Schema file (relative to this policy file) the body must match (422).
    pub json_schema: Option<Spanned<PathBuf>>,
    /// Only these client networks may use the route.
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    /// These client networks may not.
    #[serde(default)]
    pub deny_ips: Vec<Spanned<String>>,
    /// CORS policy, answered at the gateway.
    pub cors: Option<Spanned<CorsSpec>>,
    /// Who may call: `"none"` (default), `"api_key"`, `"jwt"`, or a list
    /// (any of them).
    pub auth: Option<Spanned<AuthSpec>>,
    /// Header an API key is read from (also accepted as `Authorization: Bearer`).
    pub api_key_header: Option<Spanned<String>>,
    /// JWT issuers (by name) this route accepts; empty: any declared issuer.
    #[serde(default)]
    pub jwt_issuers: Vec<Spanned<String>>,
    /// Scopes the caller must hold, all of them (403 otherwise).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles of which the caller must hold at least one (403 otherwise).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Pass the client's `Authorization` (and API-key) header to the
    /// upstream. Off by default: the upstream gets derived identity headers.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Rate-limit policies (by name) for this route, besides global ones
    /// and those that list it.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// Retry non-idempotent methods (POST, PATCH) too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Accept path parameters (a raw `;` in the path, as in
    /// `/a;jsessionid=1`) on this route. Default `false`: such requests get
    /// 400 `invalid_path`, because servlet containers cut `;…` off each
    /// segment and would serve another path than the one routed here. An
    /// encoded `%3B` is data and always passes; dot segments with
    /// parameters (`..;`) are refused on every route.
    #[serde(default)]
    pub allow_path_params: bool,
    /// Overrides the upstream's connect timeout (such a route gets its own
    /// connection pool to the upstream's targets).
    pub connect_timeout: Option<Dur>,
    /// Overrides the upstream's time to the response head.
    pub first_byte_timeout: Option<Dur>,
    /// Overrides the upstream's time for the whole exchange.
    pub request_timeout: Option<Dur>,
    /// Count this route's requests per consumer on `/metrics`
    /// (`gatehouse_consumer_requests_total`; at most 100 consumers by name,
    /// the rest as `other`).
    #[serde(default)]
    pub consumer_metrics: bool,
    /// Protocol upgrades this route tunnels after the backend's 101, e.g.
    /// `["websocket"]`. Empty by default: an `Upgrade` header is removed and
    /// the request forwarded as a plain one. `h2c` is never allowed.
    #[serde(default)]
    pub upgrades: Vec<Spanned<String>>,
    /// Upgraded tunnels open at once on this route (default 1000); beyond
    /// it an upgrade request gets 503 `tunnel_limit_reached`.
    pub max_tunnels: Option<u32>,
    /// A tunnel with no byte in either direction for this long is closed
    /// (default `[server] idle_timeout`).
    pub tunnel_idle_timeout: Option<Dur>,
    /// Client headers that are removed by default (`x-original-url`,
    /// `x-http-method-override`, `x-forwarded-port`, …) which this route
    /// passes on. `x-real-ip` and the `X-Forwarded-For/Proto/Host` family
    /// are always the gateway's own.
    #[serde(default)]
    pub allow_client_headers: Vec<Spanned<String>>,
    /// Overrides `[server] underscores_in_headers` for this route.
    pub underscores_in_headers: Option<UnderscoreHeaders>,
}

/// A route's `auth`: one method or a list of accepted methods.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum AuthSpec {
    /// One method.
    One(String),
    /// Any of these.
    Any(Vec<String>),
}

/// Query-string rules of a route.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Only these parameter names are accepted (absent: any).
    pub allowed: Option<Vec<String>>,
    /// These parameters must be present.
    #[serde(default)]
    pub required: Vec<String>,
    /// Most parameters in one request.
    #[serde(default = "default_max_params")]
    pub max_params: usize,
}

fn default_max_params() -> usize {
    64
}

/// CORS policy of a route.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Allowed origins (`https://app.example`), or `"*"`.
    pub allow_origins: Vec<String>,
    /// Allowed methods (default: the route's).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and Authorization (not with `"*"`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<Dur>,
}

/// Header changes.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Set (replace) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A direct answer from the gateway.
#[derive(Debug, Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    /// Status code.
    #[validate(range(min = 200, max = 599))]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    #[validate(length(max = 65536))]
    pub body: String,
}

/// Environment values handed in by `main` (library code never reads the
/// process environment). Config files name variables (e.g. an issuer's
/// `hmac_secret_env`); values are looked up here. Debug output lists the
/// names only, never a value.
#[derive(Clone, Default)]
pub struct Environment(BTreeMap<String, String>);

impl Environment {
    /// Environment from `(name, value)` pairs.
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Environment {
        Environment(vars.into_iter().collect())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// `url` with any `user:password@` part replaced by `***@`, for Debug
/// output and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
