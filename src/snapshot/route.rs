//! Compiling one route spec: matching, upstream or function, limits, checks,
//! header policy.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::config::{Problem, RouteSpec, SourceFile};
use crate::route::{Action, DirectResponse, PathMatch, RewritePart, Route, parse_rewrite};
use crate::telemetry::requests::RouteMetrics;

use super::*;

pub(super) fn compile_route(
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
pub(super) const DEFAULT_MAX_TUNNELS: u32 = 1000;

/// A route's header hygiene: its upgrades, the client headers it lets
/// through, and what happens to header names with `_`.
pub(super) fn compile_header_policy(
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
