//! [`Running`]: a started gateway's handles: addresses, reload, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Problems;
use crate::proxy::Tunnels;
use crate::ratelimit::quota::StoreQuotas;

use super::*;

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    /// Public listeners: name and bound address.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) admin_task: JoinHandle<()>,
    pub(super) grace: Duration,
    /// The store-backed quota counter, flushed once more after draining.
    pub(super) store_quotas: Option<Arc<StoreQuotas>>,
    /// Open upgrade tunnels, closed at the grace deadline.
    pub(super) tunnels: Tunnels,
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The shared state (snapshot, generation, readiness).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reloads the configuration (as SIGHUP does).
    pub async fn reload(&self) -> Result<u64, Problems> {
        self.shared.reload().await
    }

    /// Stops accepting, lets requests in flight finish for up to the grace
    /// period, then stops the admin listener. Returns whether every
    /// connection finished in time.
    pub async fn shutdown(self) -> bool {
        self.shared.ready.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Connections finish their requests (h2 gets GOAWAY, HTTP/1 closes
        // after the answer in flight); tunnels run on until the deadline,
        // then are closed.
        let deadline = tokio::time::Instant::now() + self.grace;
        tracing::info!(
            open_connections = self.shared.drain.open(),
            open_tunnels = self.tunnels.open(),
            grace_ms = self.grace.as_millis() as u64,
            "draining"
        );
        let mut drained = tokio::time::timeout_at(deadline, self.shared.drain.wait())
            .await
            .is_ok();
        if tokio::time::timeout_at(deadline, self.tunnels.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open_tunnels = self.tunnels.open(),
                "grace period over; closing the open tunnels"
            );
            drained = false;
        }
        self.tunnels.close_all();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tunnels.wait()).await;
        // Requests that finished while draining used keys too.
        self.shared.api_keys().flush_last_used().await;
        // …and may have charged quotas after the flush task's last flush.
        if let Some(q) = &self.store_quotas {
            q.flush().await;
        }
        // …and were metered: the final usage flush, so a graceful stop
        // loses no usage.
        if let Some(usage) = self.shared.usage() {
            usage.flush_logged().await;
        }
        self.shared.upstreams().stop();
        self.admin_task.abort();
        tracing::info!(drained, "stopped");
        drained
    }
}
