//! Upgrade tunnels (WebSocket and the like): after the upstream answered
//! 101, bytes are copied both ways until either side closes, the tunnel has
//! been idle for its limit, or shutdown's grace period ends.
//!
//! A tunnel is bounded like a connection: it keeps the client connection's
//! places in the connection limits ([`crate::conn::ConnHold`]), a place in
//! its route's `max_tunnels`, and a place in [`Tunnels`], which graceful
//! shutdown waits for and then closes at the deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::conn::{ConnHold, Drain};

/// The open tunnels of a gateway.
#[derive(Debug, Clone)]
pub struct Tunnels {
    drain: Arc<Drain>,
    close: Arc<watch::Sender<bool>>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            drain: Arc::new(Drain::default()),
            close: Arc::new(watch::channel(false).0),
        }
    }
}

impl Tunnels {
    /// How many are open.
    pub fn open(&self) -> usize {
        self.drain.open()
    }

    /// Resolves when none is open.
    pub async fn wait(&self) {
        self.drain.wait().await;
    }

    /// Closes every open tunnel (shutdown's deadline), and any opened later.
    pub fn close_all(&self) {
        self.close.send_replace(true);
    }
}

/// What one tunnel holds while it is open.
#[derive(Debug)]
pub struct TunnelPlaces {
    /// The client connection's places in the connection limits.
    #[allow(
        dead_code,
        reason = "held, never read: given back when the tunnel ends"
    )]
    pub(crate) conn: Arc<ConnHold>,
    /// A place in the route's `max_tunnels`.
    pub route: tokio::sync::OwnedSemaphorePermit,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    Idle,
    Shutdown,
}

/// Joins two upgraded connections and copies bytes both ways until either
/// side closes, nothing moves for `idle`, or [`Tunnels::close_all`].
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    request_id: String,
    tunnels: Tunnels,
    places: TunnelPlaces,
    idle: Duration,
) {
    let _open = tunnels.drain.enter();
    let _places = places;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(request_id, error = %e, "upgrade failed");
            return;
        }
    };
    let clock = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        io: TokioIo::new(client),
        clock,
        last: last.clone(),
    };
    let mut upstream = Watched {
        io: TokioIo::new(upstream),
        clock,
        last: last.clone(),
    };
    let mut close = tunnels.close.subscribe();
    let ended = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            match copied {
                Ok((up, down)) => tracing::debug!(request_id, up, down, "tunnel closed"),
                Err(e) => tracing::debug!(request_id, error = %e, "tunnel closed with error"),
            }
            Ended::Closed
        }
        () = idle_for(clock, &last, idle) => Ended::Idle,
        _ = close.wait_for(|closing| *closing) => Ended::Shutdown,
    };
    match ended {
        Ended::Closed => {}
        Ended::Idle => {
            tracing::debug!(
                request_id,
                idle_ms = idle.as_millis() as u64,
                "tunnel idle; closed"
            );
        }
        Ended::Shutdown => tracing::info!(request_id, "tunnel closed at the shutdown deadline"),
    }
}

/// Resolves once no byte moved for `limit`.
async fn idle_for(clock: Instant, last: &AtomicU64, limit: Duration) {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    loop {
        let now = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let quiet = now.saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= limit_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit_ms - quiet)).await;
    }
}

/// An upgraded connection that notes when bytes last moved.
struct Watched<T> {
    io: T,
    clock: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn touch(&self) {
        let now = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_byte() {
        let clock = Instant::now();
        let last = AtomicU64::new(0);
        let limit = Duration::from_secs(5);
        tokio::time::advance(Duration::from_secs(3)).await;
        last.store(3000, Ordering::Relaxed);
        let started = Instant::now();
        idle_for(clock, &last, limit).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "5 s after the last byte"
        );
    }
}
