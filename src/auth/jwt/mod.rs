//! JWT bearer tokens: trusted issuers, verification, and dev-token minting.
//!
//! This module owns turning a [`JwtIssuerSpec`](crate::config::JwtIssuerSpec) into an [`Issuer`] (reading
//! its PEM keys, resolving its HMAC secret from an environment value handed
//! in by the caller, cross-checking algorithms against key types), verifying
//! a compact JWS token into a [`Principal`](super::Principal) ([`JwtVerifier::verify`]), and
//! minting dev tokens for `gatehouse token` ([`mint`], [`ensure_dev_keys`]).
//! It does not extract the token from the request, answer the client or
//! strip client-sent copies of the derived identity headers: the pipeline
//! does. JWK Set fetching lives in [`super::jwks`].
//!
//! Security rules enforced here (see DESIGN.md, "Security rules"):
//! - The size cap applies before any decoding.
//! - The algorithm must be in the issuer's configured list; `alg` in the
//!   token only picks among them. `none` is never accepted. An issuer never
//!   mixes HMAC with asymmetric algorithms, and public keys are never used
//!   as HMAC secrets (no RS256-key-as-HS256-secret forgery).
//! - `crit`, `jku`, `x5u`, `jwk` and `x5c` headers are refused (checked on
//!   the raw header JSON); `kid` is only a lookup key into our own key set.
//! - The library (jsonwebtoken 10.x) checks the signature only: its claim
//!   checks are all off (`validate_exp`/`validate_nbf`/`validate_aud` false,
//!   no required spec claims) because its defaults are unsafe (60 s leeway,
//!   no `nbf`, no `iat`, wrong-typed `aud`/`iss`/`sub` accepted). Every claim
//!   is checked here against the injected [`Clock`](super::Clock): `exp` required and
//!   numeric, `nbf`/`iat` numeric when present, `iss`/`aud` equal when
//!   configured, `sub` a non-empty string, explicit leeway.
//! - HMAC secrets must be at least 32 bytes; they never appear in errors or
//!   `Debug` output, and neither do tokens or claim values.
//! - Only configured claims leave as derived headers, never raw claims.
//!
//! Files: `errors` (what can go wrong, and how it is told), `issuer`
//! (a spec turned into keys and checks), `verify` (the verifier and its
//! token cache), `claims` (our claim checks on top of jsonwebtoken's
//! signature check), `mint` (dev tokens and keys), `b64url`.

mod b64url;
mod claims;
mod errors;
mod issuer;
mod mint;
mod verify;

pub(crate) use b64url::*;
use claims::*;
pub use errors::*;
pub use issuer::*;
pub use mint::*;
use std::time::Duration;
pub use verify::*;

/// Shortest accepted HMAC secret, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Largest accepted `leeway`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Token headers that would make us fetch or trust something the token
/// chooses, or that demand extensions we do not implement.
const FORBIDDEN_TOKEN_HEADERS: [&str; 5] = ["crit", "jku", "x5u", "jwk", "x5c"];

const ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

#[cfg(test)]
mod tests;
