//! The authenticate step: which methods a route accepts, and the caller's
//! key or token checked into a principal.

use crate::auth::Principal;
use crate::auth::api_key::ApiKeyAuth;
use crate::auth::policy::{self, Presented, PresentedError, RouteAuth};
use crate::error::{Challenge, GatewayError};
use crate::snapshot::Snapshot;

use super::*;

/// The credential kinds a route accepts, as the auth metric names them.
pub(super) fn accepted_methods(auth: &RouteAuth) -> &'static str {
    match (auth.api_key, auth.jwt) {
        (true, true) => "api_key_or_jwt",
        (true, false) => "api_key",
        (false, true) => "jwt",
        (false, false) => "none",
    }
}

/// Steps 5–6: who is calling. `None` for a route without authentication.
pub(super) async fn authenticate(
    headers: &http::HeaderMap,
    auth: &RouteAuth,
    snapshot: &Snapshot,
    api_keys: &ApiKeyAuth,
    client: std::net::IpAddr,
) -> Result<Option<Principal>, GatewayError> {
    if !auth.required() {
        return Ok(None);
    }
    let challenge = Challenge {
        api_key_header: auth.api_key.then(|| auth.key_header.clone()),
    };
    let presented = match policy::presented(auth, headers) {
        Ok(Some(p)) => p,
        Ok(None) => return Err(GatewayError::MissingCredentials { challenge }),
        // RFC 6750 §3.1: another scheme is no Bearer credential at all,
        // so the challenge carries no error code.
        Err(PresentedError::Scheme) => return Err(GatewayError::MissingCredentials { challenge }),
        Err(e) => {
            let why = match e {
                PresentedError::Duplicate => "credential header sent more than once",
                PresentedError::NotText | PresentedError::Scheme => {
                    "credential header is not valid text"
                }
            };
            return Err(GatewayError::InvalidCredentials { challenge, why });
        }
    };
    let principal = match presented {
        Presented::ApiKey(key) => api_keys
            .authenticate(key, client)
            .await
            .map_err(|e| api_key_refusal(e, challenge.clone()))?,
        Presented::Jwt(token) => snapshot
            .jwt
            .verify(token, auth.issuers.as_deref())
            .await
            .map_err(|e| jwt_refusal(&e, challenge.clone()))?,
    };
    Ok(Some(principal))
}
