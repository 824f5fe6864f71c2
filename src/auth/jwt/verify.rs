//! [`JwtVerifier`]: picks the issuer, checks the signature with
//! jsonwebtoken, runs our claim checks, and remembers verified tokens.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::jwks::VerificationKey;
use crate::auth::{Clock, Principal};

use super::*;

/// Verified tokens remembered at most (per snapshot).
pub(super) const VERIFIED_CAPACITY: u64 = 10_000;
/// How long a verified token is remembered: it bounds how long a token
/// signed by a key that has since left the issuer's JWK Set still passes.
pub(super) const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// A token that passed every check, and the time window it is valid in.
#[derive(Debug)]
pub(super) struct VerifiedToken {
    pub(super) principal: Principal,
    pub(super) issuer: Arc<str>,
    /// `nbf - leeway` (or -inf).
    pub(super) not_before: f64,
    /// `exp + leeway`.
    pub(super) expires: f64,
    /// The issuer's JWK Set generation it was checked against: a refreshed
    /// set (a key may have been withdrawn) means checking again.
    pub(super) jwks_generation: Option<u64>,
}

/// Verifies tokens against a set of issuers.
///
/// A token that passed is remembered (by the SHA-256 of its text, for at
/// most a minute, never past its `exp`, and only until its issuer's JWK Set
/// changes), so the signature check — a quarter of a millisecond for RS256
/// or ES256 — runs once per token rather than once per request. A reload
/// builds a new verifier with an empty cache.
pub struct JwtVerifier {
    pub(super) issuers: Vec<Arc<Issuer>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) verified: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    pub(super) signature_checks: std::sync::atomic::AtomicU64,
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
pub(super) struct Unverified<'t> {
    pub(super) alg: Algorithm,
    pub(super) kid: Option<String>,
    pub(super) claims: Map<String, Value>,
    pub(super) token: &'t str,
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

pub(super) fn read_unverified(token: &str) -> Result<Unverified<'_>, JwtError> {
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

pub(super) fn decode_json_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64url_decode(segment.as_bytes()).ok_or(JwtError::Malformed)?;
    serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|_| JwtError::Malformed)
}

pub(super) async fn verify_signature(
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
pub(super) const MAX_KEY_ATTEMPTS: usize = 4;

pub(super) fn try_keys(
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
