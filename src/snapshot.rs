//! The immutable, fully validated configuration a request runs against.
//!
//! [`Snapshot::build`] compiles the parsed policy files into a route table and
//! ready upstreams, or returns every problem with its place. The gateway keeps
//! the current snapshot in an `ArcSwap`; a request loads it once and keeps it
//! to the end, so a reload never changes the rules under a request in flight.

mod openapi_routes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::auth::Clock;
use crate::auth::jwks::JwksRegistry;
use crate::auth::jwt::{Issuer, JwtVerifier};
use crate::auth::policy::{IDENTITY_HEADERS, RouteAuth};
use crate::body::BodyPace;
use crate::config::{
    AuthSpec, Defaults, Environment, Loaded, Problem, Problems, RouteSpec, SourceFile,
};
use crate::cors::Cors;
use crate::proxy::lambda::{self, LambdaFunction};
use crate::proxy::{Upstream, UpstreamRegistry};
use crate::ratelimit::policy::{KeyKind, RatePolicy};
use crate::ratelimit::{Limit, Rate};
use crate::route::{
    Action, DirectResponse, HeaderEdits, PathMatch, Place, RewritePart, Route, RouteTable,
    RouteTableBuilder, parse_rewrite,
};
use crate::telemetry::Metrics;
use crate::telemetry::requests::RouteMetrics;

/// Consumers counted by name on a route with `consumer_metrics = true`;
/// the rest share one `other` series.
pub const CONSUMER_SERIES_CAP: usize = 100;
use crate::validate::{IpRules, QueryRules, RequestRules, parse_net};

/// One generation of the configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one on every successful load.
    pub generation: u64,
    /// When it was built.
    pub loaded_at: SystemTime,
    /// Hex SHA-256 over the main file and the policy files, in order.
    pub config_hash: String,
    /// The routes as configured, in file order (for the status page).
    pub route_list: Vec<RouteSummary>,
    /// The routes.
    pub routes: RouteTable,
    /// The upstreams, by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The `kind = "lambda"` upstreams, by name.
    pub functions: HashMap<String, Arc<LambdaFunction>>,
    /// Whether `//` is folded into `/` before routing.
    pub merge_slashes: bool,
    /// How fast clients must send request bodies.
    pub body_pace: BodyPace,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Client-address rules for every route.
    pub access: IpRules,
    /// The policy files it was built from.
    pub policy_files: Vec<PathBuf>,
    /// JWT issuers and their verifier.
    pub jwt: Arc<JwtVerifier>,
    /// Headers only the gateway may send upstream (identity and claim
    /// headers): removed from every client request.
    pub identity_headers: Vec<HeaderName>,
}

/// A route as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteSummary {
    /// Its name.
    pub name: String,
    /// The host it is limited to, if any.
    pub host: Option<String>,
    /// Its path (`*` after a prefix).
    pub path: String,
    /// Its methods (empty: all).
    pub methods: Vec<String>,
    /// The upstream it forwards to, unless it answers itself.
    pub upstream: Option<String>,
}

/// What building a snapshot needs besides the files.
#[derive(Debug, Clone, Copy)]
pub struct BuildDeps<'a> {
    /// Environment values (HMAC secrets are named by variable).
    pub env: &'a Environment,
    /// JWKS sets, kept across reloads.
    pub jwks: &'a JwksRegistry,
    /// The clock token checks use.
    pub clock: &'a Arc<dyn Clock>,
    /// Where routes, upstreams and policies register their metrics.
    pub metrics: &'a Arc<Metrics>,
    /// Upstream runtime state (health, ejections, drains), kept across
    /// reloads.
    pub upstreams: &'a UpstreamRegistry,
}

