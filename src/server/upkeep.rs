//! Background upkeep of a running gateway: metrics housekeeping and
//! certificate expiry warnings.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::warn_if_expiring;
use crate::telemetry::Metrics;

use super::*;

/// Folds recorded histogram samples every five seconds, so they do not
/// pile up between scrapes (or when nothing scrapes).
pub(super) fn spawn_metrics_upkeep(
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => metrics.upkeep(),
            }
        }
    })
}

/// Repeats the under-14-days certificate warning every six hours, so a
/// gateway that is never reloaded still says so while time passes.
pub(super) fn spawn_expiry_warnings(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs(6 * 3600);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    for info in shared.certs().iter() {
                        warn_if_expiring(info);
                    }
                }
            }
        }
    })
}
