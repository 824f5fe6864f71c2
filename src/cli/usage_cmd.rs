//! `gatehouse usage`: a consumer's usage from the store, by hour or day, as
//! a table, JSON or CSV. Reads what the gateways have flushed (up to one
//! `[usage] flush_interval` behind); the read is written to the audit log
//! like every other store command.

use std::process::ExitCode;

use gatehouse::admin::ops::{self, OpError};
use gatehouse::auth::{Clock, SystemClock};
use gatehouse::usage::{self, Bucket, Query, report};

use super::*;

/// Runs `gatehouse usage`.
pub(crate) async fn usage_cli(args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_config(&args.config)?;
    let store = open_store(&loaded).await?;
    let store = store.as_ref();
    let since = usage::report::parse_since(&args.since, SystemClock.now())
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let result = async {
        let consumer = ops::consumer(store, &args.consumer).await?;
        let query = Query {
            consumer_id: consumer.id.clone(),
            since,
            by: args.by,
            per_key: args.per_key,
        };
        let buckets = report(store, &query).await.map_err(OpError::from)?;
        Ok((consumer, buckets))
    }
    .await;
    let (consumer, buckets) = audited(store, "usage.show", Some(&args.consumer), result).await?;
    match args.output {
        UsageOutput::Json => print_json(&serde_json::json!({
            "consumer_id": consumer.id,
            "consumer": consumer.name,
            "since": since,
            "by": args.by,
            "buckets": buckets,
            "total": usage::report::total(&buckets),
        }))?,
        UsageOutput::Csv => print!("{}", usage::report::to_csv(&buckets, args.per_key)),
        UsageOutput::Text => print_table(&buckets, args.per_key),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(buckets: &[Bucket], per_key: bool) {
    let key_column = |key: &str| {
        if per_key {
            format!("{key:<20} ")
        } else {
            String::new()
        }
    };
    let line = |start: &str, key: String, values: [String; 8]| {
        let mut out = format!("{start:<20} {key}");
        for (v, width) in values.iter().zip([10, 9, 9, 9, 9, 12, 12, 8]) {
            out.push_str(&format!("{v:>width$} "));
        }
        println!("{}", out.trim_end());
    };
    let header = [
        "REQUESTS",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "BYTES_IN",
        "BYTES_OUT",
        "LIMITED",
    ];
    line("START", key_column("KEY"), header.map(str::to_owned));
    for b in buckets {
        line(
            &usage::report::rfc3339(b.start),
            key_column(b.key_id.as_deref().unwrap_or("")),
            b.counts.values().map(|n| n.to_string()),
        );
    }
    let total = usage::report::total(buckets);
    line(
        "TOTAL",
        key_column(""),
        total.values().map(|n| n.to_string()),
    );
}
