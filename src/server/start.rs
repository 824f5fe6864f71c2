//! [`start`]: binding the listeners and spawning the accept loops, the admin
//! listener, the store sync and the watchers, over the shared state
//! [`crate::app::build`] made.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use accept::Acceptor;

use crate::app::{App, whole};
use crate::config::{self, Problems, ServerConfig};
use crate::conn::PerAddress;
use crate::gateway::{Gateway, GatewayDeps};
use crate::proxy::Tunnels;
use crate::ratelimit::Limiter;
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::quota::{QuotaCounter, RedisQuotas, StoreQuotas};
use crate::ratelimit::redis::{Fallback, RedisLimiter, RedisOptions};
use crate::telemetry::process::{ConnMeters, TlsMeters};
use crate::telemetry::trace::spawn_exporter;
use crate::validate::HeadLimits;

use super::*;

/// Has the shared state built, binds every listener and starts serving.
pub async fn start(opts: StartOptions) -> Result<Running, StartError> {
    let App {
        shared,
        loaded,
        stop: stop_tx,
        trace_export,
    } = crate::app::build(&opts).await?;
    let stop_rx = shared.stop.clone();
    let server = loaded.config.server.clone();
    let server = &server;
    let (clock, metrics, store, api_keys, telemetry, upstreams) = (
        shared.clock().clone(),
        shared.metrics().clone(),
        shared.store().clone(),
        shared.api_keys().clone(),
        shared.telemetry().clone(),
        shared.upstreams().clone(),
    );

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
                    // The limiter's breaker settings: one dead Redis, one
                    // decision to stop asking it.
                    RedisQuotas::connect_with_breaker(
                        url,
                        rl.redis_timeout.0,
                        rl.breaker_failures,
                        rl.breaker_open_for.0,
                    )
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
        snapshot: shared.snapshot.clone(),
        api_keys: api_keys.clone(),
        limiter,
        quotas,
        quota_fail_open: rl.on_redis_failure == config::RedisFailure::Local,
        clock: clock.clone(),
        max_in_flight: server.max_concurrent_requests,
        telemetry: telemetry.clone(),
        tunnels: tunnels.clone(),
    });
    let admin_tls = match &loaded.config.admin.tls {
        Some(t) => Some(
            crate::admin::listener::server_config(t, &loaded.base_dir)
                .map_err(StartError::AdminTls)?,
        ),
        None => None,
    };
    let admin_on = crate::admin::AdminListener {
        addr: admin_addr,
        tls: admin_tls.is_some(),
    };
    let admin = crate::admin::AdminState::new(shared.clone(), &loaded.config, admin_on)
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
            shared.tls.iter().find(|s| s.listener == l.name).cloned()
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
            gateway: Arc::new(gateway.clone()),
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
    let admin_mode = if admin_tls.is_some() { "https" } else { "http" };
    tracing::info!(%admin_addr, mode = admin_mode, "admin listening");
    tasks.push(spawn_metrics_upkeep(metrics.clone(), stop_rx.clone()));
    tasks.push(spawn_expiry_warnings(shared.clone(), stop_rx.clone()));
    if let Some((settings, rx)) = trace_export {
        tracing::info!(endpoint = %crate::telemetry::trace::endpoint_for_logs(&settings.endpoint), service = %settings.service_name, sampler = ?settings.sampler, "exporting traces over OTLP/HTTP");
        let exporter = spawn_exporter(settings, rx, &metrics, stop_rx.clone())
            .map_err(StartError::TraceExporter)?;
        tasks.push(exporter);
    }
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, admin, admin_tls));
    tasks.push(api_keys.spawn_sync(stop_rx.clone()));
    tasks.push(shared.inputs.jwks.spawn_refresh(stop_rx.clone()));
    if let Some(q) = &store_quotas {
        tasks.push(q.spawn_flush(Duration::from_secs(5), stop_rx.clone()));
    }
    if let Some(usage) = shared.usage() {
        tasks.push(usage.spawn_flush(stop_rx.clone()));
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
pub(super) async fn build_limiter(
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

pub(super) fn http_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
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
