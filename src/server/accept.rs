//! The accept loop of one public listener and the life of each connection:
//! the global connection limit, the PROXY protocol header (from trusted
//! balancers only), the per-address connection cap, the TLS handshake under
//! its per-address cap and timeout, then hyper (HTTP/1.1 behind the framing
//! guard, or h2) until the client leaves, the connection idles out, or
//! shutdown asks it to finish.
//!
//! A connection refused before HTTP (limits, PROXY protocol) is closed
//! without an answer — there is no request to answer yet — and counted in
//! `gatehouse_connections_refused_total{listener,reason}` with a debug log
//! line naming the address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::proxy_protocol;
use super::{Shared, TlsSlot};
use crate::conn::{Activity, ConnHold, ConnInfo, PerAddress};
use crate::gateway::Gateway;
use crate::telemetry::process::{ConnMeters, TlsMeters, handshake_failure_reason};
use crate::validate::{FramingGuard, HeadLimits, Verdicts};

/// One public listener's accept loop and what its connections need.
pub(super) struct Acceptor {
    pub(super) name: Arc<str>,
    pub(super) tls: Option<Arc<TlsSlot>>,
    pub(super) redirect_https_port: Option<u16>,
    pub(super) proxy_protocol: bool,
    pub(super) hsts: Option<HeaderValue>,
    /// Shared by this listener's connections: one reference count per
    /// request, not one per field of the gateway.
    pub(super) gateway: Arc<Gateway>,
    pub(super) http: Arc<auto::Builder<TokioExecutor>>,
    pub(super) limit: Arc<Semaphore>,
    pub(super) per_address: Arc<PerAddress>,
    pub(super) handshakes: Arc<PerAddress>,
    pub(super) handshake_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) tls_meters: Arc<TlsMeters>,
    pub(super) conn_meters: Arc<ConnMeters>,
    pub(super) head_limits: HeadLimits,
    pub(super) header_read_timeout: Duration,
    pub(super) shared: Arc<Shared>,
    pub(super) refusal_lines: LineBudget,
}

/// Log lines about refused connections allowed per second and listener.
pub(super) const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// A per-second budget of log lines.
#[derive(Debug, Default)]
pub(super) struct LineBudget {
    /// The second (since the gateway started) the count is for, and the
    /// count, packed as `second << 32 | count`.
    state: AtomicU64,
    started: std::sync::OnceLock<tokio::time::Instant>,
}

