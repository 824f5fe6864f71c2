//! The compiled route table: host, path and method to a [`Route`].
//!
//! Paths are matched with `matchit` (a radix tree: static segments beat
//! parameters, parameters beat tail wildcards), after the path has been
//! normalised. A route bound to a host is tried before the host-less routes.
//! Overlaps that would make a request's route depend on file order are
//! refused when the table is built, naming both places.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::config::{Problem, SourceFile};
use crate::proxy::Upstream;

/// The catch-all parameter used to implement prefix routes.
pub(crate) const TAIL: &str = "__gatehouse_tail";

/// Header changes, compiled.
#[derive(Debug, Default, Clone)]
pub(crate) struct HeaderEdits {
    /// Set (replace) these.
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    /// Remove these.
    pub(crate) remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies removals, then sets.
    pub(crate) fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A direct answer.
#[derive(Debug, Clone)]
pub(crate) struct DirectResponse {
    /// Status.
    pub(crate) status: StatusCode,
    /// Headers.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub(crate) body: bytes::Bytes,
}

/// What a route does with a matching request.
#[derive(Debug)]
pub(crate) enum Action {
    /// Forward to an upstream.
    Forward(Arc<Upstream>),
    /// Answer directly.
    Respond(DirectResponse),
    /// Invoke an AWS Lambda function.
    Invoke(Invoke),
}

/// A route's Lambda invocation.
#[derive(Debug)]
pub(crate) struct Invoke {
    /// The function.
    pub(crate) function: Arc<crate::proxy::lambda::LambdaFunction>,
    /// The route's path pattern, as API Gateway names it (`/orders/{id}`,
    /// `/api/{proxy+}` for a prefix): the event's `resource` / `routeKey`.
    pub(crate) resource: String,
}

/// A piece of a path rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RewritePart {
    /// Literal text.
    Lit(String),
    /// A template parameter's value.
    Param(String),
}

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    /// Its name.
    pub(crate) name: Arc<str>,
    /// Allowed methods; `None` is all.
    pub(crate) methods: Option<Vec<Method>>,
    /// What to do.
    pub(crate) action: Action,
    /// Prefix removed before forwarding.
    pub(crate) strip_prefix: Option<String>,
    /// Path rewrite.
    pub(crate) rewrite: Option<Vec<RewritePart>>,
    /// Request header changes.
    pub(crate) request_headers: HeaderEdits,
    /// Response header changes.
    pub(crate) response_headers: HeaderEdits,
    /// Largest request body.
    pub(crate) max_body: u64,
    /// Header, query, address and body rules.
    pub(crate) rules: crate::validate::RequestRules,
    /// CORS policy.
    pub(crate) cors: Option<crate::cors::Cors>,
    /// Who may call it.
    pub(crate) auth: crate::auth::policy::RouteAuth,
    /// Rate-limit policies, checked in order; the strictest decides.
    pub(crate) rate_limits: Vec<Arc<crate::ratelimit::policy::RatePolicy>>,
    /// Retry non-idempotent methods too.
    pub(crate) retry_non_idempotent: bool,
    /// Accept a raw `;` (path parameters) in the path; refused otherwise.
    pub(crate) allow_path_params: bool,
    /// Overrides the upstream's time to the response head.
    pub(crate) first_byte_timeout: Option<std::time::Duration>,
    /// Overrides the upstream's connect timeout.
    pub(crate) connect_timeout: Option<std::time::Duration>,
    /// Overrides the upstream's time for the whole exchange.
    pub(crate) request_timeout: Option<std::time::Duration>,
    /// Upgrades, client headers it lets through, `_` in header names.
    pub(crate) headers: crate::validate::HeaderPolicy,
    /// Places for upgraded tunnels (`max_tunnels`).
    pub(crate) tunnels: Arc<tokio::sync::Semaphore>,
    /// A tunnel idle this long is closed.
    pub(crate) tunnel_idle_timeout: std::time::Duration,
    /// Its request meters.
    pub(crate) meters: Arc<crate::telemetry::requests::RouteMetrics>,
    /// The OpenAPI operation it was generated from: parameter, body and
    /// (dry-run) response checks.
    pub(crate) openapi: Option<Arc<crate::openapi::OperationRules>>,
}

