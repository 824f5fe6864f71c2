//! The admin API's consumer, key and audit endpoints (JSON, under `/v1/`).
//!
//! | call | does |
//! | --- | --- |
//! | `POST /v1/consumers` `{name, plan?, metadata?}` | create a consumer (201) |
//! | `GET /v1/consumers` | list consumers |
//! | `GET /v1/consumers/{id or name}` | one consumer and its keys |
//! | `POST /v1/consumers/{id or name}/disable` | disable it (all its keys stop) |
//! | `POST /v1/consumers/{id or name}/keys` `{name?, scopes?, expires_in?}` | new key (201; the key is in the answer, once) |
//! | `GET /v1/consumers/{id or name}/keys` | its keys |
//! | `GET /v1/consumers/{id or name}/usage?since=7d&by=day&per_key=false` | its usage per hour or day (see [`crate::usage::report()`]) |
//! | `GET /v1/keys` | every key |
//! | `GET /v1/keys/{id}` | one key |
//! | `POST /v1/keys/{id}/revoke` | revoke at once |
//! | `POST /v1/keys/{id}/rotate` `{grace?}` | new key; the old one works for the grace period (201) |
//! | `GET /v1/audit?limit=N` | newest audit entries |
//! | `GET /v1/upstreams` | every upstream: sets, targets, health, ejection, breaker, in-flight, latency |
//! | `GET /v1/upstreams/{name}` | one upstream |
//! | `POST /v1/upstreams/{name}/shift` `{to: {set: weight}}` | move traffic between sets (unnamed sets get 0) |
//! | `POST /v1/upstreams/{name}/targets/drain` `{target: url}` | no new requests to the target |
//! | `POST /v1/upstreams/{name}/targets/undrain` `{target: url}` | requests again |
//!
//! Errors are `{"error": code, "message": text, "fields": {...}}`; 400 with
//! field-level messages for bad input. After a write the gateway's
//! in-memory key index is refreshed, so a revocation applies on this node
//! at once (other nodes on a shared Postgres store follow within a second).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::audit::{audit_entry, log_audit, record};
use super::ops::{self, NewConsumer, NewKey, OpError, RotateKey};
use super::token::TokenRefusal;

/// The `/v1/` routes, behind the admin token.
pub(super) fn router(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/v1/consumers", get(list_consumers).post(create_consumer))
        .route("/v1/consumers/{id}", get(show_consumer))
        .route("/v1/consumers/{id}/disable", post(disable_consumer))
        .route(
            "/v1/consumers/{id}/keys",
            get(consumer_keys).post(create_key),
        )
        .route("/v1/consumers/{id}/usage", get(consumer_usage))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/{id}", get(show_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/audit", get(audit))
        .route("/v1/upstreams", get(list_upstreams))
        .route("/v1/upstreams/{name}", get(show_upstream))
        .route("/v1/upstreams/{name}/shift", post(shift_upstream))
        .route("/v1/upstreams/{name}/targets/drain", post(drain_target))
        .route("/v1/upstreams/{name}/targets/undrain", post(undrain_target))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

/// An admin API answer: status and JSON body.
type Answer = (StatusCode, Json<Value>);

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    (status, Json(json!({"error": code, "message": message})))
}

fn op_error(e: &OpError) -> Answer {
    let status = e.status();
    if let OpError::Store(source) = e {
        tracing::error!(error = %source, "admin: store operation failed");
    }
    let mut body = json!({"error": e.code(), "message": e.to_string()});
    if let (OpError::Invalid(fields), Some(obj)) = (e, body.as_object_mut()) {
        obj.insert("fields".into(), json!(fields));
    }
    (status, Json(body))
}

/// The JSON body, or a 400 that says what is wrong with it.
fn body<T>(input: Result<Json<T>, JsonRejection>) -> Result<T, Answer> {
    input
        .map(|Json(v)| v)
        .map_err(|rejection| rejected(&rejection))
}

/// The 400 for a body that is not the JSON the call takes.
fn rejected(rejection: &JsonRejection) -> Answer {
    let mut fields = BTreeMap::new();
    fields.insert("body".to_owned(), vec![rejection.body_text()]);
    op_error(&OpError::Invalid(fields))
}

