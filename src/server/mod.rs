//! Listeners, the accept loop, connection limits, reload and graceful
//! shutdown.
//!
//! [`start`] loads and validates the whole configuration, binds every
//! listener (public and admin) and returns a [`Running`] handle with the bound
//! addresses. Each accepted connection gets a permit from the global
//! connection limit, a TLS handshake under a timeout when the listener
//! terminates TLS, and a hyper connection (HTTP/1.1 or h2) with header size,
//! count and read-time limits. [`Running::reload`] swaps in a new snapshot
//! and TLS configs or keeps the old ones; [`Running::shutdown`] stops
//! accepting and lets requests in flight finish up to the grace period.

mod accept;
mod proxy_protocol;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use accept::Acceptor;

use crate::auth::api_key::ApiKeyAuth;
use crate::auth::jwks::JwksRegistry;
use crate::auth::{Clock, SystemClock};
use crate::config::{self, Environment, Loaded, Problem, Problems, ServerConfig};
use crate::conn::{Drain, PerAddress};
use crate::gateway::{Gateway, GatewayDeps};
use crate::proxy::{Tunnels, UpstreamRegistry};
use crate::ratelimit::Limiter;
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::quota::{QuotaCounter, RedisQuotas, StoreQuotas};
use crate::ratelimit::redis::{Fallback, RedisLimiter, RedisOptions};
use crate::snapshot::{BuildDeps, Snapshot};
use crate::store::{self, KeyStore, StoreError};
use crate::telemetry::process::{ConnMeters, TlsMeters};
use crate::telemetry::trace::{TraceSettings, Tracer, spawn_exporter};
use crate::telemetry::{Metrics, Telemetry};
use crate::tls::{self, CertInfo};
use crate::validate::HeadLimits;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] Problems),
    /// A listener could not be bound.
    #[error("cannot bind {name} on {addr}: {source}")]
    Bind {
        /// The listener.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task failed.
    #[error("internal error while loading: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The JWKS client could not be built.
    #[error("cannot set up JWKS fetching: {0}")]
    Jwks(#[from] crate::auth::jwks::JwksError),
    /// The OpenTelemetry settings are invalid.
    #[error("tracing: {0}")]
    Tracing(String),
    /// The metrics registry could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] crate::telemetry::metrics::MetricsError),
    /// The rate limiter could not be set up.
    #[error("rate limiter: {0}")]
    Limiter(String),
    /// The consumer and key store could not be opened or read.
    #[error("cannot open the key store: {0}")]
    Store(#[from] StoreError),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The main config file.
    pub config_path: PathBuf,
    /// Watch the config, policy and certificate files and reload on change.
    pub watch: bool,
    /// Environment values the config may name (HMAC secrets).
    pub env: Environment,
}

/// A listener's TLS config, swapped on reload.
#[derive(Debug)]
struct TlsSlot {
    listener: String,
    config: ArcSwap<rustls::ServerConfig>,
}

/// State shared by the accept loops, the admin API and reloads.
#[derive(Debug)]
pub struct Shared {
    config_path: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    tls: Vec<Arc<TlsSlot>>,
    certs: ArcSwap<Vec<CertInfo>>,
    generation: AtomicU64,
    ready: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
    /// Open connections and tunnels, for draining.
    drain: Arc<Drain>,
    env: Environment,
    jwks: JwksRegistry,
    clock: Arc<dyn Clock>,
    store: Arc<dyn KeyStore>,
    api_keys: Arc<ApiKeyAuth>,
    metrics: Arc<Metrics>,
    upstreams: UpstreamRegistry,
    stop: watch::Receiver<bool>,
    telemetry: Arc<Telemetry>,
    listeners: std::sync::OnceLock<Vec<ListenerSummary>>,
}

/// A bound listener, as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerSummary {
    /// Its name.
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Whether it terminates TLS.
    pub tls: bool,
}

impl Shared {
    /// Whether the gateway is ready for traffic (config loaded, listeners
    /// bound, not draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The current config generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Certificates currently served.
    pub fn certs(&self) -> Arc<Vec<CertInfo>> {
        self.certs.load_full()
    }

    /// The consumer and key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The API-key authenticator (its in-memory key index).
    pub fn api_keys(&self) -> &Arc<ApiKeyAuth> {
        &self.api_keys
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Upstream runtime state (health, ejections, drains).
    pub fn upstreams(&self) -> &UpstreamRegistry {
        &self.upstreams
    }

    /// The public listeners, once bound.
    pub fn listeners(&self) -> &[ListenerSummary] {
        self.listeners.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Meters and recent history.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The clock expiry checks use.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Loads the configuration again and swaps it in whole, or keeps the
    /// running one and returns every problem.
    pub async fn reload(&self) -> Result<u64, Problems> {
        let _guard = self.reload_lock.lock().await;
        let generation = self.generation() + 1;
        let path = self.config_path.clone();
        let env = self.env.clone();
        let jwks = self.jwks.clone();
        let clock = self.clock.clone();
        let metrics = self.metrics.clone();
        let upstreams = self.upstreams.clone();
        let previous: Vec<(String, Arc<rustls::ServerConfig>)> = self
            .tls
            .iter()
            .map(|s| (s.listener.clone(), s.config.load_full()))
            .collect();
        let built = tokio::task::spawn_blocking(move || {
            let deps = BuildDeps {
                env: &env,
                jwks: &jwks,
                clock: &clock,
                metrics: &metrics,
                upstreams: &upstreams,
            };
            build_all(&path, generation, &previous, false, deps)
        })
        .await
        .map_err(|e| {
            Problems(vec![whole(
                &self.config_path,
                format!("reload task failed: {e}"),
            )])
        })?;
        match built {
            Ok(built) => {
                for slot in &self.tls {
                    match built.tls.iter().find(|(name, _)| *name == slot.listener) {
                        Some((_, cfg)) => slot.config.store(cfg.clone()),
                        None => tracing::warn!(
                            listener = %slot.listener,
                            "TLS listener no longer configured; keeping its certificates until restart"
                        ),
                    }
                }
                let routes = built.snapshot.routes.len();
                self.telemetry.config.reloaded();
                self.telemetry.config.loaded(
                    generation,
                    &built.snapshot.config_hash,
                    unix_secs(built.snapshot.loaded_at),
                    &built.certs,
                );
                let snapshot = Arc::new(built.snapshot);
                self.snapshot.store(snapshot.clone());
                self.upstreams.apply(&snapshot.upstreams, &self.stop);
                self.certs.store(Arc::new(built.certs));
                self.generation.store(generation, Ordering::Relaxed);
                tracing::info!(generation, routes, "configuration reloaded");
                Ok(generation)
            }
            Err(problems) => {
                self.telemetry.config.reload_failed();
                for p in &problems.0 {
                    tracing::error!(problem = %p, "reload rejected; keeping the running configuration");
                }
                Err(problems)
            }
        }
    }
}

/// Folds recorded histogram samples every five seconds, so they do not
/// pile up between scrapes (or when nothing scrapes).
fn spawn_metrics_upkeep(metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => metrics.upkeep(),
            }
        }
    })
}

