//! One client connection as the pipeline and the server see it: who it is
//! from ([`ConnInfo`]), what it holds of the connection limits
//! ([`ConnHold`], kept alive by an upgraded tunnel too), whether any request
//! is in flight on it ([`Activity`], for the idle timeout), and the count of
//! open connections graceful shutdown waits for ([`Drain`]).
//!
//! A leaf module: it knows nothing of routing or forwarding.

mod activity;
mod per_address;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::HeaderValue;

pub(crate) use activity::{Activity, Drain, DrainGuard, StreamGuard};
pub(crate) use per_address::{AddressKey, AddressSlot, PerAddress};

use crate::validate::Verdicts;

/// What the server knows about the connection a request came on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The client's socket address: the TCP peer, or the address a trusted
    /// load balancer's PROXY protocol header named.
    pub(crate) peer: SocketAddr,
    /// The load balancer that sent a PROXY protocol header, if any.
    pub(crate) proxied_by: Option<SocketAddr>,
    /// The listener's name.
    pub(crate) listener: Arc<str>,
    /// The negotiated TLS version, when the listener terminates TLS.
    pub(crate) tls_version: Option<&'static str>,
    /// On a plain listener: redirect everything to HTTPS on this port.
    pub(crate) redirect_https_port: Option<u16>,
    /// `Strict-Transport-Security` for every answer (TLS listeners only).
    pub(crate) hsts: Option<HeaderValue>,
    /// Heads the HTTP/1 framing guard refused (none on HTTP/2).
    pub(crate) verdicts: Option<Arc<Verdicts>>,
    /// Requests seen on this connection so far.
    pub(crate) requests: AtomicU64,
    /// Requests in flight (for the idle timeout).
    pub(crate) activity: Arc<Activity>,
    /// Its places in the connection limits.
    pub(crate) hold: Arc<ConnHold>,
}

impl ConnInfo {
    /// `https` on a TLS listener, else `http`.
    pub(crate) fn proto(&self) -> &'static str {
        if self.tls_version.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// What a connection holds of the limits, given back when the last holder
/// (the connection, or a tunnel made from it) is gone.
#[derive(Debug, Default)]
#[allow(
    dead_code,
    reason = "held, never read: each place is given back when dropped"
)]
pub(crate) struct ConnHold {
    /// A place in `[server] max_connections`.
    pub(crate) global: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A place in `[server] max_connections_per_ip`.
    pub(crate) per_address: Option<AddressSlot>,
    /// The count graceful shutdown waits for.
    pub(crate) drain: Option<DrainGuard>,
}
