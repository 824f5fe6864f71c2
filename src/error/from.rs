//! Each module's own error becomes the pipeline's [`GatewayError`] here and
//! only here: the one table from what went wrong to what the client is told.
//! Every match is exhaustive, so a new module error forces a decision.
//! Auth refusals carry an empty [`Challenge`]; the auth step names the
//! route's with [`GatewayError::with_challenge`].

use crate::auth::api_key::ApiKeyError;
use crate::auth::jwt::JwtError;
use crate::cors;
use crate::proxy::ForwardError;
use crate::proxy::lambda::{self, LambdaError};
use crate::ratelimit::charge;
use crate::validate::{Invalid, PathError, Refusal};

use super::{Challenge, GatewayError};

impl From<Invalid> for GatewayError {
    fn from(e: Invalid) -> GatewayError {
        match e {
            Invalid::Path(what) => GatewayError::InvalidPath(what),
            Invalid::AmbiguousFraming(what) => GatewayError::AmbiguousFraming(what),
            Invalid::TraceRefused => GatewayError::TraceRefused,
            Invalid::ConnectRefused => GatewayError::ConnectRefused,
            Invalid::Header(what) => GatewayError::InvalidHeader(what),
            Invalid::MissingHeader(name) => GatewayError::MissingHeader(name),
            Invalid::UnsupportedMediaType => GatewayError::UnsupportedMediaType,
            Invalid::Query(why) => GatewayError::InvalidQuery(why),
            Invalid::Json => GatewayError::InvalidJson,
            Invalid::Schema(errors) => GatewayError::SchemaViolation(errors),
            Invalid::Parameter(errors) => GatewayError::InvalidParameter(errors),
            Invalid::IpDenied => GatewayError::IpDenied,
        }
    }
}

impl From<charge::Refused> for GatewayError {
    fn from(e: charge::Refused) -> GatewayError {
        match e {
            charge::Refused::Limited {
                policy,
                retry_after_secs,
            } => GatewayError::RateLimited {
                policy,
                retry_after_secs,
            },
            charge::Refused::QuotaExceeded {
                policy,
                retry_after_secs,
            } => GatewayError::QuotaExceeded {
                policy,
                retry_after_secs,
            },
            charge::Refused::Unavailable => GatewayError::RateLimiterUnavailable,
        }
    }
}

impl From<cors::Rejected> for GatewayError {
    fn from(_: cors::Rejected) -> GatewayError {
        GatewayError::CorsRejected
    }
}

/// The HTTP/1 framing guard's verdicts.
impl From<Refusal> for GatewayError {
    fn from(why: Refusal) -> GatewayError {
        match why {
            Refusal::Malformed(what) => GatewayError::MalformedRequest(what),
            Refusal::Ambiguous(what) => GatewayError::AmbiguousFraming(what),
            Refusal::UriTooLong => GatewayError::UriTooLong,
            Refusal::HeadTooLarge => GatewayError::HeadersTooLarge,
        }
    }
}

impl From<PathError> for GatewayError {
    fn from(e: PathError) -> GatewayError {
        GatewayError::InvalidPath(match e {
            PathError::NotAbsolute => "path must start with /",
            PathError::BadEscape => "malformed percent-escape",
            PathError::EncodedSlash => "encoded slash or backslash",
            PathError::Backslash => "backslash in path",
            PathError::ControlChar => "control character in path",
            PathError::InvalidUtf8 => "path is not valid UTF-8",
            PathError::AboveRoot => "path climbs above the root",
            PathError::DotSegmentParams => {
                "dot segment with path parameters (such as ..;) is not accepted"
            }
        })
    }
}

impl From<ApiKeyError> for GatewayError {
    fn from(e: ApiKeyError) -> GatewayError {
        let why = match e {
            ApiKeyError::Malformed => "malformed API key",
            ApiKeyError::Invalid => "invalid API key",
            ApiKeyError::Expired => "API key expired",
            ApiKeyError::Revoked => "API key revoked",
            ApiKeyError::ConsumerDisabled => "consumer disabled",
            ApiKeyError::Throttled { retry_after_secs } => {
                return GatewayError::AuthThrottled { retry_after_secs };
            }
            ApiKeyError::Busy => return GatewayError::AuthUnavailable,
            ApiKeyError::Internal(cause) => {
                tracing::error!(error = %cause, "API key check failed");
                return GatewayError::Internal("API key check failed");
            }
        };
        GatewayError::InvalidCredentials {
            challenge: Challenge::default(),
            why,
        }
    }
}

impl From<JwtError> for GatewayError {
    fn from(e: JwtError) -> GatewayError {
        match e {
            JwtError::KeysUnavailable => GatewayError::AuthUnavailable,
            other => GatewayError::InvalidCredentials {
                challenge: Challenge::default(),
                why: other.public_description(),
            },
        }
    }
}

