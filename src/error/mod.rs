//! The one place where a refused or failed request becomes an HTTP answer.
//!
//! Every step of the pipeline returns a [`GatewayError`] (each module's own
//! error converts into it in `from.rs`); [`GatewayError::status`]
//! and [`GatewayError::code`] are an exhaustive match, so adding a variant forces
//! a decision about its status and its stable snake_case code. The message is
//! written for the caller and never contains a header value, a credential or an
//! upstream's own error text.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{GwBody, full};

mod from;

/// Why a request was answered by the gateway instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// The request target could not be normalised without ambiguity.
    #[error("invalid request path: {0}")]
    InvalidPath(&'static str),
    /// The request head is not well-formed HTTP/1.
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    /// The request target is longer than allowed.
    #[error("request target too long")]
    UriTooLong,
    /// The request head is larger, or has more fields, than allowed.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The framing headers are ambiguous (smuggling risk).
    #[error("ambiguous message framing: {0}")]
    AmbiguousFraming(&'static str),
    /// TRACE: never answered or forwarded (it would echo credentials).
    #[error("TRACE is not allowed")]
    TraceRefused,
    /// CONNECT: the gateway opens no tunnels to arbitrary hosts.
    #[error("CONNECT is not supported")]
    ConnectRefused,
    /// A request header the gateway refuses (see `underscores_in_headers`).
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
    /// The route already has as many upgraded tunnels open as it allows.
    #[error("too many open tunnels on this route")]
    TunnelLimit,
    /// The Host header (or :authority) is missing, malformed or inconsistent.
    #[error("invalid host: {0}")]
    InvalidHost(&'static str),
    /// A header the route requires is missing.
    #[error("missing required header `{0}`")]
    MissingHeader(String),
    /// The body's media type is not one the route accepts.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// The query string breaks the route's rules.
    #[error("{0}")]
    InvalidQuery(String),
    /// A path, query or header parameter breaks the OpenAPI operation's
    /// schema; each error names the parameter's JSON pointer in the document.
    #[error("invalid request parameter")]
    InvalidParameter(Vec<crate::validate::SchemaError>),
    /// The body is not valid JSON (for a route with a schema).
    #[error("request body is not valid JSON")]
    InvalidJson,
    /// The body does not satisfy the route's JSON Schema.
    #[error("request body does not match the schema")]
    SchemaViolation(Vec<crate::validate::SchemaError>),
    /// The client's address is not allowed.
    #[error("client address not allowed")]
    IpDenied,
    /// A CORS preflight from an origin, method or header the route does not allow.
    #[error("CORS preflight rejected")]
    CorsRejected,
    /// No route matches host and path.
    #[error("no route matches this request")]
    RouteNotFound,
    /// A route matches the path, but not the method.
    #[error("method not allowed on this route")]
    MethodNotAllowed {
        /// Methods the matching routes accept, for the `Allow` header.
        allow: String,
    },
    /// The request body is larger than the route allows.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The client sent its body too slowly.
    #[error("request body not received in time")]
    RequestTimeout,
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream failed")]
    UpstreamFailed {
        /// What went wrong, for the log only.
        #[source]
        source: crate::BoxError,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream (an AWS Lambda function) is throttled.
    #[error("upstream is throttled")]
    UpstreamThrottled {
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// The upstream has no target to send the request to.
    #[error("no upstream target available")]
    NoTarget,
    /// The upstream's circuit breaker is open or its concurrency limits are
    /// reached: answered at once, no target touched.
    #[error("the upstream is temporarily unavailable")]
    UpstreamUnavailable {
        /// Seconds until a request may get through.
        retry_after_secs: u64,
    },
    /// The route needs credentials and the request carries none.
    #[error("authentication required")]
    MissingCredentials {
        /// What to put in `WWW-Authenticate`.
        challenge: Challenge,
    },
    /// The credentials are malformed, unknown, wrong, expired or revoked.
    /// `why` is safe to show: it never tells which part of a secret failed.
    #[error("{why}")]
    InvalidCredentials {
        /// What to put in `WWW-Authenticate`.
        challenge: Challenge,
        /// For the caller and the log.
        why: &'static str,
    },
    /// Valid credentials without a scope the route requires.
    #[error("insufficient scope: `{scope}` is required")]
    InsufficientScope {
        /// What to put in `WWW-Authenticate`.
        challenge: Challenge,
        /// The missing scope.
        scope: String,
    },
    /// Valid credentials without any of the roles the route requires.
    #[error("the caller has none of the roles this route requires")]
    RoleRequired,
    /// Too many failed credential attempts from this client address.
    #[error("too many failed authentication attempts")]
    AuthThrottled {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: u64,
    },
    /// Credentials could not be checked now (verifier saturated, key set
    /// not available).
    #[error("authentication is temporarily unavailable")]
    AuthUnavailable,
    /// A rate-limit policy refused the request.
    #[error("rate limit `{policy}` exceeded")]
    RateLimited {
        /// The policy that refused it (the one with the longest wait).
        policy: std::sync::Arc<str>,
        /// Seconds until a request will be allowed.
        retry_after_secs: u64,
    },
    /// A policy's daily or monthly quota is spent.
    #[error("quota of `{policy}` exhausted")]
    QuotaExceeded {
        /// The policy.
        policy: std::sync::Arc<str>,
        /// Seconds until the next period starts.
        retry_after_secs: u64,
    },
    /// The shared rate limiter cannot decide and the config says to refuse.
    #[error("rate limiting is temporarily unavailable")]
    RateLimiterUnavailable,
    /// Too many requests in flight: shed at once rather than queued.
    #[error("the gateway is overloaded")]
    Overloaded,
    /// The gateway failed internally (a bug); details are only logged.
    #[error("internal error")]
    Internal(&'static str),
}

/// The `WWW-Authenticate` challenges of a 401 or 403 (RFC 6750): a Bearer
/// challenge (tokens, and keys sent as bearer), and an `ApiKey` challenge
/// naming the header when the route takes API keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// The API-key header, when the route accepts keys.
    pub(crate) api_key_header: Option<http::HeaderName>,
}

impl Challenge {
    /// The header values: `error` is an RFC 6750 error code (or none for a
    /// request without credentials), `scope` the scope that was missing.
    fn values(&self, error: Option<&str>, scope: Option<&str>) -> Vec<HeaderValue> {
        let mut bearer = String::from("Bearer realm=\"gatehouse\"");
        if let Some(e) = error {
            bearer.push_str(&format!(", error=\"{e}\""));
        }
        if let Some(s) = scope.filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            bearer.push_str(&format!(", scope=\"{s}\""));
        }
        let mut out: Vec<HeaderValue> = HeaderValue::from_str(&bearer).into_iter().collect();
        if let Some(h) = &self.api_key_header
            && let Ok(v) = HeaderValue::from_str(&format!(
                "ApiKey realm=\"gatehouse\", header=\"{}\"",
                h.as_str()
            ))
        {
            out.push(v);
        }
        out
    }
}

impl GatewayError {
    /// The HTTP status of the answer.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidPath(_)
            | GatewayError::MalformedRequest(_)
            | GatewayError::AmbiguousFraming(_)
            | GatewayError::InvalidHost(_)
            | GatewayError::InvalidHeader(_)
            | GatewayError::MissingHeader(_)
            | GatewayError::InvalidQuery(_)
            | GatewayError::InvalidParameter(_)
            | GatewayError::InvalidJson => StatusCode::BAD_REQUEST,
            GatewayError::TraceRefused => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::ConnectRefused => StatusCode::NOT_IMPLEMENTED,
            GatewayError::TunnelLimit => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::IpDenied | GatewayError::CorsRejected => StatusCode::FORBIDDEN,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::NoTarget | GatewayError::UpstreamUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::MissingCredentials { .. } | GatewayError::InvalidCredentials { .. } => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::InsufficientScope { .. } | GatewayError::RoleRequired => {
                StatusCode::FORBIDDEN
            }
            GatewayError::AuthThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::AuthUnavailable
            | GatewayError::RateLimiterUnavailable
            | GatewayError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimited { .. } | GatewayError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code in the JSON body and the access log.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidPath(_) => "invalid_path",
            GatewayError::MalformedRequest(_) => "malformed_request",
            GatewayError::UriTooLong => "uri_too_long",
            GatewayError::HeadersTooLarge => "headers_too_large",
            GatewayError::AmbiguousFraming(_) => "ambiguous_framing",
            GatewayError::InvalidHost(_) => "invalid_host",
            GatewayError::TraceRefused => "trace_refused",
            GatewayError::ConnectRefused => "connect_not_supported",
            GatewayError::InvalidHeader(_) => "invalid_header",
            GatewayError::TunnelLimit => "tunnel_limit_reached",
            GatewayError::MissingHeader(_) => "missing_header",
            GatewayError::UnsupportedMediaType => "unsupported_media_type",
            GatewayError::InvalidQuery(_) => "invalid_query",
            GatewayError::InvalidParameter(_) => "invalid_parameter",
            GatewayError::InvalidJson => "invalid_json",
            GatewayError::SchemaViolation(_) => "schema_violation",
            GatewayError::IpDenied => "ip_denied",
            GatewayError::CorsRejected => "cors_rejected",
            GatewayError::RouteNotFound => "route_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::UpstreamFailed { .. } => "upstream_failed",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::UpstreamThrottled { .. } => "upstream_throttled",
            GatewayError::NoTarget => "no_upstream_target",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::MissingCredentials { .. } => "missing_credentials",
            GatewayError::InvalidCredentials { .. } => "invalid_credentials",
            GatewayError::InsufficientScope { .. } => "insufficient_scope",
            GatewayError::RoleRequired => "role_required",
            GatewayError::AuthThrottled { .. } => "too_many_auth_failures",
            GatewayError::AuthUnavailable => "auth_unavailable",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::QuotaExceeded { .. } => "quota_exceeded",
            GatewayError::RateLimiterUnavailable => "rate_limiter_unavailable",
            GatewayError::Overloaded => "overloaded",
            GatewayError::Internal(_) => "internal",
        }
    }

    /// Whether the fault is on the gateway's or the upstream's side rather
    /// than a refusal of the client's request (the status page ranks
    /// refused clients without these).
    pub(crate) fn is_server_fault(&self) -> bool {
        match self {
            GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamThrottled { .. }
            | GatewayError::NoTarget
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::AuthUnavailable
            | GatewayError::RateLimiterUnavailable
            | GatewayError::Internal(_) => true,
            GatewayError::InvalidPath(_)
            | GatewayError::MalformedRequest(_)
            | GatewayError::UriTooLong
            | GatewayError::HeadersTooLarge
            | GatewayError::AmbiguousFraming(_)
            | GatewayError::InvalidHost(_)
            | GatewayError::TraceRefused
            | GatewayError::ConnectRefused
            | GatewayError::InvalidHeader(_)
            | GatewayError::TunnelLimit
            | GatewayError::MissingHeader(_)
            | GatewayError::UnsupportedMediaType
            | GatewayError::InvalidQuery(_)
            | GatewayError::InvalidParameter(_)
            | GatewayError::InvalidJson
            | GatewayError::SchemaViolation(_)
            | GatewayError::IpDenied
            | GatewayError::CorsRejected
            | GatewayError::RouteNotFound
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestTimeout
            | GatewayError::MissingCredentials { .. }
            | GatewayError::InvalidCredentials { .. }
            | GatewayError::InsufficientScope { .. }
            | GatewayError::RoleRequired
            | GatewayError::AuthThrottled { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::QuotaExceeded { .. }
            | GatewayError::Overloaded => false,
        }
    }

    /// Whether the client connection should be closed after the answer
    /// (the framing of the rest of the stream cannot be trusted).
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::AmbiguousFraming(_)
                | GatewayError::MalformedRequest(_)
                | GatewayError::UriTooLong
                | GatewayError::HeadersTooLarge
                | GatewayError::RequestTimeout
        )
    }

    /// The text for the caller: never includes upstream error details.
    fn public_message(&self) -> String {
        match self {
            GatewayError::UpstreamFailed { .. } => "the upstream failed to answer".to_owned(),
            GatewayError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The full answer: status, JSON body, and `Allow` / `Connection` where due.
    pub(crate) fn to_response(&self, request_id: &str) -> Response<GwBody> {
        let details = match self {
            GatewayError::SchemaViolation(errors) | GatewayError::InvalidParameter(errors) => {
                serde_json::to_value(errors).ok()
            }
            _ => None,
        };
        error_response_with(
            self.status(),
            self.code(),
            &self.public_message(),
            request_id,
            details,
        )
        .map(|mut r| {
            if let GatewayError::MethodNotAllowed { allow } = self
                && let Ok(v) = HeaderValue::from_str(allow)
            {
                r.headers_mut().insert(header::ALLOW, v);
            }
            if let GatewayError::TraceRefused = self {
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            let challenges = match self {
                GatewayError::MissingCredentials { challenge } => challenge.values(None, None),
                GatewayError::InvalidCredentials { challenge, .. } => {
                    challenge.values(Some("invalid_token"), None)
                }
                GatewayError::InsufficientScope { challenge, scope } => {
                    challenge.values(Some("insufficient_scope"), Some(scope))
                }
                _ => Vec::new(),
            };
            for v in challenges {
                r.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
            match self {
                GatewayError::AuthThrottled { retry_after_secs }
                | GatewayError::UpstreamThrottled { retry_after_secs }
                | GatewayError::UpstreamUnavailable { retry_after_secs }
                | GatewayError::RateLimited {
                    retry_after_secs, ..
                }
                | GatewayError::QuotaExceeded {
                    retry_after_secs, ..
                } => {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                }
                GatewayError::Overloaded
                | GatewayError::RateLimiterUnavailable
                | GatewayError::TunnelLimit
                | GatewayError::AuthUnavailable => {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                _ => {}
            }
            if self.closes_connection() {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        })
        .unwrap_or_else(|_| fallback_response())
    }
}

/// Builds `{"error": code, "message": text, "request_id": id}` with
/// `status`, and an `errors` list (schema failures) when there is one.
fn error_response_with(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    details: Option<serde_json::Value>,
) -> Result<Response<GwBody>, http::Error> {
    let mut body = serde_json::json!({
        "error": code,
        "message": message,
        "request_id": request_id,
    });
    if let (Some(details), Some(obj)) = (details, body.as_object_mut()) {
        obj.insert("errors".to_owned(), details);
    }
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(Bytes::from(body.to_string())))
}

/// A last-resort 500 that cannot fail to build.
pub(crate) fn fallback_response() -> Response<GwBody> {
    let mut r = Response::new(full(Bytes::from_static(
        br#"{"error":"internal","message":"internal error","request_id":""}"#,
    )));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_is_json_with_code_and_request_id() {
        let cases: Vec<(&str, GatewayError, u16, &str)> = vec![
            (
                "path",
                GatewayError::InvalidPath("dot segment"),
                400,
                "invalid_path",
            ),
            (
                "no route",
                GatewayError::RouteNotFound,
                404,
                "route_not_found",
            ),
            (
                "method",
                GatewayError::MethodNotAllowed {
                    allow: "GET, HEAD".into(),
                },
                405,
                "method_not_allowed",
            ),
            ("trace", GatewayError::TraceRefused, 405, "trace_refused"),
            (
                "connect",
                GatewayError::ConnectRefused,
                501,
                "connect_not_supported",
            ),
            (
                "underscore header",
                GatewayError::InvalidHeader("x"),
                400,
                "invalid_header",
            ),
            (
                "tunnels",
                GatewayError::TunnelLimit,
                503,
                "tunnel_limit_reached",
            ),
            (
                "too large",
                GatewayError::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (
                "timeout",
                GatewayError::UpstreamTimeout,
                504,
                "upstream_timeout",
            ),
            (
                "throttled",
                GatewayError::UpstreamThrottled {
                    retry_after_secs: 3,
                },
                429,
                "upstream_throttled",
            ),
            (
                "upstream",
                GatewayError::UpstreamFailed {
                    source: "secret detail".into(),
                },
                502,
                "upstream_failed",
            ),
        ];
        for (name, err, status, code) in cases {
            let resp = err.to_response("rid-1");
            assert!(
                resp.headers().get(header::WWW_AUTHENTICATE).is_none(),
                "{name}"
            );
            assert_eq!(resp.status().as_u16(), status, "{name}");
            let allow = resp.headers().get(header::ALLOW).cloned();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let body = body.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            assert_eq!(v["error"], code, "{name}");
            assert_eq!(v["request_id"], "rid-1", "{name}");
            assert!(
                !String::from_utf8_lossy(&body).contains("secret detail"),
                "{name}"
            );
            if status == 405 {
                let want = if code == "trace_refused" {
                    "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
                } else {
                    "GET, HEAD"
                };
                assert_eq!(
                    allow.as_ref().and_then(|a| a.to_str().ok()),
                    Some(want),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn auth_errors_carry_challenges() {
        let key_route = Challenge {
            api_key_header: Some(http::HeaderName::from_static("x-api-key")),
        };
        let jwt_route = Challenge {
            api_key_header: None,
        };
        let cases: Vec<(&str, GatewayError, u16, &str, Vec<&str>)> = vec![
            (
                "missing on a key route",
                GatewayError::MissingCredentials {
                    challenge: key_route.clone(),
                },
                401,
                "missing_credentials",
                vec![
                    "Bearer realm=\"gatehouse\"",
                    "ApiKey realm=\"gatehouse\", header=\"x-api-key\"",
                ],
            ),
            (
                "invalid token",
                GatewayError::InvalidCredentials {
                    challenge: jwt_route.clone(),
                    why: "token expired",
                },
                401,
                "invalid_credentials",
                vec!["Bearer realm=\"gatehouse\", error=\"invalid_token\""],
            ),
            (
                "scope",
                GatewayError::InsufficientScope {
                    challenge: jwt_route.clone(),
                    scope: "orders:write".into(),
                },
                403,
                "insufficient_scope",
                vec![
                    "Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"orders:write\"",
                ],
            ),
            (
                "scope with a quote is not echoed",
                GatewayError::InsufficientScope {
                    challenge: jwt_route,
                    scope: "a\"b".into(),
                },
                403,
                "insufficient_scope",
                vec!["Bearer realm=\"gatehouse\", error=\"insufficient_scope\""],
            ),
        ];
        for (name, err, status, code, challenges) in cases {
            assert_eq!(err.code(), code, "{name}");
            let resp = err.to_response("rid");
            assert_eq!(resp.status().as_u16(), status, "{name}");
            let got: Vec<&str> = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            assert_eq!(got, challenges, "{name}");
        }
        let throttled = GatewayError::AuthThrottled {
            retry_after_secs: 7,
        }
        .to_response("rid");
        assert_eq!(throttled.status().as_u16(), 429);
        assert_eq!(
            throttled
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
    }
}
