//! Claim checks on top of jsonwebtoken's signature check.
//!
//! Ours, not jsonwebtoken's `Validation`: even configured, it never checks
//! `iat`, accepts an array `iss` and wrong-typed optional claims, rounds
//! `exp`, and reads the system clock instead of our [`Clock`](crate::auth::Clock)
//! (which the verified-token cache relies on too). See the security rules in
//! the `jwt` module doc.

use std::sync::Arc;

use http::HeaderValue;
use serde_json::{Map, Value};

use crate::auth::{AuthMethod, Principal};

use super::*;

pub(super) fn number_claim(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<f64>, JwtError> {
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
pub(super) fn string_list(value: &Value, name: &str) -> Result<Vec<String>, JwtError> {
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

pub(super) fn check_claims(
    issuer: &Issuer,
    claims: Map<String, Value>,
    now: crate::auth::Timestamp,
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

pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

pub(super) fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        other => scalar_text(other),
    }
}
