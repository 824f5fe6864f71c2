//! Config checks of a JWT issuer that [`super::jwt::Issuer::build`] runs and
//! reports as `IssuerError::Invalid` (the snapshot adds the issuer table's
//! file:line): which headers `claim_headers` may target, and the floor of
//! `jwks_min_refresh_interval`.
//!
//! Security caveat: a claim forwarded as a reserved header would let a token
//! (whose claims its holder may partly choose) forge the identity or the
//! client address the upstream trusts, so those targets are config errors,
//! not something stripped at run time.

use std::time::Duration;

use http::HeaderName;

use super::policy::IDENTITY_HEADERS;

/// Shortest accepted `jwks_min_refresh_interval`: below it, tokens with
/// random `kid`s could make the gateway fetch the JWK Set many times a
/// second.
pub const MIN_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Header names refused as `claim_headers` targets: hop-by-hop headers
/// (they would be stripped or misread by proxies) and the ones that frame
/// or route the request or carry credentials.
pub(super) const FORBIDDEN_TARGET_HEADERS: [&str; 21] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "authorization",
    "cookie",
    "forwarded",
    // The gateway's own forwarding headers: a claim must not replace them.
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    "via",
];

/// Why `header` (as written in the config, for the message) may not be a
/// `claim_headers` target, or `None` if it may.
pub(super) fn claim_header_refusal(h: &HeaderName, header: &str) -> Option<String> {
    let name = h.as_str();
    if IDENTITY_HEADERS.contains(&name) {
        return Some(format!(
            "{header:?} is an identity header the gateway sets from the authenticated caller"
        ));
    }
    if name.starts_with("x-forwarded-") || name == "x-real-ip" {
        return Some(format!(
            "{header:?} is a client-address or forwarding header the gateway sets"
        ));
    }
    if FORBIDDEN_TARGET_HEADERS.contains(&name) {
        return Some(format!(
            "{header:?} is a hop-by-hop, framing or credential header"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::auth::jwks::JwksRegistry;
    use crate::auth::jwt::Issuer;
    use crate::config::JwtIssuerSpec;

    /// An ES256 issuer with a JWKS URL (no files, nothing fetched) plus
    /// `extra` TOML lines.
    fn spec(extra: &str) -> JwtIssuerSpec {
        toml::from_str(&format!(
            "name = \"idp\"\nalgorithms = [\"ES256\"]\njwks_url = \"https://idp.test/jwks\"\n{extra}\n"
        ))
        .unwrap()
    }

    fn build(extra: &str) -> Result<Issuer, crate::auth::jwt::IssuerError> {
        let registry = JwksRegistry::new().unwrap();
        Issuer::build(&spec(extra), Path::new("."), &|_| None, &registry)
    }

    #[test]
    fn reserved_claim_header_targets_are_refused() {
        let identity = "an identity header the gateway sets";
        let forwarding = "a client-address or forwarding header";
        let framing = "a hop-by-hop, framing or credential header";
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("consumer id", "x-consumer-id", Some(identity)),
            ("consumer name", "x-consumer-name", Some(identity)),
            ("consumer plan", "x-consumer-plan", Some(identity)),
            ("auth method", "x-auth-method", Some(identity)),
            ("auth scopes", "x-auth-scopes", Some(identity)),
            ("credential id, any case", "X-Credential-ID", Some(identity)),
            ("real ip", "x-real-ip", Some(forwarding)),
            ("forwarded for", "x-forwarded-for", Some(forwarding)),
            ("forwarded port", "x-forwarded-port", Some(forwarding)),
            ("forwarded prefix", "X-Forwarded-Prefix", Some(forwarding)),
            ("hop-by-hop", "connection", Some(framing)),
            ("credential", "authorization", Some(framing)),
            ("a derived header", "x-auth-sub", None),
            ("a look-alike", "x-consumer-idx", None),
            ("forwarded without the dash", "x-forwardedfor", None),
        ];
        for (name, header, want) in cases {
            let got = build(&format!("claim_headers = {{ sub = \"{header}\" }}"));
            match (want, got) {
                (None, Ok(_)) => {}
                (None, Err(e)) => panic!("case {name}: refused: {e}"),
                (Some(_), Ok(_)) => panic!("case {name}: accepted"),
                (Some(want), Err(e)) => {
                    assert_eq!(e.field(), "claim_headers.sub", "case {name}");
                    let msg = e.to_string();
                    assert!(msg.contains(want), "case {name}: {msg}");
                    assert!(msg.contains(&format!("{header:?}")), "case {name}: {msg}");
                }
            }
        }
    }

    #[test]
    fn jwks_min_refresh_interval_has_a_floor() {
        let cases: &[(&str, &str, bool)] = &[
            ("zero", "0s", false),
            ("1 ms", "1ms", false),
            ("just under", "999ms", false),
            ("the floor", "1s", true),
            ("the default", "30s", true),
        ];
        for (name, value, ok) in cases {
            let got = build(&format!("jwks_min_refresh_interval = \"{value}\""));
            match got {
                Ok(_) => assert!(ok, "case {name}: accepted"),
                Err(e) => {
                    assert!(!ok, "case {name}: refused: {e}");
                    assert_eq!(e.field(), "jwks_min_refresh_interval", "case {name}");
                    assert!(e.to_string().contains("at least 1s"), "case {name}: {e}");
                }
            }
        }
    }
}
