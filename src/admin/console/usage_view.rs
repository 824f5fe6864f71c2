//! A consumer's usage on its console page: calls per hour for the last 24
//! hours and per day for the last 30 days (SVG bars), and the requests of
//! its keys this node refused recently.
//!
//! Placeholder until usage metering (`crate::usage`) lands: the section
//! says so.

use crate::admin::AdminState;

/// The usage section of consumer `consumer_id`'s page.
pub(super) async fn section(state: &AdminState, consumer_id: &str) -> String {
    let _ = (state, consumer_id);
    "<h2>Usage</h2><p class=\"muted\" id=\"usage-off\">Usage metering is not available in this build.</p>"
        .to_owned()
}