/// Repeats the under-14-days certificate warning every six hours, so a
/// gateway that is never reloaded still says so while time passes.
fn spawn_expiry_warnings(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs(6 * 3600);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    for info in shared.certs().iter() {
                        warn_if_expiring(info);
                    }
                }
            }
        }
    })
}

fn unix_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn whole(path: &Path, message: String) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
    }
}

struct Built {
    loaded: Loaded,
    snapshot: Snapshot,
    tls: Vec<(String, Arc<rustls::ServerConfig>)>,
    certs: Vec<CertInfo>,
}

/// Loads, validates and compiles everything. Blocking.
fn build_all(
    config_path: &Path,
    generation: u64,
    previous: &[(String, Arc<rustls::ServerConfig>)],
    make_dev_certs: bool,
    deps: BuildDeps<'_>,
) -> Result<Built, Problems> {
    let loaded = config::load(config_path)?;
    let mut problems = Vec::new();
    // Like dev certificates, dev signing keys exist before anything reads
    // them; unlike certificates they are also made by `check` and reloads
    // (an issuer cannot be checked without its key).
    {
        for spec in &loaded.config.jwt_issuers {
            match crate::auth::jwt::ensure_dev_keys(spec.get_ref(), &loaded.base_dir) {
                Ok(true) => tracing::warn!(
                    issuer = %spec.get_ref().name,
                    "development signing keys created (dev_keys = true); not for production"
                ),
                Ok(false) => {}
                Err(e) => problems.push(loaded.source.problem(spec.span(), e.to_string())),
            }
        }
    }
    let mut tls_configs = Vec::new();
    let mut certs = Vec::new();
    for listener in &loaded.config.listeners {
        let l = listener.get_ref();
        let Some(tls_cfg) = &l.tls else { continue };
        if tls_cfg.dev_certs {
            if make_dev_certs {
                ensure_dev_certs(&loaded, tls_cfg, &mut problems);
            } else if dev_certs_missing(&loaded, tls_cfg) {
                // `check`: they will be created by `serve`.
                continue;
            }
        }
        let prev = previous
            .iter()
            .find(|(n, _)| *n == l.name)
            .map(|(_, c)| c.as_ref());
        match tls::server_config(tls_cfg, &loaded.base_dir, prev) {
            Ok((cfg, infos)) => {
                for info in &infos {
                    warn_if_expiring(info);
                }
                certs.extend(infos);
                tls_configs.push((l.name.clone(), cfg));
            }
            Err(e) => problems.push(
                loaded
                    .source
                    .problem(listener.span(), format!("listener `{}`: {e}", l.name)),
            ),
        }
    }
    if let Some(hash) = &loaded.config.admin.token_hash
        && let Err(message) = crate::admin::check_token_hash(hash.get_ref())
    {
        problems.push(loaded.source.problem(hash.span(), message));
    }
    let rl = &loaded.config.rate_limits;
    if rl.backend == config::RateLimitBackend::Redis && rl.redis_url.is_none() {
        // The table is not position-tracked; its header line is the place.
        let at = loaded.source.text.find("[rate_limits]").unwrap_or(0);
        problems.push(loaded.source.problem(
            at..at,
            "`[rate_limits] backend = \"redis\"` needs `redis_url`",
        ));
    }
    if loaded.config.server.idle_timeout.0.is_zero() {
        let at = loaded.source.text.find("idle_timeout").unwrap_or(0);
        problems.push(
            loaded
                .source
                .problem(at..at, "`[server] idle_timeout` must be above zero"),
        );
    }
    let mut names = std::collections::HashSet::new();
    for listener in &loaded.config.listeners {
        let l = listener.get_ref();
        if !names.insert(l.name.clone()) {
            problems.push(loaded.source.problem(
                listener.span(),
                format!("listener `{}` is defined twice", l.name),
            ));
        }
        let limits = &l.limits;
        if limits.max_header_count == Some(0)
            || limits.h2_max_concurrent_streams == Some(0)
            || limits.max_header_bytes.is_some_and(|b| b.0 < 1024)
            || limits.max_uri_bytes.is_some_and(|b| b.0 < 64)
        {
            problems.push(loaded.source.problem(
                listener.span(),
                format!(
                    "listener `{}`: limits must allow at least 1 header, 1 stream, a 1 KiB head and a 64-byte target",
                    l.name
                ),
            ));
        }
        if let Some(hsts) = l.tls.as_ref().and_then(|t| t.hsts.as_ref())
            && let Err(e) = hsts.header_value()
        {
            problems.push(
                loaded
                    .source
                    .problem(listener.span(), format!("listener `{}`: {e}", l.name)),
            );
        }
        if l.proxy_protocol && loaded.config.access.trusted_proxies.is_empty() {
            problems.push(loaded.source.problem(
                listener.span(),
                format!(
                    "listener `{}`: `proxy_protocol` needs `[access] trusted_proxies` (the balancers allowed to send the header)",
                    l.name
                ),
            ));
        }
        if l.tls.is_some() && l.redirect_https_port.is_some() {
            problems.push(loaded.source.problem(
                listener.span(),
                format!(
                    "listener `{}`: `redirect_https_port` is only for plain listeners",
                    l.name
                ),
            ));
        }
    }
    let snapshot = match Snapshot::build(&loaded, generation, deps) {
        Ok(s) => Some(s),
        Err(ps) => {
            problems.extend(ps.0);
            None
        }
    };
    match snapshot {
        Some(snapshot) if problems.is_empty() => Ok(Built {
            loaded,
            snapshot,
            tls: tls_configs,
            certs,
        }),
        _ => Err(Problems(problems)),
    }
}