impl Snapshot {
    /// Compiles `loaded` into a snapshot numbered `generation`. Reads CA
    /// files: call it from a blocking context.
    pub fn build(
        loaded: &Loaded,
        generation: u64,
        deps: BuildDeps<'_>,
    ) -> Result<Snapshot, Problems> {
        let mut problems = Vec::new();
        let defaults = &loaded.config.defaults;
        let (jwt, identity_headers) = compile_issuers(loaded, deps, &mut problems);
        let rate_index = compile_rate_limits(loaded, deps.metrics, &mut problems);
        let issuer_names: Vec<String> = loaded
            .config
            .jwt_issuers
            .iter()
            .map(|i| i.get_ref().name.clone())
            .collect();
        let access_cfg = &loaded.config.access;
        let trusted_proxies = parse_nets(
            &access_cfg.trusted_proxies,
            &loaded.source,
            "[access] trusted_proxies",
            &mut problems,
        );
        let access = IpRules {
            allow: parse_nets(
                &access_cfg.allow_ips,
                &loaded.source,
                "[access] allow_ips",
                &mut problems,
            ),
            deny: parse_nets(
                &access_cfg.deny_ips,
                &loaded.source,
                "[access] deny_ips",
                &mut problems,
            ),
        };

        // Connect timeouts that routes ask of each upstream (each distinct
        // one gets its own client).
        let mut route_connects: HashMap<String, Vec<std::time::Duration>> = HashMap::new();
        for policy in &loaded.policies {
            for spec in &policy.file.route {
                let r = spec.get_ref();
                if let (Some(u), Some(t)) = (&r.upstream, r.connect_timeout) {
                    route_connects
                        .entry(u.get_ref().clone())
                        .or_default()
                        .push(t.0);
                }
            }
        }

        // Upstreams, with duplicate names refused naming both places.
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        let mut upstream_places: HashMap<String, String> = HashMap::new();
        let mut functions: HashMap<String, Arc<LambdaFunction>> = HashMap::new();
        for policy in &loaded.policies {
            let source = &policy.source;
            for spec in &policy.file.upstream {
                let spec_ref = spec.get_ref();
                source.validate(
                    &format!("upstream `{}`", spec_ref.name.get_ref()),
                    spec_ref,
                    spec.span(),
                    &mut problems,
                );
                let name = spec_ref.name.get_ref().clone();
                let here = place_string(source, spec_ref.name.span());
                if let Some(first) = upstream_places.get(&name) {
                    problems.push(source.problem(
                        spec_ref.name.span(),
                        format!("upstream `{name}` is already defined at {first}"),
                    ));
                    continue;
                }
                upstream_places.insert(name.clone(), here);
                if spec_ref.kind == crate::config::UpstreamKind::Lambda {
                    match LambdaFunction::build(spec_ref, defaults, source, deps.env) {
                        Ok(f) => {
                            functions.insert(name, Arc::new(f));
                        }
                        Err(ps) => problems.extend(ps),
                    }
                    continue;
                }
                problems.extend(lambda::http_spec_problems(spec_ref, source));
                let connects = route_connects.get(&name).map_or(&[][..], Vec::as_slice);
                match Upstream::build(
                    spec_ref,
                    defaults,
                    &loaded.base_dir,
                    source,
                    deps.upstreams,
                    connects,
                ) {
                    Ok(u) => {
                        upstreams.insert(name, Arc::new(u));
                    }
                    Err(ps) => problems.extend(ps),
                }
            }
        }

        // Routes.
        let mut builder = RouteTableBuilder::default();
        let mut route_places: HashMap<String, String> = HashMap::new();
        let mut route_list = Vec::new();
        for policy in &loaded.policies {
            let source = &policy.source;
            for spec in &policy.file.route {
                let r = spec.get_ref();
                let name = r.name.get_ref().clone();
                if let Some(first) = route_places.get(&name) {
                    problems.push(source.problem(
                        r.name.span(),
                        format!("route `{name}` is already defined at {first}"),
                    ));
                    continue;
                }
                route_places.insert(name.clone(), place_string(source, r.name.span()));
                let ctx = RouteCtx {
                    source,
                    defaults,
                    upstreams: &upstreams,
                    functions: &functions,
                    upstream_places: &upstream_places,
                    merge_slashes: loaded.config.server.merge_slashes,
                    server: &loaded.config.server,
                    issuers: &issuer_names,
                    rate: &rate_index,
                    metrics: deps.metrics,
                };
                match compile_route(r, spec.span(), &ctx) {
                    Ok((host, path, route)) => {
                        route_list.push(RouteSummary {
                            name: route.name.to_string(),
                            host: host.clone(),
                            path: match &path {
                                PathMatch::Exact(p) => p.clone(),
                                PathMatch::Prefix(p) => format!("{p}*"),
                                PathMatch::Template(p) => p.clone(),
                            },
                            methods: route
                                .methods
                                .as_ref()
                                .map(|ms| ms.iter().map(ToString::to_string).collect())
                                .unwrap_or_default(),
                            upstream: r.upstream.as_ref().map(|u| u.get_ref().clone()),
                        });
                        let place = Place {
                            source: source.clone(),
                            span: spec.span(),
                        };
                        if let Err(p) = builder.add(host, &path, Arc::new(route), place) {
                            problems.push(p);
                        }
                    }
                    Err(ps) => problems.extend(ps),
                }
            }
        }
        for policy in &loaded.policies {
            let ctx = RouteCtx {
                source: &policy.source,
                defaults,
                upstreams: &upstreams,
                functions: &functions,
                upstream_places: &upstream_places,
                merge_slashes: loaded.config.server.merge_slashes,
                server: &loaded.config.server,
                issuers: &issuer_names,
                rate: &rate_index,
                metrics: deps.metrics,
            };
            let mut sink = openapi_routes::Sink {
                builder: &mut builder,
                places: &mut route_places,
                list: &mut route_list,
                problems: &mut problems,
            };
            openapi_routes::add(policy, &ctx, &mut sink);
        }
        let routes = match builder.build() {
            Ok(t) => Some(t),
            Err(ps) => {
                problems.extend(ps);
                None
            }
        };
        match routes {
            Some(routes) if problems.is_empty() => Ok(Snapshot {
                generation,
                loaded_at: SystemTime::now(),
                config_hash: config_hash(loaded),
                route_list,
                routes,
                upstreams,
                functions,
                merge_slashes: loaded.config.server.merge_slashes,
                body_pace: BodyPace {
                    max_gap: loaded.config.server.body_timeout.0,
                    min_rate: loaded.config.server.body_min_rate.0,
                    grace: loaded.config.server.body_timeout.0,
                },
                trusted_proxies,
                access,
                policy_files: loaded
                    .policies
                    .iter()
                    .map(|p| p.source.path.clone())
                    .collect(),
                jwt,
                identity_headers,
            }),
            _ => Err(Problems(problems)),
        }
    }
}

