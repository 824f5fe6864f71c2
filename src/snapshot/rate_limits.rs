//! Compiling rate-limit policies: every policy, its limits and keys, and which
//! routes it applies to.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Loaded, Problem, RouteSpec, SourceFile};
use crate::ratelimit::policy::{KeyKind, RatePolicy};
use crate::ratelimit::{Limit, Rate};
use crate::telemetry::Metrics;

use super::*;

/// Every rate-limit policy, and which routes each applies to.
#[derive(Debug, Default)]
pub(super) struct RateIndex {
    pub(super) by_name: HashMap<String, Arc<RatePolicy>>,
    pub(super) global: Vec<Arc<RatePolicy>>,
    pub(super) by_route: HashMap<String, Vec<Arc<RatePolicy>>>,
}

/// A rate and burst from config, or a problem.
pub(super) fn compile_limit(rate: &str, burst: Option<u32>) -> Result<Limit, String> {
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
pub(super) fn compile_rate_limits(
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
pub(super) fn route_rate_limits(
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
