//! JWT bearer tokens: trusted issuers, verification, and dev-token minting.
//!
//! This module owns turning a [`JwtIssuerSpec`] into an [`Issuer`] (reading
//! its PEM keys, resolving its HMAC secret from an environment value handed
//! in by the caller, cross-checking algorithms against key types), verifying
//! a compact JWS token into a [`Principal`] ([`JwtVerifier::verify`]), and
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
//!   is checked here against the injected [`Clock`]: `exp` required and
//!   numeric, `nbf`/`iat` numeric when present, `iss`/`aud` equal when
//!   configured, `sub` a non-empty string, explicit leeway.
//! - HMAC secrets must be at least 32 bytes; they never appear in errors or
//!   `Debug` output, and neither do tokens or claim values.
//! - Only configured claims leave as derived headers, never raw claims.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;

use super::jwks::{JwksRegistry, JwksSet, JwksSettings, RSA_ALGORITHMS, VerificationKey};
use super::jwt_config_checks::{MIN_JWKS_MIN_REFRESH_INTERVAL, claim_header_refusal};
use super::{AuthMethod, Clock, Principal};
use crate::config::JwtIssuerSpec;

/// Shortest accepted HMAC secret, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Largest accepted `leeway`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Token headers that would make us fetch or trust something the token
/// chooses, or that demand extensions we do not implement.
const FORBIDDEN_TOKEN_HEADERS: [&str; 5] = ["crit", "jku", "x5u", "jwk", "x5c"];

const ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

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

/// A trusted issuer, ready to verify tokens.
pub struct Issuer {
    name: Arc<str>,
    issuer: Option<String>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    validations: Vec<(AlgorithmFamily, Validation)>,
    keys: Vec<VerificationKey>,
    jwks: Option<Arc<JwksSet>>,
    leeway: f64,
    max_token_bytes: usize,
    required_claims: Vec<String>,
    scope_claim: Option<String>,
    roles_claim: Option<String>,
    plan_claim: Option<String>,
    claim_headers: Vec<(String, HeaderName)>,
    signing_key: Option<PathBuf>,
    signing_kid: Option<String>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys (the HMAC secret among them) are left out on purpose.
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("static_keys", &self.keys.len())
            .field("jwks", &self.jwks.as_ref().map(|s| s.url().to_string()))
            .field("leeway", &self.leeway)
            .field("max_token_bytes", &self.max_token_bytes)
            .finish_non_exhaustive()
    }
}

fn invalid(
    spec: &JwtIssuerSpec,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> IssuerError {
    IssuerError::Invalid {
        issuer: spec.name.clone(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Parses an algorithm name from config; `none` and unknown names are
/// refused with a message saying why.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.trim().eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never accepted".to_owned());
    }
    Algorithm::from_str(name)
        .map_err(|_| format!("unknown algorithm {name:?}; expected one of {ALGORITHM_NAMES}"))
}

impl Issuer {
    /// Builds an issuer from its spec. Blocking: reads the PEM files (paths
    /// relative to `base_dir`). `env` looks up environment values (for
    /// `hmac_secret_env`); library code never reads the environment itself.
    /// A `jwks_url` is registered in `jwks` (shared across reloads); its
    /// keys are fetched by the registry, not here.
    pub fn build(
        spec: &JwtIssuerSpec,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        jwks: &JwksRegistry,
    ) -> Result<Issuer, IssuerError> {
        let name = spec.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(invalid(
                spec,
                "name",
                "must be 1 to 128 printable characters",
            ));
        }
        if let Some(iss) = &spec.issuer
            && iss.is_empty()
        {
            return Err(invalid(
                spec,
                "issuer",
                "must not be empty (leave it out instead)",
            ));
        }
        if spec.audiences.iter().any(String::is_empty) {
            return Err(invalid(spec, "audiences", "an audience must not be empty"));
        }

        // Algorithms: parsed, deduplicated, one kind of key material.
        if spec.algorithms.is_empty() {
            return Err(invalid(
                spec,
                "algorithms",
                format!("at least one algorithm is required ({ALGORITHM_NAMES})"),
            ));
        }
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for a in &spec.algorithms {
            let alg = parse_algorithm(a).map_err(|reason| invalid(spec, "algorithms", reason))?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        let hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let asymmetric = algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac);
        if hmac && asymmetric {
            return Err(invalid(
                spec,
                "algorithms",
                "HMAC (HS*) and asymmetric algorithms cannot be mixed in one issuer \
                 (a public key must never be usable as an HMAC secret); declare two issuers",
            ));
        }
        if spec.public_keys.is_empty() && spec.hmac_secret_env.is_none() && spec.jwks_url.is_none()
        {
            return Err(invalid(
                spec,
                "public_keys",
                "no key source: set public_keys, jwks_url or hmac_secret_env",
            ));
        }

        // Limits and durations.
        if spec.leeway.0 > MAX_LEEWAY {
            return Err(invalid(
                spec,
                "leeway",
                format!("at most {}s", MAX_LEEWAY.as_secs()),
            ));
        }
        if !(256..=65536).contains(&spec.max_token_bytes) {
            return Err(invalid(
                spec,
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        for (field, value) in [
            (
                "required_claims",
                spec.required_claims.iter().any(String::is_empty),
            ),
            ("scope_claim", spec.scope_claim.as_deref() == Some("")),
            ("roles_claim", spec.roles_claim.as_deref() == Some("")),
            ("plan_claim", spec.plan_claim.as_deref() == Some("")),
        ] {
            if value {
                return Err(invalid(spec, field, "a claim name must not be empty"));
            }
        }
        let mut claim_headers = Vec::new();
        for (claim, header) in &spec.claim_headers {
            let field = format!("claim_headers.{claim}");
            if claim.is_empty() {
                return Err(invalid(
                    spec,
                    "claim_headers",
                    "a claim name must not be empty",
                ));
            }
            let h = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                invalid(
                    spec,
                    &field,
                    format!("{header:?} is not a valid header name"),
                )
            })?;
            if let Some(reason) = claim_header_refusal(&h, header) {
                return Err(invalid(spec, &field, reason));
            }
            if claim_headers
                .iter()
                .any(|(_, other): &(String, HeaderName)| *other == h)
            {
                return Err(invalid(
                    spec,
                    &field,
                    format!("header {header:?} is used twice"),
                ));
            }
            claim_headers.push((claim.clone(), h));
        }

        let mut keys = Vec::new();
        if hmac {
            for (field, set) in [
                ("public_keys", !spec.public_keys.is_empty()),
                ("jwks_url", spec.jwks_url.is_some()),
                ("signing_key", spec.signing_key.is_some()),
                ("dev_keys", spec.dev_keys),
            ] {
                if set {
                    return Err(invalid(
                        spec,
                        field,
                        "not allowed with HMAC algorithms: HS* tokens are verified (and \
                         minted) with the secret from hmac_secret_env only",
                    ));
                }
            }
            let Some(var) = spec.hmac_secret_env.as_deref() else {
                return Err(invalid(
                    spec,
                    "hmac_secret_env",
                    "HMAC algorithms need hmac_secret_env (the name of an environment variable)",
                ));
            };
            if var.is_empty() {
                return Err(invalid(
                    spec,
                    "hmac_secret_env",
                    "must name an environment variable",
                ));
            }
            let Some(secret) = env(var) else {
                return Err(invalid(
                    spec,
                    "hmac_secret_env",
                    format!("environment variable {var} is not set"),
                ));
            };
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(invalid(
                    spec,
                    "hmac_secret_env",
                    format!(
                        "the secret in {var} is shorter than {MIN_HMAC_SECRET_BYTES} bytes; \
                         use a long random value"
                    ),
                ));
            }
            if secret.trim_start().starts_with("-----BEGIN") {
                return Err(invalid(
                    spec,
                    "hmac_secret_env",
                    format!("the value of {var} is a PEM key; an HMAC secret must be random bytes"),
                ));
            }
            keys.push(VerificationKey {
                kid: None,
                algorithms: algorithms.clone(),
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        } else if spec.hmac_secret_env.is_some() {
            return Err(invalid(
                spec,
                "hmac_secret_env",
                "only for HMAC (HS*) algorithms; this issuer uses asymmetric ones",
            ));
        }

        for (i, pk) in spec.public_keys.iter().enumerate() {
            let field = format!("public_keys[{i}].path");
            let path = resolve(base_dir, &pk.path);
            let pem = std::fs::read(&path).map_err(|source| IssuerError::Read {
                issuer: spec.name.clone(),
                field: field.clone(),
                path: path.clone(),
                source,
            })?;
            let (key, fits, kind) =
                parse_public_pem(&pem).map_err(|reason| IssuerError::BadKey {
                    issuer: spec.name.clone(),
                    field: field.clone(),
                    path: path.clone(),
                    reason,
                })?;
            let usable: Vec<Algorithm> = algorithms
                .iter()
                .copied()
                .filter(|a| fits.contains(a))
                .collect();
            if usable.is_empty() {
                return Err(IssuerError::BadKey {
                    issuer: spec.name.clone(),
                    field,
                    path,
                    reason: format!(
                        "a {kind} key cannot verify any of the configured algorithms ({})",
                        names(&algorithms)
                    ),
                });
            }
            if let Some(kid) = &pk.kid {
                if kid.is_empty() {
                    return Err(invalid(
                        spec,
                        format!("public_keys[{i}].kid"),
                        "must not be empty",
                    ));
                }
                if keys
                    .iter()
                    .any(|k: &VerificationKey| k.kid.as_deref() == Some(kid))
                {
                    return Err(invalid(
                        spec,
                        format!("public_keys[{i}].kid"),
                        format!("kid {kid:?} is used twice"),
                    ));
                }
            }
            keys.push(VerificationKey {
                kid: pk.kid.clone(),
                algorithms: usable,
                key,
            });
        }

        let jwks_set = match &spec.jwks_url {
            None => None,
            Some(url) => {
                let uri =
                    parse_jwks_url(url).map_err(|reason| invalid(spec, "jwks_url", reason))?;
                if spec.jwks_min_refresh_interval.0 < MIN_JWKS_MIN_REFRESH_INTERVAL {
                    return Err(invalid(
                        spec,
                        "jwks_min_refresh_interval",
                        format!(
                            "must be at least {}s (it bounds the fetches unknown kids cause)",
                            MIN_JWKS_MIN_REFRESH_INTERVAL.as_secs()
                        ),
                    ));
                }
                if spec.jwks_refresh.0 < Duration::from_secs(1) {
                    return Err(invalid(spec, "jwks_refresh", "must be at least 1s"));
                }
                if spec.jwks_timeout.0.is_zero() || spec.jwks_timeout.0 > Duration::from_secs(60) {
                    return Err(invalid(spec, "jwks_timeout", "must be between 1ms and 60s"));
                }
                Some(jwks.get(
                    &uri,
                    JwksSettings {
                        refresh: spec.jwks_refresh.0,
                        min_refresh_interval: spec.jwks_min_refresh_interval.0,
                        timeout: spec.jwks_timeout.0,
                    },
                ))
            }
        };
        if jwks_set.is_none() {
            for alg in &algorithms {
                if !keys.iter().any(|k| k.algorithms.contains(alg)) {
                    return Err(invalid(
                        spec,
                        "algorithms",
                        format!("{alg:?} has no key: add a matching public key or a jwks_url"),
                    ));
                }
            }
        }

        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in &algorithms {
            let family = alg.family();
            if validations.iter().any(|(f, _)| *f == family) {
                continue;
            }
            let mut v = Validation::new(*alg);
            v.algorithms = algorithms
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect();
            v.validate_exp = false;
            v.validate_nbf = false;
            v.validate_aud = false;
            v.required_spec_claims = HashSet::new();
            v.leeway = 0;
            v.reject_tokens_expiring_in_less_than = 0;
            v.aud = None;
            v.iss = None;
            v.sub = None;
            validations.push((family, v));
        }

        Ok(Issuer {
            name: name.into(),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            algorithms,
            validations,
            keys,
            jwks: jwks_set,
            leeway: spec.leeway.0.as_secs_f64(),
            max_token_bytes: spec.max_token_bytes,
            required_claims: spec.required_claims.clone(),
            scope_claim: spec.scope_claim.clone(),
            roles_claim: spec.roles_claim.clone(),
            plan_claim: spec.plan_claim.clone(),
            claim_headers,
            signing_key: spec.signing_key.as_deref().map(|p| resolve(base_dir, p)),
            signing_kid: spec.public_keys.first().and_then(|k| k.kid.clone()),
        })
    }

    /// The issuer's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The expected `iss`, if configured.
    pub fn expected_iss(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The accepted algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The JWK Set, if the issuer has a `jwks_url`.
    pub fn jwks(&self) -> Option<&Arc<JwksSet>> {
        self.jwks.as_ref()
    }

    fn validation(&self, family: AlgorithmFamily) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, v)| v)
    }
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_jwks_url(url: &str) -> Result<http::Uri, String> {
    // Checked before the URL is ever repeated in a message.
    if url.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['/', '?', '#'])
            .next()
            .is_some_and(|a| a.contains('@'))
    }) {
        return Err("credentials in URLs are not allowed".to_owned());
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let Some(host) = uri.host() else {
        return Err(format!("{url:?} needs a host"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => {}
        // Keys fetched in the clear could be replaced on the way: plain
        // http only for an identity provider on this machine.
        Some("http") if loopback => {}
        Some("http") => {
            return Err(format!(
                "{url:?}: use https:// (plain http is only allowed for a loopback host)"
            ));
        }
        _ => {
            return Err(format!(
                "{url:?}: only https:// (or http:// on loopback) is supported"
            ));
        }
    }
    Ok(uri)
}

/// Parses a public key PEM (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY` or an
/// X.509 `CERTIFICATE`): the key, the algorithms it fits, and its kind.
fn parse_public_pem(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>, &'static str), String> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|_| "not a PEM file".to_owned())?;
    match block.label.as_str() {
        "PUBLIC KEY" => {
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.contents)
                .map_err(|_| "invalid PUBLIC KEY block".to_owned())?;
            from_spki(&spki)
        }
        "CERTIFICATE" => {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&block.contents)
                .map_err(|_| "invalid CERTIFICATE block".to_owned())?;
            from_spki(cert.public_key())
        }
        "RSA PUBLIC KEY" => {
            let (_, rsa) = x509_parser::public_key::RSAPublicKey::from_der(&block.contents)
                .map_err(|_| "invalid RSA PUBLIC KEY block".to_owned())?;
            check_rsa_bits(super::jwks::rsa_bits(rsa.modulus))?;
            Ok((
                DecodingKey::from_rsa_der(&block.contents),
                RSA_ALGORITHMS.to_vec(),
                "RSA",
            ))
        }
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
            Err("this is a private key; public_keys takes the public key \
             (e.g. `openssl pkey -in key.pem -pubout`)"
                .to_owned())
        }
        other => Err(format!("unsupported PEM block {other:?}")),
    }
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < 2048 {
        return Err(format!(
            "RSA key of {bits} bits; at least 2048 are required"
        ));
    }
    if bits > 4096 {
        return Err(format!(
            "RSA key of {bits} bits; at most 4096 are supported"
        ));
    }
    Ok(())
}

