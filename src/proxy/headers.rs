//! Header rewriting on the way up and down: the `X-Forwarded-*` /
//! `X-Real-IP` / `Forwarded` / `Via` family, hop-by-hop removal on
//! responses, and the request id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::validate::strip_hop_by_hop;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the gateway knows about the client, for the forwarding headers.
#[derive(Debug)]
pub struct ForwardedFor<'a> {
    /// The client's address (through trusted proxies).
    pub client: IpAddr,
    /// The socket peer.
    pub peer: IpAddr,
    /// The `X-Forwarded-For` chain, when the peer is a trusted proxy.
    pub chain: Option<&'a str>,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The Host the client asked for, if any.
    pub host: Option<&'a str>,
}

/// Rewrites a request's headers for the upstream (hop-by-hop headers are
/// already gone: [`crate::validate::HeaderPolicy::sanitize`] removed them
/// before any check read the headers). Forwarding headers from an untrusted
/// peer are replaced; behind a trusted proxy the `X-Forwarded-For` chain is
/// extended with the proxy's address. `X-Real-IP` is the client address the
/// gateway derived.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    fwd: &ForwardedFor<'_>,
    request_id: &HeaderValue,
    keep_host: bool,
) {
    if !keep_host {
        headers.remove(header::HOST);
    }
    let ip = fwd.client.to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(X_REAL_IP.clone(), v);
    }
    let xff = match fwd.chain {
        Some(chain) => format!("{chain}, {}", fwd.peer),
        None => fwd.peer.to_string(),
    };
    match HeaderValue::from_str(&xff) {
        Ok(v) => {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        Err(_) => {
            headers.remove(X_FORWARDED_FOR.clone());
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(fwd.proto),
    );
    headers.remove(X_FORWARDED_HOST.clone());
    let mut forwarded = match fwd.client {
        IpAddr::V4(_) => format!("for={ip}"),
        IpAddr::V6(_) => format!("for=\"[{ip}]\""),
    };
    forwarded.push_str(";proto=");
    forwarded.push_str(fwd.proto);
    if let Some(host) = fwd.host {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }
    match HeaderValue::from_str(&forwarded) {
        Ok(v) => {
            headers.insert(FORWARDED.clone(), v);
        }
        Err(_) => {
            headers.remove(FORWARDED.clone());
        }
    }
    append_via(headers);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// Rewrites an upstream response's headers for the client.
pub fn prepare_response_headers(headers: &mut HeaderMap, request_id: &HeaderValue, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    append_via(headers);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

fn append_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static("1.1 gatehouse"));
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
    fn request_headers_are_rewritten() {
        let mut h = map(&[
            ("host", "api.test"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-keep", "yes"),
            ("via", "1.0 earlier"),
        ]);
        let fwd = ForwardedFor {
            client: "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            peer: "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            chain: None,
            proto: "https",
            host: Some("api.test"),
        };
        strip_hop_by_hop(&mut h, false);
        prepare_request_headers(&mut h, &fwd, &HeaderValue::from_static("rid"), false);
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let cases = [
            ("host removed", "host", None),
            ("connection removed", "connection", None),
            ("listed hop removed", "x-secret-hop", None),
            ("keep-alive removed", "keep-alive", None),
            ("te trailers kept", "te", Some("trailers")),
            ("xff replaced", "x-forwarded-for", Some("10.1.2.3")),
            ("x-real-ip set", "x-real-ip", Some("10.1.2.3")),
            ("proto", "x-forwarded-proto", Some("https")),
            ("xfh", "x-forwarded-host", Some("api.test")),
            (
                "forwarded",
                "forwarded",
                Some("for=10.1.2.3;proto=https;host=\"api.test\""),
            ),
            ("other kept", "x-keep", Some("yes")),
            ("request id", "x-request-id", Some("rid")),
        ];
        for (name, key, want) in cases {
            assert_eq!(get(key).as_deref(), want, "{name}");
        }
        let via: Vec<_> = h
            .get_all("via")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(via, ["1.0 earlier", "1.1 gatehouse"]);
    }

    #[test]
    fn upgrade_headers_survive_only_for_upgrades() {
        for upgrade in [true, false] {
            let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
            assert!(crate::validate::is_upgrade_request(&h));
            prepare_response_headers(&mut h, &HeaderValue::from_static("r"), upgrade);
            assert_eq!(h.contains_key("upgrade"), upgrade);
            assert_eq!(h.contains_key("connection"), upgrade);
        }
    }

    #[test]
    fn ipv6_forwarded_is_quoted() {
        let mut h = HeaderMap::new();
        let fwd = ForwardedFor {
            client: "2001:db8::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            peer: "2001:db8::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            chain: None,
            proto: "http",
            host: None,
        };
        prepare_request_headers(&mut h, &fwd, &HeaderValue::from_static("r"), false);
        assert_eq!(
            h.get("forwarded").and_then(|v| v.to_str().ok()),
            Some("for=\"[2001:db8::1]\";proto=http")
        );
    }
}
