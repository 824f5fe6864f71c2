//! The Host step and the answers that need no upstream: redirects to HTTPS
//! and direct responses.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use crate::body::{GwBody, empty, full};
use crate::error::GatewayError;
use crate::validate::{self};

use super::*;

/// The routing host. HTTP/1.1 needs exactly one Host; an absolute-form
/// target or an h2 `:authority` must agree with it.
pub(super) fn host_of<B>(req: &Request<B>) -> Result<Host, GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::InvalidHost("more than one Host header"));
    }
    let header_host = match header_host {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| GatewayError::InvalidHost("Host is not ASCII"))?,
        ),
        None => None,
    };
    let uri_host = req.uri().authority().map(|a| a.as_str());
    let authority = match (header_host, uri_host) {
        (Some(h), Some(u)) => {
            if !h.eq_ignore_ascii_case(u) {
                return Err(GatewayError::InvalidHost(
                    "Host differs from the request target",
                ));
            }
            Some(h)
        }
        (Some(h), None) => Some(h),
        (None, Some(u)) => Some(u),
        (None, None) => {
            if req.version() == Version::HTTP_11 {
                return Err(GatewayError::InvalidHost("missing Host header"));
            }
            None
        }
    };
    let Some(authority) = authority else {
        return Ok(Host {
            name: String::new(),
            authority: None,
        });
    };
    if !validate::valid_authority(authority) {
        return Err(GatewayError::InvalidHost("Host is not a valid host[:port]"));
    }
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|_| GatewayError::InvalidHost("Host is not a valid host[:port]"))?;
    let name = parsed.host().trim_end_matches('.').to_ascii_lowercase();
    Ok(Host {
        name,
        authority: Some(authority.to_owned()),
    })
}

pub(super) fn redirect_to_https(
    host: &Host,
    port: u16,
    path: &str,
    query: Option<&str>,
) -> Result<Response<GwBody>, GatewayError> {
    if host.name.is_empty() {
        return Err(GatewayError::InvalidHost("missing Host header"));
    }
    let host_part = if host.name.contains(':') {
        format!("[{}]", host.name.trim_matches(['[', ']']))
    } else {
        host.name.clone()
    };
    let mut location = if port == 443 {
        format!("https://{host_part}{path}")
    } else {
        format!("https://{host_part}:{port}{path}")
    };
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let location = HeaderValue::from_str(&location)
        .map_err(|_| GatewayError::InvalidHost("malformed Host"))?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

/// A route's direct answer (the route's response edits come at the
/// finish, as for every answer the route makes).
pub(super) fn respond_directly(
    direct: &crate::route::DirectResponse,
    method: &Method,
) -> Response<GwBody> {
    let body = if method == Method::HEAD {
        empty()
    } else {
        full(direct.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = direct.status;
    for (k, v) in &direct.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}
