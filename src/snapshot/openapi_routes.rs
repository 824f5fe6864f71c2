//! Routes generated from `[[openapi]]` tables, compiled like hand-written
//! routes and given their operation's checks.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use super::{RouteCtx, RouteSummary, compile_route, place_string};
use crate::config::{LoadedPolicy, Problem};
use crate::route::{PathMatch, Place, RouteTableBuilder};

/// Where generated routes go.
pub(super) struct Sink<'a> {
    pub(super) builder: &'a mut RouteTableBuilder,
    pub(super) places: &'a mut HashMap<String, String>,
    pub(super) list: &'a mut Vec<RouteSummary>,
    pub(super) problems: &'a mut Vec<Problem>,
}

/// Adds the routes of every `[[openapi]]` table of `policy`.
pub(super) fn add(policy: &LoadedPolicy, ctx: &RouteCtx<'_>, sink: &mut Sink<'_>) {
    let source = &policy.source;
    let mut names: HashMap<String, String> = HashMap::new();
    for table in &policy.file.openapi {
        let spec = table.get_ref();
        let name = spec.name.get_ref();
        if let Some(first) = names.get(name) {
            sink.problems.push(source.problem(
                spec.name.span(),
                format!("openapi `{name}` is already defined at {first}"),
            ));
            continue;
        }
        names.insert(name.clone(), place_string(source, spec.name.span()));
        let imported = match crate::openapi::import(spec, source, ctx.metrics) {
            Ok(i) => i,
            Err(ps) => {
                sink.problems.extend(ps);
                continue;
            }
        };
        for w in &imported.warnings {
            tracing::warn!(policy = %source.path.display(), openapi = %name, "{w}");
        }
        for generated in imported.routes {
            let r = &generated.spec;
            let route_name = r.name.get_ref().clone();
            if let Some(first) = sink.places.get(&route_name) {
                sink.problems.push(source.problem(
                    table.span(),
                    format!("route `{route_name}` is already defined at {first}"),
                ));
                continue;
            }
            sink.places
                .insert(route_name.clone(), place_string(source, spec.name.span()));
            match compile_route(r, table.span(), ctx) {
                Ok((host, path, mut route)) => {
                    if generated.drop_head
                        && let Some(methods) = &mut route.methods
                    {
                        methods.retain(|m| *m != Method::HEAD);
                    }
                    route.openapi = Some(Arc::new(generated.rules));
                    sink.list.push(RouteSummary {
                        name: route_name,
                        host: host.clone(),
                        path: generated.template.clone(),
                        methods: route
                            .methods
                            .as_ref()
                            .map(|ms| ms.iter().map(ToString::to_string).collect())
                            .unwrap_or_default(),
                        upstream: Some(spec.upstream.get_ref().clone()),
                    });
                    let place = Place {
                        source: source.clone(),
                        span: table.span(),
                    };
                    debug_assert!(matches!(path, PathMatch::Template(_)));
                    if let Err(p) = sink.builder.add(host, &path, Arc::new(route), place) {
                        sink.problems.push(p);
                    }
                }
                Err(ps) => sink.problems.extend(ps),
            }
        }
    }
}
