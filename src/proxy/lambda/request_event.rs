//! The request as an API Gateway event (payload format 1.0 or 2.0), as
//! Lambda functions written for API Gateway expect it.

use std::net::IpAddr;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::Method;
use http::header::{self, HeaderMap};
use serde_json::{Map, Value, json};

use crate::auth::{AuthMethod, Principal};

use super::*;

/// What the event is built from: the request as it would go upstream.
#[derive(Debug)]
pub struct EventInput<'a> {
    /// The format.
    pub format: PayloadFormat,
    /// The method.
    pub method: &'a Method,
    /// The path sent to the function (normalised, after the route's rewrite).
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The prepared outgoing headers (forwarding, request and identity
    /// headers set; client credentials stripped where the route says so).
    pub headers: &'a HeaderMap,
    /// The route's path pattern (`/orders/{id}`, `/api/{proxy+}`).
    pub resource: &'a str,
    /// Path parameters from the route template.
    pub params: &'a [(String, String)],
    /// The name of a prefix route's tail among `params` (the route table's
    /// own): it becomes API Gateway's greedy `{proxy+}`, `proxy`.
    pub tail_param: &'a str,
    /// The authenticated caller.
    pub principal: Option<&'a Principal>,
    /// The gateway's request id.
    pub request_id: &'a str,
    /// The client's address (through trusted proxies).
    pub source_ip: IpAddr,
    /// The Host the client asked for.
    pub host: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// Now.
    pub now: SystemTime,
}

/// The API Gateway proxy event for `input`.
pub fn event(input: &EventInput<'_>) -> Value {
    let (body, is_base64) = encode_body(input.headers, input.body);
    let host = input
        .host
        .map(|h| {
            h.rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(h, |(n, _)| n)
        })
        .unwrap_or("");
    let domain_prefix = host.split('.').next().unwrap_or("");
    let user_agent = input
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let epoch_ms = input
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let time = clf_time(input.now);
    let params: Option<Map<String, Value>> = (!input.params.is_empty()).then(|| {
        input
            .params
            .iter()
            .map(|(k, v)| {
                // A prefix route's tail is API Gateway's greedy `{proxy+}`.
                let k = if k == input.tail_param { "proxy" } else { k };
                (k.to_owned(), Value::String(v.clone()))
            })
            .collect()
    });
    let query = parse_query(input.query.unwrap_or(""));
    let source_ip = input.source_ip.to_string();
    match input.format {
        PayloadFormat::V2 => {
            let mut headers = Map::new();
            let mut cookies = Vec::new();
            for name in input.headers.keys() {
                let values: Vec<&str> = input
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if name == header::COOKIE {
                    cookies.extend(
                        values
                            .iter()
                            .flat_map(|v| v.split(';'))
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(|c| Value::String(c.to_owned())),
                    );
                    continue;
                }
                headers.insert(name.as_str().to_owned(), Value::String(values.join(",")));
            }
            let route_key = format!("{} {}", input.method, input.resource);
            let mut ev = json!({
                "version": "2.0",
                "routeKey": route_key,
                "rawPath": input.path,
                "rawQueryString": input.query.unwrap_or(""),
                "headers": headers,
                "requestContext": {
                    "accountId": "anonymous",
                    "apiId": "gatehouse",
                    "domainName": host,
                    "domainPrefix": domain_prefix,
                    "http": {
                        "method": input.method.as_str(),
                        "path": input.path,
                        "protocol": input.protocol,
                        "sourceIp": source_ip,
                        "userAgent": user_agent,
                    },
                    "requestId": input.request_id,
                    "routeKey": route_key,
                    "stage": "$default",
                    "time": time,
                    "timeEpoch": epoch_ms,
                },
                "isBase64Encoded": is_base64,
            });
            if !cookies.is_empty() {
                ev["cookies"] = Value::Array(cookies);
            }
            if !query.is_empty() {
                let q: Map<String, Value> = query
                    .iter()
                    .map(|(k, vs)| (k.clone(), Value::String(vs.join(","))))
                    .collect();
                ev["queryStringParameters"] = Value::Object(q);
            }
            if let Some(p) = params {
                ev["pathParameters"] = Value::Object(p);
            }
            if let Some(b) = body {
                ev["body"] = Value::String(b);
            }
            if let Some(p) = input.principal {
                ev["requestContext"]["authorizer"] = authorizer_v2(p);
            }
            ev
        }
        PayloadFormat::V1 => {
            let mut single = Map::new();
            let mut multi = Map::new();
            for name in input.headers.keys() {
                let values: Vec<Value> = input
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| Value::String(v.to_owned()))
                    .collect();
                if let Some(last) = values.last() {
                    single.insert(name.as_str().to_owned(), last.clone());
                }
                multi.insert(name.as_str().to_owned(), Value::Array(values));
            }
            let (q_single, q_multi) = if query.is_empty() {
                (Value::Null, Value::Null)
            } else {
                let s: Map<String, Value> = query
                    .iter()
                    .filter_map(|(k, vs)| Some((k.clone(), Value::String(vs.last()?.clone()))))
                    .collect();
                let m: Map<String, Value> =
                    query.iter().map(|(k, vs)| (k.clone(), json!(vs))).collect();
                (Value::Object(s), Value::Object(m))
            };
            let mut ev = json!({
                "version": "1.0",
                "resource": input.resource,
                "path": input.path,
                "httpMethod": input.method.as_str(),
                "headers": single,
                "multiValueHeaders": multi,
                "queryStringParameters": q_single,
                "multiValueQueryStringParameters": q_multi,
                "pathParameters": params.map_or(Value::Null, Value::Object),
                "stageVariables": null,
                "requestContext": {
                    "accountId": "anonymous",
                    "apiId": "gatehouse",
                    "domainName": host,
                    "domainPrefix": domain_prefix,
                    "extendedRequestId": input.request_id,
                    "httpMethod": input.method.as_str(),
                    "identity": {
                        "sourceIp": source_ip,
                        "userAgent": user_agent,
                    },
                    "path": input.path,
                    "protocol": input.protocol,
                    "requestId": input.request_id,
                    "requestTime": time,
                    "requestTimeEpoch": epoch_ms,
                    "resourceId": "gatehouse",
                    "resourcePath": input.resource,
                    "stage": "$default",
                },
                "body": body.map_or(Value::Null, Value::String),
                "isBase64Encoded": is_base64,
            });
            if let Some(p) = input.principal {
                ev["requestContext"]["authorizer"] = authorizer_v1(p);
            }
            ev
        }
    }
}

