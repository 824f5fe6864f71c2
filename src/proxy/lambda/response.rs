//! The function's answer read as API Gateway reads it: status, headers,
//! cookies, body (base64 or text).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::*;

/// Maps a function's answer to an HTTP response. Format 2.0 also takes a
/// bare JSON value (anything without `statusCode`): 200, JSON, as is.
pub fn answer(format: PayloadFormat, payload: &[u8]) -> Result<Answer, &'static str> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| "the answer is not JSON")?;
    let obj = match value {
        Value::Object(o) if o.contains_key("statusCode") => o,
        _ if format == PayloadFormat::V2 => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(Answer {
                status: StatusCode::OK,
                headers,
                body: Bytes::copy_from_slice(payload),
            });
        }
        _ => return Err("the answer has no statusCode"),
    };
    let status = match &obj["statusCode"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    }
    .and_then(|n| u16::try_from(n).ok())
    .and_then(|n| StatusCode::from_u16(n).ok())
    .filter(|s| (200..=599).contains(&s.as_u16()))
    .ok_or("statusCode is not an HTTP status")?;
    let mut headers = HeaderMap::new();
    let mut multi_names = Vec::new();
    if let Some(m) = obj.get("multiValueHeaders").filter(|v| !v.is_null()) {
        let m = m.as_object().ok_or("multiValueHeaders is not an object")?;
        for (k, vs) in m {
            let name = header_name(k)?;
            let vs = vs
                .as_array()
                .ok_or("a multiValueHeaders entry is not a list")?;
            for v in vs {
                headers.append(name.clone(), header_value(v)?);
            }
            multi_names.push(name);
        }
    }
    if let Some(h) = obj.get("headers").filter(|v| !v.is_null()) {
        let h = h.as_object().ok_or("headers is not an object")?;
        for (k, v) in h {
            let name = header_name(k)?;
            if multi_names.contains(&name) || v.is_null() {
                continue;
            }
            headers.insert(name, header_value(v)?);
        }
    }
    if format == PayloadFormat::V2
        && let Some(c) = obj.get("cookies").filter(|v| !v.is_null())
    {
        for cookie in c.as_array().ok_or("cookies is not a list")? {
            let v = cookie.as_str().ok_or("a cookie is not a string")?;
            headers.append(
                header::SET_COOKIE,
                HeaderValue::from_str(v).map_err(|_| "invalid cookie")?,
            );
        }
    }
    let base64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("isBase64Encoded is not a boolean"),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if base64 => Bytes::from(
            B64.decode(s.as_bytes())
                .map_err(|_| "body is not valid base64")?,
        ),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(_) => return Err("body is not a string"),
    };
    // The gateway frames the body itself.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    Ok(Answer {
        status,
        headers,
        body,
    })
}

pub(super) fn header_name(k: &str) -> Result<HeaderName, &'static str> {
    HeaderName::from_bytes(k.as_bytes()).map_err(|_| "invalid header name")
}

pub(super) fn header_value(v: &Value) -> Result<HeaderValue, &'static str> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err("a header value is not a string"),
    };
    HeaderValue::from_str(&text).map_err(|_| "invalid header value")
}
