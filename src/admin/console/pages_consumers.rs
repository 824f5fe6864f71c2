//! Consumer and key pages: the searchable list, one consumer's page (its
//! keys, usage and recent refusals), and the forms that create, disable,
//! add keys, revoke and rotate. Every write is an `admin::ops` call, then
//! audited (`consumer.create`, `consumer.disable`, `key.create`,
//! `key.revoke`, `key.rotate`) and followed by a key-index refresh.
//!
//! A new key's secret is shown once, on the answer to the form that made
//! it (never cached, never stored, never logged); the pages after it show
//! only the key's id.

use std::fmt::Write as _;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::render::{button, csrf_field, esc, html, page, refusal, seg, when};
use super::{Visitor, audit, done, op_refusal};
use crate::admin::AdminState;
use crate::admin::ops::{self, CreatedKey, NewConsumer, NewKey, OpError, RotateKey};
use crate::store::{ApiKey, Consumer};

/// `?q=` on the list.
#[derive(Debug, Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    q: String,
}

/// Whether `c` matches the search `q` (a case-insensitive substring of its
/// name, id or plan; an empty search matches everything).
fn matches(c: &Consumer, q: &str) -> bool {
    let q = q.trim().to_lowercase();
    q.is_empty()
        || c.name.to_lowercase().contains(&q)
        || c.id.to_lowercase().contains(&q)
        || c.plan
            .as_deref()
            .is_some_and(|p| p.to_lowercase().contains(&q))
}

fn form_refused(_: FormRejection) -> Response {
    refusal(
        StatusCode::BAD_REQUEST,
        "Bad form",
        "The form could not be read (expected an HTML form post).",
    )
}

/// `GET /console/consumers`.
pub(super) async fn list(
    State(state): State<AdminState>,
    visitor: Visitor,
    search: Result<Query<Search>, QueryRejection>,
) -> Response {
    let q = search.map(|Query(s)| s.q).unwrap_or_default();
    let consumers = match state.shared.store().list_consumers().await {
        Ok(c) => c,
        Err(e) => return op_refusal(&OpError::from(e)),
    };
    let shown: Vec<&Consumer> = consumers.iter().filter(|c| matches(c, &q)).collect();
    let mut b = String::new();
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/console/consumers\" id=\"search\">\
         <input type=\"text\" name=\"q\" id=\"q\" value=\"{}\" placeholder=\"name, id or plan\">\
         <button type=\"submit\">Search</button></form>\
         <p class=\"muted\">{} of {} consumers</p>\
         <table id=\"consumers\"><tr><th>name</th><th>id</th><th>plan</th><th>state</th><th>created</th></tr>",
        esc(&q),
        shown.len(),
        consumers.len()
    );
    for c in shown {
        let _ = write!(
            b,
            "<tr><td><a href=\"/console/consumers/{}\">{}</a></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            seg(&c.id),
            esc(&c.name),
            esc(&c.id),
            esc(c.plan.as_deref().unwrap_or("-")),
            state_of(c),
            when(Some(c.created_at)),
        );
    }
    let _ = write!(
        b,
        "</table><h2>New consumer</h2><form method=\"post\" action=\"/console/consumers\" id=\"new-consumer\"><fieldset>{}\
         <label>Name <input type=\"text\" name=\"name\" id=\"consumer-name\" required maxlength=\"64\"></label>\
         <label>Plan <input type=\"text\" name=\"plan\" id=\"consumer-plan\" maxlength=\"64\"></label>\
         <button type=\"submit\" id=\"create-consumer\">Create consumer</button></fieldset></form>",
        csrf_field(visitor.csrf())
    );
    html(StatusCode::OK, page("Consumers", Some(visitor.csrf()), &b))
}

fn state_of(c: &Consumer) -> String {
    match c.disabled_at {
        Some(t) => format!("<span class=\"warn\">disabled {}</span>", when(Some(t))),
        None => "<span class=\"ok\">active</span>".to_owned(),
    }
}

/// The new-consumer form.
#[derive(Debug, Deserialize)]
pub(super) struct ConsumerForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    plan: String,
}