fn warn_if_expiring(info: &CertInfo) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days_left = (info.not_after - now) / 86_400;
    if days_left < 14 {
        tracing::warn!(cert = %info.path.display(), days_left, "certificate expires in under 14 days");
    }
}

fn dev_certs_missing(loaded: &Loaded, tls_cfg: &config::TlsConfig) -> bool {
    tls_cfg
        .certs
        .iter()
        .any(|c| !loaded.resolve(&c.cert).exists() || !loaded.resolve(&c.key).exists())
}

fn ensure_dev_certs(loaded: &Loaded, tls_cfg: &config::TlsConfig, problems: &mut Vec<Problem>) {
    for c in &tls_cfg.certs {
        let cert = loaded.resolve(&c.cert);
        let key = loaded.resolve(&c.key);
        if cert.exists() && key.exists() {
            continue;
        }
        let ca_dir = cert.parent().map(Path::to_path_buf).unwrap_or_default();
        match tls::dev_certs(&ca_dir, &cert, &key) {
            Ok(paths) => tracing::warn!(
                ca = %paths.ca.display(),
                cert = %paths.cert.display(),
                "development certificates created (dev_certs = true); trust the CA with curl --cacert"
            ),
            Err(e) => problems.push(whole(
                &cert,
                format!("cannot create development certificates: {e}"),
            )),
        }
    }
}

