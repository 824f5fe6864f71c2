//! What the gateway learns of a request body while it streams: bytes read,
//! the limit it is held to and whether it went over, whether it was too
//! slow, and when it has been read whole. Written by `body::RequestBody`,
//! read by the forwarder (a 413 or 408 instead of a 502; the first-byte
//! timeout starts once the body is sent) and logged with the access record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// Shared counters for a request body: how much was read, whether the
/// limit was hit (the forwarder turns that into a 413 instead of a 502), and
/// when it has been read completely (the first-byte timeout starts then).
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bytes received from the client so far.
    pub bytes: AtomicU64,
    /// Set once the body went over the route's limit.
    pub too_large: AtomicBool,
    /// The limit the body is held to, in bytes.
    pub limit: AtomicU64,
    /// Set once the client sent the body too slowly.
    pub timed_out: AtomicBool,
    done: AtomicBool,
    done_signal: Notify,
}

impl BodyStats {
    /// Records that the whole body has been read.
    pub fn mark_sent(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.done_signal.notify_waiters();
        }
    }

    /// Whether the whole body has been read.
    pub fn is_sent(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the whole body has been read.
    pub async fn sent(&self) {
        loop {
            let notified = self.done_signal.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}
