//! Per-route request rules: required headers, allowed content types, query
//! parameters, client address lists, and a JSON Schema for the body.
//!
//! Rules are compiled once per snapshot (schemas included, so a broken
//! schema is a config error, never a request-time one) and checked in the
//! pipeline's order: cheap header and query checks before anything that
//! reads the body. Error messages name the rule, never echo a header value.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;

use super::Invalid;

/// Allow and deny lists of client networks. Deny wins; a non-empty allow
/// list admits only its networks.
#[derive(Debug, Default, Clone)]
pub struct IpRules {
    /// Networks let in (empty: everyone not denied).
    pub allow: Vec<IpNet>,
    /// Networks kept out.
    pub deny: Vec<IpNet>,
}

impl IpRules {
    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Checks `ip` against the lists.
    pub fn check(&self, ip: IpAddr) -> Result<(), Invalid> {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Invalid::IpDenied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err(Invalid::IpDenied);
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses are compared as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address or CIDR `{s}`"))
}

/// The client's address: the socket peer, unless the peer is a trusted
/// proxy, then the right-most `X-Forwarded-For` hop that is not one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else { return peer };
        for part in v.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(canonical(ip)),
                // A malformed chain cannot be trusted past this point.
                Err(_) => return peer,
            }
        }
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !trusted.iter().any(|n| n.contains(hop)) {
            break;
        }
    }
    client
}

/// Query-string rules.
#[derive(Debug, Default, Clone)]
pub struct QueryRules {
    /// Only these parameter names (None: any).
    pub allowed: Option<Vec<String>>,
    /// These must be present.
    pub required: Vec<String>,
    /// At most this many parameters.
    pub max_params: usize,
}

/// A route's compiled request rules.
#[derive(Debug, Default, Clone)]
pub struct RequestRules {
    /// Headers that must be present.
    pub required_headers: Vec<HeaderName>,
    /// Allowed media types for requests with a body (empty: any).
    pub content_types: Vec<String>,
    /// Query rules.
    pub query: Option<QueryRules>,
    /// Client address lists.
    pub ip: IpRules,
    /// JSON Schema the body must satisfy.
    pub schema: Option<Arc<jsonschema::Validator>>,
}

/// Whether the request carries a body: from its HTTP/1 framing headers,
/// else `streaming` (an HTTP/2 body may come without any length header).
pub fn has_body(headers: &HeaderMap, streaming: bool) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .map_or(streaming, |v| v.as_bytes() != b"0")
}

impl RequestRules {
    /// Header, content-type and query checks (no body is read).
    /// `streaming` says whether the body has not ended yet.
    pub fn check_head(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        streaming: bool,
    ) -> Result<(), Invalid> {
        for name in &self.required_headers {
            if !headers.contains_key(name) {
                return Err(Invalid::MissingHeader(name.as_str().to_owned()));
            }
        }
        if (!self.content_types.is_empty() || self.schema.is_some()) && has_body(headers, streaming)
        {
            let media = super::media_type(headers).unwrap_or_default();
            let allowed = if self.content_types.is_empty() {
                // A schema implies JSON.
                media == "application/json" || media.ends_with("+json")
            } else {
                self.content_types.contains(&media)
            };
            if !allowed {
                return Err(Invalid::UnsupportedMediaType);
            }
        }
        if let Some(rules) = &self.query {
            check_query(rules, query)?;
        }
        Ok(())
    }

    /// Validates a JSON body against the schema, if there is one.
    /// An empty body (a GET on the route) has nothing to validate. A body
    /// that repeats an object key is refused (422) before the schema runs:
    /// the upstream's parser might read the copy the schema did not see.
    pub fn check_body(&self, body: &[u8]) -> Result<(), Invalid> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        if body.is_empty() {
            return Ok(());
        }
        let value = match super::json::parse_strict(body) {
            Ok(v) => v,
            Err(super::json::JsonError::Syntax(_)) => return Err(Invalid::Json),
            Err(super::json::JsonError::DuplicateKey(pointer)) => {
                let message = truncate(&format!("duplicate object key at `{pointer}`"), 200);
                return Err(Invalid::Schema(vec![SchemaError { pointer, message }]));
            }
        };
        const MAX_REPORTED: usize = 10;
        let errors: Vec<SchemaError> = schema
            .iter_errors(&value)
            .take(MAX_REPORTED)
            .map(|e| SchemaError {
                pointer: e.instance_path().to_string(),
                message: truncate(&e.to_string(), 200),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid::Schema(errors))
        }
    }
}