/// Checks a configuration without starting anything: every problem with
/// its place, or the number of routes and upstreams.
pub fn check(config_path: &Path, env: &Environment) -> Result<(usize, usize), Problems> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let jwks = JwksRegistry::new().map_err(|e| {
        Problems(vec![whole(
            config_path,
            format!("cannot set up JWKS fetching: {e}"),
        )])
    })?;
    let metrics = Arc::new(Metrics::new().map_err(|e| {
        Problems(vec![whole(
            config_path,
            format!("cannot set up metrics: {e}"),
        )])
    })?);
    let upstreams = UpstreamRegistry::new(metrics.clone());
    let deps = BuildDeps {
        env,
        jwks: &jwks,
        clock: &clock,
        metrics: &metrics,
        upstreams: &upstreams,
    };
    let built = build_all(config_path, 1, &[], false, deps)?;
    Ok((
        built.snapshot.routes.len(),
        built.snapshot.upstreams.len() + built.snapshot.functions.len(),
    ))
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    /// Public listeners: name and bound address.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    grace: Duration,
    /// The store-backed quota counter, flushed once more after draining.
    store_quotas: Option<Arc<StoreQuotas>>,
    /// Open upgrade tunnels, closed at the grace deadline.
    tunnels: Tunnels,
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The shared state (snapshot, generation, readiness).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reloads the configuration (as SIGHUP does).
    pub async fn reload(&self) -> Result<u64, Problems> {
        self.shared.reload().await
    }

    /// Stops accepting, lets requests in flight finish for up to the grace
    /// period, then stops the admin listener. Returns whether every
    /// connection finished in time.
    pub async fn shutdown(self) -> bool {
        self.shared.ready.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Connections finish their requests (h2 gets GOAWAY, HTTP/1 closes
        // after the answer in flight); tunnels run on until the deadline,
        // then are closed.
        let deadline = tokio::time::Instant::now() + self.grace;
        tracing::info!(
            open_connections = self.shared.drain.open(),
            open_tunnels = self.tunnels.open(),
            grace_ms = self.grace.as_millis() as u64,
            "draining"
        );
        let mut drained = tokio::time::timeout_at(deadline, self.shared.drain.wait())
            .await
            .is_ok();
        if tokio::time::timeout_at(deadline, self.tunnels.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open_tunnels = self.tunnels.open(),
                "grace period over; closing the open tunnels"
            );
            drained = false;
        }
        self.tunnels.close_all();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tunnels.wait()).await;
        // Requests that finished while draining used keys too.
        self.shared.api_keys.flush_last_used().await;
        // …and may have charged quotas after the flush task's last flush.
        if let Some(q) = &self.store_quotas {
            q.flush().await;
        }
        self.shared.upstreams.stop();
        self.admin_task.abort();
        tracing::info!(drained, "stopped");
        drained
    }
}