/// The caller as API Gateway's JWT or Lambda authorizer would show it:
/// derived identity only, never the raw token or claims.
pub(super) fn authorizer_v2(p: &Principal) -> Value {
    match p.method {
        AuthMethod::Jwt => {
            let mut claims = Map::new();
            claims.insert("sub".into(), json!(&*p.subject));
            if !p.scopes.is_empty() {
                claims.insert("scope".into(), json!(p.scopes.join(" ")));
            }
            if !p.roles.is_empty() {
                claims.insert("roles".into(), json!(p.roles));
            }
            if let Some(plan) = &p.plan {
                claims.insert("plan".into(), json!(&**plan));
            }
            json!({ "jwt": { "claims": claims, "scopes": p.scopes, "issuer": &*p.credential_id } })
        }
        AuthMethod::ApiKey => json!({ "lambda": api_key_context(p) }),
    }
}

pub(super) fn authorizer_v1(p: &Principal) -> Value {
    let mut ctx = match p.method {
        AuthMethod::Jwt => {
            let mut claims = Map::new();
            claims.insert("sub".into(), json!(&*p.subject));
            if !p.scopes.is_empty() {
                claims.insert("scope".into(), json!(p.scopes.join(" ")));
            }
            if let Some(plan) = &p.plan {
                claims.insert("plan".into(), json!(&**plan));
            }
            let mut m = Map::new();
            m.insert("claims".into(), Value::Object(claims));
            m.insert("issuer".into(), json!(&*p.credential_id));
            m
        }
        AuthMethod::ApiKey => match api_key_context(p) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    };
    ctx.insert("principalId".into(), json!(&*p.subject));
    Value::Object(ctx)
}

pub(super) fn api_key_context(p: &Principal) -> Value {
    let mut m = Map::new();
    m.insert("consumerId".into(), json!(&*p.subject));
    if let Some(n) = &p.consumer_name {
        m.insert("consumerName".into(), json!(&**n));
    }
    if let Some(plan) = &p.plan {
        m.insert("plan".into(), json!(&**plan));
    }
    m.insert("keyId".into(), json!(&*p.credential_id));
    m.insert("scopes".into(), json!(p.scopes.join(" ")));
    Value::Object(m)
}

/// The body as the event carries it: text as is, anything else base64.
pub(super) fn encode_body(headers: &HeaderMap, body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    let textual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(is_text_type);
    match std::str::from_utf8(body) {
        Ok(text) if textual => (Some(text.to_owned()), false),
        _ => (Some(B64.encode(body)), true),
    }
}

pub(super) fn is_text_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
        )
}

/// Query parameters, decoded, in order of first appearance.
pub(super) fn parse_query(q: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some((_, vs)) => vs.push(v),
            None => out.push((k, vec![v])),
        }
    }
    out
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `02/Dec/2026:05:20:09 +0000`, as API Gateway writes request times.
pub(super) fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let dt = time::OffsetDateTime::from(t);
    let month = MONTHS
        .get(usize::from(u8::from(dt.month())).saturating_sub(1))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{:02}/{month}/{}:{:02}:{:02}:{:02} +0000",
        dt.day(),
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}
