//! What compiling a route needs besides its spec: its context, header edits,
//! the Lambda resource name of its path.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::config::{Defaults, Problem, RouteSpec, SourceFile};
use crate::proxy::Upstream;
use crate::proxy::lambda::LambdaFunction;
use crate::route::{HeaderEdits, PathMatch, Route};
use crate::telemetry::Metrics;

use super::*;

pub(super) fn name_of(r: &RouteSpec) -> String {
    r.upstream
        .as_ref()
        .map(|u| u.get_ref().clone())
        .unwrap_or_default()
}

pub(super) fn place_string(source: &SourceFile, span: std::ops::Range<usize>) -> String {
    let (line, col) = source.line_col(span.start);
    format!("{}:{line}:{col}", source.path.display())
}

pub(super) fn compile_edits(
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

pub(super) type Compiled = (Option<String>, PathMatch, Route);

/// A route's path pattern as API Gateway writes it.
pub(super) fn lambda_resource(p: &PathMatch) -> String {
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
pub(super) struct RouteCtx<'a> {
    pub(super) source: &'a Arc<SourceFile>,
    pub(super) defaults: &'a Defaults,
    pub(super) upstreams: &'a HashMap<String, Arc<Upstream>>,
    pub(super) functions: &'a HashMap<String, Arc<LambdaFunction>>,
    pub(super) upstream_places: &'a HashMap<String, String>,
    pub(super) merge_slashes: bool,
    pub(super) server: &'a crate::config::ServerConfig,
    pub(super) issuers: &'a [String],
    pub(super) rate: &'a RateIndex,
    pub(super) metrics: &'a Arc<Metrics>,
}