fn from_spki(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<(DecodingKey, Vec<Algorithm>, &'static str), String> {
    let oid = &spki.algorithm.algorithm;
    let data: &[u8] = &spki.subject_public_key.data;
    if *oid == oid_registry::OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("invalid RSA public key".to_owned());
        };
        check_rsa_bits(super::jwks::rsa_bits(rsa.modulus))?;
        Ok((
            DecodingKey::from_rsa_der(data),
            RSA_ALGORITHMS.to_vec(),
            "RSA",
        ))
    } else if *oid == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == oid_registry::OID_EC_P256 => Ok((
                DecodingKey::from_ec_der(data),
                vec![Algorithm::ES256],
                "EC P-256",
            )),
            Some(c) if c == oid_registry::OID_NIST_EC_P384 => Ok((
                DecodingKey::from_ec_der(data),
                vec![Algorithm::ES384],
                "EC P-384",
            )),
            _ => Err("unsupported elliptic curve (P-256 and P-384 are supported)".to_owned()),
        }
    } else if *oid == oid_registry::OID_SIG_ED25519 {
        if data.len() != 32 {
            return Err("invalid Ed25519 public key".to_owned());
        }
        Ok((
            DecodingKey::from_ed_der(data),
            vec![Algorithm::EdDSA],
            "Ed25519",
        ))
    } else {
        Err("unsupported key type (RSA, EC P-256/P-384 and Ed25519 are supported)".to_owned())
    }
}

/// Verified tokens remembered at most (per snapshot).
const VERIFIED_CAPACITY: u64 = 10_000;
/// How long a verified token is remembered: it bounds how long a token
/// signed by a key that has since left the issuer's JWK Set still passes.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// A token that passed every check, and the time window it is valid in.
#[derive(Debug)]
struct VerifiedToken {
    principal: Principal,
    issuer: Arc<str>,
    /// `nbf - leeway` (or -inf).
    not_before: f64,
    /// `exp + leeway`.
    expires: f64,
    /// The issuer's JWK Set generation it was checked against: a refreshed
    /// set (a key may have been withdrawn) means checking again.
    jwks_generation: Option<u64>,
}

/// Verifies tokens against a set of issuers.
///
/// A token that passed is remembered (by the SHA-256 of its text, for at
/// most a minute, never past its `exp`, and only until its issuer's JWK Set
/// changes), so the signature check — a quarter of a millisecond for RS256
/// or ES256 — runs once per token rather than once per request. A reload
/// builds a new verifier with an empty cache.
pub struct JwtVerifier {
    issuers: Vec<Arc<Issuer>>,
    clock: Arc<dyn Clock>,
    verified: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    signature_checks: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.issuers)
            .field("cached", &self.verified.entry_count())
            .finish_non_exhaustive()
    }
}

/// The parts of a token read before its signature is checked.
struct Unverified<'t> {
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
    token: &'t str,
}

impl JwtVerifier {
    /// A verifier over `issuers` (names should be unique; with duplicate
    /// names or duplicate `issuer` values the first one wins) using `clock`
    /// for every time check.
    pub fn new(issuers: Vec<Arc<Issuer>>, clock: Arc<dyn Clock>) -> JwtVerifier {
        JwtVerifier {
            issuers,
            clock,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
            signature_checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Signature checks done so far (tokens not served from the cache).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The issuers.
    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// Verifies `token` (the bearer value, without `Bearer `) for a route
    /// that accepts the issuers named in `allowed` (`None`: any).
    ///
    /// Only awaits when the token names a `kid` that the issuer's JWK Set
    /// does not know (one rate-limited refresh).
    pub async fn verify(
        &self,
        token: &str,
        allowed: Option<&[String]>,
    ) -> Result<Principal, JwtError> {
        let is_allowed =
            |i: &Issuer| allowed.is_none_or(|names| names.iter().any(|n| **n == *i.name));
        // 1. Size, before anything else.
        let cap = self
            .issuers
            .iter()
            .filter(|i| is_allowed(i))
            .map(|i| i.max_token_bytes)
            .max()
            .unwrap_or(0);
        if token.len() > cap {
            return Err(if cap == 0 {
                JwtError::UnknownIssuer
            } else {
                JwtError::TooLarge
            });
        }
        // A token verified moments ago is still good while the route takes
        // its issuer and the clock is inside its window.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.verified.get(&digest) {
            #[allow(clippy::cast_precision_loss)]
            let now = self.clock.now() as f64;
            let issuer_ok = allowed.is_none_or(|names| names.iter().any(|n| **n == *hit.issuer));
            let same_keys = self
                .issuers
                .iter()
                .find(|i| i.name == hit.issuer)
                .is_some_and(|i| i.jwks().map(|j| j.generation()) == hit.jwks_generation);
            if issuer_ok && same_keys && now >= hit.not_before && now < hit.expires {
                return Ok(hit.principal.clone());
            }
        }
        // 2-3. Shape, header and the unverified claims.
        let parts = read_unverified(token)?;
        // 4. The issuer.
        let issuer = self.choose_issuer(&parts.claims, &is_allowed)?;
        if token.len() > issuer.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        // 5. The algorithm comes from our list; the token only picks.
        if !issuer.algorithms.contains(&parts.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let Some(validation) = issuer.validation(parts.alg.family()) else {
            return Err(JwtError::AlgorithmNotAllowed);
        };
        // 6-7. Key by kid in our own set, then the signature.
        let jwks_generation = issuer.jwks().map(|j| j.generation());
        self.signature_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let claims = verify_signature(issuer, &parts, validation).await?;
        // 8. Claims, against our clock.
        let window = (
            number_claim(&claims, "nbf")
                .ok()
                .flatten()
                .map_or(f64::NEG_INFINITY, |nbf| nbf - issuer.leeway),
            number_claim(&claims, "exp")
                .ok()
                .flatten()
                .map_or(f64::NEG_INFINITY, |exp| exp + issuer.leeway),
        );
        let principal = check_claims(issuer, claims, self.clock.now())?;
        self.verified.insert(
            digest,
            Arc::new(VerifiedToken {
                principal: principal.clone(),
                issuer: issuer.name.clone(),
                not_before: window.0,
                expires: window.1,
                jwks_generation,
            }),
        );
        Ok(principal)
    }

    fn choose_issuer(
        &self,
        claims: &Map<String, Value>,
        is_allowed: &dyn Fn(&Issuer) -> bool,
    ) -> Result<&Issuer, JwtError> {
        let iss = match claims.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(JwtError::WrongClaimType("iss".to_owned())),
        };
        let mut candidates = self.issuers.iter().filter(|i| is_allowed(i));
        if let Some(iss) = iss
            && let Some(found) = candidates
                .clone()
                .find(|i| i.issuer.as_deref() == Some(iss))
        {
            return Ok(found);
        }
        let first = candidates.next();
        if let Some(only) = first
            && candidates.next().is_none()
        {
            // The route accepts one issuer: checks below say what is wrong.
            return Ok(only);
        }
        let mut open = self
            .issuers
            .iter()
            .filter(|i| is_allowed(i) && i.issuer.is_none());
        match (open.next(), open.next()) {
            (Some(only), None) => Ok(only),
            _ => Err(JwtError::UnknownIssuer),
        }
    }
}

fn read_unverified(token: &str) -> Result<Unverified<'_>, JwtError> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(JwtError::Malformed);
    };
    // An empty signature is let through here so that an unsigned
    // (`alg: none`) token is reported as such below.
    if header.is_empty()
        || payload.is_empty()
        || ![header, payload, signature]
            .iter()
            .all(|s| s.bytes().all(is_b64url_byte))
    {
        return Err(JwtError::Malformed);
    }
    let raw_header = decode_json_object(header)?;
    if FORBIDDEN_TOKEN_HEADERS
        .iter()
        .any(|h| raw_header.contains_key(*h))
    {
        return Err(JwtError::ForbiddenHeader);
    }
    match raw_header.get("alg") {
        Some(Value::String(a)) => {
            if a.eq_ignore_ascii_case("none") || Algorithm::from_str(a).is_err() {
                return Err(JwtError::AlgorithmNotAllowed);
            }
        }
        _ => return Err(JwtError::Malformed),
    }
    match raw_header.get("kid") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(JwtError::Malformed),
    }
    // The library must read the header the same way it will when verifying.
    let parsed: Header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    let claims = decode_json_object(payload)?;
    Ok(Unverified {
        alg: parsed.alg,
        kid: parsed.kid,
        claims,
        token,
    })
}

