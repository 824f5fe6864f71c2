//! An issuer: a [`JwtIssuerSpec`] turned into verification keys (PEM files,
//! an HMAC secret from the environment value handed in, or a JWK Set),
//! algorithms cross-checked against key types, and its claim settings.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;

use crate::auth::jwks::{JwksRegistry, JwksSet, JwksSettings, RSA_ALGORITHMS, VerificationKey};
use crate::auth::jwt_config_checks::{MIN_JWKS_MIN_REFRESH_INTERVAL, claim_header_refusal};
use crate::config::JwtIssuerSpec;

use super::*;

/// A trusted issuer, ready to verify tokens.
pub struct Issuer {
    pub(super) name: Arc<str>,
    pub(super) issuer: Option<String>,
    pub(super) audiences: Vec<String>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) validations: Vec<(AlgorithmFamily, Validation)>,
    pub(super) keys: Vec<VerificationKey>,
    pub(super) jwks: Option<Arc<JwksSet>>,
    pub(super) leeway: f64,
    pub(super) max_token_bytes: usize,
    pub(super) required_claims: Vec<String>,
    pub(super) scope_claim: Option<String>,
    pub(super) roles_claim: Option<String>,
    pub(super) plan_claim: Option<String>,
    pub(super) claim_headers: Vec<(String, HeaderName)>,
    pub(super) signing_key: Option<PathBuf>,
    pub(super) signing_kid: Option<String>,
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

pub(super) fn invalid(
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

pub(super) fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
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

    pub(super) fn validation(&self, family: AlgorithmFamily) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, v)| v)
    }
}

pub(super) fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn parse_jwks_url(url: &str) -> Result<http::Uri, String> {
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
pub(super) fn parse_public_pem(
    pem: &[u8],
) -> Result<(DecodingKey, Vec<Algorithm>, &'static str), String> {
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
            check_rsa_bits(crate::auth::jwks::rsa_bits(rsa.modulus))?;
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

pub(super) fn check_rsa_bits(bits: usize) -> Result<(), String> {
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

pub(super) fn from_spki(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<(DecodingKey, Vec<Algorithm>, &'static str), String> {
    let oid = &spki.algorithm.algorithm;
    let data: &[u8] = &spki.subject_public_key.data;
    if *oid == oid_registry::OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("invalid RSA public key".to_owned());
        };
        check_rsa_bits(crate::auth::jwks::rsa_bits(rsa.modulus))?;
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