impl Route {
    /// Whether the route accepts `method`.
    pub(crate) fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list.contains(method),
        }
    }

    /// Whether the body must be buffered to check it (a JSON Schema, or an
    /// OpenAPI request body).
    pub(crate) fn buffers_body(&self) -> bool {
        self.rules.schema.is_some() || self.openapi.as_ref().is_some_and(|o| o.needs_body())
    }

    /// Checks a buffered body: the OpenAPI operation's media-type schema,
    /// else the route's JSON Schema.
    pub(crate) fn check_body(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(), crate::validate::Invalid> {
        match &self.openapi {
            Some(o) => o.check_body(headers, body),
            None => self.rules.check_body(body),
        }
    }

    /// The path to send upstream.
    pub(crate) fn upstream_path(&self, path: &str, params: &[(String, String)]) -> String {
        if let Some(parts) = &self.rewrite {
            let mut out = String::new();
            for part in parts {
                match part {
                    RewritePart::Lit(s) => out.push_str(s),
                    RewritePart::Param(name) => {
                        if let Some((_, v)) = params.iter().find(|(k, _)| k == name) {
                            out.push_str(v);
                        }
                    }
                }
            }
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
            return out;
        }
        if let Some(prefix) = &self.strip_prefix
            && let Some(rest) = path.strip_prefix(prefix.as_str())
        {
            if rest.is_empty() {
                return "/".to_owned();
            }
            if rest.starts_with('/') {
                return rest.to_owned();
            }
        }
        path.to_owned()
    }
}

/// How a route's path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// This path only.
    Exact(String),
    /// This path and everything below it.
    Prefix(String),
    /// A matchit template.
    Template(String),
}

fn escape(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

impl PathMatch {
    /// The matchit patterns that implement this match.
    fn patterns(&self) -> Vec<String> {
        match self {
            PathMatch::Exact(p) => vec![escape(p)],
            PathMatch::Prefix(p) => {
                let base = escape(p.trim_end_matches('/'));
                if base.is_empty() {
                    vec!["/".to_owned(), format!("/{{*{TAIL}}}")]
                } else {
                    vec![
                        base.clone(),
                        format!("{base}/"),
                        format!("{base}/{{*{TAIL}}}"),
                    ]
                }
            }
            PathMatch::Template(t) => vec![t.clone()],
        }
    }
}

/// Where a route was defined, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// The file.
    pub(crate) source: Arc<SourceFile>,
    /// Byte span of the definition.
    pub(crate) span: std::ops::Range<usize>,
}

impl Place {
    fn problem(&self, message: String) -> Problem {
        self.source.problem(self.span.clone(), message)
    }

    fn describe(&self) -> String {
        let (line, col) = self.source.line_col(self.span.start);
        format!("{}:{line}:{col}", self.source.path.display())
    }
}

type Candidates = Vec<Arc<Route>>;

/// The route table of one snapshot.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    by_host: HashMap<String, matchit::Router<Candidates>>,
    any_host: matchit::Router<Candidates>,
    count: usize,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// A route, with template parameters when the route rewrites paths.
    Found(&'a Arc<Route>, Vec<(String, String)>),
    /// The path matches but the method does not; the allowed methods.
    MethodNotAllowed(String),
    /// Nothing matches.
    NotFound,
}

impl RouteTable {
    /// Number of routes.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The first route at this host and path that has a CORS policy, for
    /// answering a preflight whatever method it asks about.
    pub(crate) fn lookup_cors(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        fn in_router<'r>(
            router: &'r matchit::Router<Candidates>,
            path: &str,
        ) -> Option<&'r Arc<Route>> {
            router
                .at(path)
                .ok()?
                .value
                .iter()
                .find(|r| r.cors.is_some())
        }
        if let Some(router) = self.by_host.get(host)
            && router.at(path).is_ok()
        {
            return in_router(router, path);
        }
        in_router(&self.any_host, path)
    }

    /// Finds the route for a request. `host` is lower-case without port.
    pub(crate) fn lookup(&self, host: &str, path: &str, method: &Method) -> Lookup<'_> {
        if let Some(router) = self.by_host.get(host)
            && let Ok(m) = router.at(path)
        {
            return select(m.value, &m.params, method);
        }
        match self.any_host.at(path) {
            Ok(m) => select(m.value, &m.params, method),
            Err(_) => Lookup::NotFound,
        }
    }
}

fn select<'a>(
    candidates: &'a Candidates,
    params: &matchit::Params<'_, '_>,
    method: &Method,
) -> Lookup<'a> {
    for route in candidates {
        if route.allows(method) {
            // Rewrites and Lambda events use them; plain forwarding does not.
            let params = if route.rewrite.is_some()
                || route.openapi.is_some()
                || matches!(route.action, Action::Invoke(_))
            {
                params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            } else {
                Vec::new()
            };
            return Lookup::Found(route, params);
        }
    }
    let mut allow: Vec<&str> = Vec::new();
    for route in candidates {
        if let Some(methods) = &route.methods {
            for m in methods {
                if !allow.contains(&m.as_str()) {
                    allow.push(m.as_str());
                }
            }
        }
    }
    Lookup::MethodNotAllowed(allow.join(", "))
}

