//! The admin audit trail: one entry per admin call or console action, in
//! the store (`KeyStore::record_audit`) and on the `gatehouse::audit` log
//! target, with who (`admin-token`, `console`, `anonymous`), from where,
//! what, to which object and the outcome. Never a secret: not the token,
//! not a key, not a session cookie.
//!
//! Shared by the JSON API (`api`) and the web console (`console`), so both
//! write the same action names (`consumer.create`, `key.revoke`, …).

use std::net::SocketAddr;

use super::AdminState;
use crate::store::AuditEntry;

/// Writes one audit entry (store and log). A store failure is logged, and
/// does not change the answer of a call that already happened.
pub(super) async fn record(
    state: &AdminState,
    actor: &str,
    client: Option<SocketAddr>,
    action: &str,
    target: Option<&str>,
    outcome: &str,
) {
    let entry = audit_entry(state, actor, client, action, target, outcome);
    log_audit(&entry);
    // A throttled caller is only logged: writing a row for each of its
    // attempts would let anyone who reaches the port grow the table.
    if entry.outcome == "too_many_auth_failures" {
        return;
    }
    if let Err(e) = state.shared.store().record_audit(&entry).await {
        tracing::error!(error = %e, action, "cannot write the audit entry");
    }
}

/// An audit entry stamped with the shared clock's now.
pub(super) fn audit_entry(
    state: &AdminState,
    actor: &str,
    client: Option<SocketAddr>,
    action: &str,
    target: Option<&str>,
    outcome: &str,
) -> AuditEntry {
    AuditEntry {
        at: state.shared.clock().now(),
        actor: actor.to_owned(),
        client: client.map(|c| c.ip().to_string()),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        outcome: outcome.to_owned(),
    }
}

/// The audit line on the `gatehouse::audit` log target.
pub(super) fn log_audit(entry: &AuditEntry) {
    tracing::info!(
        target: "gatehouse::audit",
        actor = %entry.actor,
        client = entry.client.as_deref().unwrap_or("-"),
        action = %entry.action,
        object = entry.target.as_deref().unwrap_or("-"),
        outcome = %entry.outcome,
        "admin call"
    );
}
