//! What the validation steps refuse, as values. `crate::error` turns each
//! into its answer (`From<Invalid> for GatewayError`), so this module does
//! not depend on how errors are answered.

use super::SchemaError;

/// A request the validation steps refuse.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// A path that cannot be normalised or forwarded.
    #[error("invalid request path: {0}")]
    Path(&'static str),
    /// `Content-Length` / `Transfer-Encoding` that could be read two ways.
    #[error("ambiguous message framing: {0}")]
    AmbiguousFraming(&'static str),
    /// TRACE, on every route.
    #[error("TRACE is not allowed")]
    TraceRefused,
    /// CONNECT, on every route.
    #[error("CONNECT is not supported")]
    ConnectRefused,
    /// A header the route's hygiene refuses.
    #[error("invalid header: {0}")]
    Header(&'static str),
    /// A header the route requires is missing.
    #[error("missing required header `{0}`")]
    MissingHeader(String),
    /// A content type the route does not accept.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// A query the route's rules refuse.
    #[error("{0}")]
    Query(String),
    /// A body that is not (strict) JSON.
    #[error("request body is not valid JSON")]
    Json,
    /// A body the route's schema refuses.
    #[error("request body does not match the schema")]
    Schema(Vec<SchemaError>),
    /// A path, query or header parameter its OpenAPI schema refuses.
    #[error("invalid request parameter")]
    Parameter(Vec<SchemaError>),
    /// A client address the rules refuse.
    #[error("client address not allowed")]
    IpDenied,
}
