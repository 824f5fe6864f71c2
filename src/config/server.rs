//! `[admin]`, `[server]` and `[defaults]`: the admin listener, process-wide
//! limits and timeouts, route defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use validator::Validate;

use super::*;

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to bind; loopback by default.
    #[serde(default = "default_admin_addr")]
    pub addr: SocketAddr,
    /// Argon2id PHC hash of the admin bearer token (`gatehouse hash-secret`
    /// prints one). Without it the consumer and key endpoints are refused.
    #[serde(default)]
    pub token_hash: Option<Spanned<String>>,
    /// Require the admin token for `/metrics` too. Off by default: a
    /// Prometheus server scrapes the loopback admin port without one.
    #[serde(default)]
    pub metrics_require_token: bool,
    /// The `Host` values the web console (`/console/`) answers, as `host`
    /// or `host:port` (compared exactly, ignoring case; IPv6 in brackets,
    /// `[::1]:9901`). Any other `Host` gets 421, so a DNS-rebinding page
    /// cannot reach the console through a name it controls. Default (when
    /// unset): `localhost`, `127.0.0.1` and `[::1]`, plus the listener's
    /// bind IP when it is not unspecified, each with the listener's port
    /// (and also without it when the port is 80). Set it to the name an
    /// operator's browser uses, e.g. `["gatehouse-admin.internal:9901"]`.
    #[serde(default)]
    pub console_hosts: Option<Vec<String>>,
    /// TLS for the admin listener (`[admin.tls]`); plain HTTP without it.
    /// With it, the web console's session cookie is `Secure`.
    #[serde(default)]
    pub tls: Option<AdminTls>,
}

/// `[admin.tls]`: the admin listener's certificate and key (loaded at
/// start; restart to change them).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// PEM certificate chain; a relative path is from the config file's
    /// directory.
    pub cert: std::path::PathBuf,
    /// PEM private key; a relative path is from the config file's directory.
    pub key: std::path::PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: default_admin_addr(),
            token_hash: None,
            metrics_require_token: false,
            console_hosts: None,
            tls: None,
        }
    }
}

pub(super) fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Connection-level settings. Changing them needs a restart.
#[derive(Debug, Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Open connections across all listeners; beyond it new ones are closed.
    #[validate(range(min = 1))]
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Dur,
    /// Time allowed to receive a request head (also the keep-alive idle limit).
    pub header_read_timeout: Dur,
    /// Most header fields in a request.
    #[validate(range(min = 1, max = 1000))]
    pub max_header_count: usize,
    /// Largest request head (request line plus headers); beyond it 431.
    pub max_header_bytes: ByteSize,
    /// Longest request target (path and query); beyond it 414.
    pub max_uri_bytes: ByteSize,
    /// Longest pause while receiving a request body; also the grace period
    /// before `body_min_rate` applies. Beyond it 408.
    pub body_timeout: Dur,
    /// Slowest average body rate, in bytes per second, after `body_timeout`.
    pub body_min_rate: ByteSize,
    /// Fold repeated slashes (`//`) into one before routing and forwarding.
    pub merge_slashes: bool,
    /// HTTP/2 streams per connection.
    #[validate(range(min = 1))]
    pub h2_max_concurrent_streams: u32,
    /// Requests handled at once across all listeners; beyond it new
    /// requests get a fast 503 instead of queueing.
    #[validate(range(min = 1))]
    pub max_concurrent_requests: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Dur,
    /// Open connections one client address (IPv4, or IPv6 /64) may hold;
    /// beyond it new ones are closed at once. Behind a PROXY protocol
    /// balancer the address is the one the header names.
    #[validate(range(min = 1))]
    pub max_connections_per_ip: u32,
    /// TLS handshakes one client address may have in progress at once.
    #[validate(range(min = 1))]
    pub max_tls_handshakes_per_ip: u32,
    /// An HTTP/2 connection with no open stream for this long is closed
    /// (GOAWAY); also the default idle limit of upgraded (WebSocket) tunnels.
    pub idle_timeout: Dur,
    /// Request header names with `_`: `drop` (default), `refuse` (400) or
    /// `allow`. A route may set its own.
    pub underscores_in_headers: UnderscoreHeaders,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            tls_handshake_timeout: Dur(Duration::from_secs(10)),
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_header_count: 100,
            max_header_bytes: ByteSize(16 * 1024),
            max_uri_bytes: ByteSize(8 * 1024),
            body_timeout: Dur(Duration::from_secs(10)),
            body_min_rate: ByteSize(1024),
            merge_slashes: true,
            h2_max_concurrent_streams: 100,
            max_concurrent_requests: 10_000,
            shutdown_grace: Dur(Duration::from_secs(30)),
            max_connections_per_ip: 256,
            max_tls_handshakes_per_ip: 32,
            idle_timeout: Dur(Duration::from_secs(60)),
            underscores_in_headers: UnderscoreHeaders::Drop,
        }
    }
}

/// Defaults for routes and upstreams.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Largest request body a route accepts.
    pub max_body: ByteSize,
    /// Upstream connect timeout.
    pub connect_timeout: Dur,
    /// Time from sending the request to the upstream's response head.
    pub first_byte_timeout: Dur,
    /// Time for the whole exchange, response body included.
    pub request_timeout: Dur,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_body: ByteSize(1 << 20),
            connect_timeout: Dur(Duration::from_secs(5)),
            first_byte_timeout: Dur(Duration::from_secs(30)),
            request_timeout: Dur(Duration::from_secs(60)),
        }
    }
}
