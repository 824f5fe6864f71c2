//! Step 7: whether the caller may use the route.

use crate::auth::Principal;
use crate::auth::policy::{self, RouteAuth};
use crate::error::{Challenge, GatewayError};

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
