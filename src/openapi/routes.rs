//! Operations to route specs: path template, method, parameters, body,
//! `security` mapped to the gateway's auth, and the policy's overrides.
//!
//! `security` mapping: an `apiKey` scheme `in: header` is API-key auth on
//! that header; `http` `bearer`, `oauth2` and `openIdConnect` are JWT, with
//! the requirement's scopes. Alternatives (several requirement objects) are
//! accepted as alternatives; an empty requirement (`{}`) or `security: []`
//! makes the operation public. Operations whose document says nothing get
//! the table's `auth` default.

use std::collections::BTreeSet;
use std::ops::Range;

use serde_json::Value;
use toml::Spanned;

use super::load::{Document, escape_token};
use super::params::{self, Location, ParamRule, Shape};
use super::responses::ResponseRules;
use super::schema;
use super::{BodyMedia, BodyRules, Finding, OperationRules};
use crate::config::{AuthSpec, OpenApiSpec, OperationOverride, Problem, RouteSpec, SourceFile};
use crate::telemetry::Metrics;
use crate::validate::RequestRules;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation, ready for route compilation.
#[derive(Debug)]
pub struct Generated {
    /// The route spec (compiled like a hand-written route).
    pub spec: RouteSpec,
    /// The operation's own checks.
    pub rules: OperationRules,
    /// Its method, upper-case.
    pub method: String,
    /// Its path template, prefix included.
    pub template: String,
    /// A GET whose path also has a HEAD operation: HEAD is not added.
    pub drop_head: bool,
}

/// Everything [`generate`] found.
#[derive(Debug, Default)]
pub struct Output {
    /// The routes.
    pub routes: Vec<Generated>,
    /// Findings in the document.
    pub findings: Vec<Finding>,
    /// Problems in the policy table (unknown override ids).
    pub problems: Vec<Problem>,
}

struct Ctx<'a> {
    doc: &'a Document,
    spec: &'a OpenApiSpec,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    fn refuse(&mut self, pointer: &str, message: String) {
        self.findings.push(Finding {
            file: self.doc.path.clone(),
            pointer: pointer.to_owned(),
            message,
            fatal: true,
        });
    }

    /// `message` says what is unsupported and how it would be handled.
    fn unsupported(&mut self, pointer: &str, message: String) {
        let fatal = !self.spec.allow_unsupported;
        let message = if fatal {
            format!("unsupported: {message} (only with `allow_unsupported = true`)")
        } else {
            message
        };
        self.findings.push(Finding {
            file: self.doc.path.clone(),
            pointer: pointer.to_owned(),
            message,
            fatal,
        });
    }
}

fn spanned<T>(span: &Range<usize>, v: T) -> Spanned<T> {
    Spanned::new(span.clone(), v)
}

