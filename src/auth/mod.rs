//! Who is calling: API keys ([`api_key`]) and JWTs ([`jwt`], [`jwks`]).
//!
//! Each authenticator turns a presented credential into a [`Principal`] or
//! an error that says only what the caller may know (missing, invalid,
//! expired), never why a secret was wrong. Nothing here logs a credential.

pub mod api_key;
pub mod jwks;
pub mod jwt;
pub mod jwt_config_checks;
pub mod policy;

use std::sync::Arc;

/// An authenticated caller, handed to authorisation, rate limiting, the
/// access log and (as derived headers) the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// The consumer id (API key) or the token subject (JWT).
    pub subject: Arc<str>,
    /// The consumer's name (API key), if known.
    pub consumer_name: Option<Arc<str>>,
    /// The consumer's plan (API key), or the plan claim (JWT), if any.
    pub plan: Option<Arc<str>>,
    /// The key id (API key) or the issuer name (JWT).
    pub credential_id: Arc<str>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Roles granted (JWT role claim).
    pub roles: Vec<String>,
    /// Headers derived from configured claims, to pass upstream.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// How a [`Principal`] authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// An API key.
    ApiKey,
    /// A JWT.
    Jwt,
}

impl AuthMethod {
    /// `api_key` or `jwt`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
        }
    }
}

/// Seconds since the Unix epoch.
pub type Timestamp = i64;

/// The time source for expiry checks (keys, tokens). A seam so tests can
/// move time instead of sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in seconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}
