//! The admin API, on its own listener (loopback by default).
//!
//! For now: `/healthz` (the process is alive) and `/readyz` (configuration
//! loaded, listeners bound, not draining). It never serves proxied traffic.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::server::Shared;

/// The admin router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snapshot = shared.snapshot();
    let body = axum::Json(serde_json::json!({
        "ready": shared.is_ready(),
        "generation": shared.generation(),
        "routes": snapshot.routes.len(),
    }));
    if shared.is_ready() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
