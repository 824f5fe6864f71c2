//! CORS per route: preflight requests are answered by the gateway, and
//! allowed origins get the `Access-Control-*` headers on real responses.
//!
//! CORS is a browser contract, not access control: a request from an origin
//! that is not allowed is still handled (the browser hides the answer), but
//! a preflight for it is refused with 403 and never forwarded.
//!
//! On a route with a CORS policy that policy is the only one: the backend's
//! own `Access-Control-*` response headers are removed from every response,
//! so a backend that echoes any origin (with credentials) cannot widen it.
//!
//! Ours rather than tower-http's `CorsLayer`: that layer answers every
//! preflight itself and never refuses a disallowed one, and it leaves the
//! backend's headers in place.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{GwBody, empty};

/// The response headers that carry a CORS decision: on a route with a
/// policy, only the gateway sets them.
const UPSTREAM_CORS_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// A preflight the route's CORS policy refuses (origin, method or headers).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("CORS preflight rejected")]
pub(crate) struct Rejected;

/// A route's compiled CORS policy.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    /// Allowed origins, lower case (`*`: any).
    pub(crate) origins: Vec<String>,
    /// Allowed methods (empty: the route's methods).
    pub(crate) methods: Vec<Method>,
    /// Allowed request headers, lower case.
    pub(crate) headers: Vec<HeaderName>,
    /// Response headers the browser may read.
    pub(crate) expose: Vec<HeaderName>,
    /// Whether credentials (cookies, Authorization) may be sent.
    pub(crate) credentials: bool,
    /// How long a preflight answer may be cached, in seconds.
    pub(crate) max_age: Option<u64>,
}

/// The parts of a preflight request.
#[derive(Debug)]
pub(crate) struct Preflight {
    /// The Origin.
    pub(crate) origin: HeaderValue,
    /// The method the real request will use.
    pub(crate) method: Method,
    /// The headers it will send.
    pub(crate) headers: Vec<String>,
}

/// Recognises a preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub(crate) fn preflight(method: &Method, headers: &HeaderMap) -> Option<Preflight> {
    if method != Method::OPTIONS {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?.clone();
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let method = Method::from_bytes(requested.as_bytes()).ok()?;
    let headers = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    Some(Preflight {
        origin,
        method,
        headers,
    })
}

/// `a, b, c` as one header value; `None` for an empty list.
fn header_list(names: &[HeaderName]) -> Option<HeaderValue> {
    if names.is_empty() {
        return None;
    }
    let joined = names
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&joined).ok()
}

