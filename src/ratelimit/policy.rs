//! Compiled rate-limit policies: which limit applies to a request, and
//! what it is counted on.
//!
//! A [`RatePolicy`] comes from a `[[rate_limit]]` table of a policy file:
//! its default [`Limit`], per-plan overrides, what the counter is keyed on
//! and whether it only observes (shadow). The gateway asks each policy of a
//! route for the request's [`RatePolicy::key`] and [`RatePolicy::limit_for`]
//! and hands both to the limiter. Security caveat: a key is built only from
//! what the client cannot choose freely — the authenticated identity, the
//! trusted client address (IPv6 by /64), the route — except for
//! `header:NAME` policies, which the operator chose on purpose.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::Limit;
use crate::auth::Principal;

/// Headers a policy may not be keyed on: their values are secrets, and
/// keys end up in Redis and in the store.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// What a policy's counter is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// The consumer (API key) or token subject; the client address when the
    /// request is not authenticated.
    Consumer,
    /// The client address (IPv6: its /64).
    ClientIp,
    /// The route: every caller of the route shares one budget.
    Route,
    /// A request header's value (the client address when it is missing).
    Header(HeaderName),
}

impl KeyKind {
    /// Parses `consumer`, `client_ip`, `route` or `header:NAME`.
    pub fn parse(s: &str) -> Result<KeyKind, String> {
        match s {
            "consumer" => Ok(KeyKind::Consumer),
            "client_ip" => Ok(KeyKind::ClientIp),
            "route" => Ok(KeyKind::Route),
            other => match other.strip_prefix("header:") {
                Some(h) => {
                    let name = HeaderName::from_bytes(h.trim().as_bytes())
                        .map_err(|_| format!("invalid header name `{h}` in `key`"))?;
                    if CREDENTIAL_HEADERS.contains(&name.as_str()) {
                        return Err(format!(
                            "`{name}` carries credentials; key on `consumer` instead"
                        ));
                    }
                    Ok(KeyKind::Header(name))
                }
                None => Err(format!(
                    "unknown key `{other}` (expected consumer, client_ip, route or header:NAME)"
                )),
            },
        }
    }
}

/// One named rate-limit policy.
#[derive(Debug, Clone)]
pub struct RatePolicy {
    /// Its name (logs, `RateLimit-Policy`).
    pub name: Arc<str>,
    /// The limit for callers without a plan override.
    pub limit: Limit,
    /// Per-plan limits.
    pub plans: HashMap<String, Limit>,
    /// What it counts on.
    pub key: KeyKind,
    /// Observe only: log what would be refused, refuse nothing.
    pub shadow: bool,
    /// A count per day or month on the same key.
    pub quota: Option<super::quota::Quota>,
    /// Its decisions, counted.
    pub meters: crate::telemetry::requests::PolicyMeters,
}

impl RatePolicy {
    /// The limit for `principal`'s plan, else the default.
    pub fn limit_for(&self, principal: Option<&Principal>) -> &Limit {
        principal
            .and_then(|p| p.plan.as_deref())
            .and_then(|plan| self.plans.get(plan))
            .unwrap_or(&self.limit)
    }