/// Who made an admin call and what it is, for the audit trail.
#[derive(Debug, Clone)]
struct Caller {
    client: SocketAddr,
    action: &'static str,
}

async fn require_token(
    State(state): State<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let action = action_name(req.method().as_str(), req.uri().path());
    let refusal = match &state.token {
        None => Some(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API needs `[admin] token_hash` in the config (see `gatehouse hash-secret`)",
        )),
        Some(token) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_owned());
            match presented {
                None => Some(error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "admin token required",
                )),
                Some(t) => match token.check(&t, client.ip()).await {
                    Ok(()) => None,
                    Err(TokenRefusal::Invalid) => Some(error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "invalid admin token",
                    )),
                    Err(TokenRefusal::Throttled) => Some(error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_auth_failures",
                        "too many failed admin token attempts; try again later",
                    )),
                    Err(TokenRefusal::Internal) => Some(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error",
                    )),
                },
            }
        }
    };
    if let Some((status, body)) = refusal {
        let code = body
            .0
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused")
            .to_owned();
        // Refusals that cost the caller nothing (no token, or the API
        // disabled) are only logged: storing a row for each would let
        // anyone who reaches the port grow the table.
        let token_sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
        if token_sent && state.token.is_some() {
            record(&state, "anonymous", Some(client), action, None, &code).await;
        } else {
            log_audit(&audit_entry(
                &state,
                "anonymous",
                Some(client),
                action,
                None,
                &code,
            ));
        }
        let mut resp = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        return resp;
    }
    req.extensions_mut().insert(Caller { client, action });
    next.run(req).await
}

/// `POST /v1/keys/{id}/revoke` → `key.revoke`, for the audit trail.
fn action_name(method: &str, path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        ("POST", ["consumers"]) => "consumer.create",
        ("GET", ["consumers"]) => "consumer.list",
        ("GET", ["consumers", _]) => "consumer.show",
        ("POST", ["consumers", _, "disable"]) => "consumer.disable",
        ("POST", ["consumers", _, "keys"]) => "key.create",
        ("GET", ["consumers", _, "keys"]) => "key.list",
        ("GET", ["consumers", _, "usage"]) => "usage.show",
        ("GET", ["keys"]) => "key.list",
        ("GET", ["keys", _]) => "key.show",
        ("POST", ["keys", _, "revoke"]) => "key.revoke",
        ("POST", ["keys", _, "rotate"]) => "key.rotate",
        ("GET", ["audit"]) => "audit.list",
        ("GET", ["upstreams"]) => "upstream.list",
        ("GET", ["upstreams", _]) => "upstream.show",
        ("POST", ["upstreams", _, "shift"]) => "upstream.shift",
        ("POST", ["upstreams", _, "targets", "drain"]) => "upstream.drain",
        ("POST", ["upstreams", _, "targets", "undrain"]) => "upstream.undrain",
        _ => "unknown",
    }
}

/// Audits the outcome of an operation and turns it into an answer.
/// Writes (anything but `*.list` and `*.show`) refresh the key index.
async fn finish<T: serde::Serialize>(
    state: &AdminState,
    caller: &Caller,
    target: Option<&str>,
    status: StatusCode,
    result: Result<T, OpError>,
) -> Answer {
    let action = caller.action;
    let wrote = !(action.ends_with(".list") || action.ends_with(".show"));
    let (outcome, answer) = match result {
        Ok(v) => (
            "ok",
            (status, Json(serde_json::to_value(v).unwrap_or(Value::Null))),
        ),
        Err(e) => (e.code(), op_error(&e)),
    };
    if wrote && outcome == "ok" {
        state.refresh_key_index().await;
    }
    record(
        state,
        "admin-token",
        Some(caller.client),
        action,
        target,
        outcome,
    )
    .await;
    answer
}

async fn create_consumer(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    input: Result<Json<NewConsumer>, JsonRejection>,
) -> Answer {
    let result = match body(input) {
        Ok(input) => {
            ops::create_consumer(
                state.shared.store().as_ref(),
                state.shared.clock().now(),
                input,
            )
            .await
        }
        Err(answer) => {
            record(
                &state,
                "admin-token",
                Some(caller.client),
                caller.action,
                None,
                "invalid_input",
            )
            .await;
            return answer;
        }
    };
    let target = result.as_ref().ok().map(|c| c.id.clone());
    let result = result.map(|c| json!({"consumer": c}));
    finish(
        &state,
        &caller,
        target.as_deref(),
        StatusCode::CREATED,
        result,
    )
    .await
}

