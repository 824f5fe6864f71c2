//! Tier A (DESIGN.md): the generic HTTP steps every request passes before
//! the gateway's own, read top to bottom in one tower `ServiceBuilder`:
//!
//! 1. sensitive headers (tower-http `SetSensitiveRequestHeaders`):
//!    credentials and cookies are marked so that they are never printed by
//!    `Debug` and never HPACK-indexed on h2;
//! 2. a panic in the pipeline is a redacted JSON 500, never a dropped
//!    connection or a leaked message;
//! 3. load shedding and the request id are the first things `Gateway::handle`
//!    does, so that a shed request is finished like every refusal (JSON
//!    body with its request id, access line, metrics).
//!
//! Panics, shedding and request ids are ours rather than tower-http's
//! `CatchPanic`, tower's `GlobalConcurrencyLimit` + `LoadShed` and
//! tower-http's `SetRequestId` / `PropagateRequestId`, for a measured
//! speed-up: with those layers (built and measured, issue 21) plain HTTP
//! cost 31.0 µs of proxy CPU per request against 28.4 µs without them
//! (alternating builds, 4 × 6 s each, wrk 64 connections). Per part: the
//! shed layers ~1.0 µs (each request clones the stack, and every clone of
//! the concurrency limit boxes a new semaphore future; a shed answer also
//! needs a copy of the request head, since `LoadShed` drops the request),
//! `CatchPanic` ~1 µs (it re-boxes every response body), the request-id
//! pair ~1 µs (request and response extensions). Ours are a `catch_unwind`,
//! a `try_acquire` on the shared semaphore, and the id the access record
//! needs anyway.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use http::header::{self, HeaderName};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::GwBody;
use crate::conn::ConnInfo;
use crate::error;
use crate::gateway::Gateway;

/// The request headers marked sensitive.
fn sensitive_request_headers() -> [HeaderName; 4] {
    [
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        HeaderName::from_static("x-api-key"),
    ]
}

/// One connection's service: Tier A around [`Gateway::handle`].
pub(super) fn connection_service(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<GwBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(
            sensitive_request_headers(),
        ))
        .service_fn(move |req: Request<Incoming>| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            // Boxed: hyper keeps one slot for the service's future for the
            // connection's whole life, and `handle`'s future is some 10 KB;
            // boxed, an idle connection holds a pointer and the 10 KB exist
            // only while a request runs (BENCHMARKS.md, idle-connections
            // memory).
            let handling = Box::pin(async move { gateway.handle(req, conn).await });
            async move {
                let handled = AssertUnwindSafe(handling).catch_unwind().await;
                Ok::<_, Infallible>(handled.unwrap_or_else(on_panic))
            }
        })
}

/// The redacted answer to a panic: a JSON 500 that says nothing more.
fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response<GwBody> {
    tracing::error!("request handler panicked");
    error::fallback_response()
}