/// Generates the routes of `doc` as the table `spec` (in `source`) asks.
pub fn generate(
    doc: &Document,
    spec: &OpenApiSpec,
    source: &SourceFile,
    metrics: &Metrics,
) -> Output {
    let mut ctx = Ctx {
        doc,
        spec,
        findings: Vec::new(),
    };
    let mut out = Output::default();
    let mut used_overrides = BTreeSet::new();
    let prefix = spec
        .path_prefix
        .as_ref()
        .map(|p| p.get_ref().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    if !prefix.is_empty() && !prefix.starts_with('/') {
        out.problems.push(source.problem(
            spec.path_prefix.as_ref().map_or(0..0, Spanned::span),
            format!(
                "openapi `{}`: `path_prefix` must start with /",
                spec.name.get_ref()
            ),
        ));
    }
    let empty = serde_json::Map::new();
    let paths = doc
        .root
        .get("paths")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (path, item) in paths {
        let item_ptr = format!("/paths/{}", escape_token(path));
        if !path.starts_with('/') {
            ctx.refuse(&item_ptr, format!("path `{path}` does not start with /"));
            continue;
        }
        let has_head = item.get("head").is_some();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let ptr = format!("{item_ptr}/{method}");
            if method == "trace" {
                ctx.unsupported(
                    &ptr,
                    "TRACE operations are never routed (the gateway refuses TRACE)".to_owned(),
                );
                continue;
            }
            let op_id = op.get("operationId").and_then(Value::as_str);
            let over = op_id
                .and_then(|id| spec.operations.get(id))
                .map(Spanned::get_ref);
            if let Some(id) = op_id
                && spec.operations.contains_key(id)
            {
                used_overrides.insert(id.to_owned());
            }
            if over.is_some_and(|o| o.skip) {
                continue;
            }
            let label = op_id.map_or_else(
                || format!("{} {path}", method.to_ascii_uppercase()),
                str::to_owned,
            );
            let route_name = format!("{}.{label}", spec.name.get_ref());
            let params = operation_params(&mut ctx, path, item, op, &item_ptr, &ptr);
            let body = request_body(&mut ctx, op, &ptr);
            let auth = operation_auth(&mut ctx, op, &ptr, over);
            let responses = spec.validate_responses.then(|| {
                ResponseRules::new(&route_name, op.get("responses"), doc.version, metrics)
            });
            let template = format!("{prefix}{path}");
            let headers = params
                .iter()
                .filter(|p| p.location == Location::Header)
                .map(|p| (p.pointer.clone(), p.name.clone()))
                .chain(
                    auth.api_key_header
                        .iter()
                        .map(|h| (ptr.clone(), h.get_ref().clone())),
                );
            for (at, header) in headers.collect::<Vec<_>>() {
                if header.contains('_')
                    && spec.underscores_in_headers != Some(crate::config::UnderscoreHeaders::Allow)
                {
                    ctx.unsupported(
                        &at,
                        format!("header `{header}` has `_`: dropped by the header hygiene (and so missing) unless the table sets `underscores_in_headers = \"allow\"`"),
                    );
                }
            }
            let at = spec.name.span();
            let mut rate_limits = spec.rate_limits.clone();
            if let Some(o) = over {
                rate_limits.extend(o.rate_limits.iter().cloned());
            }
            let route = RouteSpec {
                name: spanned(&at, route_name),
                host: spec.host.clone(),
                path: None,
                prefix: None,
                template: Some(spanned(&at, template.clone())),
                methods: vec![spanned(&at, method.to_ascii_uppercase())],
                upstream: Some(spec.upstream.clone()),
                respond: None,
                strip_prefix: None,
                rewrite_path: None,
                request_headers: Default::default(),
                response_headers: Default::default(),
                max_body: over.and_then(|o| o.max_body).or(spec.max_body),
                required_headers: Vec::new(),
                content_types: Vec::new(),
                query: None,
                json_schema: None,
                allow_ips: Vec::new(),
                deny_ips: Vec::new(),
                cors: None,
                auth: auth.auth,
                api_key_header: auth.api_key_header,
                jwt_issuers: auth.jwt_issuers,
                scopes: auth.scopes,
                roles: Vec::new(),
                forward_authorization: false,
                rate_limits,
                retry_non_idempotent: false,
                allow_path_params: false,
                connect_timeout: None,
                first_byte_timeout: None,
                request_timeout: None,
                consumer_metrics: false,
                upgrades: Vec::new(),
                max_tunnels: None,
                tunnel_idle_timeout: None,
                allow_client_headers: Vec::new(),
                underscores_in_headers: spec.underscores_in_headers,
            };
            out.routes.push(Generated {
                spec: route,
                rules: OperationRules {
                    operation: label,
                    params,
                    body,
                    responses,
                },
                method: method.to_ascii_uppercase(),
                template,
                drop_head: method == "get" && has_head,
            });
        }
    }
    for (id, o) in &spec.operations {
        if !used_overrides.contains(id) {
            out.problems.push(source.problem(
                o.span(),
                format!(
                    "openapi `{}`: no operation has operationId `{id}`",
                    spec.name.get_ref()
                ),
            ));
        }
    }
    out.findings = ctx.findings;
    out
}

