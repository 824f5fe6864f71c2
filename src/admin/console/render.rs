//! HTML for the console: escaping, the page layout, forms, and the
//! answers every page shares (refusals, redirects).
//!
//! Every value that does not come from this file (consumer names, plans,
//! metadata, key names and scopes, audit fields, upstream and target
//! names, error text) goes through [`esc`]. Pages carry a strict
//! `Content-Security-Policy` (no script at all, inline style only), are
//! never cached (`no-store`) and cannot be framed.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub(in crate::admin) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment (ids and names in links and form actions).
pub(super) fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A Unix time as `2026-12-04 18:30:00Z`, or `-`.
pub(super) fn when(t: Option<i64>) -> String {
    let Some(t) = t else {
        return "-".to_owned();
    };
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
nav{background:#234;padding:.5em 1.5em;display:flex;gap:1.2em;align-items:center}\
nav a{color:#fff;text-decoration:none}nav form{margin-left:auto}main{margin:1.5em}\
h1{font-size:1.4em;margin:0 0 .4em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}.num{text-align:right;font-variant-numeric:tabular-nums}\
.warn{color:#a40}.ok{color:#070}.muted{color:#777}form.inline{display:inline}\
fieldset{background:#fff;border:1px solid #ddd;margin:.6em 0;max-width:40em}label{display:block;margin:.3em 0}\
input[type=text],input[type=password],input[type=number]{font:inherit;padding:.2em .4em}\
.secret{font:16px monospace;background:#fff8dc;border:1px solid #db8;padding:.6em;display:inline-block;user-select:all}\
.error{background:#fee;border:1px solid #d99;padding:.6em 1em;max-width:50em}svg{background:#fff;border:1px solid #ddd}";

/// A target's health as a coloured word (drained, ejected with the time
/// left, healthy, unhealthy), for the status page and the console.
pub(in crate::admin) fn health(t: &crate::proxy::TargetStatus) -> String {
    if t.drained {
        "<span class=\"muted\">drained</span>".to_owned()
    } else if t.ejected {
        format!(
            "<span class=\"warn\">ejected ({} s left)</span>",
            t.ejected_for_ms.div_ceil(1000)
        )
    } else if t.healthy {
        "<span class=\"ok\">healthy</span>".to_owned()
    } else {
        "<span class=\"warn\">unhealthy</span>".to_owned()
    }
}

/// The hidden CSRF field every form carries.
pub(super) fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A one-button form posting to `action`.
pub(super) fn button(action: &str, label: &str, csrf: &str, extra_fields: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\">{}{extra_fields}<button type=\"submit\">{}</button></form>",
        esc(action),
        csrf_field(csrf),
        esc(label)
    )
}

/// A whole page. `csrf` is the session's token when signed in (the
/// navigation then has the sign-out button); `body` is trusted HTML built
/// by this module's callers with every value escaped.
pub(super) fn page(title: &str, csrf: Option<&str>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <link rel=\"icon\" href=\"data:,\"><title>{} · gatehouse console</title>\
         <style>{CSS}</style></head><body>",
        esc(title)
    );
    if let Some(csrf) = csrf {
        let _ = write!(
            h,
            "<nav><a href=\"/console/consumers\">Consumers</a><a href=\"/console/upstreams\">Upstreams</a>\
             <a href=\"/console/audit\">Audit log</a><a href=\"/\">Status</a>{}</nav>",
            button("/console/sign-out", "Sign out", csrf, "")
        );
    } else {
        h.push_str("<nav><a href=\"/console/sign-in\">gatehouse console</a></nav>");
    }
    let _ = write!(
        h,
        "<main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    h
}

/// An HTML answer with the console's security headers.
pub(super) fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    harden(h);
    resp
}

/// The headers every console answer gets (redirects included).
pub(super) fn harden(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, browsers send `Origin: null` on form
    // posts, which the origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A short page that says why a request was refused (`message` is
/// escaped), with a link to go on from.
pub(super) fn refusal(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<p class=\"error\" id=\"refusal\">{}</p><p><a href=\"/console/consumers\">Back to the console</a></p>",
        esc(message)
    );
    html(status, page(title, None, &body))
}

/// `303 See Other` to `to` (a path of this console).
pub(super) fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    harden(resp.headers_mut());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        let cases = [
            (
                "markup",
                "<script>x</script>",
                "&lt;script&gt;x&lt;/script&gt;",
            ),
            (
                "attribute breakout",
                "\" onmouseover=\"x",
                "&quot; onmouseover=&quot;x",
            ),
            ("single quote", "it's", "it&#39;s"),
            ("ampersand first", "&lt;", "&amp;lt;"),
            ("plain", "acme-1.gold_x", "acme-1.gold_x"),
            ("unicode", "café ☕", "café ☕"),
        ];
        for (name, input, want) in cases {
            assert_eq!(esc(input), want, "{name}");
        }
    }

    #[test]
    fn pages_escape_their_title_and_forms_their_values() {
        let p = page("<b>", Some("tok\"en"), "");
        assert!(
            p.contains("<title>&lt;b&gt; · gatehouse console</title>"),
            "{p}"
        );
        assert!(p.contains("value=\"tok&quot;en\""), "{p}");
        assert!(p.contains("action=\"/console/sign-out\""), "{p}");
        let p = page("x", None, "");
        assert!(!p.contains("sign-out"), "no sign-out button before sign-in");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(when(Some(0)), "1970-01-01 00:00:00Z");
        assert_eq!(when(None), "-");
    }
}
