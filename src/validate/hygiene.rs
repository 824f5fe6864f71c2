//! Request hygiene: what a client may not send through the gateway as it is.
//!
//! - methods: TRACE (cross-site tracing, echoes credentials) and CONNECT (a
//!   tunnel to anywhere) are refused before routing; no route can allow
//!   them, since a gateway never forwards either;
//! - Host: one valid `host[:port]` ([`valid_authority`]);
//! - headers, once the route is known ([`HeaderPolicy::sanitize`]): names
//!   with `_` dropped or refused, hop-by-hop headers and those nominated by
//!   `Connection` removed, `Upgrade` kept only for a protocol the route
//!   tunnels (never `h2c`; `HTTP2-Settings` always removed), and headers
//!   that ask a backend to rewrite the request or to believe an address
//!   ([`CLIENT_CONTROL_HEADERS`]) removed unless the route lets them through.
//!
//! Sanitising runs right after routing, before every check that reads a
//! header (required headers, credentials, rate-limit keys, `hash_on`), so a
//! header cannot pass a check and then vanish on the way up — every check
//! sees exactly what is forwarded.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use super::Invalid;
use crate::config::UnderscoreHeaders;

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Client headers some backends or frameworks believe: a path or method
/// override (IIS/Symfony `X-Original-URL`, Rails/Express method override)
/// or an address, port, scheme or prefix a proxy is supposed to set.
/// Removed unless a route lists them in `allow_client_headers`. `X-Real-IP`
/// is not here: the gateway always sets it itself.
pub const CLIENT_CONTROL_HEADERS: [&str; 19] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "x-original-host",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// Headers that are always the gateway's to set, whatever a route allows.
const GATEWAY_OWNED: [&str; 5] = [
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Step 2 (methods): TRACE and CONNECT never go further.
pub fn check_method(method: &Method) -> Result<(), Invalid> {
    if method == Method::TRACE {
        return Err(Invalid::TraceRefused);
    }
    if method == Method::CONNECT {
        return Err(Invalid::ConnectRefused);
    }
    Ok(())
}

/// Whether `s` is a valid `host[:port]`: a registered name of letters,
/// digits, `-`, `.` and `_`, an IPv4 address, or an IPv6 address in
/// brackets; a port of 1 to 5 digits in 1..=65535. Empty hosts, empty or
/// out-of-range ports, userinfo and any other byte are refused.
pub fn valid_authority(s: &str) -> bool {
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        }
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !name_ok {
            return false;
        }
        port
    };
    match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n))
        }
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those named in `Connection`.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            headers.remove(name);
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// A route's header hygiene, compiled once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    /// Upgrade protocols tunnelled (lower case), e.g. `websocket`.
    pub upgrades: Vec<String>,
    /// Members of [`CLIENT_CONTROL_HEADERS`] passed on.
    pub allow_client_headers: Vec<HeaderName>,
    /// Header names with `_`.
    pub underscores: UnderscoreHeaders,
}

impl HeaderPolicy {
    /// The policy from a route's settings, or why one is refused.
    pub fn new(
        upgrades: &[String],
        allow_client_headers: &[String],
        underscores: UnderscoreHeaders,
    ) -> Result<HeaderPolicy, String> {
        let mut up = Vec::new();
        for u in upgrades {
            let token = u.trim().to_ascii_lowercase();
            if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/'))
            {
                return Err(format!("`upgrades`: {u:?} is not a protocol name"));
            }
            if token == "h2c" || token.starts_with("h2c/") {
                return Err(
                    "`upgrades`: h2c is never tunnelled (speak h2 to the gateway instead)"
                        .to_owned(),
                );
            }
            up.push(token);
        }
        let mut allow = Vec::new();
        for name in allow_client_headers {
            let lower = name.trim().to_ascii_lowercase();
            if GATEWAY_OWNED.contains(&lower.as_str()) {
                return Err(format!(
                    "`allow_client_headers`: {name:?} is always set by the gateway"
                ));
            }
            if !CLIENT_CONTROL_HEADERS.contains(&lower.as_str()) {
                return Err(format!(
                    "`allow_client_headers`: {name:?} is not removed by default, so it needs no allowing (removed ones: {})",
                    CLIENT_CONTROL_HEADERS.join(", ")
                ));
            }
            let h = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| format!("`allow_client_headers`: {name:?} is not a header name"))?;
            allow.push(h);
        }
        Ok(HeaderPolicy {
            upgrades: up,
            allow_client_headers: allow,
            underscores,
        })
    }

    /// Whether the route tunnels an upgrade to `protocol` (its first
    /// token, as in `websocket` or `websocket/13`).
    fn tunnels(&self, protocol: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(protocol) else {
            return false;
        };
        // A client may offer several (`Upgrade: a, b`): every one must be
        // allowed, or the backend could pick one we did not.
        text.split(',').all(|offer| {
            let offer = offer.trim();
            let name = offer.split('/').next().unwrap_or("");
            !offer.is_empty()
                && self
                    .upgrades
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(offer) || u.eq_ignore_ascii_case(name))
        })
    }

    /// Sanitises the request's headers for this route, in place; returns
    /// whether the request is an upgrade the route tunnels (HTTP/1.1 only).
    ///
    /// One pass over the names finds what needs doing; a request with
    /// nothing to remove (most) then costs no removal at all.
    pub fn sanitize(&self, version: Version, headers: &mut HeaderMap) -> Result<bool, Invalid> {
        let mut underscore = false;
        let mut control = false;
        let mut hop = false;
        for name in headers.keys() {
            let n = name.as_str();
            underscore |= n.contains('_');
            control |= is_removed_client_header(n);
            hop |= HOP_BY_HOP.contains(&n) || name == header::UPGRADE;
        }
        if underscore {
            match self.underscores {
                UnderscoreHeaders::Allow => {}
                UnderscoreHeaders::Refuse => {
                    return Err(Invalid::Header("header names with `_` are not accepted"));
                }
                UnderscoreHeaders::Drop => {
                    let names: Vec<HeaderName> = headers
                        .keys()
                        .filter(|k| k.as_str().contains('_'))
                        .cloned()
                        .collect();
                    for name in names {
                        headers.remove(name);
                    }
                }
            }
        }
        let upgrade = hop
            && version == Version::HTTP_11
            && is_upgrade_request(headers)
            && headers.get_all(header::UPGRADE).iter().count() == 1
            && headers
                .get(header::UPGRADE)
                .is_some_and(|v| self.tunnels(v.as_bytes()));
        if hop {
            strip_hop_by_hop(headers, upgrade);
        }
        if control {
            headers.remove(&HTTP2_SETTINGS);
            headers.remove(&X_REAL_IP);
            for name in CLIENT_CONTROL_HEADERS {
                if !self.allow_client_headers.iter().any(|a| a == name) {
                    headers.remove(name);
                }
            }
        }
        Ok(upgrade)
    }
}

