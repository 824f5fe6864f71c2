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
    let key = |b: Option<&Bucket>| {
        if per_key {
            format!(
                "{:<20} ",
                b.and_then(|b| b.key_id.as_deref()).unwrap_or("KEY")
            )
        } else {
            String::new()
        }
    };
    println!(
        "{:<20} {}{:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>8}",
        "START",
        key(None),
        "REQUESTS",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "BYTES_IN",
        "BYTES_OUT",
        "LIMITED"
    );
    let row = |start: &str, key: String, c: &usage::Counts| {
        println!(
            "{start:<20} {key}{:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>8}",
            c.requests,
            c.status_2xx,
            c.status_3xx,
            c.status_4xx,
            c.status_5xx,
            c.bytes_in,
            c.bytes_out,
            c.rate_limited
        );
    };
    for b in buckets {
        row(&usage::report::rfc3339(b.start), key(Some(b)), &b.counts);
    }
    let blank = if per_key {
        format!("{:<20} ", "")
    } else {
        String::new()
    };
    row("TOTAL", blank, &usage::report::total(buckets));
}
