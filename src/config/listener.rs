//! `[[listener]]`: addresses, limits, TLS (certificates, client auth, HSTS),
//! PROXY protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// One public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A unique name, used in logs.
    pub name: String,
    /// Address to bind, e.g. `127.0.0.1:8443` (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Terminate TLS on this listener.
    pub tls: Option<TlsConfig>,
    /// On a plain listener: answer every request with a 308 redirect to
    /// HTTPS on this port instead of serving it.
    pub redirect_https_port: Option<u16>,
    /// This listener's own connection limits (default: `[server]`).
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Expect a PROXY protocol header (v1 or v2) from peers in
    /// `[access] trusted_proxies` (an L4 load balancer such as AWS NLB or
    /// HAProxy) and take the client address from it. Off by default. A
    /// trusted peer that sends none, and an untrusted peer that sends one,
    /// are refused (the connection is closed and counted).
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Per-listener overrides of the `[server]` connection limits.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Overrides `[server] header_read_timeout`.
    pub header_read_timeout: Option<Dur>,
    /// Overrides `[server] max_header_count`.
    pub max_header_count: Option<usize>,
    /// Overrides `[server] max_header_bytes`.
    pub max_header_bytes: Option<ByteSize>,
    /// Overrides `[server] max_uri_bytes`.
    pub max_uri_bytes: Option<ByteSize>,
    /// Overrides `[server] h2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: Option<u32>,
}

impl ListenerLimits {
    /// The server settings with this listener's overrides applied.
    pub fn apply(&self, server: &ServerConfig) -> ServerConfig {
        ServerConfig {
            header_read_timeout: self
                .header_read_timeout
                .unwrap_or(server.header_read_timeout),
            max_header_count: self.max_header_count.unwrap_or(server.max_header_count),
            max_header_bytes: self.max_header_bytes.unwrap_or(server.max_header_bytes),
            max_uri_bytes: self.max_uri_bytes.unwrap_or(server.max_uri_bytes),
            h2_max_concurrent_streams: self
                .h2_max_concurrent_streams
                .unwrap_or(server.h2_max_concurrent_streams),
            ..server.clone()
        }
    }
}

/// TLS settings of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; chosen by SNI from their DNS names, the first is the default.
    pub certs: Vec<CertConfig>,
    /// If a cert or key file is missing, write a local dev CA and a
    /// certificate for localhost/127.0.0.1 there (quickstart only).
    #[serde(default)]
    pub dev_certs: bool,
    /// PEM bundle of CAs that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required or only verified when sent.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Send `Strict-Transport-Security` on every answer of this listener
    /// (off unless set; on in the quickstart).
    pub hsts: Option<HstsConfig>,
}

/// The `Strict-Transport-Security` header of a TLS listener.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// How long browsers remember to use HTTPS only (default one year).
    #[serde(default = "default_hsts_max_age")]
    pub max_age: Dur,
    /// Also for every subdomain.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Ask to be put on the browsers' preload lists (needs
    /// `include_subdomains` and a `max_age` of at least a year).
    #[serde(default)]
    pub preload: bool,
}

pub(super) fn default_hsts_max_age() -> Dur {
    Dur(Duration::from_secs(365 * 86_400))
}

impl HstsConfig {
    /// The header value, or why the settings are refused.
    pub fn header_value(&self) -> Result<http::HeaderValue, String> {
        let secs = self.max_age.0.as_secs();
        if self.preload && (!self.include_subdomains || secs < 365 * 86_400) {
            return Err(
                "`hsts.preload` needs `include_subdomains = true` and a `max_age` of at least a year"
                    .to_owned(),
            );
        }
        let mut value = format!("max-age={secs}");
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        http::HeaderValue::from_str(&value).map_err(|e| e.to_string())
    }
}

/// What happens to request header names containing `_` (e.g.
/// `X_Forwarded_For`): CGI, WSGI and PHP backends fold `_` into `-`, so such
/// a header could pass for a framing or trust header the gateway checked.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Remove them before any check, as nginx does (default).
    #[default]
    Drop,
    /// Answer 400 `invalid_header`.
    Refuse,
    /// Keep them.
    Allow,
}

/// Client-certificate policy of a TLS listener.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Clients must present a certificate chaining to `client_ca`.
    #[default]
    Required,
    /// A certificate is verified if sent, but not required.
    Optional,
}

/// A certificate chain and its private key.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names; default: the certificate's DNS subject alternative names.
    #[serde(default)]
    pub names: Vec<String>,
}