/// A host (or none) and a matchit pattern.
type GroupKey = (Option<String>, String);

/// Collects routes, then builds the table or reports every conflict.
#[derive(Debug, Default)]
pub(crate) struct RouteTableBuilder {
    groups: Vec<(GroupKey, Vec<(Arc<Route>, Place)>)>,
    count: usize,
}

fn overlap(a: &Route, b: &Route) -> bool {
    match (&a.methods, &b.methods) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
    }
}

impl RouteTableBuilder {
    /// Adds a route; `Err` when it overlaps one already added.
    pub(crate) fn add(
        &mut self,
        host: Option<String>,
        path: &PathMatch,
        route: Arc<Route>,
        place: Place,
    ) -> Result<(), Problem> {
        for pattern in path.patterns() {
            let key = (host.clone(), pattern);
            let idx = match self.groups.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    self.groups.push((key, Vec::new()));
                    self.groups.len() - 1
                }
            };
            let group = &mut self.groups[idx].1;
            if let Some((other, other_place)) = group.iter().find(|(r, _)| overlap(r, &route)) {
                return Err(place.problem(format!(
                    "route `{}` matches the same host, path and methods as route `{}` defined at {}",
                    route.name,
                    other.name,
                    other_place.describe()
                )));
            }
            group.push((route.clone(), place.clone()));
        }
        self.count += 1;
        Ok(())
    }

    /// Builds the table.
    pub(crate) fn build(self) -> Result<RouteTable, Vec<Problem>> {
        let mut table = RouteTable {
            count: self.count,
            ..RouteTable::default()
        };
        let mut problems = Vec::new();
        for ((host, pattern), routes) in self.groups {
            let place = routes.first().map(|(_, p)| p.clone());
            let candidates: Candidates = routes.into_iter().map(|(r, _)| r).collect();
            let router = match host {
                Some(h) => table.by_host.entry(h).or_default(),
                None => &mut table.any_host,
            };
            if let Err(e) = router.insert(pattern.clone(), candidates)
                && let Some(place) = place
            {
                problems.push(place.problem(format!("path pattern `{pattern}` conflicts: {e}")));
            }
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }
}