impl Cors {
    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        let Ok(o) = origin.to_str() else { return false };
        self.origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
    }

    fn origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.iter().any(|a| a == "*") && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Answers a preflight, or refuses it.
    pub(crate) fn answer(
        &self,
        p: &Preflight,
        route_methods: Option<&[Method]>,
    ) -> Result<Response<GwBody>, Rejected> {
        if !self.allows_origin(&p.origin) {
            return Err(Rejected);
        }
        let methods: Vec<Method> = if self.methods.is_empty() {
            route_methods.map(<[Method]>::to_vec).unwrap_or_default()
        } else {
            self.methods.clone()
        };
        let method_ok = if methods.is_empty() {
            true
        } else {
            methods.contains(&p.method)
        };
        let headers_ok = p
            .headers
            .iter()
            .all(|h| self.headers.iter().any(|a| a.as_str() == h));
        if !method_ok || !headers_ok {
            return Err(Rejected);
        }
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.origin_value(&p.origin),
        );
        let allow_methods = if methods.is_empty() {
            p.method.as_str().to_owned()
        } else {
            methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Ok(v) = HeaderValue::from_str(&allow_methods) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = header_list(&self.headers) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(age) = self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        Ok(resp)
    }

    /// Applies the policy to a real response: the backend's CORS headers
    /// are removed, then, when the request named an `origin`, the answer
    /// varies on it and an allowed origin gets our headers.
    pub(crate) fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        for name in UPSTREAM_CORS_HEADERS {
            headers.remove(name);
        }
        if let Some(origin) = origin {
            self.decorate(origin, headers);
        }
    }

    /// Adds the CORS headers to a real response for an allowed origin.
    fn decorate(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if !self.allows_origin(origin) {
            return;
        }
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.origin_value(origin),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = header_list(&self.expose) {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            methods: vec![Method::GET, Method::POST],
            headers: vec![
                HeaderName::from_static("content-type"),
                HeaderName::from_static("x-tenant"),
            ],
            expose: vec![HeaderName::from_static("x-request-id")],
            credentials,
            max_age: Some(600),
        }
    }

    fn pf(origin: &'static str, method: Method, headers: &[&str]) -> Preflight {
        Preflight {
            origin: HeaderValue::from_static(origin),
            method,
            headers: headers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn preflights() {
        let c = cors(&["https://app.test"], true);
        let cases = [
            (
                "allowed",
                pf("https://app.test", Method::POST, &["x-tenant"]),
                Some("https://app.test"),
            ),
            (
                "case-insensitive origin",
                pf("https://APP.test", Method::GET, &[]),
                Some("https://APP.test"),
            ),
            (
                "other origin",
                pf("https://evil.test", Method::GET, &[]),
                None,
            ),
            (
                "method not allowed",
                pf("https://app.test", Method::DELETE, &[]),
                None,
            ),
            (
                "header not allowed",
                pf("https://app.test", Method::GET, &["x-admin"]),
                None,
            ),
        ];
        for (name, p, want) in cases {
            let got = c.answer(&p, None).ok().map(|r| {
                assert_eq!(r.status(), StatusCode::NO_CONTENT, "{name}");
                assert_eq!(r.headers()[header::ACCESS_CONTROL_MAX_AGE], "600", "{name}");
                assert_eq!(
                    r.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
                    "true",
                    "{name}"
                );
                r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN]
                    .to_str()
                    .unwrap_or("")
                    .to_owned()
            });
            assert_eq!(got.as_deref(), want, "{name}");
        }
        let any = cors(&["*"], false);
        let r = any
            .answer(&pf("https://x.test", Method::GET, &[]), None)
            .ok();
        assert_eq!(
            r.map(|r| r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN].clone()),
            Some(HeaderValue::from_static("*"))
        );
    }

    #[test]
    fn real_responses_get_headers_only_for_allowed_origins() {
        let c = cors(&["https://app.test"], false);
        let mut h = HeaderMap::new();
        c.decorate(&HeaderValue::from_static("https://app.test"), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.test");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        let mut h = HeaderMap::new();
        c.decorate(&HeaderValue::from_static("https://evil.test"), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(h[header::VARY], "Origin");
    }

    #[test]
    fn the_backends_cors_headers_never_survive() {
        let backend = |h: &mut HeaderMap| {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("https://evil.test"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("DELETE"),
            );
        };
        let c = cors(&["https://app.test"], false);
        for origin in [None, Some("https://evil.test"), Some("https://app.test")] {
            let mut h = HeaderMap::new();
            backend(&mut h);
            c.apply(origin.map(HeaderValue::from_static).as_ref(), &mut h);
            let allowed = origin == Some("https://app.test");
            assert_eq!(
                h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                    .map(|v| v.to_str().unwrap_or_default()),
                allowed.then_some("https://app.test"),
                "{origin:?}"
            );
            assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
            assert!(h.get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none());
        }
    }

    #[test]
    fn preflight_is_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://app.test"));
        assert!(
            preflight(&Method::OPTIONS, &h).is_none(),
            "needs the requested method"
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("X-A, content-type"),
        );
        let p = preflight(&Method::OPTIONS, &h);
        assert_eq!(p.as_ref().map(|p| p.method.clone()), Some(Method::PUT));
        assert_eq!(
            p.map(|p| p.headers),
            Some(vec!["x-a".to_owned(), "content-type".to_owned()])
        );
        assert!(preflight(&Method::GET, &h).is_none());
    }
}
