//! Active health checks: one task per upstream with `[upstream.health]`,
//! asking every target's check path at an interval with jitter.
//!
//! A target is taken out after `unhealthy_threshold` failed checks in a row
//! (timeout, connection error, unexpected status) and brought back after
//! `healthy_threshold` passes. Verdicts live in the registry's target state,
//! so a reload (which restarts the task) keeps them.

use std::sync::Arc;

use http::{Method, Request, header};
use tokio::sync::watch;

use super::Upstream;
use super::balance::Member;
use crate::body::empty;
use crate::config::HealthSpec;

/// Checks `upstream`'s targets until `stop` turns true (or the task is
/// aborted because a new snapshot replaced the upstream).
pub(crate) async fn run(
    upstream: Arc<Upstream>,
    spec: HealthSpec,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let members = upstream.members();
        let checks = members.members.iter().map(|m| check(&upstream, m, &spec));
        futures_util::future::join_all(checks).await;
        let jitter_ms = u64::try_from(spec.jitter.0.as_millis()).unwrap_or(0);
        let extra = if jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..=jitter_ms)
        };
        let wait = spec.interval.0 + std::time::Duration::from_millis(extra);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn check(upstream: &Upstream, m: &Member, spec: &HealthSpec) {
    let ok = match m.target.uri(&spec.path, None) {
        Ok(uri) => {
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header(header::USER_AGENT, "gatehouse-health-check");
            // Checks reach the same virtual host as requests do.
            if let Some(host) = &m.host {
                req = req.header(header::HOST, host.clone());
            }
            let req = req.body(empty());
            match req {
                Ok(req) => {
                    match tokio::time::timeout(spec.timeout.0, upstream.client.request(req)).await {
                        Ok(Ok(resp)) => spec.expected.contains(&resp.status().as_u16()),
                        Ok(Err(_)) | Err(_) => false,
                    }
                }
                Err(_) => false,
            }
        }
        Err(_) => false,
    };
    upstream.state.health_result(
        &m.state,
        ok,
        spec.healthy_threshold,
        spec.unhealthy_threshold,
    );
}
