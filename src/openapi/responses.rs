//! Dry-run response checks: does the backend answer as its contract says?
//!
//! With `validate_responses = true`, every upstream response's status is
//! looked up in the operation's `responses` (exact code, then `2XX`-style
//! ranges, then `default`) and its `Content-Type` in that response's
//! `content`. A mismatch is logged (route, status, reason) and counted in
//! `gatehouse_openapi_response_mismatches_total{route, reason}`; the
//! response is passed on unchanged. Response bodies are not read: they
//! stream to the client, and buffering them to check a schema would change
//! what the gateway does in the name of only watching it.

use http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use crate::telemetry::Metrics;
use crate::telemetry::metrics::Counter;

/// The reasons counted.
pub const REASONS: [&str; 2] = ["undeclared_status", "undeclared_media_type"];

/// Which statuses a response entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codes {
    Exact(u16),
    /// `2XX`: the hundreds digit.
    Range(u16),
    Default,
}

/// One operation's declared responses and its mismatch counters.
#[derive(Debug, Clone)]
pub struct ResponseRules {
    route: String,
    declared: Vec<(Codes, Vec<String>)>,
    undeclared_status: Counter,
    undeclared_media: Counter,
}

/// What is wrong with a response, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Its status is not in `responses`.
    Status,
    /// Its media type is not in that response's `content`.
    MediaType,
}

impl ResponseRules {
    /// Reads an operation's `responses` object; counters registered for
    /// `route`.
    pub fn new(route: &str, responses: Option<&Value>, metrics: &Metrics) -> ResponseRules {
        let mut declared = Vec::new();
        if let Some(Value::Object(map)) = responses {
            for (code, response) in map {
                let codes = if code == "default" {
                    Codes::Default
                } else if let Some(d) = code
                    .strip_suffix("XX")
                    .or_else(|| code.strip_suffix("xx"))
                    .and_then(|d| d.parse::<u16>().ok())
                {
                    Codes::Range(d)
                } else if let Ok(n) = code.parse::<u16>() {
                    Codes::Exact(n)
                } else {
                    continue;
                };
                let media = response
                    .get("content")
                    .and_then(Value::as_object)
                    .map(|c| c.keys().map(|k| k.to_ascii_lowercase()).collect())
                    .unwrap_or_default();
                declared.push((codes, media));
            }
        }
        let counter = |reason: &str| {
            metrics.counter(
                "gatehouse_openapi_response_mismatches_total",
                &[("route", route), ("reason", reason)],
            )
        };
        ResponseRules {
            route: route.to_owned(),
            declared,
            undeclared_status: counter(REASONS[0]),
            undeclared_media: counter(REASONS[1]),
        }
    }

    /// The mismatch of a response, if any (nothing is recorded).
    pub fn mismatch(&self, status: StatusCode, headers: &HeaderMap) -> Option<Mismatch> {
        let code = status.as_u16();
        let entry = self
            .declared
            .iter()
            .find(|(c, _)| *c == Codes::Exact(code))
            .or_else(|| {
                self.declared
                    .iter()
                    .find(|(c, _)| *c == Codes::Range(code / 100))
            })
            .or_else(|| self.declared.iter().find(|(c, _)| *c == Codes::Default));
        let Some((_, media)) = entry else {
            return Some(Mismatch::Status);
        };
        // No Content-Type: nothing to compare.
        let given = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })?;
        if media.is_empty() || media.iter().any(|m| media_matches(m, &given)) {
            None
        } else {
            Some(Mismatch::MediaType)
        }
    }

    /// Checks a response: logs and counts a mismatch, never blocks.
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        match self.mismatch(status, headers) {
            None => {}
            Some(Mismatch::Status) => {
                self.undeclared_status.increment(1);
                tracing::warn!(route = %self.route, status = status.as_u16(), reason = REASONS[0], "response does not match the OpenAPI document");
            }
            Some(Mismatch::MediaType) => {
                self.undeclared_media.increment(1);
                tracing::warn!(route = %self.route, status = status.as_u16(), reason = REASONS[1], "response does not match the OpenAPI document");
            }
        }
    }
}

/// Whether a declared media range (`application/json`, `image/*`, `*/*`)
/// covers a given media type.
pub fn media_matches(declared: &str, given: &str) -> bool {
    if declared == "*/*" || declared == given {
        return true;
    }
    match declared.strip_suffix("/*") {
        Some(kind) => given
            .split_once('/')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    #[test]
    fn responses_are_matched_by_code_range_and_default() {
        let metrics = Metrics::new().unwrap();
        let with_default = ResponseRules::new(
            "r",
            Some(&json!({
                "200": {"content": {"application/json": {}, "application/xml": {}}},
                "4XX": {"content": {"application/problem+json": {}}},
                "default": {"description": "anything"}
            })),
            &metrics,
        );
        let strict = ResponseRules::new(
            "s",
            Some(&json!({"201": {"description": "created"}, "404": {"content": {"text/*": {}}}})),
            &metrics,
        );
        let cases = [
            (
                "declared json",
                &with_default,
                200,
                Some("application/json; charset=utf-8"),
                None,
            ),
            (
                "declared xml",
                &with_default,
                200,
                Some("application/xml"),
                None,
            ),
            (
                "wrong media",
                &with_default,
                200,
                Some("text/html"),
                Some(Mismatch::MediaType),
            ),
            (
                "range",
                &with_default,
                404,
                Some("application/problem+json"),
                None,
            ),
            (
                "default covers",
                &with_default,
                503,
                Some("text/plain"),
                None,
            ),
            ("no content type", &with_default, 200, None, None),
            (
                "undeclared status",
                &strict,
                500,
                None,
                Some(Mismatch::Status),
            ),
            (
                "no content declared",
                &strict,
                201,
                Some("application/json"),
                None,
            ),
            ("wildcard media", &strict, 404, Some("text/plain"), None),
            (
                "wildcard other kind",
                &strict,
                404,
                Some("application/json"),
                Some(Mismatch::MediaType),
            ),
        ];
        for (name, rules, code, ct, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(ct) = ct {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(rules.mismatch(status, &headers), want, "{name}");
            rules.observe(status, &headers);
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"gatehouse_openapi_response_mismatches_total{route="r",reason="undeclared_media_type"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gatehouse_openapi_response_mismatches_total{route="s",reason="undeclared_status"} 1"#),
            "{text}"
        );
    }
}
