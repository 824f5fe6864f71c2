//! OpenAPI-first routes: an OpenAPI 3.0 or 3.1 document, named by a
//! policy's `[[openapi]]` table, becomes one route per operation.
//!
//! This module owns reading the document ([`load`]: YAML or JSON, `$ref`s
//! inlined, remote refs refused), turning operations into route specs and
//! their checks (`routes`), the parameter checks ([`params`]), the 3.0 to
//! JSON Schema rewrite ([`schema`]) and the dry-run response checks
//! ([`responses`]). It does not compile routes: the generated
//! [`RouteSpec`](crate::config::RouteSpec)s go through the same
//! compilation as hand-written ones in [`crate::snapshot`], so auth, rate
//! limits and every safe default apply unchanged.
//!
//! Crates: the document is walked as a `serde_json::Value` rather than
//! through `openapiv3` (3.0 only) or `oas3` (3.1 only): one model for both
//! versions, and the schemas are needed as JSON for `jsonschema` anyway.
//! YAML is read with `serde_yaml_ng`, the maintained fork of the
//! deprecated `serde_yaml` (same API, active releases).
//!
//! Security caveat: what cannot be checked is never silently let through.
//! A refused ref, or a `security` requirement that cannot be mapped (API
//! key in a query or cookie, HTTP basic, several schemes at once), is
//! always a config error. Other unsupported constructs are errors unless
//! the table sets `allow_unsupported`, and are then handled strictly: a
//! request media type that cannot be validated is refused (415); a
//! parameter whose style or type cannot be read is checked for presence
//! only; differing scope lists are merged (every caller needs all).

pub mod load;
pub mod params;
pub mod responses;
mod routes;
pub mod schema;

use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;

use crate::config::{OpenApiSpec, Problem, SourceFile};
use crate::telemetry::Metrics;
use crate::validate::Invalid;
use crate::validate::{RequestRules, SchemaError, has_body};

pub use routes::{Generated, generate};

/// Something in a document the gateway refuses or cannot honour fully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The document file it is in.
    pub file: PathBuf,
    /// A JSON pointer into that file (empty: the whole file).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
    /// Whether it stops the document from loading.
    pub fatal: bool,
}

impl Finding {
    /// As a config problem: `file:0:0: #/pointer: message`.
    pub fn problem(&self) -> Problem {
        Problem {
            file: self.file.clone(),
            line: 0,
            column: 0,
            message: format!("#{}: {}", self.pointer, self.message),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: #{}: {}",
            self.file.display(),
            self.pointer,
            self.message
        )
    }
}

/// One accepted request media type.
#[derive(Debug, Clone)]
pub struct BodyMedia {
    /// The media type, lower-case.
    pub media: String,
    /// Its schema check (JSON media types with a schema).
    pub rules: Option<RequestRules>,
}

/// An operation's request body.
#[derive(Debug, Clone, Default)]
pub struct BodyRules {
    /// A body must be sent.
    pub required: bool,
    /// The media types accepted.
    pub media: Vec<BodyMedia>,
}

/// The checks of one operation, run after the route's own head rules.
#[derive(Debug, Clone)]
pub struct OperationRules {
    /// `operationId`, or `METHOD /path`.
    pub operation: String,
    /// Its parameters.
    pub params: Vec<params::ParamRule>,
    /// Its request body; `None`: the operation takes none, and a request
    /// with a body is refused (415).
    pub body: Option<BodyRules>,
    /// Dry-run response checks, when enabled.
    pub responses: Option<responses::ResponseRules>,
}

fn media_of(headers: &HeaderMap) -> String {
    crate::validate::media_type(headers).unwrap_or_default()
}

impl OperationRules {
    /// Parameter and media-type checks (no body is read): 400
    /// `invalid_parameter` with the parameter's JSON pointer, or 415.
    pub fn check_head(
        &self,
        path_params: &[(String, String)],
        query: Option<&str>,
        headers: &HeaderMap,
        streaming: bool,
    ) -> Result<(), Invalid> {
        let pairs = params::query_pairs(query).map_err(|e| Invalid::Query(e.to_string()))?;
        for rule in &self.params {
            rule.check(path_params, &pairs, headers)?;
        }
        if has_body(headers, streaming) {
            let media = media_of(headers);
            let accepted = self
                .body
                .as_ref()
                .is_some_and(|b| b.media.iter().any(|m| m.media == media));
            if !accepted {
                return Err(Invalid::UnsupportedMediaType);
            }
        }
        Ok(())
    }

    /// Whether the body must be buffered for [`Self::check_body`].
    pub fn needs_body(&self) -> bool {
        self.body
            .as_ref()
            .is_some_and(|b| b.required || b.media.iter().any(|m| m.rules.is_some()))
    }

    /// The body against its media type's schema: 422 with the pointer.
    pub fn check_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Invalid> {
        let Some(rules) = &self.body else {
            return Ok(());
        };
        if body.is_empty() {
            if rules.required {
                return Err(Invalid::Schema(vec![SchemaError {
                    pointer: String::new(),
                    message: "a request body is required".to_owned(),
                }]));
            }
            return Ok(());
        }
        let media = media_of(headers);
        match rules.media.iter().find(|m| m.media == media) {
            Some(BodyMedia {
                rules: Some(check), ..
            }) => check.check_body(body),
            Some(_) => Ok(()),
            None => Err(Invalid::UnsupportedMediaType),
        }
    }

