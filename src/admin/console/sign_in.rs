//! Signing in and out.
//!
//! The sign-in form has no session yet, so its CSRF token is a double
//! submit: a fresh random value both in a cookie (`HttpOnly`,
//! `SameSite=Strict`) and in the form's hidden field, which `guard` checks
//! are equal. The token typed into the form is checked by
//! `AdminToken::check` (argon2id, per-address throttle: 10 failures a
//! minute, then 429) and never logged, stored or echoed. Every attempt is
//! audited as `console.sign_in` with outcome `ok` or the refusal code
//! (`unauthorized`, `too_many_auth_failures`, `admin_disabled`, `internal`;
//! throttled attempts, an empty token and a disabled console are only
//! logged, not stored), sign-out as `console.sign_out`.

use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::render::{csrf_field, html, page, redirect, refusal};
use super::session::{COOKIE, PRE_COOKIE, random_token, set_cookie};
use super::{ACTOR, SIGN_IN, Visitor};
use crate::admin::AdminState;
use crate::admin::audit::{audit_entry, log_audit, record};
use crate::admin::token::TokenRefusal;

/// The sign-in form's fields (the CSRF field is `guard`'s).
#[derive(Deserialize)]
pub(super) struct SignIn {
    #[serde(default)]
    token: String,
}

/// The sign-in page with `message` (escaped) above the form, and a fresh
/// pre-session CSRF cookie.
fn form_page(state: &AdminState, status: StatusCode, message: Option<&str>) -> Response {
    let Ok(pre) = random_token() else {
        return refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "The random number generator failed.",
        );
    };
    let mut body = String::new();
    if let Some(m) = message {
        body.push_str(&format!(
            "<p class=\"error\" id=\"sign-in-error\">{}</p>",
            super::render::esc(m)
        ));
    }
    if state.token.is_none() {
        body.push_str(
            "<p class=\"warn\">The console needs <code>[admin] token_hash</code> in the config \
             (see <code>gatehouse hash-secret</code>).</p>",
        );
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"{SIGN_IN}\" id=\"sign-in\">{}\
         <label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required autofocus></label>\
         <button type=\"submit\" id=\"sign-in-submit\">Sign in</button></form>\
         <p class=\"muted\">The session ends after 30 minutes without use, 12 hours at most, and on restart.</p>",
        csrf_field(&pre)
    ));
    let mut resp = html(status, page("Sign in", None, &body));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(
        PRE_COOKIE,
        &pre,
        state.console.secure,
        Some(600),
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /console/sign-in`.
pub(super) async fn form(State(state): State<AdminState>) -> Response {
    form_page(&state, StatusCode::OK, None)
}

/// `POST /console/sign-in` (the CSRF double submit already checked).
pub(super) async fn submit(
    State(state): State<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    input: Result<Form<SignIn>, FormRejection>,
) -> Response {
    let action = "console.sign_in";
    let presented = input.map(|Form(f)| f.token).unwrap_or_default();
    // Refusals that cost the caller nothing (the console disabled, no
    // token typed) are only logged, like the API's: a stored row for each
    // would let anyone who reaches the port grow the table.
    let logged_only = |outcome: &str| {
        log_audit(&audit_entry(
            &state,
            ACTOR,
            Some(client),
            action,
            None,
            outcome,
        ))
    };
    let Some(token) = &state.token else {
        logged_only("admin_disabled");
        return form_page(
            &state,
            StatusCode::FORBIDDEN,
            Some("The console is disabled: no admin token is configured."),
        );
    };
    if presented.is_empty() {
        logged_only("unauthorized");
        return form_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("Enter the admin token."),
        );
    }
    let refused = match token.check(presented.trim(), client.ip()).await {
        Ok(()) => None,
        Err(TokenRefusal::Invalid) => Some((
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "That is not the admin token.",
        )),
        Err(TokenRefusal::Throttled) => Some((
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            "Too many failed attempts from your address; try again in a minute.",
        )),
        Err(TokenRefusal::Internal) => Some((
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The token could not be checked (internal error).",
        )),
    };
    if let Some((status, code, message)) = refused {
        record(&state, ACTOR, Some(client), action, None, code).await;
        return form_page(&state, status, Some(message));
    }
    let Ok((raw, _session)) = state.console.sessions.open() else {
        record(&state, ACTOR, Some(client), action, None, "internal").await;
        return form_page(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("The random number generator failed."),
        );
    };
    record(&state, ACTOR, Some(client), action, None, "ok").await;
    let secure = state.console.secure;
    let mut resp = redirect("/console/consumers");
    for cookie in [
        set_cookie(COOKIE, &raw, secure, None),
        set_cookie(PRE_COOKIE, "", secure, Some(0)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `POST /console/sign-out`: ends the session and clears the cookie.
pub(super) async fn sign_out(State(state): State<AdminState>, visitor: Visitor) -> Response {
    state.console.sessions.close(&visitor.session);
    record(
        &state,
        ACTOR,
        Some(visitor.client),
        "console.sign_out",
        None,
        "ok",
    )
    .await;
    let mut resp = redirect(SIGN_IN);
    if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, "", state.console.secure, Some(0))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