/// `POST /console/consumers`.
pub(super) async fn create(
    State(state): State<AdminState>,
    visitor: Visitor,
    input: Result<Form<ConsumerForm>, FormRejection>,
) -> Response {
    let Form(input) = match input {
        Ok(f) => f,
        Err(e) => return form_refused(e),
    };
    let plan = Some(input.plan.trim().to_owned()).filter(|p| !p.is_empty());
    let new = NewConsumer {
        name: input.name.trim().to_owned(),
        plan,
        metadata: serde_json::Map::new(),
    };
    let store = state.shared.store().as_ref();
    let result = ops::create_consumer(store, state.shared.clock().now(), new).await;
    let target = result.as_ref().ok().map(|c| c.id.clone());
    let to_page = |c: &Consumer| format!("/console/consumers/{}", seg(&c.id));
    done(
        &state,
        &visitor,
        "consumer.create",
        target.as_deref(),
        result,
        to_page,
    )
    .await
}

/// `GET /console/consumers/{id}`.
pub(super) async fn show(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let store = state.shared.store().as_ref();
    let found = async {
        let c = ops::consumer(store, &id).await?;
        let keys = store.list_keys(Some(&c.id)).await?;
        Ok::<_, OpError>((c, keys))
    }
    .await;
    let (c, keys) = match found {
        Ok(v) => v,
        Err(e) => return op_refusal(&e),
    };
    let csrf = visitor.csrf();
    let mut b = String::new();
    let metadata = serde_json::to_string_pretty(&c.metadata).unwrap_or_default();
    let _ = write!(
        b,
        "<table id=\"consumer\"><tr><th>id</th><td><code>{}</code></td></tr>\
         <tr><th>plan</th><td id=\"plan\">{}</td></tr><tr><th>state</th><td id=\"state\">{}</td></tr>\
         <tr><th>created</th><td>{}</td></tr><tr><th>metadata</th><td><pre>{}</pre></td></tr></table>",
        esc(&c.id),
        esc(c.plan.as_deref().unwrap_or("-")),
        state_of(&c),
        when(Some(c.created_at)),
        esc(&metadata),
    );
    let base = format!("/console/consumers/{}", seg(&c.id));
    if c.disabled_at.is_none() {
        let _ = write!(
            b,
            "<p>{} <span class=\"muted\">(every key of it stops working at once)</span></p>",
            button(&format!("{base}/disable"), "Disable consumer", csrf, "")
        );
    }
    b.push_str(&keys_table(&state, &keys, csrf));
    if c.disabled_at.is_none() {
        let _ = write!(
            b,
            "<h2>New key</h2><form method=\"post\" action=\"{}/keys\" id=\"new-key\"><fieldset>{}\
             <label>Name <input type=\"text\" name=\"name\" id=\"key-name\" value=\"default\" maxlength=\"64\"></label>\
             <label>Scopes <input type=\"text\" name=\"scopes\" id=\"key-scopes\" placeholder=\"orders:read orders:write\"> <span class=\"muted\">separated by spaces or commas</span></label>\
             <label>Expires in <input type=\"text\" name=\"expires_in\" id=\"key-expires\" placeholder=\"90d\"> <span class=\"muted\">empty: never</span></label>\
             <button type=\"submit\" id=\"create-key\">Create key</button></fieldset></form>",
            esc(&base),
            csrf_field(csrf)
        );
    }
    b.push_str(&super::usage_view::section(&state, &c.id).await);
    html(StatusCode::OK, page(&c.name, Some(csrf), &b))
}

fn keys_table(state: &AdminState, keys: &[ApiKey], csrf: &str) -> String {
    let grace = humantime::format_duration(state.rotation_grace).to_string();
    let mut b = String::from(
        "<h2>Keys</h2><table id=\"keys\"><tr><th>id</th><th>name</th><th>scopes</th><th>created</th>\
         <th>expires</th><th>last used</th><th>revoked</th><th>actions</th></tr>",
    );
    for k in keys {
        let actions = if k.revoked_at.is_some() {
            String::new()
        } else {
            let path = format!("/console/keys/{}", seg(&k.id));
            format!(
                "{} {}",
                button(&format!("{path}/revoke"), "Revoke", csrf, ""),
                button(
                    &format!("{path}/rotate"),
                    "Rotate",
                    csrf,
                    &format!(
                        "<input type=\"text\" name=\"grace\" size=\"6\" placeholder=\"{}\" title=\"grace period for the old key\"> ",
                        esc(&grace)
                    ),
                )
            )
        };
        let _ = write!(
            b,
            "<tr id=\"key-{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"revoked\">{}</td><td>{actions}</td></tr>",
            esc(&k.id),
            esc(&k.id),
            esc(&k.name),
            esc(&k.scopes.join(" ")),
            when(Some(k.created_at)),
            when(k.expires_at),
            when(k.last_used_at),
            when(k.revoked_at),
        );
    }
    b.push_str("</table>");
    b
}