/// Builds every declared JWT issuer (reading key files) and the list of
/// headers reserved for the gateway.
fn compile_issuers(
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
fn compile_auth(
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

fn name_of(r: &RouteSpec) -> String {
    r.upstream
        .as_ref()
        .map(|u| u.get_ref().clone())
        .unwrap_or_default()
}

fn place_string(source: &SourceFile, span: std::ops::Range<usize>) -> String {
    let (line, col) = source.line_col(span.start);
    format!("{}:{line}:{col}", source.path.display())
}

fn compile_edits(
    edits: &crate::config::HeaderEdits,
    what: &str,
    source: &SourceFile,
    span: std::ops::Range<usize>,
    problems: &mut Vec<Problem>,
) -> HeaderEdits {
    let mut out = HeaderEdits::default();
    for (k, v) in &edits.set {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => out.set.push((n, v)),
            _ => {
                problems.push(source.problem(span.clone(), format!("{what}: invalid header `{k}`")))
            }
        }
    }
    for k in &edits.remove {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => problems
                .push(source.problem(span.clone(), format!("{what}: invalid header name `{k}`"))),
        }
    }
    out
}

type Compiled = (Option<String>, PathMatch, Route);

/// A route's path pattern as API Gateway writes it.
fn lambda_resource(p: &PathMatch) -> String {
    match p {
        PathMatch::Exact(s) => s.clone(),
        // matchit's tail `{*rest}` is API Gateway's greedy `{rest+}`.
        PathMatch::Template(s) => match s.rsplit_once("/{*") {
            Some((head, tail)) => format!("{head}/{{{}+}}", tail.trim_end_matches('}')),
            None => s.clone(),
        },
        PathMatch::Prefix(s) => format!("{}/{{proxy+}}", s.trim_end_matches('/')),
    }
}

