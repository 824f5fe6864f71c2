//! What every console request passes before a page handler sees it, in
//! order: the `Host` check (DNS rebinding: 421), the session (none: 303 to
//! the sign-in page), and for a `POST` the origin check (a cross-site
//! `Origin` or `Sec-Fetch-Site`: 403) and the CSRF token (the form's
//! hidden `csrf` field against the session's token, or against the
//! pre-session cookie for the sign-in form; missing or wrong: 403). Every
//! answer then gets the console's security headers.
//!
//! Form bodies are read whole, up to 64 KiB (beyond: 413), before any
//! handler runs, so a refused POST has changed nothing.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::render::{harden, redirect, refusal};
use super::session::{self, COOKIE, PRE_COOKIE};
use super::{SIGN_IN, Visitor};
use crate::admin::AdminState;

/// The largest form body read.
const MAX_FORM: usize = 64 * 1024;

/// The `Host` values the console answers when `[admin] console_hosts` is
/// not set: the loopback names and the bind IP (when it is not
/// unspecified), each with the listener's port; without it too on port 80.
pub(super) fn allowed_hosts(
    configured: Option<&[String]>,
    listen: SocketAddr,
) -> Result<Vec<String>, String> {
    if let Some(list) = configured {
        let mut out = Vec::new();
        for h in list {
            let h = h.trim().to_ascii_lowercase();
            let bad = h.is_empty()
                || h.bytes().any(|b| {
                    !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
                });
            if bad {
                return Err(format!(
                    "[admin] console_hosts: `{h}` is not a host or host:port"
                ));
            }
            out.push(h);
        }
        return Ok(out);
    }
    let port = listen.port();
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "[::1]".to_owned(),
    ];
    match listen.ip() {
        ip if ip.is_unspecified() => {}
        IpAddr::V4(ip) => names.push(ip.to_string()),
        IpAddr::V6(ip) => names.push(format!("[{ip}]")),
    }
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        out.push(format!("{n}:{port}"));
        if port == 80 {
            out.push(n);
        }
    }
    Ok(out)
}

/// Whether `host` (the request's `Host`) is one of `allowed` (lower case).
pub(super) fn host_allowed(allowed: &[String], host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    allowed.contains(&host)
}

/// Whether a POST comes from a page of this console: no cross-site or
/// same-site `Sec-Fetch-Site`, and an `Origin` (when sent) that is this
/// host's. Requests without either header (curl, old browsers) pass this
/// check and still need the CSRF token.
pub(super) fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or("cross-site").to_ascii_lowercase());
    if matches!(site.as_deref(), Some("cross-site" | "same-site")) {
        return false;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(v) => {
            let origin = v.to_str().unwrap_or("").to_ascii_lowercase();
            let host = host.to_ascii_lowercase();
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
    }
}

/// Whether `presented` is `expected`, in constant time (neither empty).
pub(super) fn token_matches(expected: Option<&str>, presented: Option<&str>) -> bool {
    match (expected, presented) {
        (Some(e), Some(p)) if !e.is_empty() && !p.is_empty() => {
            bool::from(e.as_bytes().ct_eq(p.as_bytes()))
        }
        _ => false,
    }
}

/// The first `name` field of a form body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn request_host(req: &Request) -> Option<String> {
    match req.headers().get(header::HOST) {
        Some(v) => v.to_str().ok().map(str::to_owned),
        None => req.uri().authority().map(|a| a.as_str().to_owned()),
    }
}

/// The console's middleware (see the module doc).
pub(super) async fn admit(
    State(state): State<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = check(&state, client, req, next).await;
    harden(resp.headers_mut());
    resp
}