    /// Dry-run: records a response that breaks the contract (its body as
    /// it streams); the response itself is passed on unchanged.
    pub fn observe_response(
        &self,
        response: http::Response<crate::body::GwBody>,
    ) -> http::Response<crate::body::GwBody> {
        match &self.responses {
            Some(r) => r.observe(response),
            None => response,
        }
    }
}

/// What a `[[openapi]]` table yields: its routes, and the findings that
/// did not stop it (to be reported as warnings).
#[derive(Debug)]
pub struct Imported {
    /// One per operation.
    pub routes: Vec<Generated>,
    /// Unsupported constructs allowed by `allow_unsupported`.
    pub warnings: Vec<Finding>,
}

/// Loads the table's document (relative to the policy file `source`) and
/// generates its routes; every refusal as a problem.
pub fn import(
    spec: &OpenApiSpec,
    source: &SourceFile,
    metrics: &Metrics,
) -> Result<Imported, Vec<Problem>> {
    let dir = source
        .path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(spec.document.get_ref());
    let doc = match load::load(&path) {
        Ok(d) => d,
        Err(findings) => return Err(findings.iter().map(Finding::problem).collect()),
    };
    let out = generate(&doc, spec, source, metrics);
    let mut problems = out.problems;
    problems.extend(
        out.findings
            .iter()
            .filter(|f| f.fatal)
            .map(Finding::problem),
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Imported {
        routes: out.routes,
        warnings: out.findings.into_iter().filter(|f| !f.fatal).collect(),
    })
}

/// The warnings of every `[[openapi]]` table of a loaded configuration
/// (for `gatehouse check`); tables that fail are left to the snapshot.
pub fn warnings(loaded: &crate::config::Loaded) -> Vec<Finding> {
    let metrics = Arc::new(Metrics::disabled());
    let mut out = Vec::new();
    for policy in &loaded.policies {
        for spec in &policy.file.openapi {
            if let Ok(imported) = import(spec.get_ref(), &policy.source, &metrics) {
                out.extend(imported.warnings);
            }
        }
    }
    out
}

/// What `gatehouse openapi routes FILE` prints: one line per route the
/// document would create (method, path, operation, auth, checks), and
/// every finding. `Err` holds the findings when one of them is fatal
/// (everything not refused outright is reported, as with
/// `allow_unsupported`).
pub fn describe(
    path: &std::path::Path,
    path_prefix: Option<&str>,
) -> Result<(Vec<String>, Vec<Finding>), Vec<Finding>> {
    use toml::Spanned;
    let doc = load::load(path)?;
    let spec = OpenApiSpec {
        name: Spanned::new(0..0, "openapi".to_owned()),
        document: Spanned::new(0..0, path.to_path_buf()),
        upstream: Spanned::new(0..0, "upstream".to_owned()),
        host: None,
        path_prefix: path_prefix.map(|p| Spanned::new(0..0, p.to_owned())),
        auth: None,
        jwt_issuers: Vec::new(),
        rate_limits: Vec::new(),
        max_body: None,
        validate_responses: false,
        allow_unsupported: true,
        underscores_in_headers: Some(crate::config::UnderscoreHeaders::Allow),
        operations: std::collections::BTreeMap::new(),
    };
    let source = SourceFile {
        path: path.to_path_buf(),
        text: String::new(),
    };
    let out = generate(&doc, &spec, &source, &Metrics::disabled());
    if out.findings.iter().any(|f| f.fatal) {
        return Err(out.findings);
    }
    let lines = out.routes.iter().map(route_line).collect();
    Ok((lines, out.findings))
}

fn route_line(g: &Generated) -> String {
    use crate::config::AuthSpec;
    let r = &g.spec;
    let mut auth = match r.auth.as_ref().map(toml::Spanned::get_ref) {
        None => "none".to_owned(),
        Some(AuthSpec::One(m)) => m.clone(),
        Some(AuthSpec::Any(ms)) => ms.join("|"),
    };
    if let Some(h) = &r.api_key_header {
        auth.push_str(&format!(" (key header {})", h.get_ref()));
    }
    if !r.scopes.is_empty() {
        auth.push_str(&format!(" scopes={}", r.scopes.join(",")));
    }
    let params: Vec<String> = g
        .rules
        .params
        .iter()
        .map(|p| {
            format!(
                "{}:{}{}",
                p.location.as_str(),
                p.name,
                if p.required { "*" } else { "" }
            )
        })
        .collect();
    let body = match &g.rules.body {
        None => "none".to_owned(),
        Some(b) if b.media.is_empty() => "refused".to_owned(),
        Some(b) => {
            b.media
                .iter()
                .map(|m| {
                    format!(
                        "{}{}",
                        m.media,
                        if m.rules.is_some() { "(schema)" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
                + if b.required { " required" } else { "" }
        }
    };
    format!(
        "{:<7} {:<36} {:<40} auth={auth} params=[{}] body={body}",
        g.method,
        g.template,
        r.name.get_ref(),
        params.join(" ")
    )
}
