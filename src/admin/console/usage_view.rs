//! A consumer's usage on its console page: totals for the last 24 hours,
//! requests per hour for the last 24 hours and per day for the last 30
//! days (SVG bars), and the requests of its keys this node refused
//! recently (newest first).
//!
//! The numbers come from the stored rollups (`usage::report`), so they lag
//! by up to one `[usage] flush_interval`; the refusals come from this
//! node's memory (`UsageMeter::recent_refusals`) and are lost on restart.
//! When metering is off (`[usage] enabled = false`) the section says so.

use std::fmt::Write as _;

use super::plot::{bars, dense};
use super::render::{esc, when};
use crate::admin::AdminState;
use crate::store::UsageCounts;
use crate::usage::{self, By, Query};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// The usage section of consumer `consumer_id`'s page.
pub(super) async fn section(state: &AdminState, consumer_id: &str) -> String {
    let mut h = String::from("<h2>Usage</h2>");
    let Some(meter) = state.shared.usage() else {
        h.push_str(
            "<p class=\"muted\" id=\"usage-off\">Usage metering is off (<code>[usage] enabled = false</code>).</p>",
        );
        return h;
    };
    let now = state.shared.clock().now();
    let store = state.shared.store().as_ref();
    let query = |since, by| Query {
        consumer_id: consumer_id.to_owned(),
        since,
        by,
        per_key: false,
    };
    let hourly = usage::report(store, &query(now - 23 * HOUR, By::Hour)).await;
    let daily = usage::report(store, &query(now - 29 * DAY, By::Day)).await;
    match (hourly, daily) {
        (Ok(hourly), Ok(daily)) => {
            h.push_str(&totals(&usage::report::total(&hourly)));
            let per_hour: Vec<(i64, u64)> = hourly
                .iter()
                .map(|b| (b.start, b.counts.requests))
                .collect();
            let per_day: Vec<(i64, u64)> =
                daily.iter().map(|b| (b.start, b.counts.requests)).collect();
            h.push_str(&bars(
                "usage-hourly",
                "Requests per hour, last 24 hours",
                &labelled(dense(&per_hour, now, HOUR, 24)),
                "−24 h",
                "this hour",
            ));
            h.push_str("<br>");
            h.push_str(&bars(
                "usage-daily",
                "Requests per day, last 30 days",
                &labelled(dense(&per_day, now, DAY, 30)),
                "−30 days",
                "today (UTC)",
            ));
            let _ = write!(
                h,
                "<p class=\"muted\">Stored every {} by each node; the newest requests may not be counted yet.</p>",
                esc(&humantime::format_duration(meter.settings().flush_interval).to_string())
            );
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "console: cannot read usage");
            h.push_str(
                "<p class=\"warn\" id=\"usage-error\">Usage could not be read (store error).</p>",
            );
        }
    }
    h.push_str(&refusals(&meter.recent_refusals(consumer_id)));
    h
}

fn labelled(slots: Vec<(i64, u64)>) -> Vec<(String, u64)> {
    slots
        .into_iter()
        .map(|(start, v)| (when(Some(start)), v))
        .collect()
}

/// The last 24 hours' totals.
fn totals(c: &UsageCounts) -> String {
    format!(
        "<table id=\"usage-24h\"><tr><th>last 24 hours</th><th>requests</th><th>2xx</th><th>3xx</th><th>4xx</th>\
         <th>5xx</th><th>rate limited</th><th>bytes in</th><th>bytes out</th></tr>\
         <tr><td></td><td class=\"num\" id=\"usage-24h-requests\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr></table>",
        c.requests,
        c.status_2xx,
        c.status_3xx,
        c.status_4xx,
        c.status_5xx,
        c.rate_limited,
        c.bytes_in,
        c.bytes_out,
    )
}

/// The recent refusals table (every value escaped).
fn refusals(list: &[usage::Refusal]) -> String {
    let mut h = String::from(
        "<h2>Recent refusals</h2><p class=\"muted\">On this node, newest first.</p>\
         <table id=\"refusals\"><tr><th>when</th><th>key</th><th>status</th><th>code</th><th>route</th></tr>",
    );
    for r in list {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            when(Some(r.at)),
            esc(&r.key_id),
            r.status,
            esc(r.code),
            esc(r.route.as_deref().unwrap_or("-")),
        );
    }
    if list.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"muted\">none</td></tr>");
    }
    h.push_str("</table>");
    h
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn refusals_are_escaped_and_totals_shown() {
        let list = vec![usage::Refusal {
            at: 0,
            key_id: Arc::from("k<1>"),
            status: 403,
            code: "insufficient_scope",
            route: Some(Arc::from("r\"x")),
        }];
        let h = refusals(&list);
        assert!(h.contains("<code>k&lt;1&gt;</code>"), "{h}");
        assert!(h.contains("r&quot;x"), "{h}");
        assert!(
            h.contains("insufficient_scope") && h.contains(">403<"),
            "{h}"
        );
        assert!(refusals(&[]).contains(">none<"));
        let t = totals(&UsageCounts {
            requests: 7,
            ..UsageCounts::default()
        });
        assert!(t.contains("id=\"usage-24h-requests\">7<"), "{t}");
    }
}