fn decode_json_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64url_decode(segment.as_bytes()).ok_or(JwtError::Malformed)?;
    serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|_| JwtError::Malformed)
}

async fn verify_signature(
    issuer: &Issuer,
    parts: &Unverified<'_>,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    let kid = parts.kid.as_deref();
    let statics: Vec<&VerificationKey> = issuer
        .keys
        .iter()
        .filter(|k| k.matches(kid, parts.alg))
        .collect();
    let Some(set) = &issuer.jwks else {
        if statics.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        return try_keys(&statics, parts, validation);
    };
    let generation = set.generation();
    let fetched = set.keys();
    let mut candidates = statics.clone();
    candidates.extend(fetched.iter().filter(|k| k.matches(kid, parts.alg)));
    if !candidates.is_empty() {
        return try_keys(&candidates, parts, validation);
    }
    // No key for this kid: maybe the IdP rotated. One rate-limited refresh.
    if set.refresh_for_unknown_kid(generation).await {
        let fetched = set.keys();
        let mut candidates = statics;
        candidates.extend(fetched.iter().filter(|k| k.matches(kid, parts.alg)));
        if !candidates.is_empty() {
            return try_keys(&candidates, parts, validation);
        }
    }
    if set.is_loaded() || !issuer.keys.is_empty() {
        Err(JwtError::UnknownKey)
    } else {
        Err(JwtError::KeysUnavailable)
    }
}

/// Keys one token is tried against at most. A token without a `kid` fits
/// every key of its algorithm; unbounded, a garbage token would cost one
/// RSA verification per key in the set.
const MAX_KEY_ATTEMPTS: usize = 4;

fn try_keys(
    keys: &[&VerificationKey],
    parts: &Unverified<'_>,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    // Keys named by the token's kid are all tried; keys that fit only
    // because one side has no kid are tried up to the cap (kid-less keys
    // first when the token has no kid: they are the ones meant for it).
    let (exact, mut loose): (Vec<&&VerificationKey>, Vec<&&VerificationKey>) = keys
        .iter()
        .partition(|k| parts.kid.is_some() && k.kid() == parts.kid.as_deref());
    loose.sort_by_key(|k| k.kid().is_some());
    let ordered = exact
        .into_iter()
        .chain(loose.into_iter().take(MAX_KEY_ATTEMPTS));
    for key in ordered {
        match jsonwebtoken::decode::<Map<String, Value>>(parts.token, &key.key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                // Wrong key (or a key unusable for this algorithm): next.
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => {}
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    return Err(JwtError::AlgorithmNotAllowed);
                }
                _ => return Err(JwtError::Malformed),
            },
        }
    }
    Err(JwtError::BadSignature)
}

fn number_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| JwtError::WrongClaimType(name.to_owned())),
        Some(_) => Err(JwtError::WrongClaimType(name.to_owned())),
    }
}

/// A string (split on spaces when `split`) or an array of strings.
fn string_list(value: &Value, name: &str) -> Result<Vec<String>, JwtError> {
    match value {
        Value::String(s) => Ok(s
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(JwtError::WrongClaimType(name.to_owned())),
            })
            .collect(),
        _ => Err(JwtError::WrongClaimType(name.to_owned())),
    }
}

fn check_claims(
    issuer: &Issuer,
    claims: Map<String, Value>,
    now: super::Timestamp,
) -> Result<Principal, JwtError> {
    #[allow(clippy::cast_precision_loss)]
    let now = now as f64;
    let leeway = issuer.leeway;
    let exp = number_claim(&claims, "exp")?.ok_or_else(|| JwtError::MissingClaim("exp".into()))?;
    if now >= exp + leeway {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = number_claim(&claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(iat) = number_claim(&claims, "iat")?
        && iat > now + leeway
    {
        return Err(JwtError::IssuedInFuture);
    }
    match (claims.get("iss"), &issuer.issuer) {
        (Some(Value::String(got)), Some(want)) if got != want => return Err(JwtError::WrongIssuer),
        (Some(Value::String(_)), _) | (None, None) => {}
        (Some(_), _) => return Err(JwtError::WrongClaimType("iss".into())),
        (None, Some(_)) => return Err(JwtError::MissingClaim("iss".into())),
    }
    match claims.get("aud") {
        None => {
            if !issuer.audiences.is_empty() {
                return Err(JwtError::MissingClaim("aud".into()));
            }
        }
        Some(value) => {
            let auds: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| JwtError::WrongClaimType("aud".into()))
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(JwtError::WrongClaimType("aud".into())),
            };
            // RFC 7519 §4.1.3: with no configured audience we cannot be the
            // intended one, so a token that names audiences is refused.
            if !auds.iter().any(|a| issuer.audiences.iter().any(|w| w == a)) {
                return Err(JwtError::WrongAudience);
            }
        }
    }
    let subject: Arc<str> = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
        Some(Value::String(_)) | None => return Err(JwtError::MissingClaim("sub".into())),
        Some(_) => return Err(JwtError::WrongClaimType("sub".into())),
    };
    for name in &issuer.required_claims {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(JwtError::MissingClaim(name.clone()));
        }
    }
    let scopes = match &issuer.scope_claim {
        Some(name) => match claims.get(name) {
            Some(v) => string_list(v, name)?,
            None => Vec::new(),
        },
        None => match (claims.get("scope"), claims.get("scp")) {
            (Some(v), _) => string_list(v, "scope")?,
            (None, Some(v)) => string_list(v, "scp")?,
            (None, None) => Vec::new(),
        },
    };
    let roles = match issuer
        .roles_claim
        .as_ref()
        .and_then(|n| claims.get(n).map(|v| (n, v)))
    {
        Some((name, v)) => string_list(v, name)?,
        None => Vec::new(),
    };
    let plan = match issuer
        .plan_claim
        .as_ref()
        .and_then(|n| claims.get(n).map(|v| (n, v)))
    {
        Some((_, Value::String(s))) => Some(Arc::from(s.as_str())),
        Some((_, Value::Null)) | None => None,
        Some((name, _)) => return Err(JwtError::WrongClaimType(name.clone())),
    };
    let headers = issuer
        .claim_headers
        .iter()
        .filter_map(|(claim, header)| {
            let text = header_text(claims.get(claim)?)?;
            let value = HeaderValue::from_str(&text).ok()?;
            Some((header.clone(), value))
        })
        .collect();
    Ok(Principal {
        method: AuthMethod::Jwt,
        subject,
        consumer_name: None,
        plan,
        credential_id: Arc::clone(&issuer.name),
        scopes,
        roles,
        headers,
    })
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        other => scalar_text(other),
    }
}

