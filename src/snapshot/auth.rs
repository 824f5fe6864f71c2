//! Compiling the auth side of a snapshot: JWT issuers (built once, shared by
//! name) and each route's auth requirement.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;

use crate::auth::jwt::{Issuer, JwtVerifier};
use crate::auth::policy::{IDENTITY_HEADERS, RouteAuth};
use crate::config::{AuthSpec, Loaded, Problem, RouteSpec, SourceFile};

use super::*;

/// Builds every declared JWT issuer (reading key files) and the list of
/// headers reserved for the gateway.
pub(super) fn compile_issuers(
    loaded: &Loaded,
    deps: BuildDeps<'_>,
    problems: &mut Vec<Problem>,
) -> (Arc<JwtVerifier>, Vec<HeaderName>) {
    let mut identity_headers: Vec<HeaderName> = IDENTITY_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    let mut issuers = Vec::new();
    let mut places: HashMap<String, String> = HashMap::new();
    let env = |name: &str| deps.env.get(name);
    for spec in &loaded.config.jwt_issuers {
        let s = spec.get_ref();
        if let Some(first) = places.get(&s.name) {
            problems.push(loaded.source.problem(
                spec.span(),
                format!("jwt issuer `{}` is already defined at {first}", s.name),
            ));
            continue;
        }
        places.insert(s.name.clone(), place_string(&loaded.source, spec.span()));
        for header in s.claim_headers.values() {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) if !identity_headers.contains(&h) => identity_headers.push(h),
                Ok(_) => {}
                Err(_) => problems.push(loaded.source.problem(
                    spec.span(),
                    format!("jwt issuer `{}`: invalid header name `{header}`", s.name),
                )),
            }
        }
        match Issuer::build(s, &loaded.base_dir, &env, deps.jwks) {
            Ok(issuer) => issuers.push(Arc::new(issuer)),
            Err(e) => problems.push(loaded.source.problem(spec.span(), e.to_string())),
        }
    }
    (
        Arc::new(JwtVerifier::new(issuers, deps.clock.clone())),
        identity_headers,
    )
}

/// Compiles a route's `auth`, `api_key_header`, `jwt_issuers`, `scopes`,
/// `roles` and `forward_authorization`.
pub(super) fn compile_auth(
    r: &RouteSpec,
    issuers: &[String],
    source: &SourceFile,
    span: std::ops::Range<usize>,
    label: &str,
    problems: &mut Vec<Problem>,
) -> RouteAuth {
    let mut auth = RouteAuth::default();
    let at = r.auth.as_ref().map_or(span.clone(), |a| a.span());
    let methods: Vec<&str> = match r.auth.as_ref().map(|a| a.get_ref()) {
        None => Vec::new(),
        Some(AuthSpec::One(m)) => vec![m.as_str()],
        Some(AuthSpec::Any(list)) => {
            if list.is_empty() {
                problems.push(source.problem(
                    at.clone(),
                    format!("{label}: `auth` list is empty (use \"none\")"),
                ));
            }
            list.iter().map(String::as_str).collect()
        }
    };
    for m in &methods {
        match *m {
            "none" if methods.len() == 1 => {}
            "none" => problems.push(source.problem(
                at.clone(),
                format!("{label}: `none` cannot be combined with other auth methods"),
            )),
            "api_key" => auth.api_key = true,
            "jwt" => auth.jwt = true,
            other => problems.push(source.problem(
                at.clone(),
                format!("{label}: unknown auth method `{other}` (expected none, api_key or jwt)"),
            )),
        }
    }
    if let Some(h) = &r.api_key_header {
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name)
                if name != http::header::AUTHORIZATION
                    && name != http::header::HOST
                    && !IDENTITY_HEADERS.contains(&name.as_str()) =>
            {
                auth.key_header = name;
            }
            _ => problems.push(source.problem(
                h.span(),
                format!(
                    "{label}: `api_key_header` must be a valid header name other than Authorization, Host or an identity header"
                ),
            )),
        }
        if !auth.api_key {
            problems.push(source.problem(
                h.span(),
                format!("{label}: `api_key_header` needs `auth` to include \"api_key\""),
            ));
        }
    }
    if auth.jwt && issuers.is_empty() {
        problems.push(source.problem(
            at.clone(),
            format!("{label}: `auth` includes \"jwt\" but no [[jwt_issuer]] is declared"),
        ));
    }
    if !r.jwt_issuers.is_empty() {
        if !auth.jwt {
            problems.push(source.problem(
                span.clone(),
                format!("{label}: `jwt_issuers` needs `auth` to include \"jwt\""),
            ));
        }
        let mut names = Vec::new();
        for i in &r.jwt_issuers {
            if issuers.contains(i.get_ref()) {
                names.push(i.get_ref().clone());
            } else {
                problems.push(source.problem(
                    i.span(),
                    format!("{label}: unknown jwt issuer `{}`", i.get_ref()),
                ));
            }
        }
        auth.issuers = Some(names);
    }
    if !auth.required() && (!r.scopes.is_empty() || !r.roles.is_empty()) {
        problems.push(source.problem(span, format!("{label}: `scopes` and `roles` need `auth`")));
    }
    auth.scopes.clone_from(&r.scopes);
    auth.roles.clone_from(&r.roles);
    auth.forward_authorization = r.forward_authorization;
    auth
}