impl LineBudget {
    /// Whether one more line may be written this second.
    fn allow(&self) -> bool {
        let started = self.started.get_or_init(tokio::time::Instant::now);
        let second = started.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (at, count) = (current >> 32, current & 0xffff_ffff);
            let next = if at == second {
                if count >= u64::from(REFUSAL_LINES_PER_SECOND) {
                    return false;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

impl Acceptor {
    pub(super) async fn run(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let me = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %me.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = me.limit.clone().try_acquire_owned() else {
                me.conn_meters.refused("max_connections");
                tracing::warn!(listener = %me.name, client = %peer, "connection limit reached; closing");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let me = me.clone();
            tokio::spawn(async move {
                me.connection(tcp, peer, permit).await;
            });
        }
        drop(listener);
        tracing::info!(listener = %me.name, "stopped accepting");
    }

    /// Refuses a connection before HTTP: counted, logged on the access
    /// log's target (at most [`REFUSAL_LINES_PER_SECOND`] lines a second per
    /// listener, so a flood of connections cannot flood the log; the
    /// counter counts them all), then closed.
    fn refuse(&self, reason: &'static str, peer: SocketAddr, client: SocketAddr) {
        self.conn_meters.refused(reason);
        if self.refusal_lines.allow() {
            tracing::info!(
                target: "gatehouse::access",
                listener = %self.name,
                %peer,
                %client,
                reason,
                "connection refused"
            );
        }
    }

    async fn connection(&self, mut tcp: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let trusted = {
            let snapshot = self.shared.snapshot.load();
            let ip = crate::validate::canonical(peer.ip());
            snapshot.trusted_proxies.iter().any(|n| n.contains(&ip))
        };
        // The client: the peer, or who a trusted balancer says it is.
        let (client, proxied_by) = if self.proxy_protocol {
            if trusted {
                let header = tokio::time::timeout(
                    self.handshake_timeout,
                    proxy_protocol::read_header(&mut tcp),
                )
                .await;
                match header {
                    Ok(Ok(Some(addr))) => (addr, Some(peer)),
                    Ok(Ok(None)) => (peer, Some(peer)),
                    Ok(Err(e)) => return self.refuse(e.reason(), peer, peer),
                    Err(_) => return self.refuse("proxy_protocol_timeout", peer, peer),
                }
            } else {
                if proxy_protocol::sends_header(&tcp, self.handshake_timeout).await {
                    return self.refuse("proxy_protocol_untrusted", peer, peer);
                }
                (peer, None)
            }
        } else {
            (peer, None)
        };
        // A trusted proxy speaking for many clients (X-Forwarded-For) is not
        // one client: its connections are not capped per address.
        let capped = !(trusted && proxied_by.is_none());
        let address_slot = match capped.then(|| self.per_address.acquire(client.ip())) {
            Some(None) => return self.refuse("max_connections_per_ip", peer, client),
            Some(slot) => slot,
            None => None,
        };
        let hold = Arc::new(ConnHold {
            global: Some(permit),
            per_address: address_slot,
            drain: Some(self.shared.drain.enter()),
        });
        match &self.tls {
            None => {
                let verdicts = Arc::new(Verdicts::default());
                let info = self.conn_info(client, proxied_by, None, Some(verdicts.clone()), hold);
                let guarded =
                    FramingGuard::new(tcp, self.head_limits, verdicts, self.header_read_timeout);
                self.serve(TokioIo::new(guarded), info).await;
            }
            Some(slot) => {
                let handshaking = match capped.then(|| self.handshakes.acquire(client.ip())) {
                    Some(None) => return self.refuse("max_tls_handshakes_per_ip", peer, client),
                    Some(slot) => slot,
                    None => None,
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(slot.config.load_full());
                let accepted =
                    tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshaking);
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let reason = handshake_failure_reason(&e);
                        self.tls_meters.failed(reason);
                        tracing::debug!(listener = %self.name, %client, reason, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.tls_meters.failed("timeout");
                        tracing::debug!(listener = %self.name, %client, "TLS handshake timed out");
                        return;
                    }
                };
                let version = match stream.get_ref().1.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "TLS",
                };
                self.tls_meters.completed(version);
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let info = self.conn_info(client, proxied_by, Some(version), None, hold);
                    self.serve(TokioIo::new(stream), info).await;
                } else {
                    let verdicts = Arc::new(Verdicts::default());
                    let info = self.conn_info(
                        client,
                        proxied_by,
                        Some(version),
                        Some(verdicts.clone()),
                        hold,
                    );
                    let guarded = FramingGuard::new(
                        stream,
                        self.head_limits,
                        verdicts,
                        self.header_read_timeout,
                    );
                    self.serve(TokioIo::new(guarded), info).await;
                }
            }
        }
    }

    fn conn_info(
        &self,
        peer: SocketAddr,
        proxied_by: Option<SocketAddr>,
        tls_version: Option<&'static str>,
        verdicts: Option<Arc<Verdicts>>,
        hold: Arc<ConnHold>,
    ) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            peer,
            proxied_by,
            listener: self.name.clone(),
            tls_version,
            redirect_https_port: self.redirect_https_port,
            hsts: tls_version.and(self.hsts.clone()),
            verdicts,
            requests: AtomicU64::new(0),
            activity: Arc::new(Activity::default()),
            hold,
        })
    }

    async fn serve<I>(&self, io: I, info: Arc<ConnInfo>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = info.activity.clone();
        let svc = super::service::connection_service(self.gateway.clone(), info);
        let conn = self
            .http
            .serve_connection_with_upgrades(io, TowerToHyperService::new(svc));
        tokio::pin!(conn);
        let mut stop = self.shared.stop.clone();
        let mut finishing = *stop.borrow();
        if finishing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(listener = %self.name, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = stop.changed(), if !finishing => {
                    finishing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = activity.idle_for(self.idle_timeout), if !finishing => {
                    // No request in flight for the idle limit: GOAWAY on
                    // h2, close on HTTP/1 (whose own keep-alive limit is
                    // the header read timeout).
                    finishing = true;
                    self.conn_meters.idle_closed();
                    tracing::debug!(listener = %self.name, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusal_lines_are_bounded_per_second() {
        let budget = LineBudget::default();
        let first: usize = (0..100).filter(|_| budget.allow()).count();
        assert_eq!(first, REFUSAL_LINES_PER_SECOND as usize);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(budget.allow(), "a new second, a new budget");
    }
}