    /// The counter key for a request: `policy|kind|value`. Consumers are
    /// keyed by how they authenticated (`c|k|consumer id` for API keys,
    /// `c|j|issuer|sub` for tokens), so a token cannot name an API-key
    /// consumer's budget as its subject. Header values are hashed (bounded
    /// length, and a stray secret in one never reaches Redis or the store).
    pub fn key(
        &self,
        route: &str,
        principal: Option<&Principal>,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> String {
        let ip = || format!("ip|{}", super::client_key(client));
        let part = match &self.key {
            KeyKind::Consumer => match principal {
                Some(p) if p.method == crate::auth::AuthMethod::ApiKey => {
                    format!("c|k|{}", p.subject)
                }
                Some(p) => format!("c|j|{}|{}", p.credential_id, p.subject),
                None => ip(),
            },
            KeyKind::ClientIp => ip(),
            KeyKind::Route => format!("r|{route}"),
            KeyKind::Header(h) => match headers.get(h).map(|v| v.as_bytes()) {
                Some(v) if !v.is_empty() => {
                    use sha2::Digest as _;
                    let digest = sha2::Sha256::digest(v);
                    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
                    format!("h|{hex}")
                }
                _ => ip(),
            },
        };
        format!("{}|{part}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;
    use crate::ratelimit::Rate;
    use std::time::Duration;

    fn limit(count: u32) -> Limit {
        Limit {
            rate: Rate {
                count,
                period: Duration::from_secs(1),
            },
            burst: count,
        }
    }

    fn principal(plan: Option<&str>) -> Principal {
        Principal {
            method: AuthMethod::ApiKey,
            subject: "c_1".into(),
            consumer_name: None,
            plan: plan.map(Into::into),
            credential_id: "k".into(),
            scopes: vec![],
            roles: vec![],
            headers: vec![],
        }
    }

    fn policy(key: KeyKind) -> RatePolicy {
        RatePolicy {
            name: "p".into(),
            limit: limit(5),
            plans: HashMap::from([("gold".to_owned(), limit(50))]),
            key,
            shadow: false,
            quota: None,
            meters: crate::telemetry::requests::PolicyMeters::new(
                &crate::telemetry::Metrics::new().unwrap(),
                "p",
            ),
        }
    }

    #[test]
    fn keys() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", http::HeaderValue::from_static("t1"));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let gold = principal(Some("gold"));
        let jwt = Principal {
            method: AuthMethod::Jwt,
            credential_id: "dev".into(),
            ..principal(None)
        };
        let cases: Vec<(&str, KeyKind, Option<&Principal>, IpAddr, &HeaderMap, &str)> = vec![
            (
                "consumer",
                KeyKind::Consumer,
                Some(&gold),
                v4,
                &h,
                "p|c|k|c_1",
            ),
            (
                "token subject",
                KeyKind::Consumer,
                Some(&jwt),
                v4,
                &h,
                "p|c|j|dev|c_1",
            ),
            (
                "consumer without auth",
                KeyKind::Consumer,
                None,
                v4,
                &h,
                "p|ip|192.0.2.7",
            ),
            (
                "ipv6 by /64",
                KeyKind::ClientIp,
                Some(&gold),
                v6,
                &h,
                "p|ip|2001:db8:1:2::/64",
            ),
            ("route", KeyKind::Route, None, v4, &h, "p|r|api"),
            (
                "header",
                KeyKind::Header(HeaderName::from_static("x-tenant")),
                None,
                v4,
                &h,
                "p|h|628b49d96dcde97a430dd4f597705899",
            ),
            (
                "missing header",
                KeyKind::Header(HeaderName::from_static("x-other")),
                None,
                v4,
                &h,
                "p|ip|192.0.2.7",
            ),
        ];
        for (name, kind, p, ip, headers, want) in cases {
            assert_eq!(policy(kind).key("api", p, ip, headers), want, "{name}");
        }
    }

    #[test]
    fn plans_override_the_default() {
        let p = policy(KeyKind::Consumer);
        assert_eq!(p.limit_for(Some(&principal(Some("gold")))).burst, 50);
        assert_eq!(p.limit_for(Some(&principal(Some("silver")))).burst, 5);
        assert_eq!(p.limit_for(Some(&principal(None))).burst, 5);
        assert_eq!(p.limit_for(None).burst, 5);
    }

    #[test]
    fn key_kinds_parse() {
        let cases = [
            ("consumer", Ok(KeyKind::Consumer)),
            ("client_ip", Ok(KeyKind::ClientIp)),
            ("route", Ok(KeyKind::Route)),
            (
                "header:X-Tenant",
                Ok(KeyKind::Header(HeaderName::from_static("x-tenant"))),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(KeyKind::parse(s), want, "{s}");
        }
        assert!(KeyKind::parse("ip").is_err());
        assert!(KeyKind::parse("header:Authorization").is_err());
        assert!(KeyKind::parse("header:x-api-key").is_err());
        assert!(KeyKind::parse("header:bad name").is_err());
    }
}
