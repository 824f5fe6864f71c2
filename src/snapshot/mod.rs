//! The immutable, fully validated configuration a request runs against.
//!
//! [`Snapshot::build`] compiles the parsed policy files into a route table and
//! ready upstreams, or returns every problem with its place. The gateway keeps
//! the current snapshot in an `ArcSwap`; a request loads it once and keeps it
//! to the end, so a reload never changes the rules under a request in flight.

mod auth;
mod openapi_routes;
mod rate_limits;
mod route;
mod route_ctx;
mod rules;

use auth::*;
use rate_limits::*;
use route::*;
use route_ctx::*;
pub(crate) use rules::*;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;

use crate::auth::Clock;
use crate::auth::jwks::JwksRegistry;
use crate::auth::jwt::JwtVerifier;
use crate::body::BodyPace;
use crate::config::{Environment, Loaded, Problems};
use crate::proxy::lambda::{self, AwsSettings, LambdaFunction};
use crate::proxy::{Upstream, UpstreamRegistry};
use crate::route::{PathMatch, Place, RouteTable, RouteTableBuilder};
use crate::telemetry::Metrics;

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
    pub(crate) routes: RouteTable,
    /// The upstreams, by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The `kind = "lambda"` upstreams, by name.
    pub functions: HashMap<String, Arc<LambdaFunction>>,
    /// Whether `//` is folded into `/` before routing.
    pub merge_slashes: bool,
    /// How fast clients must send request bodies.
    pub(crate) body_pace: BodyPace,
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
    /// Credentials settings for Lambda upstreams.
    pub aws: &'a AwsSettings,
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
                    match LambdaFunction::build(spec_ref, defaults, source, deps.aws) {
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