/// Parses a `rewrite_path` value: `{name}` inserts a parameter.
pub(crate) fn parse_rewrite(s: &str) -> Result<Vec<RewritePart>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(RewritePart::Lit(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in rewrite `{s}`"))?;
        let name = after[..close].trim_start_matches('*');
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid parameter name in rewrite `{s}`"));
        }
        parts.push(RewritePart::Param(name.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(RewritePart::Lit(rest.to_owned()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, methods: Option<&[Method]>) -> Arc<Route> {
        Arc::new(route_value(name, methods))
    }

    fn route_value(name: &str, methods: Option<&[Method]>) -> Route {
        Route {
            name: name.into(),
            methods: methods.map(|m| m.to_vec()),
            action: Action::Respond(DirectResponse {
                status: StatusCode::OK,
                headers: vec![],
                body: bytes::Bytes::new(),
            }),
            strip_prefix: None,
            rewrite: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            max_body: 0,
            rules: Default::default(),
            cors: None,
            auth: crate::auth::policy::RouteAuth::default(),
            rate_limits: Vec::new(),
            retry_non_idempotent: false,
            allow_path_params: false,
            first_byte_timeout: None,
            connect_timeout: None,
            request_timeout: None,
            headers: Default::default(),
            tunnels: Arc::new(tokio::sync::Semaphore::new(1)),
            tunnel_idle_timeout: std::time::Duration::from_secs(60),
            meters: Arc::new(crate::telemetry::requests::RouteMetrics::unrouted(
                &Arc::new(crate::telemetry::Metrics::new().unwrap()),
            )),
            openapi: None,
        }
    }

    fn place() -> Place {
        Place {
            source: Arc::new(SourceFile {
                path: "p.toml".into(),
                text: String::new(),
            }),
            span: 0..0,
        }
    }

    fn table() -> RouteTable {
        let mut b = RouteTableBuilder::default();
        let adds: Vec<(Option<&str>, PathMatch, Arc<Route>)> = vec![
            (
                None,
                PathMatch::Exact("/hello".into()),
                route("hello", Some(&[Method::GET])),
            ),
            (
                None,
                PathMatch::Prefix("/public".into()),
                route("public", None),
            ),
            (
                None,
                PathMatch::Exact("/public/special".into()),
                route("special", None),
            ),
            (
                None,
                PathMatch::Template("/users/{id}/posts/{*rest}".into()),
                route("posts", Some(&[Method::GET])),
            ),
            (
                None,
                PathMatch::Template("/users/{id}/posts/{*rest}".into()),
                route("posts-write", Some(&[Method::POST])),
            ),
            (
                Some("api.test"),
                PathMatch::Prefix("/public".into()),
                route("api-public", None),
            ),
            (
                None,
                PathMatch::Exact("/odd{brace}".into()),
                route("brace", None),
            ),
        ];
        for (host, path, r) in adds {
            b.add(host.map(str::to_owned), &path, r, place())
                .unwrap_or_else(|p| panic!("{p}"));
        }
        b.build().unwrap_or_else(|p| panic!("{p:?}"))
    }

    #[test]
    fn lookups() {
        let t = table();
        let cases: &[(&str, &str, &str, Method, &str)] = &[
            ("exact", "", "/hello", Method::GET, "hello"),
            ("exact wrong method", "", "/hello", Method::POST, "405:GET"),
            ("exact no match below", "", "/hello/x", Method::GET, "404"),
            ("prefix itself", "", "/public", Method::GET, "public"),
            ("prefix slash", "", "/public/", Method::GET, "public"),
            ("prefix deep", "", "/public/a/b", Method::DELETE, "public"),
            (
                "prefix is segment-wise",
                "",
                "/publicity",
                Method::GET,
                "404",
            ),
            (
                "exact beats prefix",
                "",
                "/public/special",
                Method::GET,
                "special",
            ),
            (
                "template get",
                "",
                "/users/7/posts/a/b",
                Method::GET,
                "posts",
            ),
            (
                "template post",
                "",
                "/users/7/posts/x",
                Method::POST,
                "posts-write",
            ),
            (
                "template put",
                "",
                "/users/7/posts/x",
                Method::PUT,
                "405:GET, POST",
            ),
            (
                "host route first",
                "api.test",
                "/public/x",
                Method::GET,
                "api-public",
            ),
            (
                "other host falls back",
                "www.test",
                "/public/x",
                Method::GET,
                "public",
            ),
            (
                "host fallback to any",
                "api.test",
                "/hello",
                Method::GET,
                "hello",
            ),
            ("literal braces", "", "/odd{brace}", Method::GET, "brace"),
            ("nothing", "", "/nope", Method::GET, "404"),
        ];
        for (name, host, path, method, want) in cases {
            let got = match t.lookup(host, path, method) {
                Lookup::Found(r, _) => r.name.to_string(),
                Lookup::MethodNotAllowed(a) => format!("405:{a}"),
                Lookup::NotFound => "404".to_owned(),
            };
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn overlapping_routes_are_refused_naming_both() {
        let mut b = RouteTableBuilder::default();
        let p = PathMatch::Prefix("/a".into());
        assert!(
            b.add(None, &p, route("first", Some(&[Method::GET])), place())
                .is_ok()
        );
        assert!(
            b.add(
                None,
                &p,
                route("other-method", Some(&[Method::POST])),
                place()
            )
            .is_ok()
        );
        let err = b.add(None, &p, route("second", None), place());
        let msg = err.err().map(|p| p.message).unwrap_or_default();
        assert!(msg.contains("`second`") && msg.contains("`first`"), "{msg}");
    }

    #[test]
    fn upstream_paths() {
        let mut strip = route_value("s", None);
        strip.strip_prefix = Some("/public".into());
        let mut rewrite = route_value("r", None);
        rewrite.rewrite = parse_rewrite("/v2/items/{id}/{rest}").ok();
        let params = vec![
            ("id".to_owned(), "7".to_owned()),
            ("rest".to_owned(), "a/b".to_owned()),
        ];
        let cases: &[(&str, &Route, &str, &str)] = &[
            ("strip", &strip, "/public/x/y", "/x/y"),
            ("strip to root", &strip, "/public", "/"),
            ("strip keeps non-prefix", &strip, "/publicity", "/publicity"),
            ("rewrite", &rewrite, "/users/7/a/b", "/v2/items/7/a/b"),
        ];
        for (name, r, input, want) in cases {
            assert_eq!(r.upstream_path(input, &params), *want, "{name}");
        }
        assert!(parse_rewrite("/x/{unclosed").is_err());
        assert!(parse_rewrite("/x/{}").is_err());
    }
}
