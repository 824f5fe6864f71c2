//! Steps 5–7: who is calling and whether they may use the route. The
//! per-client failure gate (step 5) runs inside the API-key check, before
//! any hashing and only for keys not already verified, so that bad keys
//! cannot burn argon2 and callers behind one address with a good key are
//! not refused for a neighbour's bad ones.

use std::sync::Arc;

use crate::auth::policy::{self, Presented, PresentedError, RouteAuth};
use crate::auth::{AuthMethod, Principal};
use crate::error::{Challenge, GatewayError};
use crate::route::Route;

use super::*;

/// The credential kinds a route accepts, as the auth metric names them.
fn accepted_methods(auth: &RouteAuth) -> &'static str {
    match (auth.api_key, auth.jwt) {
        (true, true) => "api_key_or_jwt",
        (true, false) => "api_key",
        (false, true) => "jwt",
        (false, false) => "none",
    }
}

impl Gateway {
    /// Steps 5–7 with their span and metrics: the caller, `None` on a route
    /// without authentication.
    pub(super) async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        route: &Arc<Route>,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Principal>, GatewayError> {
        let auth = &route.auth;
        if !auth.required() {
            return Ok(None);
        }
        let started = ctx.clock();
        let found = self.identify(headers, auth, ctx).await;
        ctx.span("auth", started, found.as_ref().map(|_| ()));
        let meters = &self.telemetry.meters;
        let principal = match found {
            Ok(principal) => principal,
            Err(e) => {
                meters.auth(accepted_methods(auth), e.code());
                return Err(e);
            }
        };
        let method = principal.method.as_str();
        ctx.record.consumer = Some(principal.subject.clone());
        ctx.record.auth = Some(method);
        if principal.method == AuthMethod::ApiKey {
            ctx.record.credential = Some(principal.credential_id.clone());
        }
        // 7. Authorise.
        if let Err(e) = authorize(auth, &principal) {
            meters.auth(method, e.code());
            return Err(e);
        }
        meters.auth(method, "success");
        Ok(Some(principal))
    }

    /// Steps 5–6: the presented key or token checked into a principal.
    async fn identify(
        &self,
        headers: &http::HeaderMap,
        auth: &RouteAuth,
        ctx: &RequestCtx,
    ) -> Result<Principal, GatewayError> {
        let challenge = Challenge {
            api_key_header: auth.api_key.then(|| auth.key_header.clone()),
        };
        let presented = match policy::presented(auth, headers) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(GatewayError::MissingCredentials { challenge }),
            // RFC 6750 §3.1: another scheme is no Bearer credential at all,
            // so the challenge carries no error code.
            Err(PresentedError::Scheme) => {
                return Err(GatewayError::MissingCredentials { challenge });
            }
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
        match presented {
            Presented::ApiKey(key) => self
                .api_keys
                .authenticate(key, ctx.record.client)
                .await
                .map_err(|e| GatewayError::from(e).with_challenge(challenge)),
            Presented::Jwt(token) => ctx
                .snapshot
                .jwt
                .verify(token, auth.issuers.as_deref())
                .await
                .map_err(|e| GatewayError::from(e).with_challenge(challenge)),
        }
    }
}