async fn check(state: &AdminState, client: SocketAddr, req: Request, next: Next) -> Response {
    let console = &state.console;
    let host = request_host(&req);
    if !host_allowed(&console.hosts, host.as_deref()) {
        tracing::warn!(target: "gatehouse::audit", %client, outcome = "misdirected", "console request with a foreign Host refused");
        return refusal(
            StatusCode::MISDIRECTED_REQUEST,
            "Misdirected request",
            "This console does not answer under this host name. Use one of the names in [admin] console_hosts.",
        );
    }
    let host = host.unwrap_or_default();
    let sign_in = req.uri().path() == SIGN_IN;
    let session = session::cookie(req.headers(), COOKIE).and_then(|raw| console.sessions.find(raw));
    if !sign_in && session.is_none() {
        return redirect(SIGN_IN);
    }
    let mut req = req;
    if req.method() == Method::POST {
        if !same_origin(req.headers(), &host) {
            tracing::warn!(target: "gatehouse::audit", %client, path = req.uri().path(), outcome = "cross_site", "console form refused");
            return refusal(
                StatusCode::FORBIDDEN,
                "Cross-site request refused",
                "This form was not sent from a page of this console.",
            );
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The form is larger than 64 KiB.",
            );
        };
        let presented = form_field(&bytes, "csrf");
        let expected = if sign_in {
            session::cookie(&parts.headers, PRE_COOKIE).map(str::to_owned)
        } else {
            session.as_ref().map(|s| s.csrf.clone())
        };
        if !token_matches(expected.as_deref(), presented.as_deref()) {
            tracing::warn!(target: "gatehouse::audit", %client, path = parts.uri.path(), outcome = "csrf_refused", "console form refused");
            return refusal(
                StatusCode::FORBIDDEN,
                "Form refused",
                "The form's security token is missing or out of date, so nothing was changed. Reload the page and try again.",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    if let Some(session) = session {
        req.extensions_mut().insert(Visitor { client, session });
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn defaults(listen: &str) -> Vec<String> {
        allowed_hosts(None, listen.parse().unwrap()).unwrap()
    }

    #[test]
    fn hosts() {
        let loopback = defaults("127.0.0.1:9901");
        let any = defaults("0.0.0.0:9901");
        let private = defaults("10.1.2.3:9901");
        let v6 = defaults("[fd00::7]:9901");
        let port80 = defaults("127.0.0.1:80");
        let configured = allowed_hosts(
            Some(&["Admin.Example.Internal".to_owned(), "gw:8443".to_owned()]),
            "0.0.0.0:9901".parse().unwrap(),
        )
        .unwrap();
        let cases: [(&str, &[String], Option<&str>, bool); 17] = [
            (
                "localhost with port",
                &loopback,
                Some("localhost:9901"),
                true,
            ),
            (
                "127.0.0.1 with port",
                &loopback,
                Some("127.0.0.1:9901"),
                true,
            ),
            ("[::1] with port", &loopback, Some("[::1]:9901"), true),
            ("case ignored", &loopback, Some("LOCALHOST:9901"), true),
            ("no Host", &loopback, None, false),
            ("other port", &loopback, Some("localhost:9902"), false),
            ("no port", &loopback, Some("localhost"), false),
            (
                "rebinding name",
                &loopback,
                Some("evil.example:9901"),
                false,
            ),
            (
                "suffix trick",
                &loopback,
                Some("localhost.evil.example:9901"),
                false,
            ),
            (
                "unspecified bind adds nothing",
                &any,
                Some("0.0.0.0:9901"),
                false,
            ),
            ("bind IP", &private, Some("10.1.2.3:9901"), true),
            ("bind IPv6", &v6, Some("[fd00::7]:9901"), true),
            ("port 80 without port", &port80, Some("localhost"), true),
            (
                "configured name",
                &configured,
                Some("admin.example.internal"),
                true,
            ),
            ("configured host:port", &configured, Some("gw:8443"), true),
            (
                "configured replaces defaults",
                &configured,
                Some("localhost:9901"),
                false,
            ),
            (
                "configured name, other port",
                &configured,
                Some("gw:9901"),
                false,
            ),
        ];
        for (name, allowed, host, want) in cases {
            assert_eq!(host_allowed(allowed, host), want, "{name}");
        }
        assert!(allowed_hosts(Some(&["a b".to_owned()]), "127.0.0.1:1".parse().unwrap()).is_err());
        assert!(allowed_hosts(Some(&["x/y".to_owned()]), "127.0.0.1:1".parse().unwrap()).is_err());
    }

    #[test]
    fn origins() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let host = "127.0.0.1:9901";
        let cases = [
            ("no headers (curl)", h(&[]), true),
            (
                "same origin",
                h(&[("origin", "http://127.0.0.1:9901")]),
                true,
            ),
            (
                "same origin over TLS",
                h(&[("origin", "https://127.0.0.1:9901")]),
                true,
            ),
            (
                "fetch site same-origin",
                h(&[("sec-fetch-site", "same-origin")]),
                true,
            ),
            (
                "typed into the address bar",
                h(&[("sec-fetch-site", "none")]),
                true,
            ),
            ("cross-site", h(&[("sec-fetch-site", "cross-site")]), false),
            (
                "same-site sibling",
                h(&[("sec-fetch-site", "same-site")]),
                false,
            ),
            (
                "foreign origin",
                h(&[("origin", "http://evil.example")]),
                false,
            ),
            (
                "other port",
                h(&[("origin", "http://127.0.0.1:9902")]),
                false,
            ),
            ("null origin", h(&[("origin", "null")]), false),
            (
                "good origin, cross-site fetch",
                h(&[
                    ("origin", "http://127.0.0.1:9901"),
                    ("sec-fetch-site", "cross-site"),
                ]),
                false,
            ),
        ];
        for (name, headers, want) in cases {
            assert_eq!(same_origin(&headers, host), want, "{name}");
        }
    }

    #[test]
    fn csrf_tokens() {
        let cases = [
            ("equal", Some("abc123"), Some("abc123"), true),
            ("missing", Some("abc123"), None, false),
            ("wrong", Some("abc123"), Some("abc124"), false),
            ("prefix", Some("abc123"), Some("abc"), false),
            ("no expected (no cookie)", None, Some("abc123"), false),
            ("both empty", Some(""), Some(""), false),
        ];
        for (name, expected, presented, want) in cases {
            assert_eq!(token_matches(expected, presented), want, "{name}");
        }
        assert_eq!(
            form_field(b"name=a&csrf=x%2By&csrf=other", "csrf").as_deref(),
            Some("x+y")
        );
        assert_eq!(form_field(b"name=a", "csrf"), None);
    }
}