async fn list_consumers(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Answer {
    let result = state
        .shared
        .store()
        .list_consumers()
        .await
        .map(|c| json!({"consumers": c}))
        .map_err(OpError::from);
    finish(&state, &caller, None, StatusCode::OK, result).await
}

async fn show_consumer(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let store = state.shared.store().as_ref();
    let result = async {
        let c = ops::consumer(store, &id).await?;
        let keys = store.list_keys(Some(&c.id)).await?;
        Ok(json!({"consumer": c, "keys": keys}))
    }
    .await;
    finish(&state, &caller, Some(&id), StatusCode::OK, result).await
}

/// The query of `GET /v1/consumers/{id}/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    #[serde(default = "default_since")]
    since: String,
    #[serde(default = "default_by")]
    by: String,
    #[serde(default)]
    per_key: bool,
}

fn default_since() -> String {
    "7d".to_owned()
}

fn default_by() -> String {
    "day".to_owned()
}

async fn consumer_usage(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let store = state.shared.store().as_ref();
    let now = state.shared.clock().now();
    let result = async {
        let invalid = |field: &str, message: String| {
            OpError::Invalid(BTreeMap::from([(field.to_owned(), vec![message])]))
        };
        let Query(params) = params.map_err(|e| invalid("query", e.body_text()))?;
        let since = crate::usage::report::parse_since(&params.since, now)
            .map_err(|e| invalid("since", e))?;
        let by: crate::usage::By = params.by.parse().map_err(|e| invalid("by", e))?;
        let consumer = ops::consumer(store, &id).await?;
        let query = crate::usage::Query {
            consumer_id: consumer.id.clone(),
            since,
            by,
            per_key: params.per_key,
        };
        let buckets = crate::usage::report(store, &query).await?;
        let total = crate::usage::report::total(&buckets);
        Ok(json!({
            "consumer_id": consumer.id,
            "consumer": consumer.name,
            "since": since,
            "by": by,
            "buckets": buckets,
            "total": total,
        }))
    }
    .await;
    finish(&state, &caller, Some(&id), StatusCode::OK, result).await
}

async fn disable_consumer(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let result = ops::disable_consumer(
        state.shared.store().as_ref(),
        state.shared.clock().now(),
        &id,
    )
    .await
    .map(|c| json!({"consumer": c}));
    finish(&state, &caller, Some(&id), StatusCode::OK, result).await
}

async fn create_key(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    input: Result<Json<NewKey>, JsonRejection>,
) -> Answer {
    let input = match body(input) {
        Ok(i) => i,
        Err(answer) => {
            record(
                &state,
                "admin-token",
                Some(caller.client),
                caller.action,
                Some(&id),
                "invalid_input",
            )
            .await;
            return answer;
        }
    };
    let result = ops::create_key(
        state.shared.store().as_ref(),
        state.shared.clock().now(),
        &state.argon2,
        &id,
        input,
    )
    .await;
    let target = result.as_ref().map_or(id.clone(), |k| k.key.id.clone());
    finish(&state, &caller, Some(&target), StatusCode::CREATED, result).await
}

async fn consumer_keys(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let store = state.shared.store().as_ref();
    let result = async {
        let c = ops::consumer(store, &id).await?;
        Ok(json!({"keys": store.list_keys(Some(&c.id)).await?}))
    }
    .await;
    finish(&state, &caller, Some(&id), StatusCode::OK, result).await
}