/// Whether `name` (lower case) is removed from requests unless a route
/// allows it: [`CLIENT_CONTROL_HEADERS`], `x-real-ip`, `http2-settings`.
fn is_removed_client_header(name: &str) -> bool {
    // Sorted out by the first byte: most names start with none of these.
    match name.as_bytes().first() {
        Some(b'x') => name == "x-real-ip" || CLIENT_CONTROL_HEADERS.contains(&name),
        Some(b't' | b'c' | b'f') => CLIENT_CONTROL_HEADERS.contains(&name),
        Some(b'h') => name == "http2-settings",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                m.append(k, v);
            }
        }
        m
    }

    #[test]
    fn authorities() {
        let cases = [
            ("name", "api.example", true),
            ("name and port", "api.example:8443", true),
            ("underscore label", "my_host.internal", true),
            ("ipv4", "192.0.2.1:80", true),
            ("ipv6", "[2001:db8::1]:443", true),
            ("ipv6 bare", "[::1]", true),
            ("empty", "", false),
            ("empty port", "api.example:", false),
            ("port zero", "api.example:0", false),
            ("port too big", "api.example:65536", false),
            ("port too long", "api.example:000080", false),
            ("port not digits", "api.example:8o", false),
            ("only a port", ":80", false),
            ("userinfo", "u@api.example", false),
            ("space", "api example", false),
            ("slash", "api.example/x", false),
            ("two colons", "a:1:2", false),
            ("bad ipv6", "[zz::1]", false),
            ("unbracketed ipv6", "::1", false),
            ("junk after bracket", "[::1]x", false),
            ("percent", "api%2eexample", false),
        ];
        for (name, s, want) in cases {
            assert_eq!(valid_authority(s), want, "{name}: {s:?}");
        }
    }

    #[test]
    fn methods() {
        assert!(matches!(
            check_method(&Method::TRACE),
            Err(Invalid::TraceRefused)
        ));
        assert!(matches!(
            check_method(&Method::CONNECT),
            Err(Invalid::ConnectRefused)
        ));
        for m in [Method::GET, Method::POST, Method::OPTIONS, Method::PATCH] {
            assert!(check_method(&m).is_ok(), "{m}");
        }
    }

    #[test]
    fn headers_are_sanitised_before_any_check() {
        let ws = HeaderPolicy::new(&["websocket".to_owned()], &[], UnderscoreHeaders::Drop);
        let Ok(ws) = ws else {
            panic!("policy refused");
        };
        let plain = HeaderPolicy::default();
        struct Case<'a> {
            name: &'a str,
            policy: &'a HeaderPolicy,
            version: Version,
            headers: Vec<(&'a str, &'a str)>,
            upgrade: bool,
            gone: Vec<&'a str>,
            kept: Vec<&'a str>,
        }
        let cases = [
            Case {
                name: "connection-nominated header removed",
                policy: &plain,
                version: Version::HTTP_11,
                headers: vec![
                    ("connection", "x-api-key"),
                    ("x-api-key", "k"),
                    ("x-a", "1"),
                ],
                upgrade: false,
                gone: vec!["x-api-key", "connection"],
                kept: vec!["x-a"],
            },
            Case {
                name: "underscore names dropped",
                policy: &plain,
                version: Version::HTTP_11,
                headers: vec![
                    ("transfer_encoding", "chunked"),
                    ("x_forwarded_for", "1.2.3.4"),
                ],
                upgrade: false,
                gone: vec!["transfer_encoding", "x_forwarded_for"],
                kept: vec![],
            },
            Case {
                name: "websocket kept where allowed",
                policy: &ws,
                version: Version::HTTP_11,
                headers: vec![("connection", "Upgrade"), ("upgrade", "websocket")],
                upgrade: true,
                gone: vec![],
                kept: vec!["upgrade", "connection"],
            },
            Case {
                name: "websocket stripped where not allowed",
                policy: &plain,
                version: Version::HTTP_11,
                headers: vec![("connection", "Upgrade"), ("upgrade", "websocket")],
                upgrade: false,
                gone: vec!["upgrade", "connection"],
                kept: vec![],
            },
            Case {
                name: "h2c never tunnelled",
                policy: &ws,
                version: Version::HTTP_11,
                headers: vec![
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAMAAABkAAQAAP__"),
                ],
                upgrade: false,
                gone: vec!["upgrade", "http2-settings", "connection"],
                kept: vec![],
            },
            Case {
                name: "an extra offer is not smuggled",
                policy: &ws,
                version: Version::HTTP_11,
                headers: vec![("connection", "upgrade"), ("upgrade", "websocket, h2c")],
                upgrade: false,
                gone: vec!["upgrade"],
                kept: vec![],
            },
            Case {
                name: "http2-settings without connection",
                policy: &plain,
                version: Version::HTTP_11,
                headers: vec![("http2-settings", "AAMAAABkAAQAAP__")],
                upgrade: false,
                gone: vec!["http2-settings"],
                kept: vec![],
            },
            Case {
                name: "no upgrade on http/1.0",
                policy: &ws,
                version: Version::HTTP_10,
                headers: vec![("connection", "upgrade"), ("upgrade", "websocket")],
                upgrade: false,
                gone: vec!["upgrade"],
                kept: vec![],
            },
            Case {
                name: "rewrite and trust headers removed",
                policy: &plain,
                version: Version::HTTP_11,
                headers: vec![
                    ("x-original-url", "/admin"),
                    ("x-http-method-override", "DELETE"),
                    ("x-forwarded-port", "443"),
                    ("x-forwarded-prefix", "/x"),
                    ("x-real-ip", "1.2.3.4"),
                    ("true-client-ip", "1.2.3.4"),
                ],
                upgrade: false,
                gone: vec![
                    "x-original-url",
                    "x-http-method-override",
                    "x-forwarded-port",
                    "x-forwarded-prefix",
                    "x-real-ip",
                    "true-client-ip",
                ],
                kept: vec![],
            },
        ];
        for c in cases {
            let mut h = map(&c.headers);
            let got = c.policy.sanitize(c.version, &mut h);
            assert_eq!(got.ok(), Some(c.upgrade), "{}", c.name);
            for g in &c.gone {
                assert!(!h.contains_key(*g), "{}: {g} must be removed", c.name);
            }
            for k in &c.kept {
                assert!(h.contains_key(*k), "{}: {k} must stay", c.name);
            }
        }
    }

    #[test]
    fn routes_choose_what_passes() {
        let refuse = HeaderPolicy::new(&[], &[], UnderscoreHeaders::Refuse);
        let allow = HeaderPolicy::new(
            &[],
            &["X-HTTP-Method-Override".to_owned()],
            UnderscoreHeaders::Allow,
        );
        let (Ok(refuse), Ok(allow)) = (refuse, allow) else {
            panic!("policies refused");
        };
        let mut h = map(&[("x_a", "1")]);
        assert!(matches!(
            refuse.sanitize(Version::HTTP_11, &mut h),
            Err(Invalid::Header(_))
        ));
        let mut h = map(&[
            ("x_a", "1"),
            ("x-http-method-override", "PUT"),
            ("x-original-url", "/"),
        ]);
        assert!(allow.sanitize(Version::HTTP_11, &mut h).is_ok());
        assert!(h.contains_key("x_a"));
        assert!(h.contains_key("x-http-method-override"));
        assert!(!h.contains_key("x-original-url"));
    }

    #[test]
    fn bad_route_settings_are_refused() {
        let cases: [(&str, &[&str], &[&str], &str); 4] = [
            ("h2c upgrade", &["h2c"], &[], "h2c"),
            ("junk protocol", &["web socket"], &[], "not a protocol"),
            ("gateway-owned header", &[], &["X-Real-IP"], "always set"),
            (
                "header not removed anyway",
                &[],
                &["x-custom"],
                "not removed",
            ),
        ];
        for (name, up, allow, want) in cases {
            let up: Vec<String> = up.iter().map(|s| (*s).to_owned()).collect();
            let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
            match HeaderPolicy::new(&up, &allow, UnderscoreHeaders::Drop) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert!(e.contains(want), "{name}: {e}"),
            }
        }
    }
}