/// Mints a token for `gatehouse token` (development only). Signs with the
/// issuer's `signing_key` (read now; the first configured algorithm that
/// fits it) or, for an HMAC issuer, its secret (the first HS algorithm).
/// Sets `iss` (if configured), `aud` (the first audience, if any), `sub`,
/// `iat`, `nbf`, `exp` (`now + ttl`) and `scope` (space-joined, if any);
/// `extra` claims are added but cannot replace those. The header carries
/// the first public key's `kid`, if it has one.
pub fn mint(
    issuer: &Issuer,
    sub: &str,
    scopes: &[String],
    ttl: Duration,
    extra: Map<String, Value>,
    now: i64,
) -> Result<String, IssuerError> {
    let name = issuer.name.to_string();
    let mut claims = extra;
    if let Some(iss) = &issuer.issuer {
        claims.insert("iss".into(), Value::String(iss.clone()));
    }
    if let Some(aud) = issuer.audiences.first() {
        claims.insert("aud".into(), Value::String(aud.clone()));
    }
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    claims.insert("sub".into(), Value::String(sub.to_owned()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("nbf".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now.saturating_add(ttl)));
    if !scopes.is_empty() {
        claims.insert("scope".into(), Value::String(scopes.join(" ")));
    }

    let (key, field, candidates, kid) = if let Some(path) = &issuer.signing_key {
        let pem = std::fs::read(path).map_err(|source| IssuerError::Read {
            issuer: name.clone(),
            field: "signing_key".into(),
            path: path.clone(),
            source,
        })?;
        let key = EncodingKey::from_ed_pem(&pem)
            .or_else(|_| EncodingKey::from_ec_pem(&pem))
            .or_else(|_| EncodingKey::from_rsa_pem(&pem))
            .map_err(|_| IssuerError::BadKey {
                issuer: name.clone(),
                field: "signing_key".into(),
                path: path.clone(),
                reason: "not a PKCS#8 (or PKCS#1 RSA) private key PEM".into(),
            })?;
        let family = key.family();
        let algs: Vec<Algorithm> = issuer
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.family() == family)
            .collect();
        (key, "signing_key", algs, issuer.signing_kid.clone())
    } else if let Some(secret) = issuer
        .keys
        .iter()
        .find(|k| k.key.family() == AlgorithmFamily::Hmac)
    {
        let bytes = secret
            .key
            .try_get_hmac_secret()
            .map_err(|source| IssuerError::Sign {
                issuer: name.clone(),
                field: "hmac_secret_env".into(),
                source,
            })?;
        let algs = issuer
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .collect();
        (
            EncodingKey::from_secret(bytes),
            "hmac_secret_env",
            algs,
            None,
        )
    } else {
        return Err(IssuerError::Invalid {
            issuer: name,
            field: "signing_key".into(),
            reason: "minting needs signing_key (asymmetric) or hmac_secret_env (HMAC)".into(),
        });
    };
    let mut last = None;
    for alg in candidates {
        let mut header = Header::new(alg);
        header.kid = kid.clone();
        match jsonwebtoken::encode(&header, &claims, &key) {
            Ok(token) => return Ok(token),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => IssuerError::Sign {
            issuer: name,
            field: field.into(),
            source,
        },
        None => IssuerError::Invalid {
            issuer: name,
            field: field.into(),
            reason: "the key fits none of the configured algorithms".into(),
        },
    })
}

/// For `dev_keys = true`: when both `signing_key` and `public_keys[0].path`
/// are missing, generates an ES256 key pair there (private key PKCS#8,
/// mode 0600; public key SPKI). Returns whether it wrote keys. Refuses to
/// write only one half (that would never match the other).
pub fn ensure_dev_keys(spec: &JwtIssuerSpec, base_dir: &Path) -> Result<bool, IssuerError> {
    if !spec.dev_keys {
        return Ok(false);
    }
    let Some(private) = spec.signing_key.as_deref().map(|p| resolve(base_dir, p)) else {
        return Err(invalid(
            spec,
            "dev_keys",
            "needs signing_key (where to write the private key)",
        ));
    };
    let Some(public) = spec.public_keys.first().map(|k| resolve(base_dir, &k.path)) else {
        return Err(invalid(
            spec,
            "dev_keys",
            "needs a public_keys entry (where to write the public key)",
        ));
    };
    if !spec.algorithms.iter().any(|a| a == "ES256") {
        return Err(invalid(
            spec,
            "dev_keys",
            "dev keys are ES256: add it to algorithms",
        ));
    }
    match (private.exists(), public.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (true, false) | (false, true) => {
            return Err(invalid(
                spec,
                "dev_keys",
                format!(
                    "only one of {} and {} exists; remove it to generate a new pair",
                    private.display(),
                    public.display()
                ),
            ));
        }
    }
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        IssuerError::Generate {
            issuer: spec.name.clone(),
            source,
        }
    })?;
    write_new(
        spec,
        "signing_key",
        &private,
        pair.serialize_pem().as_bytes(),
        true,
    )?;
    write_new(
        spec,
        "public_keys[0].path",
        &public,
        pair.public_key_pem().as_bytes(),
        false,
    )?;
    Ok(true)
}

