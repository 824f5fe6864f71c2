//! The composition root: everything a running gateway shares, built from
//! the config and the typed settings `main` hands in ([`StartOptions`]),
//! and reloaded as a whole.
//!
//! `build` loads and validates the configuration, sets up metrics, the
//! tracer, JWKS, the upstream registry, the key store and its in-memory
//! key index, and returns the [`Shared`] state; [`Shared::reload`] builds a
//! whole new snapshot (and TLS configs) and swaps it in, or keeps the
//! running one and reports why; [`check`] does the building without
//! starting anything.
//!
//! Not here: listeners, accept loops and draining (the `server` module,
//! which starts what is built here), the admin API (`admin`) and the file
//! watcher (`watch`); they depend on this module, never the other way
//! round. Nothing here reads the process environment: the only
//! environment values are those the config names ([`Environment`]).

mod build;

pub use build::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::auth::api_key::ApiKeyAuth;
use crate::auth::jwks::JwksRegistry;
use crate::auth::{Clock, SystemClock};
use crate::config::{Environment, Loaded, Problem, Problems, UsageConfig};
use crate::conn::Drain;
use crate::proxy::UpstreamRegistry;
use crate::proxy::lambda::AwsSettings;
use crate::snapshot::Snapshot;
use crate::store::{self, KeyStore, StoreError};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::trace::{Finished, TraceSettings, Tracer};
use crate::telemetry::{Metrics, Telemetry};
use crate::tls::CertInfo;
use crate::usage::{UsageMeter, UsageMeters, UsageSettings};

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
    /// The trace exporter's HTTP client could not be set up.
    #[error("cannot set up the trace exporter: {0}")]
    TraceExporter(#[source] crate::tls::TlsError),
    /// The metrics registry could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] crate::telemetry::metrics::MetricsError),
    /// The rate limiter could not be set up.
    #[error("rate limiter: {0}")]
    Limiter(String),
    /// The consumer and key store could not be opened or read.
    #[error("cannot open the key store: {0}")]
    Store(#[from] StoreError),
    /// The admin listener's certificate could not be loaded.
    #[error("[admin.tls]: {0}")]
    AdminTls(#[source] crate::tls::TlsError),
}

/// What to start, every setting typed: `main` fills it from its flags.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The main config file.
    pub config_path: PathBuf,
    /// Watch the config, policy and certificate files and reload on change.
    pub watch: bool,
    /// The values of the environment variables the config names (HMAC
    /// secrets), and nothing else.
    pub env: Environment,
    /// Record metrics (`--metrics off`: a registry that records nothing).
    pub metrics: bool,
    /// Export traces over OTLP; `None`: tracing off.
    pub trace: Option<TraceSettings>,
    /// Credentials settings for Lambda upstreams.
    pub aws: AwsSettings,
    /// The access log's writer (JSON logs); `None`: access lines are
    /// `tracing` events.
    pub access_log: Option<AccessLog>,
}

impl StartOptions {
    /// The config at `config_path` with every other setting at its
    /// default: no watching, no secrets, metrics on, tracing off, the AWS
    /// chain's own sources, access lines as `tracing` events.
    pub fn new(config_path: PathBuf) -> StartOptions {
        StartOptions {
            config_path,
            watch: false,
            env: Environment::default(),
            metrics: true,
            trace: None,
            aws: AwsSettings::default(),
            access_log: None,
        }
    }
}

/// A listener's TLS config, swapped on reload.
#[derive(Debug)]
pub(crate) struct TlsSlot {
    pub(crate) listener: String,
    pub(crate) config: ArcSwap<rustls::ServerConfig>,
}

/// State shared by the accept loops, the admin API, the file watcher and
/// reloads.
#[derive(Debug)]
pub struct Shared {
    config_path: PathBuf,
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) tls: Vec<Arc<TlsSlot>>,
    certs: ArcSwap<Vec<CertInfo>>,
    generation: AtomicU64,
    pub(crate) ready: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
    /// Open connections and tunnels, for draining.
    pub(crate) drain: Arc<Drain>,
    /// What every build of the snapshot uses, kept across reloads.
    pub(crate) inputs: Inputs,
    store: Arc<dyn KeyStore>,
    api_keys: Arc<ApiKeyAuth>,
    pub(crate) stop: watch::Receiver<bool>,
    telemetry: Arc<Telemetry>,
    pub(crate) listeners: std::sync::OnceLock<Vec<ListenerSummary>>,
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

    /// The usage meter, when `[usage] enabled`.
    pub fn usage(&self) -> Option<&Arc<UsageMeter>> {
        self.telemetry.usage.as_ref()
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
        &self.inputs.metrics
    }

    /// Upstream runtime state (health, ejections, drains).
    pub fn upstreams(&self) -> &UpstreamRegistry {
        &self.inputs.upstreams
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
        &self.inputs.clock
    }

    /// Loads the configuration again and swaps it in whole, or keeps the
    /// running one and returns every problem.
    pub async fn reload(&self) -> Result<u64, Problems> {
        let _guard = self.reload_lock.lock().await;
        let generation = self.generation() + 1;
        let previous: Vec<(String, Arc<rustls::ServerConfig>)> = self
            .tls
            .iter()
            .map(|s| (s.listener.clone(), s.config.load_full()))
            .collect();
        let built = self
            .inputs
            .clone()
            .build(self.config_path.clone(), generation, previous, false)
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
                self.inputs.upstreams.apply(&snapshot.upstreams, &self.stop);
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

/// What [`build`] made: the shared state, and what starting it needs once.
#[derive(Debug)]
pub(crate) struct App {
    /// The shared state.
    pub(crate) shared: Arc<Shared>,
    /// The first loaded config (listeners, admin, rate limits, watch list).
    pub(crate) loaded: Loaded,
    /// Stops every task when it sends `true`.
    pub(crate) stop: watch::Sender<bool>,
    /// The tracer's settings and queue, for the exporter task.
    pub(crate) trace_export: Option<(TraceSettings, mpsc::Receiver<Finished>)>,
}

/// Builds the shared state from the config and `opts`: metrics, tracer,
/// snapshot, TLS configs, the key store (opened, migrated) and its key
/// index. Not ready until the server marks it so.
pub(crate) async fn build(opts: &StartOptions) -> Result<App, StartError> {
    let path = opts.config_path.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let jwks = JwksRegistry::new()?;
    let metrics = Arc::new(if opts.metrics {
        Metrics::new()?
    } else {
        Metrics::disabled()
    });
    let upstreams = UpstreamRegistry::new(metrics.clone());
    let (tracer, trace_export) = match &opts.trace {
        Some(settings) => {
            let (tracer, rx) = Tracer::new(settings.sampler, &metrics);
            (Some(tracer), Some((settings.clone(), rx)))
        }
        None => (None, None),
    };
    if let Some(log) = &opts.access_log {
        metrics.describe_counter(
            "gatehouse_access_log_dropped_total",
            "Access lines dropped because the log writer was behind or its output failed.",
        );
        log.count_drops_in(metrics.counter("gatehouse_access_log_dropped_total", &[]));
    }
    let inputs = Inputs {
        env: opts.env.clone(),
        aws: opts.aws.clone(),
        jwks,
        clock,
        metrics,
        upstreams,
    };
    let built = inputs.clone().build(path, 1, Vec::new(), true).await??;
    let Built {
        loaded,
        snapshot,
        tls: tls_configs,
        certs,
    } = built;

    // The key store: opened (created, migrated) before anything listens, so
    // a bad store URL starts nothing. Keys are served from memory.
    let store = store::open(&loaded.config.store.options(&loaded.base_dir)).await?;
    let usage = loaded.config.usage.enabled.then(|| {
        Arc::new(usage_meter(
            &loaded.config.usage,
            store.clone(),
            &inputs.metrics,
        ))
    });
    let telemetry = Arc::new(Telemetry {
        access_log: opts.access_log.clone(),
        usage,
        ..Telemetry::new(inputs.metrics.clone(), tracer)
    });
    telemetry.config.loaded(
        1,
        &snapshot.config_hash,
        unix_secs(snapshot.loaded_at),
        &certs,
    );
    let api_keys = Arc::new(ApiKeyAuth::new(
        loaded.config.api_keys.settings(),
        store.clone(),
        inputs.clock.clone(),
    ));
    api_keys.refresh().await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        config_path: opts.config_path.clone(),
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        tls: tls_configs
            .into_iter()
            .map(|(listener, cfg)| {
                Arc::new(TlsSlot {
                    listener,
                    config: ArcSwap::new(cfg),
                })
            })
            .collect(),
        certs: ArcSwap::from_pointee(certs),
        generation: AtomicU64::new(1),
        ready: AtomicBool::new(false),
        reload_lock: tokio::sync::Mutex::new(()),
        drain: Arc::new(Drain::default()),
        inputs,
        store,
        api_keys,
        stop: stop_rx,
        telemetry,
        listeners: std::sync::OnceLock::new(),
    });
    Ok(App {
        shared,
        loaded,
        stop: stop_tx,
        trace_export,
    })
}

