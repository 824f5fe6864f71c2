//! What travels with a forwarded request: trace context, the upstream span,
//! the outgoing headers.

use http::header::{self};

use crate::auth::policy::{self};
use crate::proxy::{self, ForwardedFor};
use crate::route::Route;
use crate::telemetry::trace::{Kind as SpanKind, Value as TraceValue};
use crate::validate::{self};

use super::*;

/// Trace context for the backend: ours, naming the upstream call's span as
/// the parent, replaces whatever the client sent. The span's id, when
/// tracing.
pub(super) fn inject_trace_context(
    ctx: &RequestCtx,
    headers: &mut http::HeaderMap,
) -> Option<[u8; 8]> {
    let trace = ctx.trace.as_ref()?;
    let (id, traceparent, tracestate) = trace.outgoing();
    match traceparent {
        Some(v) => headers.insert("traceparent", v),
        None => headers.remove("traceparent"),
    };
    match tracestate {
        Some(v) => headers.insert("tracestate", v),
        None => headers.remove("tracestate"),
    };
    Some(id)
}

/// Records the upstream call's span: the status it answered, or why it
/// failed.
pub(super) fn record_upstream_span(
    ctx: &mut RequestCtx,
    id: Option<[u8; 8]>,
    started: u64,
    target: &str,
    upstream: &str,
    outcome: Result<(u16, u32), String>,
) {
    let (Some(trace), Some(id)) = (&mut ctx.trace, id) else {
        return;
    };
    let mut attributes = vec![
        ("server.address", TraceValue::Str(target.to_owned())),
        ("gatehouse.upstream", TraceValue::Str(upstream.to_owned())),
    ];
    let failed = match outcome {
        Ok((status, attempts)) => {
            attributes.push((
                "http.response.status_code",
                TraceValue::Int(i64::from(status)),
            ));
            if attempts > 1 {
                attributes.push((
                    "gatehouse.upstream.attempts",
                    TraceValue::Int(i64::from(attempts)),
                ));
            }
            status >= 500
        }
        Err(why) => {
            attributes.push(("error.type", TraceValue::Str(why)));
            true
        }
    };
    trace.child_with_id(
        "upstream",
        SpanKind::Client,
        id,
        started,
        attributes,
        failed,
    );
}

/// The outgoing request headers of a forwarded request (to an upstream or
/// a function; hop-by-hop headers were removed right after routing):
/// `X-Forwarded-*`, `X-Real-IP`, the request id, the route's edits, identity headers
/// (the client's own removed) and credentials stripped unless the route
/// forwards them. Identity headers are the gateway's to set: a client's own
/// are removed on every route, then the authenticated caller's are added.
pub(super) fn outgoing_headers(
    headers: &mut http::HeaderMap,
    conn: &ConnInfo,
    ctx: &RequestCtx,
    route: &Route,
    host: &Host,
    preserve_host: bool,
) {
    let peer = validate::canonical(conn.peer.ip());
    let trusted_peer = ctx
        .snapshot
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer));
    let chain = if trusted_peer {
        forwarded_chain(headers)
    } else {
        None
    };
    let fwd = ForwardedFor {
        client: ctx.record.client,
        peer,
        chain: chain.as_deref(),
        proto: conn.proto(),
        host: host.authority.as_deref(),
    };
    proxy::prepare_request_headers(headers, &fwd, &ctx.request_id, preserve_host);
    route.request_headers.apply(headers);
    for name in &ctx.snapshot.identity_headers {
        headers.remove(name);
    }
    if let Some(principal) = &ctx.principal {
        if !route.auth.forward_authorization {
            headers.remove(header::AUTHORIZATION);
            headers.remove(&route.auth.key_header);
        }
        for (name, value) in policy::identity_headers(principal) {
            headers.insert(name, value);
        }
    }
}
