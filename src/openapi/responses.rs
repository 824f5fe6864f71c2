//! Dry-run response checks: does the backend answer as its contract says?
//!
//! With `validate_responses = true`, every upstream response's status is
//! looked up in the operation's `responses` (exact code, then `2XX`-style
//! ranges, then `default`) and its `Content-Type` in that response's
//! `content`. A JSON body whose media type has a schema is copied as it
//! streams to the client (up to [`MAX_CHECKED_BODY`]; larger or encoded
//! bodies are not checked) and validated when it ends. A mismatch is logged
//! (route, status, reason) and counted in
//! `gatehouse_openapi_response_mismatches_total{route, reason}`; the
//! response is passed on unchanged and never delayed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde_json::Value;

use super::load::Version;
use super::schema;
use crate::BoxError;
use crate::body::GwBody;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::Counter;

/// The reasons counted.
pub const REASONS: [&str; 3] = ["undeclared_status", "undeclared_media_type", "body_schema"];

/// Largest response body copied for a schema check.
pub const MAX_CHECKED_BODY: usize = 256 * 1024;

/// Which statuses a response entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codes {
    Exact(u16),
    /// `2XX`: the hundreds digit.
    Range(u16),
    Default,
}

/// A declared media type and its schema, if it has one.
type Media = (String, Option<Arc<jsonschema::Validator>>);

/// One operation's declared responses and its mismatch counters.
#[derive(Debug, Clone)]
pub struct ResponseRules {
    route: String,
    declared: Vec<(Codes, Vec<Media>)>,
    undeclared_status: Counter,
    undeclared_media: Counter,
    body_schema: Counter,
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
    /// `route`. A response schema that does not compile is not checked.
    pub fn new(
        route: &str,
        responses: Option<&Value>,
        version: Version,
        metrics: &Metrics,
    ) -> ResponseRules {
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
                    .map(|c| {
                        c.iter()
                            .map(|(k, mt)| {
                                let k = k.to_ascii_lowercase();
                                let check =
                                    mt.get("schema").filter(|_| is_json(&k)).and_then(|s| {
                                        schema::compile(&schema::to_json_schema(s, version)).ok()
                                    });
                                (k, check)
                            })
                            .collect()
                    })
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
            body_schema: counter(REASONS[2]),
        }
    }

    /// The mismatch of a response's head, if any (nothing is recorded).
    pub fn mismatch(&self, status: StatusCode, headers: &HeaderMap) -> Option<Mismatch> {
        self.judge(status, headers).err()
    }

    /// The schema the body must match (`Ok(None)`: nothing to check), or
    /// the head's mismatch.
    fn judge(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Option<&Arc<jsonschema::Validator>>, Mismatch> {
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
            return Err(Mismatch::Status);
        };
        // No Content-Type: nothing to compare.
        let given = crate::validate::media_type(headers);
        let Some(given) = given else { return Ok(None) };
        if media.is_empty() {
            return Ok(None);
        }
        let exact = media.iter().find(|(m, _)| *m == given);
        match exact.or_else(|| media.iter().find(|(m, _)| media_matches(m, &given))) {
            None => Err(Mismatch::MediaType),
            Some((_, check)) => Ok(check.as_ref()),
        }
    }

    /// Checks a response: logs and counts a mismatch, never blocks. A body
    /// to be checked against a schema is watched as it streams.
    pub fn observe(&self, response: Response<GwBody>) -> Response<GwBody> {
        let status = response.status();
        let check = match self.judge(status, response.headers()) {
            Ok(check) => check,
            Err(m) => {
                self.record(status, m);
                return response;
            }
        };
        let Some(schema) = check else {
            return response;
        };
        let encoded = response.headers().contains_key(header::CONTENT_ENCODING);
        let too_big = response
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n > MAX_CHECKED_BODY as u64);
        if encoded || too_big || response.body().is_end_stream() {
            return response;
        }
        let watch = Watch {
            schema: schema.clone(),
            counter: self.body_schema.clone(),
            route: self.route.clone(),
            status: status.as_u16(),
        };
        response.map(|inner| {
            Observed {
                inner,
                copy: Vec::new(),
                watch: Some(watch),
            }
            .boxed()
        })
    }

    fn record(&self, status: StatusCode, m: Mismatch) {
        match m {
            Mismatch::Status => {
                self.undeclared_status.increment(1);
                tracing::warn!(route = %self.route, status = status.as_u16(), reason = REASONS[0], "response does not match the OpenAPI document");
            }
            Mismatch::MediaType => {
                self.undeclared_media.increment(1);
                tracing::warn!(route = %self.route, status = status.as_u16(), reason = REASONS[1], "response does not match the OpenAPI document");
            }
        }
    }
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// What a watched body is checked against, and where a mismatch goes.
#[derive(Debug)]
struct Watch {
    schema: Arc<jsonschema::Validator>,
    counter: Counter,
    route: String,
    status: u16,
}