/// Path-level parameters, overridden by the operation's by (name, in).
fn operation_params(
    ctx: &mut Ctx<'_>,
    path: &str,
    item: &Value,
    op: &Value,
    item_ptr: &str,
    op_ptr: &str,
) -> Vec<ParamRule> {
    let mut all: Vec<(String, &Value)> = Vec::new();
    for (owner, ptr) in [(item, item_ptr), (op, op_ptr)] {
        if let Some(Value::Array(list)) = owner.get("parameters") {
            for (i, p) in list.iter().enumerate() {
                let key = |v: &Value| {
                    (
                        v.get("name").and_then(Value::as_str).map(str::to_owned),
                        v.get("in").and_then(Value::as_str).map(str::to_owned),
                    )
                };
                all.retain(|(_, q)| key(q) != key(p));
                all.push((format!("{ptr}/parameters/{i}"), p));
            }
        }
    }
    let mut out = Vec::new();
    for (ptr, p) in all {
        if let Some(rule) = param_rule(ctx, path, &ptr, p) {
            out.push(rule);
        }
    }
    out
}

fn param_rule(ctx: &mut Ctx<'_>, path: &str, ptr: &str, p: &Value) -> Option<ParamRule> {
    let Some(name) = p.get("name").and_then(Value::as_str) else {
        ctx.refuse(ptr, "a parameter needs a `name`".to_owned());
        return None;
    };
    let location = match p.get("in").and_then(Value::as_str) {
        Some("path") => Location::Path,
        Some("query") => Location::Query,
        Some("header") => Location::Header,
        Some("cookie") => {
            ctx.unsupported(ptr, format!("cookie parameter `{name}` is not checked"));
            return None;
        }
        other => {
            ctx.refuse(ptr, format!("parameter `{name}`: unknown `in` {other:?}"));
            return None;
        }
    };
    if location == Location::Path && !path.contains(&format!("{{{name}}}")) {
        ctx.refuse(
            ptr,
            format!("path parameter `{name}` is not in the path template `{path}`"),
        );
        return None;
    }
    if location == Location::Header && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        ctx.refuse(ptr, format!("`{name}` is not a valid header name"));
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if location == Location::Header
        && matches!(lower.as_str(), "accept" | "content-type" | "authorization")
    {
        // OpenAPI: such header parameters are ignored.
        return None;
    }
    let required =
        location == Location::Path || p.get("required").and_then(Value::as_bool).unwrap_or(false);
    let mut rule = ParamRule {
        name: if location == Location::Header {
            lower
        } else {
            name.to_owned()
        },
        location,
        required,
        pointer: ptr.to_owned(),
        // Presence only, until the schema says more.
        shape: Shape::Array {
            items: params::Kind::String,
            explode: true,
        },
        schema: None,
    };
    let default_style = if location == Location::Query {
        "form"
    } else {
        "simple"
    };
    let style = p
        .get("style")
        .and_then(Value::as_str)
        .unwrap_or(default_style);
    let explode = p
        .get("explode")
        .and_then(Value::as_bool)
        .unwrap_or(style == "form");
    let Some(raw_schema) = p.get("schema") else {
        let what = if p.get("content").is_some() {
            "`content`"
        } else {
            "no `schema`"
        };
        ctx.unsupported(
            ptr,
            format!("parameter `{name}` has {what}: checked for presence only"),
        );
        return Some(rule);
    };
    if style != default_style {
        ctx.unsupported(
            ptr,
            format!(
                "parameter `{name}`: style `{style}` is not supported: checked for presence only"
            ),
        );
        return Some(rule);
    }
    let converted = schema::to_json_schema(raw_schema, ctx.doc.version);
    let shape = if params::is_array(&converted) {
        params::kind_of(converted.get("items").unwrap_or(&Value::Null))
            .map(|items| Shape::Array { items, explode })
    } else {
        params::kind_of(&converted).map(Shape::Scalar)
    };
    let Some(shape) = shape else {
        ctx.unsupported(
            ptr,
            format!("parameter `{name}`: object or nested values are not supported: checked for presence only"),
        );
        return Some(rule);
    };
    match schema::compile(&converted) {
        Ok(v) => {
            rule.shape = shape;
            rule.schema = Some(v);
            Some(rule)
        }
        Err(e) => {
            ctx.refuse(&format!("{ptr}/schema"), format!("invalid schema: {e}"));
            None
        }
    }
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// Whether a schema accepts any bytes (`type: string`, `format: binary`).
fn is_binary(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("string")
        && matches!(
            s.get("format").and_then(Value::as_str),
            Some("binary" | "byte")
        )
        || s.as_object().is_some_and(|m| m.is_empty())
}

fn request_body(ctx: &mut Ctx<'_>, op: &Value, ptr: &str) -> Option<BodyRules> {
    let rb = op.get("requestBody")?;
    let mut rules = BodyRules {
        required: rb.get("required").and_then(Value::as_bool).unwrap_or(false),
        media: Vec::new(),
    };
    let empty = serde_json::Map::new();
    let content = rb
        .get("content")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (media, mt) in content {
        let media_ptr = format!("{ptr}/requestBody/content/{}", escape_token(media));
        let media = media.to_ascii_lowercase();
        if media.contains('*') {
            ctx.unsupported(
                &media_ptr,
                format!("media range `{media}` is not supported: such bodies are refused (415)"),
            );
            continue;
        }
        let schema = mt.get("schema");
        if is_json(&media) {
            let check = match schema {
                None => None,
                Some(s) => match schema::compile(&schema::to_json_schema(s, ctx.doc.version)) {
                    Ok(v) => Some(RequestRules {
                        schema: Some(v),
                        ..RequestRules::default()
                    }),
                    Err(e) => {
                        ctx.refuse(
                            &format!("{media_ptr}/schema"),
                            format!("invalid schema: {e}"),
                        );
                        continue;
                    }
                },
            };
            rules.media.push(BodyMedia {
                media,
                rules: check,
            });
        } else if schema.is_none_or(is_binary) {
            rules.media.push(BodyMedia { media, rules: None });
        } else {
            ctx.unsupported(
                &media_ptr,
                format!("`{media}` bodies cannot be validated: they are refused (415)"),
            );
        }
    }
    Some(rules)
}

/// The auth part of a route spec.
#[derive(Default)]
struct Auth {
    auth: Option<Spanned<AuthSpec>>,
    api_key_header: Option<Spanned<String>>,
    jwt_issuers: Vec<Spanned<String>>,
    scopes: Vec<String>,
}

fn includes_jwt(auth: Option<&Spanned<AuthSpec>>) -> bool {
    match auth.map(Spanned::get_ref) {
        Some(AuthSpec::One(m)) => m == "jwt",
        Some(AuthSpec::Any(ms)) => ms.iter().any(|m| m == "jwt"),
        None => false,
    }
}

fn operation_auth(
    ctx: &mut Ctx<'_>,
    op: &Value,
    ptr: &str,
    over: Option<&OperationOverride>,
) -> Auth {
    let spec = ctx.spec;
    if let Some(o) = over
        && (o.auth.is_some() || o.scopes.is_some() || o.jwt_issuers.is_some())
    {
        let auth = o.auth.clone().or_else(|| spec.auth.clone());
        let jwt_issuers = if includes_jwt(auth.as_ref()) {
            o.jwt_issuers
                .clone()
                .unwrap_or_else(|| spec.jwt_issuers.clone())
        } else {
            // Given without jwt: left for route compilation to refuse.
            o.jwt_issuers.clone().unwrap_or_default()
        };
        return Auth {
            auth,
            api_key_header: o.api_key_header.clone(),
            jwt_issuers,
            scopes: o.scopes.clone().unwrap_or_default(),
        };
    }
    let (requirements, req_ptr) = match (op.get("security"), ctx.doc.root.get("security")) {
        (Some(s), _) => (s, format!("{ptr}/security")),
        (None, Some(s)) => (s, "/security".to_owned()),
        (None, None) => {
            return Auth {
                auth: spec.auth.clone(),
                api_key_header: over.and_then(|o| o.api_key_header.clone()),
                jwt_issuers: if includes_jwt(spec.auth.as_ref()) {
                    spec.jwt_issuers.clone()
                } else {
                    Vec::new()
                },
                scopes: Vec::new(),
            };
        }
    };
    let at = spec.name.span();
    let Some(list) = requirements.as_array() else {
        ctx.refuse(&req_ptr, "`security` must be a list".to_owned());
        return Auth::default();
    };
    if list.is_empty()
        || list
            .iter()
            .any(|r| r.as_object().is_some_and(|m| m.is_empty()))
    {
        return Auth {
            auth: Some(spanned(&at, AuthSpec::One("none".to_owned()))),
            ..Auth::default()
        };
    }
    let schemes = ctx
        .doc
        .root
        .pointer("/components/securitySchemes")
        .cloned()
        .unwrap_or(Value::Null);
    let mut methods: Vec<String> = Vec::new();
    let mut key_header: Option<String> = None;
    let mut scope_sets: Vec<BTreeSet<String>> = Vec::new();
    for (i, req) in list.iter().enumerate() {
        let rptr = format!("{req_ptr}/{i}");
        let Some(req) = req.as_object() else {
            ctx.refuse(&rptr, "a security requirement must be an object".to_owned());
            continue;
        };
        if req.len() > 1 {
            ctx.refuse(
                &rptr,
                "a requirement naming several schemes at once (all of them) cannot be mapped"
                    .to_owned(),
            );
            continue;
        }
        let Some((name, scopes)) = req.iter().next() else {
            continue;
        };
        let Some(scheme) = schemes.get(name) else {
            ctx.refuse(&rptr, format!("unknown security scheme `{name}`"));
            continue;
        };
        let scheme_ptr = format!("/components/securitySchemes/{}", escape_token(name));
        let kind = scheme.get("type").and_then(Value::as_str).unwrap_or("");
        let method = match kind {
            "apiKey" => {
                let header = scheme.get("name").and_then(Value::as_str).unwrap_or("");
                match scheme.get("in").and_then(Value::as_str) {
                    Some("header") if !header.eq_ignore_ascii_case("authorization") => {
                        let header = header.to_ascii_lowercase();
                        if key_header.as_ref().is_some_and(|h| *h != header) {
                            ctx.refuse(&scheme_ptr, "API keys in two different headers cannot be mapped (one key header per route)".to_owned());
                        }
                        key_header = Some(header);
                        "api_key"
                    }
                    other => {
                        ctx.refuse(&scheme_ptr, format!("API keys in {} cannot be mapped (only in a header other than Authorization)", other.unwrap_or("(no `in`)")));
                        continue;
                    }
                }
            }
            "http"
                if scheme
                    .get("scheme")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.eq_ignore_ascii_case("bearer")) =>
            {
                "jwt"
            }
            "oauth2" | "openIdConnect" => "jwt",
            other => {
                ctx.refuse(&scheme_ptr, format!("security scheme type `{other}` cannot be mapped (apiKey in a header, http bearer, oauth2 and openIdConnect can)"));
                continue;
            }
        };
        if !methods.iter().any(|m| m == method) {
            methods.push(method.to_owned());
        }
        scope_sets.push(
            scopes
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    let all: BTreeSet<String> = scope_sets.iter().flatten().cloned().collect();
    if scope_sets.iter().any(|s| *s != all) {
        ctx.unsupported(
            &req_ptr,
            format!(
                "alternatives ask for different scopes; every caller needs all of them ({})",
                all.iter().cloned().collect::<Vec<_>>().join(" ")
            ),
        );
    }
    let auth = match methods.as_slice() {
        [] => None,
        [one] => Some(AuthSpec::One(one.clone())),
        many => Some(AuthSpec::Any(many.to_vec())),
    };
    Auth {
        auth: auth.map(|a| spanned(&at, a)),
        api_key_header: key_header.map(|h| spanned(&at, h)),
        jwt_issuers: if methods.iter().any(|m| m == "jwt") {
            spec.jwt_issuers.clone()
        } else {
            Vec::new()
        },
        scopes: all.into_iter().collect(),
    }
}
