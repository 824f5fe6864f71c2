//! The access log.
//!
//! One structured line per request, emitted through `tracing` on the
//! `gatehouse::access` target when the response has been sent (or the client
//! went away), so it carries the real byte count and duration. The record
//! holds no header values at all: credentials, cookies and API keys cannot
//! leak through it. The subscriber itself is installed by `main`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::body::BodyStats;

/// Everything the access log says about one request.
#[derive(Debug)]
pub struct AccessRecord {
    /// The request id sent back in `X-Request-Id`.
    pub request_id: String,
    /// The request method.
    pub method: http::Method,
    /// The normalised path (without query); the raw target when it was refused.
    pub path: String,
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    /// The upstream's name.
    pub upstream: Option<Arc<str>>,
    /// The upstream target the request went to.
    pub target: Option<String>,
    /// The response status.
    pub status: u16,
    /// The error code when the gateway answered itself.
    pub error: Option<&'static str>,
    /// Why, in words (gateway-written text, never a header value).
    pub reason: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// The client's address (through trusted proxies, if any).
    pub client: IpAddr,
    /// The socket peer (the client itself, or the last proxy).
    pub peer: SocketAddr,
    /// The listener that accepted it.
    pub listener: Arc<str>,
    /// `TLSv1.3`, `TLSv1.2`, or none for plain HTTP.
    pub tls_version: Option<&'static str>,
    /// HTTP version of the client's request.
    pub http_version: http::Version,
    /// Request body counters.
    pub body: Arc<BodyStats>,
    /// The authenticated consumer id or token subject.
    pub consumer: Option<Arc<str>>,
    /// How the caller authenticated (`api_key`, `jwt`).
    pub auth: Option<&'static str>,
}

impl AccessRecord {
    /// Emits the log line. `complete` is false when the body stream ended
    /// early (client went away, upstream broke, deadline).
    pub fn finish(&self, bytes_out: u64, complete: bool) {
        let duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            target: "gatehouse::access",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            target_addr = self.target.as_deref().unwrap_or("-"),
            status = self.status,
            error = self.error.unwrap_or("-"),
            reason = self.reason.as_deref().unwrap_or("-"),
            consumer = self.consumer.as_deref().unwrap_or("-"),
            auth = self.auth.unwrap_or("-"),
            duration_us,
            bytes_in = self.body.bytes.load(Ordering::Relaxed),
            bytes_out,
            complete,
            client = %self.client,
            peer = %self.peer,
            listener = %self.listener,
            tls = self.tls_version.unwrap_or("-"),
            http = ?self.http_version,
            "access"
        );
    }
}
