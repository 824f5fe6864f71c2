//! The web console under `/console/` on the admin listener: server-rendered
//! HTML (inline CSS and SVG, no script, no external asset), for the people
//! who run the gateway to manage consumers and keys, see a consumer's
//! usage and refusals, drain targets and shift traffic, and read the audit
//! log.
//!
//! | path | page |
//! | --- | --- |
//! | `GET /console/sign-in`, `POST` | the sign-in form (the admin token) |
//! | `POST /console/sign-out` | ends the session |
//! | `GET /console/consumers?q=` | consumers, searched by name, id or plan; the create form |
//! | `GET /console/consumers/{id}` | one consumer: keys, usage plots, recent refusals, forms |
//! | `POST /console/consumers`, `…/{id}/disable`, `…/{id}/keys` | create, disable, new key (its secret shown once) |
//! | `POST /console/keys/{id}/revoke`, `…/rotate` | revoke, rotate with grace (the new secret shown once) |
//! | `GET /console/upstreams`, `POST …/{name}/drain`, `…/shift` | targets and health; drain, undrain, shift weights |
//! | `GET /console/audit` | newest audit entries |
//!
//! Security (see `guard` and `session`): the admin token is checked by
//! [`AdminToken::check`](super::AdminToken) (argon2id, per-address
//! throttle); a session is a 256-bit random cookie (`HttpOnly`,
//! `SameSite=Strict`, `Path=/console`, `Secure` when the admin listener is
//! on TLS) whose SHA-256 keys an in-memory table (at most 256 sessions, 30
//! minutes idle, 12 hours at most); every form carries a per-session CSRF
//! token, and every POST is refused (403, nothing changed) without it or
//! from a cross-site origin; every request's `Host` must be one of
//! `[admin] console_hosts` (421 otherwise), against DNS rebinding. Every
//! action goes through `admin::ops` like the JSON API and is audited with
//! actor `console`, the client address and the API's action names.
//!
//! Caveat: on a plain-HTTP admin listener the cookie cannot be `Secure`
//! and travels in clear text; keep the console on loopback (the default)
//! or behind TLS.

mod guard;
mod pages_consumers;
mod pages_upstreams;
mod plot;
pub(super) mod render;
mod session;
mod sign_in;
mod usage_view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};

use super::AdminState;
use super::audit::record;
use super::ops::OpError;
use crate::auth::Clock;
use session::{Limits, Session, Sessions};

/// The sign-in page's path.
const SIGN_IN: &str = "/console/sign-in";
/// The actor console actions are audited as.
const ACTOR: &str = "console";

/// The console's own state: the session table and the allowed hosts.
#[derive(Debug)]
pub(super) struct Console {
    sessions: Sessions,
    hosts: Vec<String>,
    /// Set the cookie's `Secure` attribute (the admin listener is on TLS).
    secure: bool,
}

impl Console {
    /// The console for an admin listener bound to `listen` (on TLS when
    /// `tls`), allowing the `[admin] console_hosts` (or the defaults).
    pub(super) fn new(
        console_hosts: Option<&[String]>,
        listen: SocketAddr,
        tls: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Console, String> {
        Ok(Console {
            sessions: Sessions::new(clock, Limits::default()),
            hosts: guard::allowed_hosts(console_hosts, listen)?,
            secure: tls,
        })
    }
}

/// A signed-in request: who and from where (set by `guard`).
#[derive(Debug, Clone)]
struct Visitor {
    client: SocketAddr,
    session: Session,
}

impl Visitor {
    fn csrf(&self) -> &str {
        &self.session.csrf
    }
}

/// A handler's signed-in visitor; without one (which `guard` does not let
/// happen) the answer is a redirect to the sign-in page.
impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Visitor, Response> {
        parts
            .extensions
            .get::<Visitor>()
            .cloned()
            .ok_or_else(|| render::redirect(SIGN_IN))
    }
}

/// The console's routes, behind `guard::admit`.
pub(super) fn router(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route(SIGN_IN, get(sign_in::form).post(sign_in::submit))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route(
            "/console/consumers",
            get(pages_consumers::list).post(pages_consumers::create),
        )
        .route("/console/consumers/{id}", get(pages_consumers::show))
        .route(
            "/console/consumers/{id}/disable",
            post(pages_consumers::disable),
        )
        .route(
            "/console/consumers/{id}/keys",
            post(pages_consumers::create_key),
        )
        .route("/console/keys/{id}/revoke", post(pages_consumers::revoke))
        .route("/console/keys/{id}/rotate", post(pages_consumers::rotate))
        .route("/console/upstreams", get(pages_upstreams::list))
        .route(
            "/console/upstreams/{name}/drain",
            post(pages_upstreams::drain),
        )
        .route(
            "/console/upstreams/{name}/shift",
            post(pages_upstreams::shift),
        )
        .route("/console/audit", get(pages_upstreams::audit_log))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .route_layer(middleware::from_fn_with_state(state, guard::admit))
}

async fn home() -> Response {
    render::redirect("/console/consumers")
}

async fn not_found() -> Response {
    render::refusal(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such console page.",
    )
}

/// Audits a console action (store and `gatehouse::audit`, actor
/// `console`); after a successful write, refreshes the key index so that
/// the change applies on this node at once.
async fn audit<T>(
    state: &AdminState,
    visitor: &Visitor,
    action: &str,
    target: Option<&str>,
    result: &Result<T, OpError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    if outcome == "ok" {
        state.refresh_key_index().await;
    }
    if let Err(OpError::Store(source)) = result {
        tracing::error!(error = %source, action, "console: store operation failed");
    }
    record(state, ACTOR, Some(visitor.client), action, target, outcome).await;
}

/// The page for an operation that failed: its status, its code and, for
/// bad input, each field's messages (all escaped).
fn op_refusal(e: &OpError) -> Response {
    let mut message = format!("{} ({})", e, e.code());
    if let OpError::Invalid(fields) = e {
        for (field, msgs) in fields {
            message.push_str(&format!("; {field}: {}", msgs.join(", ")));
        }
    }
    render::refusal(e.status(), "Not done", &message)
}

/// Audits a write's `result` as `action` on `target`, and answers with a
/// redirect to `next(value)` (post, redirect, get) or the refusal page.
async fn done<T>(
    state: &AdminState,
    visitor: &Visitor,
    action: &str,
    target: Option<&str>,
    result: Result<T, OpError>,
    next: impl FnOnce(&T) -> String,
) -> Response {
    audit(state, visitor, action, target, &result).await;
    match result {
        Ok(v) => render::redirect(&next(&v)),
        Err(e) => op_refusal(&e),
    }
}