impl Watch {
    fn finish(&self, body: &[u8]) {
        let valid = serde_json::from_slice::<Value>(body).is_ok_and(|v| self.schema.is_valid(&v));
        if !valid {
            self.counter.increment(1);
            tracing::warn!(route = %self.route, status = self.status, reason = REASONS[2], "response does not match the OpenAPI document");
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body passed on frame by frame, copied for a check at its end.
    struct Observed {
        #[pin]
        inner: GwBody,
        copy: Vec<u8>,
        // `None` once finished or given up (too large, failed).
        watch: Option<Watch>,
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = ready!(inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if this.copy.len() + data.len() > MAX_CHECKED_BODY {
                        *this.watch = None;
                        *this.copy = Vec::new();
                    } else if this.watch.is_some() {
                        this.copy.extend_from_slice(data);
                    }
                }
                // hyper stops polling a body that says it has ended.
                if inner.is_end_stream()
                    && let Some(watch) = this.watch.take()
                {
                    watch.finish(this.copy);
                }
            }
            Some(Err(_)) => *this.watch = None,
            None => {
                if let Some(watch) = this.watch.take() {
                    watch.finish(this.copy);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
            Version::V30,
            &metrics,
        );
        let strict = ResponseRules::new(
            "s",
            Some(&json!({"201": {"description": "created"}, "404": {"content": {"text/*": {}}}})),
            Version::V31,
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
            let mut response = Response::new(crate::body::empty());
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            drop(rules.observe(response));
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

    /// A streamed body made of `chunks`, without a length.
    fn streamed(chunks: Vec<Vec<u8>>) -> GwBody {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn streamed_bodies_are_checked_at_their_end_and_passed_on() {
        let metrics = Metrics::new().unwrap();
        let rules = ResponseRules::new(
            "b",
            Some(
                &json!({"200": {"content": {"application/json": {"schema": {"type": "object", "required": ["id"]}}}}}),
            ),
            Version::V30,
            &metrics,
        );
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_CHECKED_BODY));
        let cases: [(&str, Vec<Vec<u8>>, u64); 4] = [
            (
                "valid in two chunks",
                vec![b"{\"id\"".to_vec(), b": 1}".to_vec()],
                0,
            ),
            ("missing id", vec![b"{}".to_vec()], 1),
            ("not json", vec![b"{".to_vec(), b"oops".to_vec()], 1),
            ("too large to check", vec![big.into_bytes()], 0),
        ];
        let mut expected = 0;
        for (name, chunks, mismatches) in cases {
            let sent: Vec<u8> = chunks.concat();
            let mut response = Response::new(streamed(chunks));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            let got = rules
                .observe(response)
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(&got[..], &sent[..], "{name}: passed on unchanged");
            expected += mismatches;
            let want = format!(
                r#"gatehouse_openapi_response_mismatches_total{{route="b",reason="body_schema"}} {expected}"#
            );
            assert!(
                metrics.render().contains(&want),
                "{name}: {}",
                metrics.render()
            );
        }
    }
}
