//! The authorise step, and auth and path failures turned into the client's
//! answer.

use crate::auth::Principal;
use crate::auth::api_key::ApiKeyError;
use crate::auth::jwt::JwtError;
use crate::auth::policy::{self, RouteAuth};
use crate::error::{Challenge, GatewayError};
use crate::validate::{self};

/// Step 7: may this caller use the route (scopes, roles).
pub(super) fn authorize(auth: &RouteAuth, principal: &Principal) -> Result<(), GatewayError> {
    if let Some(scope) = policy::missing_scope(auth, principal) {
        return Err(GatewayError::InsufficientScope {
            challenge: Challenge {
                api_key_header: auth.api_key.then(|| auth.key_header.clone()),
            },
            scope: scope.to_owned(),
        });
    }
    if !policy::has_role(auth, principal) {
        return Err(GatewayError::RoleRequired);
    }
    Ok(())
}

pub(super) fn api_key_refusal(e: ApiKeyError, challenge: Challenge) -> GatewayError {
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
    GatewayError::InvalidCredentials { challenge, why }
}

pub(super) fn jwt_refusal(e: &JwtError, challenge: Challenge) -> GatewayError {
    match e {
        JwtError::KeysUnavailable => GatewayError::AuthUnavailable,
        other => GatewayError::InvalidCredentials {
            challenge,
            why: other.public_description(),
        },
    }
}

pub(super) fn path_error_text(e: validate::PathError) -> &'static str {
    match e {
        validate::PathError::NotAbsolute => "path must start with /",
        validate::PathError::BadEscape => "malformed percent-escape",
        validate::PathError::EncodedSlash => "encoded slash or backslash",
        validate::PathError::Backslash => "backslash in path",
        validate::PathError::ControlChar => "control character in path",
        validate::PathError::InvalidUtf8 => "path is not valid UTF-8",
        validate::PathError::AboveRoot => "path climbs above the root",
        validate::PathError::DotSegmentParams => {
            "dot segment with path parameters (such as ..;) is not accepted"
        }
    }
}
