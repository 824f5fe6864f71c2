//! Serving the admin router: plain HTTP/1.1 (axum's server), or TLS when
//! `[admin.tls]` is set.
//!
//! The TLS loop is small on purpose: accept, hand the connection to its own
//! task, which does the handshake (bounded by a timeout, so a slow client
//! holds only its own task) and then serves HTTP/1.1 with a header read
//! timeout. The admin listener has no connection caps of its own; keep it
//! on loopback or a private network. Its certificate is loaded once at
//! start (no reload).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::config::{AdminTls, CertConfig, ClientAuth, TlsConfig};
use crate::tls::{self, TlsError};

/// Time allowed for a TLS handshake, and for a request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls config for `[admin.tls]`, with paths relative to `base`
/// (HTTP/1.1 only: the admin router does not speak h2).
pub fn server_config(
    admin_tls: &AdminTls,
    base: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = TlsConfig {
        certs: vec![CertConfig {
            cert: admin_tls.cert.clone(),
            key: admin_tls.key.clone(),
            names: Vec::new(),
        }],
        dev_certs: false,
        client_ca: None,
        client_auth: ClientAuth::default(),
        hsts: None,
    };
    let (built, _) = tls::server_config(&cfg, base, None)?;
    let mut cfg = (*built).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` over TLS on `listener` until the task is aborted.
pub(super) async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "admin listener: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            serve_connection(TokioIo::new(stream), app, peer).await;
        });
    }
}

async fn serve_connection<I>(io: I, app: Router, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(peer))));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "admin connection ended with an error");
    }
}