/// Loads the configuration, binds every listener and starts serving.
pub async fn start(opts: StartOptions) -> Result<Running, StartError> {
    let path = opts.config_path.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let jwks = JwksRegistry::new()?;
    let metrics = Arc::new(match opts.env.get("GATEHOUSE_METRICS").as_deref() {
        Some("off" | "false" | "0") => Metrics::disabled(),
        _ => Metrics::new()?,
    });
    let upstreams = UpstreamRegistry::new(metrics.clone());
    let trace_settings = TraceSettings::from_env(&opts.env).map_err(StartError::Tracing)?;
    let (tracer, trace_rx) = match &trace_settings {
        Some(settings) => {
            let (tracer, rx) = Tracer::new(settings.sampler, &metrics);
            (Some(tracer), Some(rx))
        }
        None => (None, None),
    };
    let telemetry = Arc::new(Telemetry::new(metrics.clone(), tracer));
    let built = {
        let (env, jwks, clock, metrics, upstreams) = (
            opts.env.clone(),
            jwks.clone(),
            clock.clone(),
            metrics.clone(),
            upstreams.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let deps = BuildDeps {
                env: &env,
                jwks: &jwks,
                clock: &clock,
                metrics: &metrics,
                upstreams: &upstreams,
            };
            build_all(&path, 1, &[], true, deps)
        })
        .await??
    };
    let Built {
        loaded,
        snapshot,
        tls: tls_configs,
        certs,
    } = built;
    let server = loaded.config.server.clone();
    let server = &server;
    telemetry.config.loaded(
        1,
        &snapshot.config_hash,
        unix_secs(snapshot.loaded_at),
        &certs,
    );

    // The key store: opened (created, migrated) before anything listens, so
    // a bad store URL starts nothing. Keys are served from memory.
    let store = store::open(&loaded.config.store.options(&loaded.base_dir)).await?;
    let api_keys = Arc::new(ApiKeyAuth::new(
        loaded.config.api_keys.settings(),
        store.clone(),
        clock.clone(),
    ));
    api_keys.refresh().await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let tls_slots: Vec<Arc<TlsSlot>> = tls_configs
        .into_iter()
        .map(|(listener, cfg)| {
            Arc::new(TlsSlot {
                listener,
                config: ArcSwap::new(cfg),
            })
        })
        .collect();
    let shared = Arc::new(Shared {
        config_path: opts.config_path.clone(),
        snapshot: snapshot.clone(),
        tls: tls_slots.clone(),
        certs: ArcSwap::from_pointee(certs),
        generation: AtomicU64::new(1),
        ready: AtomicBool::new(false),
        reload_lock: tokio::sync::Mutex::new(()),
        drain: Arc::new(Drain::default()),
        env: opts.env.clone(),
        jwks: jwks.clone(),
        clock: clock.clone(),
        store: store.clone(),
        api_keys: api_keys.clone(),
        metrics: metrics.clone(),
        upstreams: upstreams.clone(),
        stop: stop_rx.clone(),
        telemetry: telemetry.clone(),
        listeners: std::sync::OnceLock::new(),
    });

    // Bind everything before serving anything: a bind error starts nothing.
    let mut bound = Vec::new();
    for l in &loaded.config.listeners {
        let l = l.get_ref();
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.addr,
                source,
            })?;
        bound.push((l, listener));
    }
    let admin_listener = TcpListener::bind(loaded.config.admin.addr)
        .await
        .map_err(|source| StartError::Bind {
            name: "admin".into(),
            addr: loaded.config.admin.addr,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            name: "admin".into(),
            addr: loaded.config.admin.addr,
            source,
        })?;

    let (limiter, local_limiter) = build_limiter(&loaded.config.rate_limits).await?;
    let rl = &loaded.config.rate_limits;
    let (quotas, store_quotas): (Arc<dyn QuotaCounter>, Option<Arc<StoreQuotas>>) =
        match (rl.backend, &rl.redis_url) {
            (config::RateLimitBackend::Redis, Some(url)) => (
                Arc::new(
                    RedisQuotas::connect(url, rl.redis_timeout.0)
                        .map_err(|e| StartError::Limiter(e.to_string()))?,
                ),
                None,
            ),
            _ => {
                let q = Arc::new(StoreQuotas::new(store.clone(), Duration::from_secs(2)));
                (q.clone(), Some(q))
            }
        };
    let tunnels = Tunnels::default();
    let gateway = Gateway::new(GatewayDeps {
        snapshot,
        api_keys: api_keys.clone(),
        limiter,
        quotas,
        quota_fail_open: rl.on_redis_failure == config::RedisFailure::Local,
        clock: clock.clone(),
        max_in_flight: server.max_concurrent_requests,
        telemetry: telemetry.clone(),
        tunnels: tunnels.clone(),
    });
    let admin = crate::admin::AdminState::new(shared.clone(), &loaded.config)
        .map_err(|e| StartError::Config(Problems(vec![whole(&opts.config_path, e)])))?;
    let limit = Arc::new(Semaphore::new(server.max_connections));
    // Per client address across every listener.
    let per_address = PerAddress::new(server.max_connections_per_ip);
    let handshakes = PerAddress::new(server.max_tls_handshakes_per_ip);
    let mut listeners = Vec::new();
    let mut summaries = Vec::new();
    let mut tasks = Vec::new();
    for (l, listener) in bound {
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        })?;
        let tls = if l.tls.is_some() {
            tls_slots.iter().find(|s| s.listener == l.name).cloned()
        } else {
            None
        };
        let tls_mode = if tls.is_some() { "https" } else { "http" };
        tracing::info!(listener = %l.name, %addr, mode = tls_mode, redirect_https_port = l.redirect_https_port.unwrap_or(0), "listening");
        listeners.push((l.name.clone(), addr));
        summaries.push(ListenerSummary {
            name: l.name.clone(),
            addr,
            tls: tls.is_some(),
        });
        let effective = l.limits.apply(server);
        let hsts = l
            .tls
            .as_ref()
            .and_then(|t| t.hsts.as_ref())
            .and_then(|h| h.header_value().ok());
        let acceptor = Acceptor {
            name: l.name.as_str().into(),
            tls,
            redirect_https_port: l.redirect_https_port,
            proxy_protocol: l.proxy_protocol,
            hsts,
            gateway: gateway.clone(),
            http: Arc::new(http_builder(&effective)),
            limit: limit.clone(),
            per_address: per_address.clone(),
            handshakes: handshakes.clone(),
            handshake_timeout: server.tls_handshake_timeout.0,
            idle_timeout: server.idle_timeout.0,
            tls_meters: Arc::new(TlsMeters::new(&metrics, &l.name)),
            conn_meters: Arc::new(ConnMeters::new(&metrics, &l.name)),
            head_limits: HeadLimits {
                max_head_bytes: usize::try_from(effective.max_header_bytes.0).unwrap_or(usize::MAX),
                max_headers: effective.max_header_count,
                max_uri_bytes: usize::try_from(effective.max_uri_bytes.0).unwrap_or(usize::MAX),
            },
            header_read_timeout: effective.header_read_timeout.0,
            shared: shared.clone(),
            refusal_lines: accept::LineBudget::default(),
        };
        tasks.push(tokio::spawn(acceptor.run(listener, stop_rx.clone())));
    }

    let _ = shared.listeners.set(summaries);
    tracing::info!(%admin_addr, "admin listening");
    tasks.push(spawn_metrics_upkeep(metrics.clone(), stop_rx.clone()));
    tasks.push(spawn_expiry_warnings(shared.clone(), stop_rx.clone()));
    if let (Some(settings), Some(rx)) = (trace_settings, trace_rx) {
        tracing::info!(endpoint = %crate::telemetry::trace::endpoint_for_logs(&settings.endpoint), service = %settings.service_name, sampler = ?settings.sampler, "exporting traces over OTLP/HTTP");
        let exporter = spawn_exporter(settings, rx, &metrics, stop_rx.clone())
            .map_err(|e| StartError::Tracing(e.to_string()))?;
        tasks.push(exporter);
    }
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, admin));
    tasks.push(api_keys.spawn_sync(stop_rx.clone()));
    tasks.push(jwks.spawn_refresh(stop_rx.clone()));
    if let Some(q) = &store_quotas {
        tasks.push(q.spawn_flush(Duration::from_secs(5), stop_rx.clone()));
    }
    tasks.push(
        local_limiter.spawn_pruner(loaded.config.rate_limits.prune_interval.0, stop_rx.clone()),
    );
    if opts.watch {
        let watch_shared = shared.clone();
        tasks.push(crate::watch::spawn(watch_shared, loaded, stop_rx.clone()));
    }
    upstreams.apply(&shared.snapshot().upstreams, &stop_rx);
    shared.ready.store(true, Ordering::Relaxed);
    Ok(Running {
        listeners,
        admin_addr,
        shared,
        stop: stop_tx,
        tasks,
        admin_task,
        grace: server.shutdown_grace.0,
        store_quotas,
        tunnels,
    })
}

