//! Listeners, the accept loop, connection limits and graceful shutdown.
//!
//! [`start`] has the shared state built (`app::build`: config,
//! snapshot, store, telemetry), binds every listener (public and admin),
//! spawns the accept loops, the admin API, the watcher and the background
//! tasks, and returns a [`Running`] handle with the bound addresses. Each
//! accepted connection gets a permit from the global connection limit, a
//! TLS handshake under a timeout when the listener terminates TLS, and a
//! hyper connection (HTTP/1.1 or h2) with header size, count and read-time
//! limits. [`Running::reload`] asks the shared state to reload;
//! [`Running::shutdown`] stops accepting and lets requests in flight
//! finish up to the grace period.
//!
//! Not here: building and reloading the shared state (`crate::app`, which
//! this module depends on and which never depends back). [`StartOptions`],
//! [`StartError`] and [`check`] are `crate::app`'s, re-exported here for
//! callers of [`start`].

mod accept;
mod proxy_protocol;
mod running;
mod service;
mod start;
mod upkeep;

pub use crate::app::{ListenerSummary, Shared, StartError, StartOptions, check};
pub use running::*;
pub use start::*;
use upkeep::*;

pub(crate) use crate::app::TlsSlot;
