//! A route's authentication and authorisation policy, and how credentials
//! are found in a request.
//!
//! This file owns [`RouteAuth`] (compiled from a route's `auth`, `scopes`,
//! `roles` and related keys), [`presented`] (which credential a request
//! carries, without judging it) and the identity headers the upstream gets.
//! It does not verify anything: [`super::api_key`] and [`super::jwt`] do.
//! Security caveat: the identity header names are reserved; the gateway
//! removes them from every client request before it forwards it, so a client
//! can never forge who it is.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::Principal;

/// The identity headers the gateway sets for the upstream (and strips from
/// every client request, on every route).
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-name",
    "x-consumer-plan",
    "x-auth-method",
    "x-auth-scopes",
    "x-credential-id",
];

/// The default header an API key is read from.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// What a route requires of its caller.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// API keys are accepted.
    pub api_key: bool,
    /// JWTs are accepted.
    pub jwt: bool,
    /// The header an API key may be sent in.
    pub key_header: HeaderName,
    /// JWT issuer names accepted (`None`: any declared issuer).
    pub issuers: Option<Vec<String>>,
    /// Scopes the caller must hold, all of them.
    pub scopes: Vec<String>,
    /// Roles of which the caller must hold one (empty: no role needed).
    pub roles: Vec<String>,
    /// Pass the client's credential headers to the upstream.
    pub forward_authorization: bool,
}

impl Default for RouteAuth {
    fn default() -> Self {
        RouteAuth {
            api_key: false,
            jwt: false,
            key_header: HeaderName::from_static(DEFAULT_API_KEY_HEADER),
            issuers: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            forward_authorization: false,
        }
    }
}

impl RouteAuth {
    /// Whether the route needs any credential at all.
    pub fn required(&self) -> bool {
        self.api_key || self.jwt
    }
}

/// A credential found in a request, not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// An API key.
    ApiKey(&'a str),
    /// A bearer token taken to be a JWT.
    Jwt(&'a str),
}

/// Why the credential headers themselves are unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PresentedError {
    /// The same credential header was sent more than once.
    #[error("credential header sent more than once")]
    Duplicate,
    /// Not visible ASCII.
    #[error("credential header is not valid text")]
    NotText,
    /// `Authorization` with a scheme other than Bearer.
    #[error("unsupported authorization scheme (use Bearer)")]
    Scheme,
}

/// The credential `headers` carry for a route with policy `auth`, or none.
/// The API-key header wins over `Authorization`; a bearer token that looks
/// like a gatehouse key (`gth_…`) is read as an API key when the route
/// accepts keys.
pub fn presented<'a>(
    auth: &RouteAuth,
    headers: &'a HeaderMap,
) -> Result<Option<Presented<'a>>, PresentedError> {
    if auth.api_key
        && let Some(v) = single(headers, &auth.key_header)?
    {
        return Ok(Some(Presented::ApiKey(v.trim())));
    }
    let Some(v) = single(headers, &header::AUTHORIZATION)? else {
        return Ok(None);
    };
    let v = v.trim();
    let Some((scheme, token)) = v.split_once(' ') else {
        return Err(PresentedError::Scheme);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(PresentedError::Scheme);
    }
    let token = token.trim();
    if auth.api_key && (token.starts_with(super::api_key::PREFIX) || !auth.jwt) {
        Ok(Some(Presented::ApiKey(token)))
    } else if auth.jwt {
        Ok(Some(Presented::Jwt(token)))
    } else {
        Ok(None)
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, PresentedError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(PresentedError::Duplicate);
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| PresentedError::NotText)
}

/// The first scope the route requires that `principal` lacks.
pub fn missing_scope<'a>(auth: &'a RouteAuth, principal: &Principal) -> Option<&'a str> {
    auth.scopes
        .iter()
        .find(|s| !principal.scopes.iter().any(|have| have == *s))
        .map(String::as_str)
}

/// Whether `principal` holds one of the route's roles (or none is needed).
pub fn has_role(auth: &RouteAuth, principal: &Principal) -> bool {
    auth.roles.is_empty() || auth.roles.iter().any(|r| principal.roles.contains(r))
}