/// `POST /console/consumers/{id}/disable`.
pub(super) async fn disable(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let store = state.shared.store().as_ref();
    let result = ops::disable_consumer(store, state.shared.clock().now(), &id).await;
    done(
        &state,
        &visitor,
        "consumer.disable",
        Some(&id),
        result,
        |c| format!("/console/consumers/{}", seg(&c.id)),
    )
    .await
}

/// The new-key form.
#[derive(Debug, Deserialize)]
pub(super) struct KeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    expires_in: String,
}

/// `POST /console/consumers/{id}/keys`: the answer shows the secret once.
pub(super) async fn create_key(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(id): Path<String>,
    input: Result<Form<KeyForm>, FormRejection>,
) -> Response {
    let Form(input) = match input {
        Ok(f) => f,
        Err(e) => return form_refused(e),
    };
    let name = input.name.trim();
    let new = NewKey {
        name: if name.is_empty() { "default" } else { name }.to_owned(),
        scopes: input
            .scopes
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        expires_in: Some(input.expires_in.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let store = state.shared.store().as_ref();
    let now = state.shared.clock().now();
    let result = ops::create_key(store, now, &state.argon2, &id, new).await;
    let target = result.as_ref().map_or(id.clone(), |k| k.key.id.clone());
    audit(&state, &visitor, "key.create", Some(&target), &result).await;
    match result {
        Ok(created) => secret_page(&visitor, "Key created", &created),
        Err(e) => op_refusal(&e),
    }
}

/// The one page that shows a key's secret.
fn secret_page(visitor: &Visitor, title: &str, k: &CreatedKey) -> Response {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>The new key for key id <code id=\"key-id\">{}</code>:</p><p class=\"secret\" id=\"secret\">{}</p>\
         <p class=\"warn\" id=\"secret-note\"><b>Copy it now: it is shown only this once.</b> gatehouse keeps only a hash of it \
         and cannot show it again; if it is lost, rotate or revoke the key.</p>",
        esc(&k.key.id),
        esc(&k.api_key),
    );
    if let Some(prev) = &k.previous {
        let _ = write!(
            b,
            "<p>The old key <code>{}</code> keeps working until {}.</p>",
            esc(&prev.id),
            when(prev.expires_at)
        );
    }
    let _ = write!(
        b,
        "<p><a href=\"/console/consumers/{}\" id=\"back\">Back to the consumer</a></p>",
        seg(&k.key.consumer_id)
    );
    html(StatusCode::OK, page(title, Some(visitor.csrf()), &b))
}

/// `POST /console/keys/{id}/revoke`.
pub(super) async fn revoke(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let store = state.shared.store().as_ref();
    let result = ops::revoke_key(store, state.shared.clock().now(), &id).await;
    done(&state, &visitor, "key.revoke", Some(&id), result, |k| {
        format!("/console/consumers/{}", seg(&k.consumer_id))
    })
    .await
}

/// The rotate form.
#[derive(Debug, Deserialize)]
pub(super) struct RotateForm {
    #[serde(default)]
    grace: String,
}

/// `POST /console/keys/{id}/rotate`: the answer shows the new secret once.
pub(super) async fn rotate(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(id): Path<String>,
    input: Result<Form<RotateForm>, FormRejection>,
) -> Response {
    let Form(input) = match input {
        Ok(f) => f,
        Err(e) => return form_refused(e),
    };
    let rotate = RotateKey {
        grace: Some(input.grace.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let store = state.shared.store().as_ref();
    let now = state.shared.clock().now();
    let result =
        ops::rotate_key(store, now, &state.argon2, &id, rotate, state.rotation_grace).await;
    audit(&state, &visitor, "key.rotate", Some(&id), &result).await;
    match result {
        Ok(created) => secret_page(&visitor, "Key rotated", &created),
        Err(e) => op_refusal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_by_name_id_or_plan() {
        let c = Consumer {
            id: "c_AbC123".into(),
            name: "Acme-Shop".into(),
            plan: Some("gold".into()),
            metadata: serde_json::Map::new(),
            created_at: 0,
            disabled_at: None,
        };
        let cases = [
            ("empty", "", true),
            ("name, any case", "acme", true),
            ("id", "abc1", true),
            ("plan", "GOL", true),
            ("trimmed", "  shop ", true),
            ("no match", "silver", false),
        ];
        for (name, q, want) in cases {
            assert_eq!(matches(&c, q), want, "{name}");
        }
        let no_plan = Consumer { plan: None, ..c };
        assert!(!matches(&no_plan, "gold"));
    }
}