/// The rate limiter `[rate_limits]` asks for. Also returns the local
/// limiter so its pruner can be started.
async fn build_limiter(
    cfg: &config::RateLimitsConfig,
) -> Result<(Arc<dyn Limiter>, Arc<LocalLimiter>), StartError> {
    let local = Arc::new(LocalLimiter::new());
    let limiter: Arc<dyn Limiter> = match cfg.backend {
        config::RateLimitBackend::Local => local.clone(),
        config::RateLimitBackend::Redis => {
            let url = cfg.redis_url.clone().ok_or_else(|| {
                StartError::Limiter("`[rate_limits] backend = \"redis\"` needs `redis_url`".into())
            })?;
            let redis = RedisLimiter::connect(RedisOptions {
                url,
                timeout: cfg.redis_timeout.0,
                breaker_failures: cfg.breaker_failures,
                breaker_open_for: cfg.breaker_open_for.0,
                ..RedisOptions::default()
            })
            .await
            .map_err(|e| StartError::Limiter(e.to_string()))?;
            Arc::new(Fallback {
                primary: redis,
                fallback: local.clone(),
                deny_on_failure: cfg.on_redis_failure == config::RedisFailure::Deny,
            })
        }
    };
    Ok((limiter, local))
}

fn http_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let head = usize::try_from(server.max_header_bytes.0).unwrap_or(usize::MAX);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout.0)
        // The framing guard enforces the real limits with a JSON answer;
        // hyper's own are a backstop just above them.
        .max_headers(server.max_header_count + 1)
        .max_buf_size(head.saturating_mul(2).max(64 * 1024))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}