/// The headers that tell the upstream who called: the reserved identity
/// headers, then the issuer's configured claim headers.
pub fn identity_headers(principal: &Principal) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(6 + principal.headers.len());
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.push((HeaderName::from_static(name), v));
        }
    };
    put("x-consumer-id", &principal.subject);
    if let Some(n) = &principal.consumer_name {
        put("x-consumer-name", n);
    }
    if let Some(p) = &principal.plan {
        put("x-consumer-plan", p);
    }
    put("x-auth-method", principal.method.as_str());
    if !principal.scopes.is_empty() {
        put("x-auth-scopes", &principal.scopes.join(" "));
    }
    put("x-credential-id", &principal.credential_id);
    out.extend(principal.headers.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn policy(api_key: bool, jwt: bool) -> RouteAuth {
        RouteAuth {
            api_key,
            jwt,
            ..RouteAuth::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_found() {
        type Want = Result<Option<Presented<'static>>, PresentedError>;
        let cases: Vec<(&str, RouteAuth, HeaderMap, Want)> = vec![
            ("nothing", policy(true, true), headers(&[]), Ok(None)),
            (
                "key header",
                policy(true, false),
                headers(&[("x-api-key", " gth_abc ")]),
                Ok(Some(Presented::ApiKey("gth_abc"))),
            ),
            (
                "key header ignored on a jwt route",
                policy(false, true),
                headers(&[("x-api-key", "gth_abc")]),
                Ok(None),
            ),
            (
                "bearer key on a mixed route",
                policy(true, true),
                headers(&[("authorization", "Bearer gth_abc")]),
                Ok(Some(Presented::ApiKey("gth_abc"))),
            ),
            (
                "bearer jwt on a mixed route",
                policy(true, true),
                headers(&[("authorization", "bearer eyJ.x.y")]),
                Ok(Some(Presented::Jwt("eyJ.x.y"))),
            ),
            (
                "bearer anything on a key route is a key",
                policy(true, false),
                headers(&[("authorization", "Bearer eyJ.x.y")]),
                Ok(Some(Presented::ApiKey("eyJ.x.y"))),
            ),
            (
                "basic scheme",
                policy(true, true),
                headers(&[("authorization", "Basic dXNlcjpwYXNz")]),
                Err(PresentedError::Scheme),
            ),
            (
                "no scheme",
                policy(false, true),
                headers(&[("authorization", "eyJ.x.y")]),
                Err(PresentedError::Scheme),
            ),
            (
                "two key headers",
                policy(true, false),
                headers(&[("x-api-key", "a"), ("x-api-key", "b")]),
                Err(PresentedError::Duplicate),
            ),
            (
                "two authorization headers",
                policy(false, true),
                headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                Err(PresentedError::Duplicate),
            ),
        ];
        for (name, auth, h, want) in cases {
            assert_eq!(presented(&auth, &h), want, "{name}");
        }
    }

    fn principal(scopes: &[&str], roles: &[&str]) -> Principal {
        Principal {
            method: AuthMethod::Jwt,
            subject: "alice".into(),
            consumer_name: None,
            plan: Some("gold".into()),
            credential_id: "dev".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            headers: vec![(
                HeaderName::from_static("x-auth-sub"),
                HeaderValue::from_static("alice"),
            )],
        }
    }

    #[test]
    fn scopes_and_roles() {
        let auth = RouteAuth {
            jwt: true,
            scopes: vec!["orders:read".into(), "orders:write".into()],
            roles: vec!["admin".into(), "ops".into()],
            ..RouteAuth::default()
        };
        let cases = [
            (
                "all scopes, one role",
                principal(&["orders:read", "orders:write"], &["ops"]),
                None,
                true,
            ),
            (
                "one scope missing",
                principal(&["orders:read"], &["admin"]),
                Some("orders:write"),
                true,
            ),
            (
                "no role",
                principal(&["orders:read", "orders:write"], &["user"]),
                None,
                false,
            ),
        ];
        for (name, p, scope, role) in cases {
            assert_eq!(missing_scope(&auth, &p), scope, "{name}");
            assert_eq!(has_role(&auth, &p), role, "{name}");
        }
    }

    #[test]
    fn identity_headers_name_the_caller() {
        let h = identity_headers(&principal(&["a", "b"], &[]));
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get("x-consumer-id").as_deref(), Some("alice"));
        assert_eq!(get("x-consumer-plan").as_deref(), Some("gold"));
        assert_eq!(get("x-auth-method").as_deref(), Some("jwt"));
        assert_eq!(get("x-auth-scopes").as_deref(), Some("a b"));
        assert_eq!(get("x-auth-sub").as_deref(), Some("alice"));
        assert_eq!(get("x-consumer-name"), None);
    }
}
