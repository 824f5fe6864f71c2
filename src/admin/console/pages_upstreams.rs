//! The upstreams page (each upstream's sets and targets with health, a
//! drain or undrain button per target, a weight form per upstream) and the
//! audit log page. Drains and shifts go through `admin::ops` like the JSON
//! API's, are audited as `upstream.drain`, `upstream.undrain` and
//! `upstream.shift`, and change runtime state only (a reload re-applies the
//! file's weights; drains are kept).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::render::{button, csrf_field, esc, health, html, page, refusal, seg, when};
use super::{Visitor, done, op_refusal};
use crate::admin::AdminState;
use crate::admin::ops::{self, OpError};
use crate::proxy::UpstreamStatus;

fn upstream_html(u: &UpstreamStatus, csrf: &str) -> String {
    let base = format!("/console/upstreams/{}", seg(&u.name));
    let mut b = String::new();
    let _ = write!(
        b,
        "<h2>{}</h2><p>breaker <b class=\"{}\">{}</b>, {} in flight</p>\
         <table class=\"targets\" id=\"targets-{}\"><tr><th>target</th><th>set</th><th>weight</th><th>health</th>\
         <th>in flight</th><th>latency (EWMA)</th><th>requests</th><th></th></tr>",
        esc(&u.name),
        if u.breaker == "closed" { "ok" } else { "warn" },
        esc(&u.breaker),
        u.in_flight,
        esc(&u.name),
    );
    for t in &u.targets {
        let target_field = format!(
            "<input type=\"hidden\" name=\"target\" value=\"{}\"><input type=\"hidden\" name=\"drained\" value=\"{}\">",
            esc(&t.url),
            !t.drained
        );
        let label = if t.drained { "Undrain" } else { "Drain" };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{:.1} ms</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&t.url),
            esc(&t.set),
            t.weight,
            health(t),
            t.in_flight,
            t.latency_ewma_ms,
            t.requests,
            button(&format!("{base}/drain"), label, csrf, &target_field),
        );
    }
    if u.targets.is_empty() {
        b.push_str("<tr><td colspan=\"8\" class=\"warn\">no targets (answers 503)</td></tr>");
    }
    b.push_str("</table>");
    if !u.sets.is_empty() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"{}/shift\" class=\"shift\"><fieldset>{}<b>Weights</b> ",
            esc(&base),
            csrf_field(csrf)
        );
        for s in &u.sets {
            let _ = write!(
                b,
                "<label>{} <input type=\"number\" min=\"0\" name=\"set.{}\" value=\"{}\"></label>",
                esc(&s.name),
                esc(&s.name),
                s.weight
            );
        }
        b.push_str(
            "<button type=\"submit\">Shift</button> <span class=\"muted\">new requests follow at once; \
             a reload re-applies the file's weights</span></fieldset></form>",
        );
    }
    b
}

/// `GET /console/upstreams`.
pub(super) async fn list(State(state): State<AdminState>, visitor: Visitor) -> Response {
    let snapshot = state.shared.snapshot();
    let mut list: Vec<UpstreamStatus> = snapshot.upstreams.values().map(|u| u.status()).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut b = String::new();
    if list.is_empty() {
        b.push_str("<p class=\"muted\">No upstreams are configured.</p>");
    }
    for u in &list {
        b.push_str(&upstream_html(u, visitor.csrf()));
    }
    html(StatusCode::OK, page("Upstreams", Some(visitor.csrf()), &b))
}

/// The drain form.
#[derive(Debug, Deserialize)]
pub(super) struct DrainForm {
    #[serde(default)]
    target: String,
    #[serde(default)]
    drained: bool,
}

/// `POST /console/upstreams/{name}/drain` (`drained=false` undrains).
pub(super) async fn drain(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(name): Path<String>,
    input: Result<Form<DrainForm>, FormRejection>,
) -> Response {
    let Ok(Form(input)) = input else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "Bad form",
            "The form could not be read.",
        );
    };
    let snapshot = state.shared.snapshot();
    let result = ops::drain_target(&snapshot, &name, &input.target, input.drained);
    let action = if input.drained {
        "upstream.drain"
    } else {
        "upstream.undrain"
    };
    let object = format!("{name} {}", input.target);
    let back = |_: &_| "/console/upstreams".to_owned();
    done(&state, &visitor, action, Some(&object), result, back).await
}

/// The weights of a shift form: `set.NAME=weight` fields (others ignored).
fn weights(fields: &[(String, String)]) -> Result<BTreeMap<String, u32>, OpError> {
    let mut to = BTreeMap::new();
    for (k, v) in fields {
        let Some(set) = k.strip_prefix("set.") else {
            continue;
        };
        let w = v.trim().parse::<u32>().map_err(|_| {
            OpError::Invalid(BTreeMap::from([(
                format!("set.{set}"),
                vec!["a whole number, 0 or more".to_owned()],
            )]))
        })?;
        to.insert(set.to_owned(), w);
    }
    Ok(to)
}

/// `POST /console/upstreams/{name}/shift`.
pub(super) async fn shift(
    State(state): State<AdminState>,
    visitor: Visitor,
    Path(name): Path<String>,
    input: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Ok(Form(fields)) = input else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "Bad form",
            "The form could not be read.",
        );
    };
    let snapshot = state.shared.snapshot();
    let result = weights(&fields).and_then(|to| ops::shift_upstream(&snapshot, &name, &to));
    let back = |_: &_| "/console/upstreams".to_owned();
    done(
        &state,
        &visitor,
        "upstream.shift",
        Some(&name),
        result,
        back,
    )
    .await
}

/// `?limit=` on the audit page.
#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /console/audit`: the newest entries (100, or `?limit=` up to 1000).
pub(super) async fn audit_log(
    State(state): State<AdminState>,
    visitor: Visitor,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let limit = q
        .ok()
        .and_then(|Query(q)| q.limit)
        .unwrap_or(100)
        .clamp(1, 1000);
    let entries = match state.shared.store().audit(limit).await {
        Ok(e) => e,
        Err(e) => return op_refusal(&OpError::from(e)),
    };
    let mut b = format!(
        "<p class=\"muted\">The newest {limit} entries, newest first.</p><table id=\"audit\"><tr><th>when</th>\
         <th>actor</th><th>client</th><th>action</th><th>object</th><th>outcome</th></tr>"
    );
    for e in &entries {
        let class = if e.outcome == "ok" { "ok" } else { "warn" };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
            when(Some(e.at)),
            esc(&e.actor),
            esc(e.client.as_deref().unwrap_or("-")),
            esc(&e.action),
            esc(e.target.as_deref().unwrap_or("-")),
            esc(&e.outcome),
        );
    }
    b.push_str("</table>");
    html(StatusCode::OK, page("Audit log", Some(visitor.csrf()), &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_form_weights() {
        let f = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let got = weights(&f(&[
            ("csrf", "x"),
            ("set.blue", "0"),
            ("set.green", " 100 "),
        ]))
        .unwrap();
        assert_eq!(
            got,
            BTreeMap::from([("blue".into(), 0), ("green".into(), 100)])
        );
        for (name, bad) in [("negative", "-1"), ("text", "lots"), ("empty", "")] {
            match weights(&f(&[("set.blue", bad)])) {
                Err(OpError::Invalid(fields)) => assert!(fields.contains_key("set.blue"), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
