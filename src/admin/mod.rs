//! The admin API, on its own listener (loopback by default).
//!
//! Open: `/healthz` (the process is alive) and `/readyz` (configuration
//! loaded, listeners bound, not draining). Behind the admin token
//! (`Authorization: Bearer …`, checked against the argon2id hash in
//! `[admin] token_hash`): consumers, API keys and the audit trail under
//! `/v1/` (see [`api`]). Every `/v1/` call, refused ones included, is
//! written to the audit trail (store table and the `gatehouse::audit` log
//! target) with who, what, when and the outcome — never a secret. It never
//! serves proxied traffic.
//!
//! Also here (see `status`): `/metrics` (Prometheus; open by default,
//! token with `[admin] metrics_require_token`) and the status page at `/`
//! (with `/status.json`), behind the admin token like `/v1/`; a browser
//! sends it as the password of HTTP Basic auth.
//!
//! And the web console under `/console/` (see `console`): HTML pages for
//! consumers, keys, usage, upstreams and the audit log, signed in with the
//! admin token through a form, then a session cookie; CSRF tokens on every
//! form and a `Host` allow-list (`[admin] console_hosts`) against DNS
//! rebinding. Its actions go through [`ops`] like `/v1/` and are audited
//! the same way (`audit`), with actor `console`.
//!
//! Caveat: the listener is plain HTTP unless `[admin.tls]` gives it a
//! certificate (see [`listener`]), so the admin token and the console's
//! cookie cross the network in clear text when it is bound beyond loopback
//! without it.

pub mod api;
mod audit;
pub mod client;
mod console;
pub mod listener;
pub mod ops;
mod status;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::app::Shared;
use crate::auth::api_key::Argon2Settings;
use crate::config::ConfigFile;

pub use crate::app::check_token_hash;
pub use token::AdminToken;

/// What the admin API needs.
#[derive(Debug, Clone)]
pub struct AdminState {
    shared: Arc<Shared>,
    token: Option<Arc<AdminToken>>,
    argon2: Argon2Settings,
    rotation_grace: Duration,
    metrics_require_token: bool,
    console: Arc<console::Console>,
}

/// The bound admin listener, as the console needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct AdminListener {
    /// The address it is bound to (its port is in the default console hosts).
    pub addr: SocketAddr,
    /// Whether it serves TLS (the console's cookie is then `Secure`).
    pub tls: bool,
}

impl AdminState {
    /// The admin API's state for `config` (the admin token hash, key hashing
    /// parameters, rotation grace, console hosts) on `listener`.
    pub fn new(
        shared: Arc<Shared>,
        config: &ConfigFile,
        listener: AdminListener,
    ) -> Result<AdminState, String> {
        let token = match &config.admin.token_hash {
            Some(hash) => Some(Arc::new(AdminToken::new(hash.get_ref())?)),
            None => None,
        };
        let console = console::Console::new(
            config.admin.console_hosts.as_deref(),
            listener.addr,
            listener.tls,
            shared.clock().clone(),
        )?;
        Ok(AdminState {
            shared,
            token,
            argon2: config.api_keys.argon2(),
            rotation_grace: config.api_keys.rotation_grace.0,
            metrics_require_token: config.admin.metrics_require_token,
            console: Arc::new(console),
        })
    }

    /// Reloads the gateway's in-memory key index after an admin write, so
    /// a revocation applies on this node at once. A failure is logged (the
    /// background sync catches up).
    async fn refresh_key_index(&self) {
        if let Err(e) = self.shared.api_keys().refresh().await {
            tracing::error!(error = %e, "cannot refresh the key index after an admin write");
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api::router(state.clone()))
        .merge(status::router())
        .merge(console::router(state.clone()))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let shared = &state.shared;
    let snapshot = shared.snapshot();
    let body = axum::Json(serde_json::json!({
        "ready": shared.is_ready(),
        "generation": shared.generation(),
        "routes": snapshot.routes.len(),
        "api_keys": shared.api_keys().index_len(),
    }));
    if shared.is_ready() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// Serves the admin API until the task is aborted: over TLS with `tls`
/// (see [`listener::server_config`]), else plain HTTP.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let app = router(state);
    if let Some(config) = tls {
        listener::serve_tls(listener, app, config).await;
        return;
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