/// Refuses a raw `;` in the normalised `path` unless the route allows path
/// parameters: servlet containers cut `;…` off segments, so the backend
/// would route a different path than the one checked here. An encoded
/// `%3B` is data, not a delimiter, and passes.
pub fn check_path_params(path: &str, allowed: bool) -> Result<(), Invalid> {
    if !allowed && path.contains(';') {
        return Err(Invalid::Path(
            "path parameters (;) are not accepted on this route",
        ));
    }
    Ok(())
}

/// One schema failure: where in the body, and what.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct SchemaError {
    /// JSON pointer into the body.
    pub pointer: String,
    /// What is wrong (bounded in size).
    pub message: String,
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn check_query(rules: &QueryRules, query: Option<&str>) -> Result<(), Invalid> {
    let names: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .collect();
    if names.len() > rules.max_params {
        return Err(Invalid::Query(format!(
            "more than {} query parameters",
            rules.max_params
        )));
    }
    if let Some(allowed) = &rules.allowed
        && let Some(bad) = names.iter().find(|n| !allowed.iter().any(|a| a == *n))
    {
        let shown = truncate(bad, 64);
        return Err(Invalid::Query(format!(
            "query parameter `{shown}` is not allowed"
        )));
    }
    for req in &rules.required {
        if !names.contains(&req.as_str()) {
            return Err(Invalid::Query(format!(
                "query parameter `{req}` is required"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().filter_map(|s| parse_net(s).ok()).collect()
    }

    #[test]
    fn ip_rules() {
        let rules = IpRules {
            allow: nets(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: nets(&["10.6.6.6"]),
        };
        let cases = [
            ("allowed v4", "10.1.2.3", true),
            ("denied inside allowed", "10.6.6.6", false),
            ("outside allow list", "192.0.2.1", false),
            ("allowed v6", "2001:db8::5", true),
            ("v4-mapped v6 treated as v4", "::ffff:10.1.2.3", true),
            ("other v6", "2001:dead::1", false),
        ];
        for (name, ip, ok) in cases {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert_eq!(rules.check(ip).is_ok(), ok, "{name}");
        }
        assert!(IpRules::default().check(IpAddr::from([1, 2, 3, 4])).is_ok());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("banana").is_err());
    }

    #[test]
    fn client_address_from_trusted_proxies_only() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let cases: [(&str, &str, &[&str], &str); 7] = [
            (
                "untrusted peer ignores the header",
                "192.0.2.9",
                &["1.1.1.1"],
                "192.0.2.9",
            ),
            (
                "trusted peer, one hop",
                "127.0.0.1",
                &["203.0.113.5"],
                "203.0.113.5",
            ),
            (
                "right-most untrusted hop wins",
                "127.0.0.1",
                &["6.6.6.6, 203.0.113.5, 10.0.0.2"],
                "203.0.113.5",
            ),
            (
                "several header lines",
                "10.0.0.1",
                &["6.6.6.6", "203.0.113.7"],
                "203.0.113.7",
            ),
            ("all hops trusted", "127.0.0.1", &["10.0.0.3"], "10.0.0.3"),
            (
                "malformed chain",
                "127.0.0.1",
                &["203.0.113.5, bogus"],
                "127.0.0.1",
            ),
            ("no header", "127.0.0.1", &[], "127.0.0.1"),
        ];
        for (name, peer, xff, want) in cases {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", HeaderValue::from_static(v));
            }
            let peer: IpAddr = peer.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert_eq!(client_ip(peer, &h, &trusted).to_string(), want, "{name}");
        }
    }

    #[test]
    fn head_rules() {
        let rules = RequestRules {
            required_headers: vec![HeaderName::from_static("x-tenant")],
            content_types: vec!["application/json".into()],
            query: Some(QueryRules {
                allowed: Some(vec!["page".into(), "limit".into()]),
                required: vec!["page".into()],
                max_params: 3,
            }),
            ..RequestRules::default()
        };
        let cases: [(&str, &[(&str, &str)], Option<&str>, Option<&str>); 8] = [
            ("ok", &[("x-tenant", "a")], Some("page=1"), None),
            (
                "missing header",
                &[],
                Some("page=1"),
                Some("missing_header"),
            ),
            (
                "json body",
                &[
                    ("x-tenant", "a"),
                    ("content-length", "2"),
                    ("content-type", "application/json; charset=utf-8"),
                ],
                Some("page=1&limit=2"),
                None,
            ),
            (
                "xml body",
                &[
                    ("x-tenant", "a"),
                    ("content-length", "2"),
                    ("content-type", "application/xml"),
                ],
                Some("page=1"),
                Some("unsupported_media_type"),
            ),
            (
                "body without type",
                &[("x-tenant", "a"), ("transfer-encoding", "chunked")],
                Some("page=1"),
                Some("unsupported_media_type"),
            ),
            (
                "unknown param",
                &[("x-tenant", "a")],
                Some("page=1&debug=1"),
                Some("invalid_query"),
            ),
            (
                "missing param",
                &[("x-tenant", "a")],
                Some("limit=1"),
                Some("invalid_query"),
            ),
            (
                "too many params",
                &[("x-tenant", "a")],
                Some("page=1&page=2&page=3&page=4"),
                Some("invalid_query"),
            ),
        ];
        for (name, hs, query, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in hs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            let got = rules
                .check_head(&h, query, false)
                .err()
                .map(|e| GatewayError::from(e).code());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn schema_errors_carry_pointers() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["qty"],
            "properties": {"qty": {"type": "integer", "minimum": 1}, "items": {"type": "array", "items": {"type": "string"}}}
        });
        let validator = jsonschema::validator_for(&schema).ok().map(Arc::new);
        assert!(validator.is_some());
        let rules = RequestRules {
            schema: validator,
            ..RequestRules::default()
        };
        assert!(rules.check_body(br#"{"qty": 2, "items": ["a"]}"#).is_ok());
        assert_eq!(
            rules
                .check_body(b"{not json")
                .err()
                .map(|e| GatewayError::from(e).code()),
            Some("invalid_json")
        );
        match rules.check_body(br#"{"qty": 0, "items": ["a", 5]}"#) {
            Err(Invalid::Schema(errors)) => {
                let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
                assert!(pointers.contains(&"/qty"), "{pointers:?}");
                assert!(pointers.contains(&"/items/1"), "{pointers:?}");
            }
            other => panic!("expected a schema violation, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_fail_like_the_schema() {
        let schema = serde_json::json!({"type": "object"});
        let rules = RequestRules {
            schema: jsonschema::validator_for(&schema).ok().map(Arc::new),
            ..RequestRules::default()
        };
        assert!(rules.schema.is_some());
        let cases: [(&str, &[u8], Option<(&str, &str)>); 4] = [
            ("distinct keys", br#"{"a": 1, "b": {"a": 2}}"#, None),
            (
                "top-level duplicate",
                br#"{"role": "user", "role": "admin"}"#,
                Some(("schema_violation", "/role")),
            ),
            (
                "escaped duplicate in an array",
                br#"{"list": [{"a": 1, "\u0061": 2}]}"#,
                Some(("schema_violation", "/list/0/a")),
            ),
            ("not json", b"{", Some(("invalid_json", ""))),
        ];
        for (name, body, want) in cases {
            let got = rules.check_body(body);
            match (&got, want) {
                (Ok(()), None) => {}
                (Err(Invalid::Schema(errors)), Some((code, pointer))) => {
                    assert_eq!(code, "schema_violation", "{name}");
                    assert_eq!(errors.len(), 1, "{name}");
                    assert_eq!(errors[0].pointer, pointer, "{name}");
                    assert!(errors[0].message.contains(pointer), "{name}");
                }
                (Err(_), Some((code, _))) => {
                    let e = got.err().map(|e| GatewayError::from(e).code());
                    assert_eq!(e, Some(code), "{name}")
                }
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        // Without a schema the body is not parsed at all.
        assert!(
            RequestRules::default()
                .check_body(br#"{"a": 1, "a": 2}"#)
                .is_ok()
        );
    }

    #[test]
    fn path_params_need_the_route_to_allow_them() {
        let cases = [
            ("plain path", "/a/b", false, true),
            (
                "params refused by default",
                "/a;jsessionid=1/b",
                false,
                false,
            ),
            ("lone semicolon refused", "/a/;", false, false),
            ("params allowed", "/a;v=1/b", true, true),
            ("encoded semicolon is data", "/a%3Bb", false, true),
        ];
        for (name, path, allowed, ok) in cases {
            let got = check_path_params(path, allowed);
            assert_eq!(got.is_ok(), ok, "{name}");
            if let Err(e) = got {
                assert!(e.to_string().contains("path parameters (;)"), "{name}");
                assert_eq!(GatewayError::from(e).code(), "invalid_path", "{name}");
            }
        }
    }
}
