//! Request validation: path normalisation, framing checks, header hygiene,
//! per-route rules and strict JSON parsing for schema-checked bodies.
//!
//! Everything here is pure and cheap: it runs before routing on every request,
//! so that routing, policy and the upstream all see the same bytes. What cannot
//! be made unambiguous is refused, never guessed.

mod framing;
mod hygiene;
mod invalid;
mod json;
mod path;
mod rules;

pub use framing::{FramingGuard, HeadLimits, REFUSED_REQUEST, Refusal, Verdicts, inspect_stream};
pub use hygiene::{
    CLIENT_CONTROL_HEADERS, HeaderPolicy, check_method, is_upgrade_request, strip_hop_by_hop,
    valid_authority,
};
pub use invalid::Invalid;
pub use json::{JsonError, parse_strict};
pub use path::{PathError, normalize_path};
pub use rules::{
    IpRules, QueryRules, RequestRules, SchemaError, canonical, check_path_params, client_ip,
    has_body, parse_net,
};

use http::{HeaderMap, header};

/// Refuses requests whose body framing could be read two ways
/// (`Content-Length` together with `Transfer-Encoding`, several differing
/// `Content-Length` values). hyper already rejects malformed values on
/// HTTP/1; this closes the gaps it leaves.
pub fn check_framing(headers: &HeaderMap) -> Result<(), Invalid> {
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next();
    if has_te && first.is_some() {
        return Err(Invalid::AmbiguousFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if let Some(first) = first {
        if lengths.next().is_some() {
            return Err(Invalid::AmbiguousFraming("more than one Content-Length"));
        }
        let v = first.as_bytes();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(Invalid::AmbiguousFraming("invalid Content-Length"));
        }
    }
    if has_te {
        let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
        let ok = match (values.next(), values.next()) {
            (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"chunked"),
            _ => false,
        };
        if !ok {
            return Err(Invalid::AmbiguousFraming(
                "Transfer-Encoding other than a single chunked",
            ));
        }
    }
    Ok(())
}

/// The media type of `Content-Type`, lower case, without parameters
/// (`application/json; charset=utf-8` → `application/json`); `None` when
/// there is none or it is not text.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// The declared body length, if any (already checked by [`check_framing`]).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn framing() {
        let cases: Vec<(&str, Vec<(&str, &str)>, bool)> = vec![
            ("no body", vec![], true),
            ("content-length", vec![("content-length", "10")], true),
            ("chunked", vec![("transfer-encoding", "chunked")], true),
            (
                "chunked any case",
                vec![("transfer-encoding", "Chunked")],
                true,
            ),
            (
                "cl and te",
                vec![("content-length", "10"), ("transfer-encoding", "chunked")],
                false,
            ),
            (
                "two cl",
                vec![("content-length", "10"), ("content-length", "10")],
                false,
            ),
            ("signed cl", vec![("content-length", "+10")], false),
            (
                "gzip te",
                vec![("transfer-encoding", "gzip, chunked")],
                false,
            ),
            (
                "two te",
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
            ),
            (
                "obfuscated te",
                vec![("transfer-encoding", "xchunked")],
                false,
            ),
        ];
        for (name, hs, ok) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in hs {
                map.append(
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                );
            }
            assert_eq!(check_framing(&map).is_ok(), ok, "{name}");
        }
    }
}
