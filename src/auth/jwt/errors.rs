//! Errors of issuer building and token verification: every message names
//! the issuer and the field, and none contains a secret, token or claim.

use std::path::PathBuf;

/// Why an issuer's config cannot be used, or a dev token not minted. Every
/// message names the issuer and the field; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// A field's value is not acceptable.
    #[error("jwt issuer {issuer:?}: {field}: {reason}")]
    Invalid {
        /// The issuer's name.
        issuer: String,
        /// The field, e.g. `algorithms` or `public_keys[0].path`.
        field: String,
        /// What is wrong, and usually how to fix it.
        reason: String,
    },
    /// A key file could not be read.
    #[error("jwt issuer {issuer:?}: {field}: cannot read {}: {source}", path.display())]
    Read {
        /// The issuer's name.
        issuer: String,
        /// The field naming the file.
        field: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("jwt issuer {issuer:?}: {field}: {}: {reason}", path.display())]
    BadKey {
        /// The issuer's name.
        issuer: String,
        /// The field naming the file.
        field: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A dev key file could not be written.
    #[error("jwt issuer {issuer:?}: {field}: cannot write {}: {source}", path.display())]
    Write {
        /// The issuer's name.
        issuer: String,
        /// The field naming the file.
        field: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating a dev key pair failed.
    #[error("jwt issuer {issuer:?}: dev_keys: generating a key pair failed: {source}")]
    Generate {
        /// The issuer's name.
        issuer: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// Signing a dev token failed.
    #[error("jwt issuer {issuer:?}: {field}: signing failed: {source}")]
    Sign {
        /// The issuer's name.
        issuer: String,
        /// The field naming the key.
        field: String,
        /// The cause.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

impl IssuerError {
    /// The issuer's name.
    pub fn issuer(&self) -> &str {
        match self {
            IssuerError::Invalid { issuer, .. }
            | IssuerError::Read { issuer, .. }
            | IssuerError::BadKey { issuer, .. }
            | IssuerError::Write { issuer, .. }
            | IssuerError::Generate { issuer, .. }
            | IssuerError::Sign { issuer, .. } => issuer,
        }
    }

    /// The field at fault (`public_keys[1].path`, `algorithms`, …), so the
    /// caller can point at its line.
    pub fn field(&self) -> &str {
        match self {
            IssuerError::Invalid { field, .. }
            | IssuerError::Read { field, .. }
            | IssuerError::BadKey { field, .. }
            | IssuerError::Write { field, .. }
            | IssuerError::Sign { field, .. } => field,
            IssuerError::Generate { .. } => "dev_keys",
        }
    }
}

/// Why a token was refused. Messages are for logs: they name claims and
/// reasons, never token contents. Clients get [`JwtError::public_description`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than the issuer's `max_token_bytes`; refused undecoded.
    #[error("token too large")]
    TooLarge,
    /// Not three base64url segments of JSON objects.
    #[error("malformed token")]
    Malformed,
    /// The header holds `crit`, `jku`, `x5u`, `jwk` or `x5c`.
    #[error("forbidden token header")]
    ForbiddenHeader,
    /// `alg` is `none`, unknown, or not configured for the issuer.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No issuer the route accepts matches the token.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// No key of the issuer fits the token's `kid` and `alg`.
    #[error("unknown key")]
    UnknownKey,
    /// The signature does not verify with any candidate key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` differs from the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` holds none of the configured audiences (or is present when
    /// none is configured).
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is missing.
    #[error("claim `{0}` missing")]
    MissingClaim(String),
    /// A claim has the wrong JSON type.
    #[error("claim `{0}` has the wrong type")]
    WrongClaimType(String),
    /// The issuer's JWK Set has never been fetched successfully.
    #[error("issuer keys unavailable")]
    KeysUnavailable,
}

impl JwtError {
    /// Text for an RFC 6750 `error_description`: says only what a holder of
    /// a once-valid token needs (it expired), nothing that helps forging.
    pub fn public_description(&self) -> &'static str {
        match self {
            JwtError::Expired => "token expired",
            JwtError::TooLarge => "token too large",
            JwtError::Malformed
            | JwtError::ForbiddenHeader
            | JwtError::AlgorithmNotAllowed
            | JwtError::UnknownIssuer
            | JwtError::UnknownKey
            | JwtError::BadSignature
            | JwtError::NotYetValid
            | JwtError::IssuedInFuture
            | JwtError::WrongIssuer
            | JwtError::WrongAudience
            | JwtError::MissingClaim(_)
            | JwtError::WrongClaimType(_)
            | JwtError::KeysUnavailable => "invalid token",
        }
    }
}
