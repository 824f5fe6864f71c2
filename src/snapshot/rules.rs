//! Access rules and CORS, the small parsers they share (CIDR lists, template
//! parameters), and the configuration hash.

use std::sync::Arc;

use http::{HeaderName, Method};

use crate::config::{Loaded, Problem, RouteSpec, SourceFile};
use crate::cors::Cors;

use super::*;

/// Hex SHA-256 over every file of a configuration: each path and text,
/// length-prefixed, main file first, then policies in their sorted order.
pub(super) fn config_hash(loaded: &Loaded) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let files = std::iter::once(&loaded.source).chain(loaded.policies.iter().map(|p| &p.source));
    for f in files {
        let path = f.path.to_string_lossy();
        for part in [path.as_bytes(), f.text.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Names of the `{name}` / `{*name}` parameters of a template.
pub(super) fn template_params(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        if let Some(escaped) = after.strip_prefix('{') {
            rest = escaped;
            continue;
        }
        let Some(close) = after.find('}') else { break };
        out.push(after[..close].trim_start_matches('*').to_owned());
        rest = &after[close + 1..];
    }
    out
}

/// Parses a list of CIDRs, reporting each bad one at its place.
pub(crate) fn parse_nets(
    list: &[toml::Spanned<String>],
    source: &SourceFile,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for item in list {
        match parse_net(item.get_ref()) {
            Ok(n) => out.push(n),
            Err(e) => problems.push(source.problem(item.span(), format!("{what}: {e}"))),
        }
    }
    out
}

pub(super) fn compile_rules(
    r: &RouteSpec,
    source: &SourceFile,
    span: std::ops::Range<usize>,
    label: &str,
    problems: &mut Vec<Problem>,
) -> RequestRules {
    let mut required_headers = Vec::new();
    for h in &r.required_headers {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => required_headers.push(n),
            Err(_) => problems.push(source.problem(
                span.clone(),
                format!("{label}: invalid header name `{h}` in required_headers"),
            )),
        }
    }
    let content_types: Vec<String> = r
        .content_types
        .iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    if content_types
        .iter()
        .any(|t| !t.contains('/') || t.contains(';'))
    {
        problems.push(source.problem(
            span.clone(),
            format!("{label}: content_types are media types like `application/json`"),
        ));
    }
    let query = r.query.as_ref().map(|q| QueryRules {
        allowed: q.allowed.clone(),
        required: q.required.clone(),
        max_params: q.max_params,
    });
    let ip = IpRules {
        allow: parse_nets(
            &r.allow_ips,
            source,
            &format!("{label}: allow_ips"),
            problems,
        ),
        deny: parse_nets(&r.deny_ips, source, &format!("{label}: deny_ips"), problems),
    };
    let schema = r.json_schema.as_ref().and_then(|path| {
        let dir = source
            .path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let file = dir.join(path.get_ref());
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(source.problem(
                    path.span(),
                    format!("{label}: cannot read schema {}: {e}", file.display()),
                ));
                return None;
            }
        };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem {
                    file: file.clone(),
                    line: e.line(),
                    column: e.column(),
                    message: format!("invalid JSON schema: {e}"),
                });
                return None;
            }
        };
        match jsonschema::validator_for(&value) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                problems.push(Problem {
                    file,
                    line: 0,
                    column: 0,
                    message: format!("invalid JSON schema at {}: {e}", e.schema_path()),
                });
                None
            }
        }
    });
    RequestRules {
        required_headers,
        content_types,
        query,
        ip,
        schema,
    }
}

pub(super) fn compile_cors(
    c: &crate::config::CorsSpec,
    route_methods: &[Method],
    source: &SourceFile,
    span: std::ops::Range<usize>,
    label: &str,
    problems: &mut Vec<Problem>,
) -> Option<Cors> {
    let before = problems.len();
    if c.allow_origins.is_empty() {
        problems.push(source.problem(
            span.clone(),
            format!("{label}: cors needs at least one origin"),
        ));
    }
    if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
        problems.push(source.problem(
            span.clone(),
            format!("{label}: cors `*` origin cannot allow credentials"),
        ));
    }
    let names = |list: &[String], what: &str, problems: &mut Vec<Problem>| -> Vec<HeaderName> {
        list.iter()
            .filter_map(
                |h| match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        problems.push(source.problem(
                            span.clone(),
                            format!("{label}: invalid header `{h}` in cors {what}"),
                        ));
                        None
                    }
                },
            )
            .collect()
    };
    let headers = names(&c.allow_headers, "allow_headers", problems);
    let expose = names(&c.expose_headers, "expose_headers", problems);
    let mut methods = Vec::new();
    for m in &c.allow_methods {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => problems.push(source.problem(
                span.clone(),
                format!("{label}: invalid method `{m}` in cors"),
            )),
        }
    }
    if methods.is_empty() {
        methods = route_methods.to_vec();
    }
    (problems.len() == before).then(|| Cors {
        origins: c
            .allow_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
        methods,
        headers,
        expose,
        credentials: c.allow_credentials,
        max_age: c.max_age.map(|d| d.0.as_secs()),
    })
}