fn write_new(
    spec: &JwtIssuerSpec,
    field: &str,
    path: &Path,
    contents: &[u8],
    private: bool,
) -> Result<(), IssuerError> {
    use std::io::Write as _;
    let err = |source| IssuerError::Write {
        issuer: spec.name.clone(),
        field: field.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

fn is_b64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn b64url_value(b: u8) -> Option<u32> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

/// Strict unpadded base64url (RFC 4648 §5) decoding: no padding, no
/// whitespace, no other alphabet, no non-zero trailing bits.
pub(crate) fn b64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    for chunk in input.chunks(4) {
        let mut acc: u32 = 0;
        for &b in chunk {
            acc = (acc << 6) | b64url_value(b)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Unpadded base64url encoding (tests forge tokens with it).
#[cfg(test)]
pub(crate) fn b64url_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = ((n >> (18 - 6 * i)) & 63) as usize;
            out.push(char::from(ALPHABET.get(idx).copied().unwrap_or(b'A')));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde_json::json;

    use super::*;
    use crate::config::{Dur, PublicKeySpec};

    const RSA_PRIVATE: &str = include_str!("testdata/rsa2048_test_private.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/rsa2048_test_public.pem");
    const NOW: i64 = 1_700_000_000;
    const SECRET_VAR: &str = "GATEHOUSE_TEST_JWT_SECRET";
    const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

    #[derive(Debug)]
    struct TestClock(AtomicI64);

    impl TestClock {
        fn at(t: i64) -> Arc<TestClock> {
            Arc::new(TestClock(AtomicI64::new(t)))
        }
        fn set(&self, t: i64) {
            self.0.store(t, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == SECRET_VAR).then(|| SECRET.to_owned())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn spec(name: &str, algs: &[&str]) -> JwtIssuerSpec {
        let algs: Vec<String> = algs.iter().map(|a| format!("{a:?}")).collect();
        toml::from_str(&format!(
            "name = {name:?}\nalgorithms = [{}]\n",
            algs.join(", ")
        ))
        .unwrap()
    }

    fn registry() -> JwksRegistry {
        JwksRegistry::new().unwrap()
    }

    /// A generated key pair: private PKCS#8 PEM, public SPKI PEM, raw public.
    struct Pair {
        private: String,
        public: String,
        raw: Vec<u8>,
    }

    fn generate(alg: &'static rcgen::SignatureAlgorithm) -> Pair {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        Pair {
            private: kp.serialize_pem(),
            public: kp.public_key_pem(),
            raw: kp.public_key_raw().to_vec(),
        }
    }

    fn rsa_pair() -> Pair {
        Pair {
            private: RSA_PRIVATE.to_owned(),
            public: RSA_PUBLIC.to_owned(),
            raw: Vec::new(),
        }
    }

    fn encoding_key(alg: Algorithm, private: &str) -> EncodingKey {
        match alg.family() {
            AlgorithmFamily::Hmac => EncodingKey::from_secret(private.as_bytes()),
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        }
    }

    /// Signs `claims` under a hand-made header (so tests can put anything
    /// in it), the way an attacker would.
    fn forge(header: Value, claims: &Value, alg: Algorithm, private: &str) -> String {
        let message = format!(
            "{}.{}",
            b64url_encode(header.to_string().as_bytes()),
            b64url_encode(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(alg, private), alg)
            .unwrap();
        format!("{message}.{sig}")
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, private: &str) -> String {
        let mut header = json!({"alg": format!("{alg:?}"), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        forge(header, claims, alg, private)
    }

    fn claims(iss: &str) -> Value {
        json!({
            "iss": iss,
            "aud": "api",
            "sub": "alice",
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 600,
        })
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        if let Some(m) = base.as_object_mut() {
            m.remove(key);
        }
        base
    }

    fn flip_signature_char(token: &str) -> String {
        let dot = token.rfind('.').unwrap();
        let mut bytes = token.as_bytes().to_vec();
        let i = dot + 10;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    /// Static-key issuers of every family, with their signing keys.
    struct World {
        _dir: tempfile::TempDir,
        verifier: JwtVerifier,
        rsa: Pair,
        p256: Pair,
        p384: Pair,
        ed: Pair,
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        PathBuf::from(name)
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let rsa = rsa_pair();
        let p256 = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let p384 = generate(&rcgen::PKCS_ECDSA_P384_SHA384);
        let ed = generate(&rcgen::PKCS_ED25519);
        let reg = registry();
        let mut hs = spec("hs", &["HS256", "HS512"]);
        hs.issuer = Some("https://hs.test".into());
        hs.audiences = vec!["api".into()];
        hs.hmac_secret_env = Some(SECRET_VAR.into());
        hs.required_claims = vec!["tenant".into()];

        let mut rs = spec("rs", &["RS256", "PS256"]);
        rs.issuer = Some("https://rs.test".into());
        rs.audiences = vec!["api".into(), "api2".into()];
        rs.public_keys = vec![PublicKeySpec {
            path: write(dir.path(), "rsa.pem", &rsa.public),
            kid: Some("rsa1".into()),
        }];

        let mut es = spec("es", &["ES256", "ES384"]);
        es.issuer = Some("https://es.test".into());
        es.audiences = vec!["api".into()];
        es.public_keys = vec![
            PublicKeySpec {
                path: write(dir.path(), "p256.pem", &p256.public),
                kid: Some("ec1".into()),
            },
            PublicKeySpec {
                path: write(dir.path(), "p384.pem", &p384.public),
                kid: Some("ec2".into()),
            },
        ];
        es.roles_claim = Some("roles".into());
        es.plan_claim = Some("plan".into());
        es.claim_headers = [
            ("sub", "x-auth-sub"),
            ("tenant", "x-auth-tenant"),
            ("groups", "x-auth-groups"),
            ("admin", "x-auth-admin"),
            ("evil", "x-auth-evil"),
            ("obj", "x-auth-obj"),
            ("absent", "x-auth-absent"),
        ]
        .into_iter()
        .map(|(c, h)| (c.to_owned(), h.to_owned()))
        .collect();

        let mut ed_spec = spec("ed", &["EdDSA"]);
        ed_spec.issuer = Some("https://ed.test".into());
        ed_spec.audiences = vec!["api".into()];
        ed_spec.scope_claim = Some("permissions".into());
        ed_spec.public_keys = vec![PublicKeySpec {
            path: write(dir.path(), "ed.pem", &ed.public),
            kid: None,
        }];

        let issuers = [hs, rs, es, ed_spec]
            .iter()
            .map(|s| Arc::new(Issuer::build(s, dir.path(), &env, &reg).unwrap()))
            .collect();
        World {
            _dir: dir,
            verifier: JwtVerifier::new(issuers, TestClock::at(NOW)),
            rsa,
            p256,
            p384,
            ed,
        }
    }

    fn outcome(r: Result<Principal, JwtError>) -> Result<String, JwtError> {
        r.map(|p| p.subject.to_string())
    }

    #[tokio::test]
    async fn verify_cases() {
        let w = world();
        let hs = || with(claims("https://hs.test"), "tenant", json!("t1"));
        let rs = || claims("https://rs.test");
        let es = || claims("https://es.test");
        let ed = || claims("https://ed.test");
        let p256 = w.p256.private.as_str();
        let es256 = |c: &Value| sign(Algorithm::ES256, Some("ec1"), c, p256);
        let ok = Ok("alice".to_owned());
        let valid_es = es256(&es());
        let header_segment = |h: Value| b64url_encode(h.to_string().as_bytes());
        let payload_segment = b64url_encode(es().to_string().as_bytes());
        let cases: Vec<(&str, String, Option<Vec<String>>, Result<String, JwtError>)> = vec![
            (
                "HS256",
                sign(Algorithm::HS256, None, &hs(), SECRET),
                None,
                ok.clone(),
            ),
            (
                "HS512",
                sign(Algorithm::HS512, None, &hs(), SECRET),
                None,
                ok.clone(),
            ),
            (
                "RS256",
                sign(Algorithm::RS256, Some("rsa1"), &rs(), &w.rsa.private),
                None,
                ok.clone(),
            ),
            (
                "PS256",
                sign(Algorithm::PS256, Some("rsa1"), &rs(), &w.rsa.private),
                None,
                ok.clone(),
            ),
            ("ES256", valid_es.clone(), None, ok.clone()),
            (
                "ES384",
                sign(Algorithm::ES384, Some("ec2"), &es(), &w.p384.private),
                None,
                ok.clone(),
            ),
            (
                "EdDSA without kid",
                sign(Algorithm::EdDSA, None, &ed(), &w.ed.private),
                None,
                ok.clone(),
            ),
            (
                "EdDSA with any kid (key has none)",
                sign(Algorithm::EdDSA, Some("x"), &ed(), &w.ed.private),
                None,
                ok.clone(),
            ),
            (
                "ES256 without kid tries the fitting keys",
                sign(Algorithm::ES256, None, &es(), p256),
                None,
                ok.clone(),
            ),
            (
                "route allows the issuer",
                valid_es.clone(),
                Some(vec!["es".into()]),
                ok.clone(),
            ),
            (
                "route allows another issuer",
                valid_es.clone(),
                Some(vec!["hs".into()]),
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "route allows no known issuer",
                valid_es.clone(),
                Some(vec!["nobody".into()]),
                Err(JwtError::UnknownIssuer),
            ),
            (
                "alg none, unsigned",
                format!(
                    "{}.{payload_segment}.",
                    header_segment(json!({"alg": "none"}))
                ),
                None,
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "alg NoNe, unsigned",
                format!(
                    "{}.{payload_segment}.",
                    header_segment(json!({"alg": "NoNe"}))
                ),
                None,
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "unknown alg",
                format!(
                    "{}.{payload_segment}.AAAA",
                    header_segment(json!({"alg": "HS1024"}))
                ),
                None,
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "RS256 public key used as HS256 secret",
                sign(Algorithm::HS256, Some("rsa1"), &rs(), &w.rsa.public),
                None,
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "RS256 public key used as HS256 secret, route allows rs",
                sign(Algorithm::HS256, None, &rs(), &w.rsa.public),
                Some(vec!["rs".into()]),
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "algorithm of another issuer",
                sign(Algorithm::ES256, Some("ec1"), &hs(), p256),
                None,
                Err(JwtError::AlgorithmNotAllowed),
            ),
            (
                "expired",
                es256(&with(es(), "exp", json!(NOW - 31))),
                None,
                Err(JwtError::Expired),
            ),
            (
                "expired exactly at the leeway",
                es256(&with(es(), "exp", json!(NOW - 30))),
                None,
                Err(JwtError::Expired),
            ),
            (
                "expired within leeway",
                es256(&with(es(), "exp", json!(NOW - 29))),
                None,
                ok.clone(),
            ),
            (
                "fractional exp",
                es256(&with(es(), "exp", json!(NOW as f64 + 0.5))),
                None,
                ok.clone(),
            ),
            (
                "not yet valid",
                es256(&with(es(), "nbf", json!(NOW + 31))),
                None,
                Err(JwtError::NotYetValid),
            ),
            (
                "nbf within leeway",
                es256(&with(es(), "nbf", json!(NOW + 30))),
                None,
                ok.clone(),
            ),
            (
                "nbf as a string",
                es256(&with(es(), "nbf", json!("0"))),
                None,
                Err(JwtError::WrongClaimType("nbf".into())),
            ),
            (
                "iat in the future",
                es256(&with(es(), "iat", json!(NOW + 31))),
                None,
                Err(JwtError::IssuedInFuture),
            ),
            (
                "iat within leeway",
                es256(&with(es(), "iat", json!(NOW + 30))),
                None,
                ok.clone(),
            ),
            (
                "iat as a bool",
                es256(&with(es(), "iat", json!(true))),
                None,
                Err(JwtError::WrongClaimType("iat".into())),
            ),
            (
                "missing exp",
                es256(&without(es(), "exp")),
                None,
                Err(JwtError::MissingClaim("exp".into())),
            ),
            (
                "exp as a string",
                es256(&with(es(), "exp", json!((NOW + 600).to_string()))),
                None,
                Err(JwtError::WrongClaimType("exp".into())),
            ),
            (
                "exp null",
                es256(&with(es(), "exp", Value::Null)),
                None,
                Err(JwtError::WrongClaimType("exp".into())),
            ),
            (
                "wrong iss, route allows es",
                es256(&with(es(), "iss", json!("https://evil.test"))),
                Some(vec!["es".into()]),
                Err(JwtError::WrongIssuer),
            ),
            (
                "wrong iss, any route",
                es256(&with(es(), "iss", json!("https://evil.test"))),
                None,
                Err(JwtError::UnknownIssuer),
            ),
            (
                "missing iss, route allows es",
                es256(&without(es(), "iss")),
                Some(vec!["es".into()]),
                Err(JwtError::MissingClaim("iss".into())),
            ),
            (
                "iss as a number",
                es256(&with(es(), "iss", json!(7))),
                None,
                Err(JwtError::WrongClaimType("iss".into())),
            ),
            (
                "wrong aud",
                es256(&with(es(), "aud", json!("other"))),
                None,
                Err(JwtError::WrongAudience),
            ),
            (
                "aud array containing ours",
                es256(&with(es(), "aud", json!(["other", "api"]))),
                None,
                ok.clone(),
            ),
            (
                "aud array without ours",
                es256(&with(es(), "aud", json!(["other"]))),
                None,
                Err(JwtError::WrongAudience),
            ),
            (
                "aud empty array",
                es256(&with(es(), "aud", json!([]))),
                None,
                Err(JwtError::WrongAudience),
            ),
            (
                "aud 123",
                es256(&with(es(), "aud", json!(123))),
                None,
                Err(JwtError::WrongClaimType("aud".into())),
            ),
            (
                "aud array with a number",
                es256(&with(es(), "aud", json!(["api", 1]))),
                None,
                Err(JwtError::WrongClaimType("aud".into())),
            ),
            (
                "missing aud",
                es256(&without(es(), "aud")),
                None,
                Err(JwtError::MissingClaim("aud".into())),
            ),
            (
                "second configured audience",
                sign(
                    Algorithm::RS256,
                    Some("rsa1"),
                    &with(rs(), "aud", json!("api2")),
                    &w.rsa.private,
                ),
                None,
                ok.clone(),
            ),
            (
                "missing sub",
                es256(&without(es(), "sub")),
                None,
                Err(JwtError::MissingClaim("sub".into())),
            ),
            (
                "empty sub",
                es256(&with(es(), "sub", json!(""))),
                None,
                Err(JwtError::MissingClaim("sub".into())),
            ),
            (
                "sub as a number",
                es256(&with(es(), "sub", json!(42))),
                None,
                Err(JwtError::WrongClaimType("sub".into())),
            ),
            (
                "missing required claim",
                sign(Algorithm::HS256, None, &without(hs(), "tenant"), SECRET),
                None,
                Err(JwtError::MissingClaim("tenant".into())),
            ),
            (
                "null required claim",
                sign(
                    Algorithm::HS256,
                    None,
                    &with(hs(), "tenant", Value::Null),
                    SECRET,
                ),
                None,
                Err(JwtError::MissingClaim("tenant".into())),
            ),
            (
                "bad signature (flipped byte)",
                flip_signature_char(&valid_es),
                None,
                Err(JwtError::BadSignature),
            ),
            (
                "tampered payload",
                {
                    let parts: Vec<&str> = valid_es.split('.').collect();
                    let evil =
                        b64url_encode(with(es(), "sub", json!("root")).to_string().as_bytes());
                    format!("{}.{evil}.{}", parts[0], parts[2])
                },
                None,
                Err(JwtError::BadSignature),
            ),
            (
                "signed by another key",
                sign(
                    Algorithm::ES256,
                    Some("ec1"),
                    &es(),
                    &generate(&rcgen::PKCS_ECDSA_P256_SHA256).private,
                ),
                None,
                Err(JwtError::BadSignature),
            ),
            (
                "HS256 with a wrong secret",
                sign(
                    Algorithm::HS256,
                    None,
                    &hs(),
                    "another-secret-of-32-bytes-or-more!!",
                ),
                None,
                Err(JwtError::BadSignature),
            ),
            (
                "ES256 under the P-384 kid",
                sign(Algorithm::ES256, Some("ec2"), &es(), p256),
                None,
                Err(JwtError::UnknownKey),
            ),
            (
                "unknown kid on a static issuer",
                sign(Algorithm::ES256, Some("nope"), &es(), p256),
                None,
                Err(JwtError::UnknownKey),
            ),
            (
                "kid not a string",
                forge(
                    json!({"alg": "ES256", "kid": 5}),
                    &es(),
                    Algorithm::ES256,
                    p256,
                ),
                None,
                Err(JwtError::Malformed),
            ),
            (
                "truncated: two segments",
                valid_es.rsplit_once('.').unwrap().0.to_owned(),
                None,
                Err(JwtError::Malformed),
            ),
            (
                "truncated signature",
                valid_es[..valid_es.len() - 10].to_owned(),
                None,
                Err(JwtError::BadSignature),
            ),
            (
                "four segments",
                format!("{valid_es}.AAAA"),
                None,
                Err(JwtError::Malformed),
            ),
            ("empty", String::new(), None, Err(JwtError::Malformed)),
            (
                "not base64url",
                valid_es.replacen('.', ".+", 1),
                None,
                Err(JwtError::Malformed),
            ),
            (
                "padded base64",
                format!(
                    "{}=.{}",
                    valid_es.split('.').next().unwrap(),
                    valid_es.split_once('.').unwrap().1
                ),
                None,
                Err(JwtError::Malformed),
            ),
            (
                "header not JSON",
                format!("{}.{payload_segment}.AAAA", b64url_encode(b"nope")),
                None,
                Err(JwtError::Malformed),
            ),
            (
                "payload not an object",
                sign(Algorithm::ES256, Some("ec1"), &json!([1, 2]), p256),
                None,
                Err(JwtError::Malformed),
            ),
            (
                "oversized, refused before decoding",
                "a".repeat(9000),
                None,
                Err(JwtError::TooLarge),
            ),
        ];
        let mut forbidden: Vec<(String, String)> = Vec::new();
        for (h, v) in [
            ("crit", json!(["exp"])),
            ("jku", json!("https://evil.test/jwks")),
            ("x5u", json!("https://evil.test/cert")),
            ("jwk", json!({"kty": "oct", "k": "AAAA"})),
            ("x5c", json!(["MIIB"])),
            ("jku", Value::Null),
        ] {
            let header = json!({"alg": "ES256", "kid": "ec1", h: v});
            forbidden.push((
                format!("{h} header ({v})"),
                forge(header, &es(), Algorithm::ES256, p256),
            ));
        }
        for (name, token, allowed, want) in cases {
            let got = outcome(w.verifier.verify(&token, allowed.as_deref()).await);
            assert_eq!(got, want, "{name}");
        }
        for (name, token) in forbidden {
            let got = outcome(w.verifier.verify(&token, None).await);
            assert_eq!(got, Err(JwtError::ForbiddenHeader), "{name}");
        }
    }

    #[tokio::test]
    async fn leeway_with_a_moving_clock() {
        let w = world();
        let clock = TestClock::at(NOW);
        let verifier = JwtVerifier::new(w.verifier.issuers().to_vec(), clock.clone());
        let c = json!({
            "iss": "https://es.test", "aud": "api", "sub": "alice",
            "nbf": NOW + 100, "exp": NOW + 200,
        });
        let token = sign(Algorithm::ES256, Some("ec1"), &c, &w.p256.private);
        let cases = [
            ("long before nbf", NOW, Err(JwtError::NotYetValid)),
            (
                "just outside leeway before nbf",
                NOW + 69,
                Err(JwtError::NotYetValid),
            ),
            ("within leeway before nbf", NOW + 70, Ok("alice".to_owned())),
            ("inside the window", NOW + 150, Ok("alice".to_owned())),
            ("within leeway after exp", NOW + 229, Ok("alice".to_owned())),
            (
                "leeway used up after exp",
                NOW + 230,
                Err(JwtError::Expired),
            ),
            ("long after exp", NOW + 10_000, Err(JwtError::Expired)),
        ];
        for (name, now, want) in cases {
            clock.set(now);
            assert_eq!(outcome(verifier.verify(&token, None).await), want, "{name}");
        }
    }

    #[tokio::test]
    async fn verified_tokens_are_remembered_only_inside_their_window() {
        let w = world();
        let clock = TestClock::at(NOW);
        let verifier = JwtVerifier::new(w.verifier.issuers().to_vec(), clock.clone());
        let c = json!({
            "iss": "https://es.test", "aud": "api", "sub": "alice",
            "nbf": NOW - 10, "exp": NOW + 100,
        });
        let token = sign(Algorithm::ES256, Some("ec1"), &c, &w.p256.private);
        let es_only = vec!["es".to_owned()];
        let other = vec!["ed".to_owned()];
        // (name, clock, allowed issuers, outcome, signature checks so far)
        let cases: Vec<(&str, i64, Option<&[String]>, Result<String, JwtError>, u64)> = vec![
            (
                "first use checks the signature",
                NOW,
                None,
                Ok("alice".into()),
                1,
            ),
            (
                "second use is remembered",
                NOW + 1,
                Some(&es_only),
                Ok("alice".into()),
                1,
            ),
            (
                "a route without its issuer is not served from memory",
                NOW + 1,
                Some(&other),
                Err(JwtError::AlgorithmNotAllowed),
                1,
            ),
            (
                "before the window is checked again",
                NOW - 100,
                None,
                Err(JwtError::NotYetValid),
                2,
            ),
            (
                "past exp and leeway is checked again",
                NOW + 130,
                None,
                Err(JwtError::Expired),
                3,
            ),
        ];
        for (name, now, allowed, want, checks) in cases {
            clock.set(now);
            assert_eq!(
                outcome(verifier.verify(&token, allowed).await),
                want,
                "{name}"
            );
            assert_eq!(verifier.signature_checks(), checks, "{name}");
        }
    }

    #[tokio::test]
    async fn principal_scopes_roles_plan_and_headers() {
        let w = world();
        let es = |extra: Value| {
            let mut c = claims("https://es.test");
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            sign(Algorithm::ES256, Some("ec1"), &c, &w.p256.private)
        };
        let ed = |extra: Value| {
            let mut c = claims("https://ed.test");
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            sign(Algorithm::EdDSA, None, &c, &w.ed.private)
        };
        type Want = Result<(Vec<&'static str>, Vec<&'static str>, Option<&'static str>), JwtError>;
        let cases: Vec<(&str, String, Want)> = vec![
            (
                "scope string",
                es(json!({"scope": "read  write"})),
                Ok((vec!["read", "write"], vec![], None)),
            ),
            (
                "scp array",
                es(json!({"scp": ["a", "b"]})),
                Ok((vec!["a", "b"], vec![], None)),
            ),
            (
                "scp string",
                es(json!({"scp": "a b"})),
                Ok((vec!["a", "b"], vec![], None)),
            ),
            (
                "scope wins over scp",
                es(json!({"scope": "x", "scp": ["y"]})),
                Ok((vec!["x"], vec![], None)),
            ),
            ("no scopes", es(json!({})), Ok((vec![], vec![], None))),
            (
                "scope wrong type",
                es(json!({"scope": 5})),
                Err(JwtError::WrongClaimType("scope".into())),
            ),
            (
                "scp with a number",
                es(json!({"scp": ["a", 1]})),
                Err(JwtError::WrongClaimType("scp".into())),
            ),
            (
                "roles and plan",
                es(json!({"roles": ["admin", "ops"], "plan": "gold"})),
                Ok((vec![], vec!["admin", "ops"], Some("gold"))),
            ),
            (
                "plan wrong type",
                es(json!({"plan": 3})),
                Err(JwtError::WrongClaimType("plan".into())),
            ),
            (
                "roles wrong type",
                es(json!({"roles": {"a": 1}})),
                Err(JwtError::WrongClaimType("roles".into())),
            ),
            (
                "custom scope claim",
                ed(json!({"permissions": ["p:1", "p:2"], "scope": "ignored"})),
                Ok((vec!["p:1", "p:2"], vec![], None)),
            ),
        ];
        for (name, token, want) in cases {
            let got = w
                .verifier
                .verify(&token, None)
                .await
                .map(|p| (p.scopes, p.roles, p.plan.map(|s| s.to_string())));
            let want = want.map(|(s, r, p)| {
                (
                    s.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    r.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    p.map(str::to_owned),
                )
            });
            assert_eq!(got, want, "{name}");
        }

        let token = es(json!({
            "tenant": 42,
            "groups": ["a", "b", 3],
            "admin": true,
            "evil": "x\r\nx-injected: 1",
            "obj": {"nested": 1},
        }));
        let p = w.verifier.verify(&token, None).await.unwrap();
        assert_eq!(p.method, AuthMethod::Jwt);
        assert_eq!(&*p.credential_id, "es");
        assert_eq!(p.consumer_name, None);
        let mut headers: Vec<(String, String)> = p
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let want: Vec<(String, String)> = [
            ("x-auth-admin", "true"),
            ("x-auth-groups", "a,b,3"),
            ("x-auth-sub", "alice"),
            ("x-auth-tenant", "42"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(headers, want);
    }

    #[test]
    fn build_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let rsa_pub = write(dir.path(), "rsa.pem", RSA_PUBLIC);
        let rsa_priv = write(dir.path(), "rsa-private.pem", RSA_PRIVATE);
        let p256 = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let p256_pub = write(dir.path(), "p256.pem", &p256.public);
        let reg = registry();
        let key = |path: &PathBuf| PublicKeySpec {
            path: path.clone(),
            kid: None,
        };
        let hs = |f: &dyn Fn(&mut JwtIssuerSpec)| {
            let mut s = spec("my-idp", &["HS256"]);
            s.hmac_secret_env = Some(SECRET_VAR.into());
            f(&mut s);
            s
        };
        let rs = |f: &dyn Fn(&mut JwtIssuerSpec)| {
            let mut s = spec("my-idp", &["RS256"]);
            s.public_keys = vec![key(&rsa_pub)];
            f(&mut s);
            s
        };
        let short = |name: &str| (name == SECRET_VAR).then(|| "too-short-secret".to_owned());
        let pem_secret =
            |name: &str| (name == SECRET_VAR).then(|| format!("{RSA_PUBLIC}{RSA_PUBLIC}"));
        type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
        let cases: Vec<(&str, JwtIssuerSpec, Env<'_>, &str, &str)> = vec![
            (
                "alg none",
                rs(&|s| s.algorithms = vec!["RS256".into(), "none".into()]),
                &env,
                "algorithms",
                "never accepted",
            ),
            (
                "unknown alg",
                rs(&|s| s.algorithms = vec!["HS1024".into()]),
                &env,
                "algorithms",
                "unknown algorithm \"HS1024\"",
            ),
            (
                "no algorithms",
                rs(&|s| s.algorithms.clear()),
                &env,
                "algorithms",
                "at least one",
            ),
            (
                "mixed HS and RS",
                rs(&|s| {
                    s.algorithms = vec!["RS256".into(), "HS256".into()];
                    s.hmac_secret_env = Some(SECRET_VAR.into());
                }),
                &env,
                "algorithms",
                "cannot be mixed",
            ),
            (
                "short HMAC secret",
                hs(&|_| {}),
                &short,
                "hmac_secret_env",
                "shorter than 32 bytes",
            ),
            (
                "PEM as HMAC secret",
                hs(&|_| {}),
                &pem_secret,
                "hmac_secret_env",
                "PEM key",
            ),
            (
                "missing env var",
                hs(&|_| {}),
                &no_env,
                "hmac_secret_env",
                "GATEHOUSE_TEST_JWT_SECRET is not set",
            ),
            (
                "HMAC without hmac_secret_env",
                hs(&|s| s.hmac_secret_env = None),
                &env,
                "public_keys",
                "no key source",
            ),
            (
                "HMAC with a jwks_url",
                hs(&|s| s.jwks_url = Some("https://idp.test/jwks".into())),
                &env,
                "jwks_url",
                "not allowed with HMAC",
            ),
            (
                "HMAC issuer with a public key",
                hs(&|s| s.public_keys = vec![key(&rsa_pub)]),
                &env,
                "public_keys",
                "not allowed with HMAC",
            ),
            (
                "hmac_secret_env on an RS issuer",
                rs(&|s| s.hmac_secret_env = Some(SECRET_VAR.into())),
                &env,
                "hmac_secret_env",
                "only for HMAC",
            ),
            (
                "missing file",
                rs(&|s| s.public_keys = vec![key(&PathBuf::from("nope.pem"))]),
                &env,
                "public_keys[0].path",
                "cannot read",
            ),
            (
                "private key as public key",
                rs(&|s| s.public_keys = vec![key(&rsa_priv)]),
                &env,
                "public_keys[0].path",
                "private key",
            ),
            (
                "RSA key for ES256",
                rs(&|s| s.algorithms = vec!["ES256".into()]),
                &env,
                "public_keys[0].path",
                "a RSA key cannot verify any of the configured algorithms (ES256)",
            ),
            (
                "EC key for RS256",
                rs(&|s| s.public_keys = vec![key(&p256_pub)]),
                &env,
                "public_keys[0].path",
                "EC P-256 key cannot verify",
            ),
            (
                "algorithm without a key",
                rs(&|s| s.algorithms = vec!["RS256".into(), "ES256".into()]),
                &env,
                "algorithms",
                "ES256 has no key",
            ),
            (
                "no key source",
                rs(&|s| s.public_keys.clear()),
                &env,
                "public_keys",
                "no key source",
            ),
            (
                "duplicate kid",
                rs(&|s| {
                    s.public_keys = vec![
                        PublicKeySpec {
                            path: rsa_pub.clone(),
                            kid: Some("k".into()),
                        },
                        PublicKeySpec {
                            path: rsa_pub.clone(),
                            kid: Some("k".into()),
                        },
                    ]
                }),
                &env,
                "public_keys[1].kid",
                "used twice",
            ),
            (
                "hop-by-hop header",
                rs(&|s| {
                    s.claim_headers.insert("sub".into(), "Connection".into());
                }),
                &env,
                "claim_headers.sub",
                "hop-by-hop",
            ),
            (
                "framing header",
                rs(&|s| {
                    s.claim_headers
                        .insert("sub".into(), "content-length".into());
                }),
                &env,
                "claim_headers.sub",
                "framing",
            ),
            (
                "invalid header name",
                rs(&|s| {
                    s.claim_headers.insert("sub".into(), "x auth".into());
                }),
                &env,
                "claim_headers.sub",
                "not a valid header name",
            ),
            (
                "empty claim name",
                rs(&|s| s.required_claims = vec![String::new()]),
                &env,
                "required_claims",
                "must not be empty",
            ),
            (
                "empty header claim",
                rs(&|s| {
                    s.claim_headers.insert(String::new(), "x-a".into());
                }),
                &env,
                "claim_headers",
                "must not be empty",
            ),
            (
                "huge leeway",
                rs(&|s| s.leeway = Dur(Duration::from_secs(600))),
                &env,
                "leeway",
                "at most 300s",
            ),
            (
                "jwks_url not http",
                rs(&|s| s.jwks_url = Some("ftp://idp.test/jwks".into())),
                &env,
                "jwks_url",
                "only http",
            ),
            (
                "jwks_url with credentials",
                rs(&|s| s.jwks_url = Some("https://u:p@idp.test/jwks".into())),
                &env,
                "jwks_url",
                "credentials",
            ),
            (
                "jwks_url plain http to another host",
                rs(&|s| s.jwks_url = Some("http://idp.test/jwks".into())),
                &env,
                "jwks_url",
                "use https",
            ),
            (
                "empty name",
                rs(&|s| s.name = " ".into()),
                &env,
                "name",
                "printable",
            ),
        ];
        for (name, s, env, field, contains) in cases {
            let err = match Issuer::build(&s, dir.path(), env, &reg) {
                Ok(i) => panic!("{name}: built {i:?}"),
                Err(e) if e.to_string().contains("u:p") => {
                    panic!("{name}: the URL's password is echoed")
                }
                Err(e) => e,
            };
            let msg = err.to_string();
            assert_eq!(err.field(), field, "{name}: {msg}");
            assert!(msg.contains(contains), "{name}: {msg}");
            if field != "name" {
                assert!(
                    msg.contains("\"my-idp\""),
                    "{name}: message names the issuer: {msg}"
                );
                assert_eq!(err.issuer(), "my-idp", "{name}");
            }
            assert!(
                !msg.contains(SECRET) && !msg.contains("too-short-secret"),
                "{name}: {msg}"
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec("hs", &["HS256"]);
        s.hmac_secret_env = Some(SECRET_VAR.into());
        let issuer = Issuer::build(&s, dir.path(), &env, &registry()).unwrap();
        let verifier = JwtVerifier::new(vec![Arc::new(issuer)], TestClock::at(NOW));
        let debug = format!("{verifier:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", SECRET.as_bytes())),
            "{debug}"
        );
        assert!(debug.contains("\"hs\""), "{debug}");
    }

    #[test]
    fn public_descriptions_say_little() {
        let cases = [
            ("expired", JwtError::Expired, "token expired"),
            ("bad signature", JwtError::BadSignature, "invalid token"),
            ("unknown key", JwtError::UnknownKey, "invalid token"),
            (
                "missing claim",
                JwtError::MissingClaim("tenant".into()),
                "invalid token",
            ),
            (
                "keys unavailable",
                JwtError::KeysUnavailable,
                "invalid token",
            ),
            ("too large", JwtError::TooLarge, "token too large"),
        ];
        for (name, err, want) in cases {
            assert_eq!(err.public_description(), want, "{name}");
        }
    }

    #[tokio::test]
    async fn mint_then_verify() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry();
        // ES256 from generated dev keys.
        let mut es = spec("dev", &["ES256"]);
        es.issuer = Some("https://gatehouse.local".into());
        es.audiences = vec!["api".into()];
        es.public_keys = vec![PublicKeySpec {
            path: "keys/dev-jwt.pub.pem".into(),
            kid: Some("dev1".into()),
        }];
        es.signing_key = Some("keys/dev-jwt.key.pem".into());
        es.dev_keys = true;
        // RS256 from the committed test key.
        let mut rs = spec("rs", &["PS256", "RS256"]);
        rs.public_keys = vec![PublicKeySpec {
            path: write(dir.path(), "rsa.pem", RSA_PUBLIC),
            kid: None,
        }];
        rs.signing_key = Some(write(dir.path(), "rsa-key.pem", RSA_PRIVATE));
        // HMAC.
        let mut hs = spec("hs", &["HS384"]);
        hs.hmac_secret_env = Some(SECRET_VAR.into());
        // EdDSA.
        let ed_pair = generate(&rcgen::PKCS_ED25519);
        let mut ed = spec("ed", &["EdDSA"]);
        ed.public_keys = vec![PublicKeySpec {
            path: write(dir.path(), "ed.pem", &ed_pair.public),
            kid: None,
        }];
        ed.signing_key = Some(write(dir.path(), "ed-key.pem", &ed_pair.private));

        assert!(
            ensure_dev_keys(&es, dir.path()).unwrap(),
            "first run writes keys"
        );
        assert!(
            !ensure_dev_keys(&es, dir.path()).unwrap(),
            "second run keeps them"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("keys/dev-jwt.key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        for (name, s, alg) in [
            ("ES256 dev keys", &es, Algorithm::ES256),
            (
                "PS256 (first configured RSA algorithm)",
                &rs,
                Algorithm::PS256,
            ),
            ("HS384", &hs, Algorithm::HS384),
            ("EdDSA", &ed, Algorithm::EdDSA),
        ] {
            let issuer = Arc::new(Issuer::build(s, dir.path(), &env, &reg).unwrap());
            let mut extra = Map::new();
            extra.insert("sub".into(), json!("not-me"));
            extra.insert("tenant".into(), json!("t1"));
            let scopes = vec!["read".to_owned(), "write".to_owned()];
            let token = mint(&issuer, "bob", &scopes, Duration::from_secs(60), extra, NOW).unwrap();
            assert_eq!(
                jsonwebtoken::decode_header(&token).unwrap().alg,
                alg,
                "{name}"
            );
            let verifier = JwtVerifier::new(vec![Arc::clone(&issuer)], TestClock::at(NOW + 30));
            let p = verifier
                .verify(&token, None)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&*p.subject, "bob", "{name}: extra cannot replace sub");
            assert_eq!(p.scopes, scopes, "{name}");
            let late = JwtVerifier::new(vec![issuer], TestClock::at(NOW + 60 + 30));
            assert_eq!(
                late.verify(&token, None).await,
                Err(JwtError::Expired),
                "{name}"
            );
        }

        let mut half = es.clone();
        half.signing_key = Some("other/key.pem".into());
        let err = ensure_dev_keys(&half, dir.path()).unwrap_err();
        assert!(err.to_string().contains("only one of"), "{err}");
    }

    #[test]
    fn base64url() {
        let cases: [(&str, Option<&[u8]>); 9] = [
            ("empty", Some(b"")),
            ("Zg", Some(b"f")),
            ("Zm8", Some(b"fo")),
            ("Zm9v", Some(b"foo")),
            ("-_8", Some(&[0xfb, 0xff])),
            ("Zg==", None),
            ("Zh", None),
            ("Z", None),
            ("Zm9v+", None),
        ];
        for (input, want) in cases {
            let input = if input == "empty" { "" } else { input };
            assert_eq!(b64url_decode(input.as_bytes()).as_deref(), want, "{input}");
        }
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(b64url_decode(b64url_encode(&data).as_bytes()), Some(data));
        }
    }

    // ---- JWKS, against a real server on 127.0.0.1:0 -------------------

    struct JwksServer {
        url: String,
        hits: Arc<AtomicUsize>,
        body: Arc<Mutex<String>>,
        down: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl JwksServer {
        async fn start(body: String) -> JwksServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let hits = Arc::new(AtomicUsize::new(0));
            let body = Arc::new(Mutex::new(body));
            let down = Arc::new(AtomicBool::new(false));
            let (h, b, d) = (hits.clone(), body.clone(), down.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (h, b, d) = (h.clone(), b.clone(), d.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |_req| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let status = if d.load(Ordering::SeqCst) { 503 } else { 200 };
                            let text = b.lock().unwrap().clone();
                            async move {
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(text)))
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            JwksServer {
                url: format!("http://{addr}/.well-known/jwks.json"),
                hits,
                body,
                down,
                task,
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn serve(&self, body: String) {
            *self.body.lock().unwrap() = body;
        }
    }

    fn ec_jwk(pair: &Pair, kid: &str) -> Value {
        // SEC1 uncompressed: 0x04 || x || y.
        let (x, y) = pair.raw[1..].split_at((pair.raw.len() - 1) / 2);
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
               "x": b64url_encode(x), "y": b64url_encode(y)})
    }

    fn ed_jwk(pair: &Pair, kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(&pair.raw)})
    }

    fn rsa_jwk(kid: &str, alg: Algorithm) -> Value {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    fn jwks(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn jwks_issuer(url: &str, reg: &JwksRegistry, min_refresh: Duration) -> Arc<Issuer> {
        let mut s = spec("idp", &["ES256", "EdDSA", "RS256", "PS256"]);
        s.issuer = Some("https://idp.test".into());
        s.audiences = vec!["api".into()];
        s.jwks_url = Some(url.to_owned());
        // Below the config floor, the set's settings are set directly.
        s.jwks_min_refresh_interval = Dur(min_refresh.max(MIN_JWKS_MIN_REFRESH_INTERVAL));
        s.jwks_timeout = Dur(Duration::from_secs(2));
        let issuer = Issuer::build(&s, Path::new("."), &no_env, reg).unwrap();
        if let Some(set) = issuer.jwks() {
            let settings = JwksSettings {
                min_refresh_interval: min_refresh,
                ..set.settings()
            };
            reg.get(set.url(), settings);
        }
        Arc::new(issuer)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn jwks_rotation_refreshes_once_for_a_new_kid() {
        let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let b = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
        let reg = registry();
        let issuer = jwks_issuer(&server.url, &reg, HOUR);
        assert!(reg.refresh_all().await.is_empty());
        assert_eq!(server.hits(), 1, "first fetch");
        let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
        let c = claims("https://idp.test");

        let token_a = sign(Algorithm::ES256, Some("a"), &c, &a.private);
        assert!(verifier.verify(&token_a, None).await.is_ok(), "old key");
        assert_eq!(server.hits(), 1, "known kid: no fetch");

        server.serve(jwks(&[ec_jwk(&b, "b")]));
        let token_b = sign(Algorithm::ES256, Some("b"), &c, &b.private);
        assert_eq!(
            outcome(verifier.verify(&token_b, None).await),
            Ok("alice".into()),
            "new key"
        );
        assert_eq!(server.hits(), 2, "exactly one refresh for the new kid");
        assert!(verifier.verify(&token_b, None).await.is_ok());
        assert_eq!(server.hits(), 2, "now known");

        assert_eq!(
            verifier.verify(&token_a, None).await,
            Err(JwtError::UnknownKey),
            "old key gone"
        );
        assert_eq!(server.hits(), 2, "rate limited");
    }

    #[tokio::test]
    async fn jwks_unknown_kids_are_rate_limited() {
        let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
        let reg = registry();
        let issuer = jwks_issuer(&server.url, &reg, HOUR);
        assert!(reg.refresh_all().await.is_empty());
        let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
        let c = claims("https://idp.test");
        let tokens: Vec<String> = (0..20)
            .map(|i| {
                sign(
                    Algorithm::ES256,
                    Some(&format!("random-{i}")),
                    &c,
                    &a.private,
                )
            })
            .collect();
        let results =
            futures_util::future::join_all(tokens.iter().map(|t| verifier.verify(t, None))).await;
        for r in results {
            assert_eq!(r, Err(JwtError::UnknownKey));
        }
        // Sequentially too.
        for t in &tokens {
            assert_eq!(verifier.verify(t, None).await, Err(JwtError::UnknownKey));
        }
        assert_eq!(server.hits(), 2, "one initial fetch and at most one extra");
    }

    #[tokio::test]
    async fn jwks_server_down_keeps_the_last_good_set() {
        let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let ed = generate(&rcgen::PKCS_ED25519);
        let server = JwksServer::start(jwks(&[
            ec_jwk(&a, "a"),
            ed_jwk(&ed, "ed"),
            rsa_jwk("rsa", Algorithm::RS256),
        ]))
        .await;
        let reg = registry();
        let issuer = jwks_issuer(&server.url, &reg, Duration::from_millis(1));
        assert!(reg.refresh_all().await.is_empty());
        let set = Arc::clone(issuer.jwks().unwrap());
        assert_eq!(set.keys().len(), 3);
        let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
        let c = claims("https://idp.test");
        let cases = [
            (
                "ES256 from JWKS",
                sign(Algorithm::ES256, Some("a"), &c, &a.private),
                Ok("alice".to_owned()),
            ),
            (
                "EdDSA from JWKS",
                sign(Algorithm::EdDSA, Some("ed"), &c, &ed.private),
                Ok("alice".to_owned()),
            ),
            (
                "RS256 from JWKS",
                sign(Algorithm::RS256, Some("rsa"), &c, RSA_PRIVATE),
                Ok("alice".to_owned()),
            ),
            // The JWK says alg RS256: a PS256 token may not use it.
            (
                "JWK alg disagrees with the token",
                sign(Algorithm::PS256, Some("rsa"), &c, RSA_PRIVATE),
                Err(JwtError::UnknownKey),
            ),
        ];

        server.down.store(true, Ordering::SeqCst);
        let failures = reg.refresh_all().await;
        assert!(
            matches!(
                failures.as_slice(),
                [(_, crate::auth::jwks::JwksError::Status(503))]
            ),
            "{failures:?}"
        );
        server.serve("not json".into());
        server.down.store(false, Ordering::SeqCst);
        assert!(
            reg.refresh_all().await.len() == 1,
            "bad JSON is a failure too"
        );
        server.serve(jwks(&[json!({"kty": "oct", "k": "c2VjcmV0", "kid": "a"})]));
        assert!(
            reg.refresh_all().await.len() == 1,
            "no usable key is a failure too"
        );
        server.down.store(true, Ordering::SeqCst);
        assert_eq!(set.keys().len(), 3, "kept");
        for (name, token, want) in cases {
            assert_eq!(outcome(verifier.verify(&token, None).await), want, "{name}");
        }
    }

    #[tokio::test]
    async fn jwks_unavailable_until_a_fetch_works() {
        let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
        server.down.store(true, Ordering::SeqCst);
        let reg = registry();
        let issuer = jwks_issuer(&server.url, &reg, HOUR);
        let verifier = JwtVerifier::new(vec![Arc::clone(&issuer)], TestClock::at(NOW));
        let token = sign(
            Algorithm::ES256,
            Some("a"),
            &claims("https://idp.test"),
            &a.private,
        );
        assert_eq!(
            verifier.verify(&token, None).await,
            Err(JwtError::KeysUnavailable)
        );
        assert_eq!(server.hits(), 1, "the first token tried one fetch");
        server.down.store(false, Ordering::SeqCst);
        assert_eq!(
            verifier.verify(&token, None).await,
            Err(JwtError::KeysUnavailable),
            "rate limited"
        );

        assert_eq!(
            reg.refresh_all().await.len(),
            0,
            "an explicit refresh works"
        );
        assert!(verifier.verify(&token, None).await.is_ok());
    }

    #[tokio::test]
    async fn jwks_background_task_fetches_at_start() {
        let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
        let reg = registry();
        let issuer = jwks_issuer(&server.url, &reg, HOUR);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = reg.spawn_refresh(stop_rx);
        let set = Arc::clone(issuer.jwks().unwrap());
        for _ in 0..200 {
            if set.is_loaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(set.is_loaded(), "background refresh fetched the set");
        assert_eq!(server.hits(), 1);
        let verifier = JwtVerifier::new(vec![issuer], TestClock::at(NOW));
        let token = sign(
            Algorithm::ES256,
            Some("a"),
            &claims("https://idp.test"),
            &a.private,
        );
        assert!(verifier.verify(&token, None).await.is_ok());
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn jwks_sets_are_shared_across_reloads_and_pruned() {
        let a = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let server = JwksServer::start(jwks(&[ec_jwk(&a, "a")])).await;
        let reg = registry();
        let first = jwks_issuer(&server.url, &reg, HOUR);
        let second = jwks_issuer(&server.url, &reg, Duration::from_secs(5));
        assert!(Arc::ptr_eq(first.jwks().unwrap(), second.jwks().unwrap()));
        assert_eq!(reg.sets().len(), 1);
        assert_eq!(
            first.jwks().unwrap().settings().min_refresh_interval,
            Duration::from_secs(5),
            "the last build's settings win"
        );
        reg.refresh_due().await;
        assert_eq!(server.hits(), 1, "due at once");
        reg.refresh_due().await;
        assert_eq!(server.hits(), 1, "not due again");
        drop((first, second));
        reg.refresh_due().await;
        assert!(reg.sets().is_empty(), "unused sets are dropped");
    }

    #[tokio::test]
    async fn jwks_fetch_timeout_and_size_cap() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let reg = registry();
        let uri: http::Uri = format!("http://{addr}/jwks").parse().unwrap();
        let set = reg.get(
            &uri,
            JwksSettings {
                timeout: Duration::from_millis(200),
                ..JwksSettings::default()
            },
        );
        let err = set.refresh().await.unwrap_err();
        assert!(
            matches!(err, crate::auth::jwks::JwksError::Timeout),
            "{err:?}"
        );
        hold.abort();

        let big = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
        let server = JwksServer::start(big).await;
        let uri: http::Uri = server.url.parse().unwrap();
        let set = reg.get(&uri, JwksSettings::default());
        let err = set.refresh().await.unwrap_err();
        assert!(
            matches!(err, crate::auth::jwks::JwksError::TooLarge),
            "{err:?}"
        );
        assert!(!set.is_loaded());
    }
}
