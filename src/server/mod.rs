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
mod build;
mod proxy_protocol;
mod running;
mod service;
mod start;
mod upkeep;

pub use build::*;
pub use running::*;
pub use start::*;
use upkeep::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::auth::Clock;
use crate::auth::api_key::ApiKeyAuth;
use crate::auth::jwks::JwksRegistry;
use crate::config::{Environment, Problems};
use crate::conn::Drain;
use crate::proxy::UpstreamRegistry;
use crate::snapshot::{BuildDeps, Snapshot};
use crate::store::{KeyStore, StoreError};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::{Metrics, Telemetry};
use crate::tls::CertInfo;

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
    /// The access log's writer (JSON logs); `None`: access lines are
    /// `tracing` events.
    pub access_log: Option<AccessLog>,
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
