//! Dev tokens for `gatehouse token` and the dev key pair they are signed
//! with (written once, never overwritten).

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::config::JwtIssuerSpec;

use super::*;

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

pub(super) fn write_new(
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