async fn list_keys(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Answer {
    let result = state
        .shared
        .store()
        .list_keys(None)
        .await
        .map(|k| json!({"keys": k}))
        .map_err(OpError::from);
    finish(&state, &caller, None, StatusCode::OK, result).await
}

async fn show_key(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let result = match state.shared.store().key(&id).await {
        Ok(Some(k)) => Ok(json!({"key": k})),
        Ok(None) => Err(OpError::NotFound("key")),
        Err(e) => Err(OpError::from(e)),
    };
    finish(&state, &caller, Some(&id), StatusCode::OK, result).await
}

async fn revoke_key(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let result = ops::revoke_key(
        state.shared.store().as_ref(),
        state.shared.clock().now(),
        &id,
    )
    .await
    .map(|k| json!({"key": k}));
    finish(&state, &caller, Some(&id), StatusCode::OK, result).await
}

async fn rotate_key(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    input: Result<Option<Json<RotateKey>>, JsonRejection>,
) -> Answer {
    // The body is optional, but one that is sent must be valid: answered
    // and audited like every other bad input.
    let input = match input {
        Ok(input) => input.map(|Json(v)| v).unwrap_or_default(),
        Err(rejection) => {
            record(
                &state,
                "admin-token",
                Some(caller.client),
                caller.action,
                Some(&id),
                "invalid_input",
            )
            .await;
            return rejected(&rejection);
        }
    };
    let result = ops::rotate_key(
        state.shared.store().as_ref(),
        state.shared.clock().now(),
        &state.argon2,
        &id,
        input,
        state.rotation_grace,
    )
    .await;
    finish(&state, &caller, Some(&id), StatusCode::CREATED, result).await
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> Answer {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let result = state
        .shared
        .store()
        .audit(limit)
        .await
        .map(|e| json!({"entries": e}))
        .map_err(OpError::from);
    finish(&state, &caller, None, StatusCode::OK, result).await
}

async fn list_upstreams(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Answer {
    let snapshot = state.shared.snapshot();
    let mut list: Vec<_> = snapshot.upstreams.values().map(|u| u.status()).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let result: Result<_, OpError> = Ok(json!({"upstreams": list}));
    finish(&state, &caller, None, StatusCode::OK, result).await
}

async fn show_upstream(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    let result =
        ops::upstream(&state.shared.snapshot(), &name).map(|u| json!({"upstream": u.status()}));
    finish(&state, &caller, Some(&name), StatusCode::OK, result).await
}

/// `POST /v1/upstreams/{name}/shift`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shift {
    to: BTreeMap<String, u32>,
}

async fn shift_upstream(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    input: Result<Json<Shift>, JsonRejection>,
) -> Answer {
    let input = match body(input) {
        Ok(i) => i,
        Err(answer) => return answer,
    };
    let result = ops::shift_upstream(&state.shared.snapshot(), &name, &input.to)
        .map(|u| json!({"upstream": u}));
    finish(&state, &caller, Some(&name), StatusCode::OK, result).await
}

/// `POST /v1/upstreams/{name}/targets/drain` and `undrain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRef {
    target: String,
}

async fn drain_target(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    input: Result<Json<TargetRef>, JsonRejection>,
) -> Answer {
    set_drain(state, caller, name, input, true).await
}

async fn undrain_target(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    input: Result<Json<TargetRef>, JsonRejection>,
) -> Answer {
    set_drain(state, caller, name, input, false).await
}

async fn set_drain(
    state: AdminState,
    caller: Caller,
    name: String,
    input: Result<Json<TargetRef>, JsonRejection>,
    drained: bool,
) -> Answer {
    let input = match body(input) {
        Ok(i) => i,
        Err(answer) => return answer,
    };
    let result = ops::drain_target(&state.shared.snapshot(), &name, &input.target, drained)
        .map(|u| json!({"upstream": u}));
    let object = format!("{name} {}", input.target);
    finish(&state, &caller, Some(&object), StatusCode::OK, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named() {
        let cases = [
            ("POST", "/v1/consumers", "consumer.create"),
            ("GET", "/v1/consumers/acme", "consumer.show"),
            ("POST", "/v1/consumers/acme/keys", "key.create"),
            ("POST", "/v1/keys/abc/revoke", "key.revoke"),
            ("POST", "/v1/keys/abc/rotate", "key.rotate"),
            ("POST", "/v1/upstreams/api/shift", "upstream.shift"),
            ("POST", "/v1/upstreams/api/targets/drain", "upstream.drain"),
            ("DELETE", "/v1/keys/abc", "unknown"),
        ];
        for (method, path, want) in cases {
            assert_eq!(action_name(method, path), want, "{method} {path}");
        }
    }
}
