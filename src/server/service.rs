//! Tier A (DESIGN.md): the generic HTTP layers every request passes before
//! the gateway's own steps, as one tower `ServiceBuilder` read top to
//! bottom. Each is a tower or tower-http layer; the only code of ours is
//! what they call back: which request ids are kept, and the answers for a
//! panic and for a shed request.
//!
//! - sensitive headers: credentials and cookies are marked so that they are
//!   never printed by `Debug` and never HPACK-indexed on h2;
//! - request id: a client's well-formed `X-Request-Id` is kept, anything
//!   else replaced by a new random id, and it is copied to the answer;
//! - catch panic: a panic in the pipeline is a redacted JSON 500 (with the
//!   request id in its header), never a dropped connection or a leaked
//!   message;
//! - load shed + concurrency limit: beyond `[server]
//!   max_concurrent_requests` (one budget across all listeners) a request
//!   is answered 503 at once. A request holds its place until its response
//!   head is ready; bodies then stream under the connection limit and the
//!   request deadline (holding the place for them would let clients that
//!   never read their answers fill the limit). A shed request is finished
//!   by the gateway like every refusal: JSON body, access line, metrics.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::load_shed::error::Overloaded;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};

use crate::BoxError;
use crate::body::GwBody;
use crate::conn::ConnInfo;
use crate::error;
use crate::gateway::{self, Gateway};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
    Response = Response<
        impl http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
    >,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let in_flight = gateway.in_flight();
    let shed = {
        let (gateway, conn) = (gateway.clone(), conn.clone());
        move |inner| answer_shed(inner, gateway.clone(), conn.clone())
    };
    ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(
            sensitive_request_headers(),
        ))
        .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
        .map_request(drop_malformed_request_id)
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(CatchPanicLayer::custom(on_panic))
        .layer_fn(shed)
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
            in_flight,
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
            async move { Ok::<_, Infallible>(handling.await) }
        })
}

/// A client's `X-Request-Id` that is not well-formed is dropped, so that
/// the request-id layer gives the request a new one.
fn drop_malformed_request_id(mut req: Request<Incoming>) -> Request<Incoming> {
    if let Some(v) = req.headers().get(X_REQUEST_ID)
        && !gateway::is_valid_request_id(v)
    {
        req.headers_mut().remove(X_REQUEST_ID);
    }
    req
}

/// New request ids: 32 random hex digits.
#[derive(Debug, Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(gateway::new_request_id()))
    }
}

/// The redacted answer to a panic: a JSON 500 that says nothing more.
fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response<GwBody> {
    tracing::error!("request handler panicked");
    error::fallback_response()
}

/// Turns `LoadShed`'s refusal into the gateway's own 503: kept from the
/// request are the few cheap parts its access record reads (method, URI,
/// version, the request id and forwarding headers: reference-counted
/// clones), since `LoadShed` drops the request it refuses.
fn answer_shed<S>(
    inner: S,
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<GwBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
where
    S: Service<Request<Incoming>, Response = Response<GwBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tower::service_fn(move |req: Request<Incoming>| {
        let head = head_of(&req);
        let call = inner.clone().oneshot(req);
        let (gateway, conn) = (gateway.clone(), conn.clone());
        async move {
            Ok(match call.await {
                Ok(response) => response,
                Err(e) if e.is::<Overloaded>() => gateway.shed(&head, &conn),
                // The pipeline itself never fails.
                Err(_) => error::fallback_response(),
            })
        }
    })
}

/// What a shed request's record needs of its head.
fn head_of(req: &Request<Incoming>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    for name in [X_REQUEST_ID, X_FORWARDED_FOR, header::UPGRADE] {
        for v in req.headers().get_all(&name) {
            head.headers_mut().append(name.clone(), v.clone());
        }
    }
    head
}