/// What compiling a route needs besides its spec.
struct RouteCtx<'a> {
    source: &'a Arc<SourceFile>,
    defaults: &'a Defaults,
    upstreams: &'a HashMap<String, Arc<Upstream>>,
    functions: &'a HashMap<String, Arc<LambdaFunction>>,
    upstream_places: &'a HashMap<String, String>,
    merge_slashes: bool,
    server: &'a crate::config::ServerConfig,
    issuers: &'a [String],
    rate: &'a RateIndex,
    metrics: &'a Arc<Metrics>,
}
/// Every rate-limit policy, and which routes each applies to.
#[derive(Debug, Default)]
struct RateIndex {
    by_name: HashMap<String, Arc<RatePolicy>>,
    global: Vec<Arc<RatePolicy>>,
    by_route: HashMap<String, Vec<Arc<RatePolicy>>>,
}

/// A rate and burst from config, or a problem.
fn compile_limit(rate: &str, burst: Option<u32>) -> Result<Limit, String> {
    let rate = Rate::parse(rate)?;
    if rate.interval().is_zero() {
        return Err("the rate is too high (more than one request per nanosecond)".to_owned());
    }
    let burst = burst.unwrap_or(rate.count);
    if burst == 0 {
        return Err("`burst` must be at least 1".to_owned());
    }
    if rate.interval().saturating_mul(burst) > crate::ratelimit::local::MAX_WINDOW {
        return Err("burst × interval must be at most 10 years".to_owned());
    }
    Ok(Limit { rate, burst })
}

/// Compiles every `[[rate_limit]]` of every policy file.
fn compile_rate_limits(
    loaded: &Loaded,
    metrics: &Metrics,
    problems: &mut Vec<Problem>,
) -> RateIndex {
    let route_names: std::collections::HashSet<&str> = loaded
        .policies
        .iter()
        .flat_map(|p| p.file.route.iter())
        .map(|r| r.get_ref().name.get_ref().as_str())
        .collect();
    let mut index = RateIndex::default();
    let mut places: HashMap<String, String> = HashMap::new();
    for policy in &loaded.policies {
        let source = &policy.source;
        for spec in &policy.file.rate_limit {
            let r = spec.get_ref();
            let name = r.name.get_ref().clone();
            let label = format!("rate_limit `{name}`");
            if let Some(first) = places.get(&name) {
                problems.push(source.problem(
                    r.name.span(),
                    format!("{label} is already defined at {first}"),
                ));
                continue;
            }
            places.insert(name.clone(), place_string(source, r.name.span()));
            let before = problems.len();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                problems.push(source.problem(
                    r.name.span(),
                    format!("{label}: a name is 1 to 64 of A-Z, a-z, 0-9, `-`, `_`, `.`"),
                ));
            }
            let limit =
                match compile_limit(r.rate.get_ref(), r.burst.as_ref().map(|b| *b.get_ref())) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        // A zero burst is the `burst` line's fault, not the rate's.
                        let span = match &r.burst {
                            Some(b) if *b.get_ref() == 0 => b.span(),
                            _ => r.rate.span(),
                        };
                        problems.push(source.problem(span, format!("{label}: {e}")));
                        None
                    }
                };
            let key = match KeyKind::parse(r.key.get_ref()) {
                Ok(k) => Some(k),
                Err(e) => {
                    let span = if r.key.span().is_empty() {
                        spec.span()
                    } else {
                        r.key.span()
                    };
                    problems.push(source.problem(span, format!("{label}: {e}")));
                    None
                }
            };
            let mut plans = HashMap::new();
            for (plan, p) in &r.plans {
                match compile_limit(p.rate.get_ref(), p.burst) {
                    Ok(l) => {
                        plans.insert(plan.clone(), l);
                    }
                    Err(e) => problems.push(
                        source.problem(p.rate.span(), format!("{label}: plan `{plan}`: {e}")),
                    ),
                }
            }
            for route in &r.routes {
                if !route_names.contains(route.get_ref().as_str()) {
                    problems.push(source.problem(
                        route.span(),
                        format!("{label}: unknown route `{}`", route.get_ref()),
                    ));
                }
            }
            let quota = match &r.quota {
                Some(q) if !matches!(key, Some(KeyKind::Consumer | KeyKind::Route) | None) => {
                    problems.push(source.problem(
                        q.span(),
                        format!(
                            "{label}: `quota` needs `key = \"consumer\"` or `\"route\"` (a quota per client address or header value would keep a counter per value for a month)"
                        ),
                    ));
                    None
                }
                Some(q) => match crate::ratelimit::quota::Quota::parse(q.get_ref()) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        problems.push(source.problem(q.span(), format!("{label}: {e}")));
                        None
                    }
                },
                None => None,
            };
            let (Some(limit), Some(key)) = (limit, key) else {
                continue;
            };
            if problems.len() > before {
                continue;
            }
            let compiled = Arc::new(RatePolicy {
                name: name.as_str().into(),
                limit,
                plans,
                key,
                shadow: r.shadow,
                quota,
                meters: crate::telemetry::requests::PolicyMeters::new(metrics, name.as_str()),
            });
            if r.global {
                index.global.push(compiled.clone());
            }
            for route in &r.routes {
                index
                    .by_route
                    .entry(route.get_ref().clone())
                    .or_default()
                    .push(compiled.clone());
            }
            index.by_name.insert(name, compiled);
        }
    }
    index
}