/// The usage meter `[usage]` asks for, counting into `metrics`.
fn usage_meter(config: &UsageConfig, store: Arc<dyn KeyStore>, metrics: &Metrics) -> UsageMeter {
    metrics.describe_counter(
        "gatehouse_usage_dropped_requests_total",
        "Requests the usage meter did not count: its table was full, or a flush's outcome was unknown.",
    );
    metrics.describe_counter(
        "gatehouse_usage_flushes_total",
        "Usage flushes to the store, by outcome (ok, failed).",
    );
    let meters = UsageMeters {
        dropped: metrics.counter("gatehouse_usage_dropped_requests_total", &[]),
        flushed: metrics.counter("gatehouse_usage_flushes_total", &[("outcome", "ok")]),
        failed: metrics.counter("gatehouse_usage_flushes_total", &[("outcome", "failed")]),
    };
    let settings = UsageSettings {
        flush_interval: config.flush_interval.0,
        minute_retention: config.minute_retention.0,
        day_retention: config.day_retention.0,
        max_entries: config.max_entries,
        ..UsageSettings::default()
    };
    UsageMeter::new(store, settings, meters)
}

pub(crate) fn unix_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A problem with the whole of `path` (no line to point at).
pub(crate) fn whole(path: &Path, message: String) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
    }
}
