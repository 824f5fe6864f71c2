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

pub mod api;
pub mod client;
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
}

impl AdminState {
    /// The admin API's state for `config` (the admin token hash, key hashing
    /// parameters, rotation grace).
    pub fn new(shared: Arc<Shared>, config: &ConfigFile) -> Result<AdminState, String> {
        let token = match &config.admin.token_hash {
            Some(hash) => Some(Arc::new(AdminToken::new(hash.get_ref())?)),
            None => None,
        };
        Ok(AdminState {
            shared,
            token,
            argon2: config.api_keys.argon2(),
            rotation_grace: config.api_keys.rotation_grace.0,
            metrics_require_token: config.admin.metrics_require_token,
        })
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api::router(state.clone()))
        .merge(status::router())
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

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: TcpListener, state: AdminState) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