/// The policies that apply to a route: global ones, those that list it,
/// and those it lists; each once.
fn route_rate_limits(
    r: &RouteSpec,
    index: &RateIndex,
    source: &SourceFile,
    label: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Arc<RatePolicy>> {
    let mut out: Vec<Arc<RatePolicy>> = index.global.clone();
    if let Some(listed) = index.by_route.get(r.name.get_ref()) {
        out.extend(listed.iter().cloned());
    }
    for name in &r.rate_limits {
        match index.by_name.get(name.get_ref()) {
            Some(p) => out.push(p.clone()),
            None => problems.push(source.problem(
                name.span(),
                format!("{label}: unknown rate_limit `{}`", name.get_ref()),
            )),
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.name.clone()));
    out
}

fn compile_route(
    r: &RouteSpec,
    span: std::ops::Range<usize>,
    ctx: &RouteCtx<'_>,
) -> Result<Compiled, Vec<Problem>> {
    let RouteCtx {
        source,
        defaults,
        upstreams,
        ..
    } = *ctx;
    let upstream_declared = ctx.upstream_places.contains_key(&name_of(r));
    let mut problems = Vec::new();
    let name = r.name.get_ref();
    let label = format!("route `{name}`");
    if name.is_empty() || name.len() > 128 {
        problems.push(source.problem(r.name.span(), "a route name must be 1 to 128 characters"));
    }

    // Path match: exactly one of path, prefix, template.
    let given: Vec<_> = [
        r.path
            .as_ref()
            .map(|p| PathMatch::Exact(p.get_ref().clone())),
        r.prefix
            .as_ref()
            .map(|p| PathMatch::Prefix(p.get_ref().clone())),
        r.template
            .as_ref()
            .map(|p| PathMatch::Template(p.get_ref().clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let path = match given.as_slice() {
        [one] => Some(one.clone()),
        [] => {
            problems.push(source.problem(
                span.clone(),
                format!("{label}: needs one of `path`, `prefix` or `template`"),
            ));
            None
        }
        _ => {
            problems.push(source.problem(
                span.clone(),
                format!("{label}: `path`, `prefix` and `template` exclude each other"),
            ));
            None
        }
    };
    if let Some(p) = &path {
        let (PathMatch::Exact(s) | PathMatch::Prefix(s) | PathMatch::Template(s)) = p;
        let pspan = [&r.path, &r.prefix, &r.template]
            .into_iter()
            .flatten()
            .map(|s| s.span())
            .next()
            .unwrap_or(span.clone());
        match crate::validate::normalize_path(s, ctx.merge_slashes) {
            Ok(n) if n == *s || matches!(p, PathMatch::Template(_)) => {}
            Ok(n) => problems.push(source.problem(
                pspan,
                format!("{label}: path `{s}` is not normalised (requests arrive as `{n}`)"),
            )),
            Err(e) => problems.push(source.problem(pspan, format!("{label}: path `{s}`: {e}"))),
        }
    }

    let host = r.host.as_ref().map(|h| {
        let v = h.get_ref().to_ascii_lowercase();
        if v.is_empty() || v.contains(['/', '@', ' ']) || v.contains(':') && !v.starts_with('[') {
            problems.push(source.problem(
                h.span(),
                format!("{label}: invalid host `{v}` (no port, scheme or path)"),
            ));
        }
        v
    });

    let mut methods = Vec::new();
    for m in &r.methods {
        match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
            Ok(method) => {
                if method == Method::GET
                    && !r
                        .methods
                        .iter()
                        .any(|x| x.get_ref().eq_ignore_ascii_case("HEAD"))
                {
                    methods.push(Method::HEAD);
                }
                methods.push(method);
            }
            Err(_) => problems.push(source.problem(
                m.span(),
                format!("{label}: invalid method `{}`", m.get_ref()),
            )),
        }
    }

    let upstream_label = r.upstream.as_ref().map(|u| u.get_ref().clone());
    let action = match (&r.upstream, &r.respond) {
        (Some(u), None) => match upstreams.get(u.get_ref()) {
            Some(up) => Some(Action::Forward(up.clone())),
            None if ctx.functions.contains_key(u.get_ref()) => {
                ctx.functions.get(u.get_ref()).map(|f| {
                    Action::Invoke(crate::route::Invoke {
                        function: f.clone(),
                        resource: path.as_ref().map(lambda_resource).unwrap_or_default(),
                    })
                })
            }
            None => {
                if !upstream_declared {
                    problems.push(source.problem(
                        u.span(),
                        format!("{label}: unknown upstream `{}`", u.get_ref()),
                    ));
                }
                None
            }
        },
        (None, Some(resp)) => {
            let spec = resp.get_ref();
            source.validate(
                &format!("{label}: respond"),
                spec,
                resp.span(),
                &mut problems,
            );
            let mut headers = Vec::new();
            for (k, v) in &spec.headers {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(n), Ok(v)) => headers.push((n, v)),
                    _ => problems.push(
                        source.problem(resp.span(), format!("{label}: invalid header `{k}`")),
                    ),
                }
            }
            StatusCode::from_u16(spec.status).ok().map(|status| {
                Action::Respond(DirectResponse {
                    status,
                    headers,
                    body: Bytes::from(spec.body.clone()),
                })
            })
        }
        (Some(_), Some(_)) => {
            problems.push(source.problem(
                span.clone(),
                format!("{label}: `upstream` and `respond` exclude each other"),
            ));
            None
        }
        (None, None) => {
            problems.push(source.problem(
                span.clone(),
                format!("{label}: needs `upstream` or `respond`"),
            ));
            None
        }
    };

    let strip_prefix = r.strip_prefix.as_ref().map(|s| {
        let v = s.get_ref().trim_end_matches('/').to_owned();
        if !v.starts_with('/') {
            problems.push(source.problem(
                s.span(),
                format!("{label}: `strip_prefix` must start with /"),
            ));
        }
        v
    });
    let rewrite = r
        .rewrite_path
        .as_ref()
        .and_then(|s| match parse_rewrite(s.get_ref()) {
            Ok(parts) => Some(parts),
            Err(e) => {
                problems.push(source.problem(s.span(), format!("{label}: {e}")));
                None
            }
        });
    if strip_prefix.is_some() && rewrite.is_some() {
        problems.push(source.problem(
            span.clone(),
            format!("{label}: `strip_prefix` and `rewrite_path` exclude each other"),
        ));
    }
    let request_headers = compile_edits(
        &r.request_headers,
        &format!("{label}: request_headers"),
        source,
        span.clone(),
        &mut problems,
    );
    let response_headers = compile_edits(
        &r.response_headers,
        &format!("{label}: response_headers"),
        source,
        span.clone(),
        &mut problems,
    );

    let rules = compile_rules(r, source, span.clone(), &label, &mut problems);
    let headers = compile_header_policy(r, ctx.server, source, span.clone(), &label, &mut problems);
    if !r.upgrades.is_empty() && !matches!(action, Some(Action::Forward(_))) {
        problems.push(source.problem(
            r.upgrades[0].span(),
            format!(
                "{label}: `upgrades` needs an HTTP upstream (not `respond` or a Lambda function)"
            ),
        ));
    }
    let auth = compile_auth(r, ctx.issuers, source, span.clone(), &label, &mut problems);
    let rate_limits = route_rate_limits(r, ctx.rate, source, &label, &mut problems);
    let route_methods: Vec<Method> = methods.clone();
    let cors = r.cors.as_ref().and_then(|c| {
        compile_cors(
            c.get_ref(),
            &route_methods,
            source,
            c.span(),
            &label,
            &mut problems,
        )
    });
    let rewrite_at = r.rewrite_path.as_ref().map_or(span.clone(), |s| s.span());
    if let (Some(parts), Some(PathMatch::Template(t))) = (&rewrite, &path) {
        let names = template_params(t);
        for part in parts {
            if let RewritePart::Param(p) = part
                && !names.contains(p)
            {
                problems.push(source.problem(
                    rewrite_at.clone(),
                    format!(
                        "{label}: `rewrite_path` uses `{{{p}}}`, which the template does not define"
                    ),
                ));
            }
        }
    } else if let Some(parts) = &rewrite
        && parts.iter().any(|p| matches!(p, RewritePart::Param(_)))
    {
        problems.push(source.problem(
            rewrite_at,
            format!("{label}: `rewrite_path` parameters need a `template` route"),
        ));
    }

    match (path, action) {
        (Some(path), Some(action)) if problems.is_empty() => Ok((
            host,
            path,
            Route {
                name: name.as_str().into(),
                methods: if methods.is_empty() {
                    None
                } else {
                    Some(methods)
                },
                action,
                strip_prefix,
                rewrite,
                request_headers,
                response_headers,
                max_body: r.max_body.unwrap_or(defaults.max_body).0,
                rules,
                cors,
                auth,
                rate_limits,
                retry_non_idempotent: r.retry_non_idempotent,
                allow_path_params: r.allow_path_params,
                first_byte_timeout: r.first_byte_timeout.map(|d| d.0),
                connect_timeout: r.connect_timeout.map(|d| d.0),
                request_timeout: r.request_timeout.map(|d| d.0),
                headers,
                tunnels: Arc::new(tokio::sync::Semaphore::new(
                    usize::try_from(r.max_tunnels.unwrap_or(DEFAULT_MAX_TUNNELS))
                        .unwrap_or(usize::MAX),
                )),
                tunnel_idle_timeout: r.tunnel_idle_timeout.unwrap_or(ctx.server.idle_timeout).0,
                meters: Arc::new(RouteMetrics::new(
                    ctx.metrics,
                    name,
                    upstream_label.as_deref(),
                    r.consumer_metrics.then_some(CONSUMER_SERIES_CAP),
                )),
                openapi: None,
            },
        )),
        _ => Err(problems),
    }
}

/// Upgraded tunnels a route allows at once unless it sets `max_tunnels`.
const DEFAULT_MAX_TUNNELS: u32 = 1000;

/// A route's header hygiene: its upgrades, the client headers it lets
/// through, and what happens to header names with `_`.
fn compile_header_policy(
    r: &RouteSpec,
    server: &crate::config::ServerConfig,
    source: &SourceFile,
    span: std::ops::Range<usize>,
    label: &str,
    problems: &mut Vec<Problem>,
) -> crate::validate::HeaderPolicy {
    let upgrades: Vec<String> = r.upgrades.iter().map(|u| u.get_ref().clone()).collect();
    let allow: Vec<String> = r
        .allow_client_headers
        .iter()
        .map(|h| h.get_ref().clone())
        .collect();
    let at = r
        .upgrades
        .first()
        .map(|u| u.span())
        .or_else(|| r.allow_client_headers.first().map(|h| h.span()))
        .unwrap_or(span.clone());
    if r.max_tunnels == Some(0) || r.tunnel_idle_timeout.is_some_and(|d| d.0.is_zero()) {
        problems.push(source.problem(
            span,
            format!("{label}: `max_tunnels` and `tunnel_idle_timeout` must be above zero"),
        ));
    }
    let underscores = r
        .underscores_in_headers
        .unwrap_or(server.underscores_in_headers);
    match crate::validate::HeaderPolicy::new(&upgrades, &allow, underscores) {
        Ok(policy) => policy,
        Err(e) => {
            problems.push(source.problem(at, format!("{label}: {e}")));
            crate::validate::HeaderPolicy::default()
        }
    }
}

/// Hex SHA-256 over every file of a configuration: each path and text,
/// length-prefixed, main file first, then policies in their sorted order.
fn config_hash(loaded: &Loaded) -> String {
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
fn template_params(t: &str) -> Vec<String> {
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

fn compile_rules(
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

fn compile_cors(
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
