//! Usage metering per consumer and API key, for support and billing:
//! requests, status classes, bytes and rate-limit refusals.
//!
//! - [`tally`]: counted in memory at the end of every answer of an
//!   authenticated API-key caller (no store write per request), and the
//!   recent refusals per consumer;
//! - [`flush`]: [`UsageMeter`], which writes the tally to the store in
//!   batches as per-minute and per-day rollups (so several gateways add
//!   up), prunes by retention, and flushes once more at shutdown;
//! - [`mod@report`]: reading the rollups back by hour or by day.
//!
//! JWT callers are not metered here: their subjects are not consumers in
//! the store (the per-consumer Prometheus series cover them). A crash loses
//! at most the last flush interval; a graceful stop loses nothing.
//!
//! Not here: the store tables and their SQL ([`crate::store::usage`]), and
//! where a request's figures come from (the access record,
//! [`crate::telemetry::access`]).

pub mod flush;
pub mod report;
pub mod tally;

pub use crate::store::UsageCounts as Counts;
pub use flush::{FlushError, UsageMeter, UsageSettings};
pub use report::{Bucket, By, Query, report};
pub use tally::{Refusal, Seen, UsageMeters};

#[cfg(test)]
mod tests;