impl From<ForwardError> for GatewayError {
    fn from(e: ForwardError) -> GatewayError {
        match e {
            ForwardError::Timeout => GatewayError::UpstreamTimeout,
            ForwardError::BodyTooLarge { limit } => GatewayError::PayloadTooLarge { limit },
            ForwardError::BodyTimeout => GatewayError::RequestTimeout,
            ForwardError::Failed(source) => GatewayError::UpstreamFailed { source },
            ForwardError::NoTarget => GatewayError::NoTarget,
            ForwardError::Unavailable { retry_after } => GatewayError::UpstreamUnavailable {
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            },
            ForwardError::InvalidPath => GatewayError::InvalidPath("path cannot be forwarded"),
        }
    }
}

impl From<LambdaError> for GatewayError {
    fn from(e: LambdaError) -> GatewayError {
        match e {
            LambdaError::Throttled { retry_after_secs } => {
                GatewayError::UpstreamThrottled { retry_after_secs }
            }
            LambdaError::Timeout => GatewayError::UpstreamTimeout,
            LambdaError::PayloadTooLarge => GatewayError::PayloadTooLarge {
                limit: lambda::PAYLOAD_LIMIT,
            },
            other @ (LambdaError::Function { .. }
            | LambdaError::Malformed { .. }
            | LambdaError::Refused { .. }
            | LambdaError::Network(_)
            | LambdaError::Failed(_)) => GatewayError::UpstreamFailed {
                source: Box::new(other),
            },
        }
    }
}

impl GatewayError {
    /// An auth refusal with the route's `WWW-Authenticate` challenge.
    pub(crate) fn with_challenge(mut self, route: Challenge) -> GatewayError {
        if let GatewayError::MissingCredentials { challenge }
        | GatewayError::InvalidCredentials { challenge, .. }
        | GatewayError::InsufficientScope { challenge, .. } = &mut self
        {
            *challenge = route;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderName;

    use super::*;

    #[test]
    fn module_errors_become_their_answers() {
        let cases: Vec<(&str, GatewayError, u16, &str)> = vec![
            (
                "schema",
                Invalid::Schema(Vec::new()).into(),
                422,
                "schema_violation",
            ),
            ("address", Invalid::IpDenied.into(), 403, "ip_denied"),
            ("framing", Refusal::UriTooLong.into(), 414, "uri_too_long"),
            ("path", PathError::AboveRoot.into(), 400, "invalid_path"),
            (
                "key throttled",
                ApiKeyError::Throttled {
                    retry_after_secs: 7,
                }
                .into(),
                429,
                "too_many_auth_failures",
            ),
            (
                "key revoked",
                ApiKeyError::Revoked.into(),
                401,
                "invalid_credentials",
            ),
            (
                "keys unavailable",
                JwtError::KeysUnavailable.into(),
                503,
                "auth_unavailable",
            ),
            (
                "body over",
                ForwardError::BodyTooLarge { limit: 5 }.into(),
                413,
                "payload_too_large",
            ),
            (
                "breaker open",
                ForwardError::Unavailable {
                    retry_after: Duration::from_millis(1500),
                }
                .into(),
                503,
                "upstream_unavailable",
            ),
            (
                "function too large",
                LambdaError::PayloadTooLarge.into(),
                413,
                "payload_too_large",
            ),
            (
                "function timeout",
                LambdaError::Timeout.into(),
                504,
                "upstream_timeout",
            ),
        ];
        for (name, e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{name}");
            assert_eq!(e.code(), code, "{name}");
        }
    }

    #[test]
    fn the_limit_and_the_wait_survive_the_conversion() {
        match GatewayError::from(ForwardError::BodyTooLarge { limit: 5 }) {
            GatewayError::PayloadTooLarge { limit } => assert_eq!(limit, 5),
            other => panic!("{other:?}"),
        }
        let retry = ForwardError::Unavailable {
            retry_after: Duration::from_millis(1500),
        };
        match GatewayError::from(retry) {
            GatewayError::UpstreamUnavailable { retry_after_secs } => {
                assert_eq!(retry_after_secs, 2)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_refusals_take_the_routes_challenge() {
        let route = Challenge {
            api_key_header: Some(HeaderName::from_static("x-api-key")),
        };
        let e = GatewayError::from(JwtError::Expired).with_challenge(route.clone());
        match e {
            GatewayError::InvalidCredentials { challenge, why } => {
                assert_eq!(challenge, route);
                assert_eq!(why, "token expired");
            }
            other => panic!("{other:?}"),
        }
        // Not an auth refusal: nothing to name.
        let e = GatewayError::from(Invalid::IpDenied).with_challenge(route);
        assert_eq!(e.code(), "ip_denied");
    }
}
