//! `gatehouse upstream`: shifts, drains and status through the admin API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::*;

pub(crate) async fn upstream_cli(
    target: &AdminTarget,
    command: UpstreamCommand,
) -> anyhow::Result<ExitCode> {
    use gatehouse::proxy::UpstreamStatus;
    let token = target
        .admin_token
        .as_ref()
        .map(gatehouse::config::Secret::expose)
        .context("the admin token is needed: --admin-token or GATEHOUSE_ADMIN_TOKEN")?;
    let api = gatehouse::admin::client::AdminClient::new(&target.admin_url, token);
    let json = target.output == Output::Json;
    let answer = |(status, body): (http::StatusCode, serde_json::Value)| {
        if status.is_success() {
            Ok(body)
        } else {
            let code = body["error"].as_str().unwrap_or("error").to_owned();
            let msg = body["message"].as_str().unwrap_or("").to_owned();
            let fields = body
                .get("fields")
                .map(|f| f.to_string())
                .unwrap_or_default();
            Err(anyhow::anyhow!("{status}: {code}: {msg} {fields}"))
        }
    };
    let one = |body: serde_json::Value| -> anyhow::Result<UpstreamStatus> {
        Ok(serde_json::from_value(body["upstream"].clone())?)
    };
    match command {
        UpstreamCommand::List => {
            let body = answer(api.get("/v1/upstreams").await?)?;
            let list: Vec<UpstreamStatus> = serde_json::from_value(body["upstreams"].clone())?;
            show(json, &list, |l| l.iter().for_each(print_upstream))?;
        }
        UpstreamCommand::Show { name } => {
            let u = one(answer(api.get(&format!("/v1/upstreams/{name}")).await?)?)?;
            show(json, &u, print_upstream)?;
        }
        UpstreamCommand::Drain { name, target } => {
            let path = format!("/v1/upstreams/{name}/targets/drain");
            let u = one(answer(
                api.post(&path, &serde_json::json!({"target": target}))
                    .await?,
            )?)?;
            show(json, &u, print_upstream)?;
        }
        UpstreamCommand::Undrain { name, target } => {
            let path = format!("/v1/upstreams/{name}/targets/undrain");
            let u = one(answer(
                api.post(&path, &serde_json::json!({"target": target}))
                    .await?,
            )?)?;
            show(json, &u, print_upstream)?;
        }
        UpstreamCommand::Shift {
            name,
            to,
            wait,
            wait_timeout,
        } => {
            let mut weights = std::collections::BTreeMap::new();
            for kv in &to {
                let (set, w) = kv
                    .split_once('=')
                    .context("--to takes SET=WEIGHT, e.g. green=100")?;
                let w: u32 = w.trim().parse().context("a weight is a whole number")?;
                weights.insert(set.trim().to_owned(), w);
            }
            let path = format!("/v1/upstreams/{name}/shift");
            let u = one(answer(
                api.post(&path, &serde_json::json!({"to": weights})).await?,
            )?)?;
            if !wait {
                show(json, &u, print_upstream)?;
                return Ok(ExitCode::SUCCESS);
            }
            let started = std::time::Instant::now();
            loop {
                let u = one(answer(api.get(&format!("/v1/upstreams/{name}")).await?)?)?;
                let busy: u64 = u
                    .sets
                    .iter()
                    .filter(|s| s.weight == 0)
                    .map(|s| s.in_flight)
                    .sum();
                if busy == 0 {
                    let idle: Vec<&str> = u
                        .sets
                        .iter()
                        .filter(|s| s.weight == 0)
                        .map(|s| s.name.as_str())
                        .collect();
                    show(json, &u, |u| {
                        print_upstream(u);
                        println!("idle: {}", idle.join(", "));
                    })?;
                    return Ok(ExitCode::SUCCESS);
                }
                if started.elapsed() >= wait_timeout {
                    eprintln!("gatehouse: {busy} requests still in flight after {wait_timeout:?}");
                    return Ok(ExitCode::FAILURE);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_upstream(u: &gatehouse::proxy::UpstreamStatus) {
    let sets: Vec<String> = u
        .sets
        .iter()
        .map(|s| format!("{}={} ({} in flight)", s.name, s.weight, s.in_flight))
        .collect();
    println!(
        "{}  breaker={}  in_flight={}  sets: {}",
        u.name,
        u.breaker,
        u.in_flight,
        sets.join(", ")
    );
    println!(
        "  {:<32} {:<8} {:>6} {:<8} {:<10} {:<8} {:>9} {:>10}",
        "TARGET", "SET", "WEIGHT", "HEALTHY", "EJECTED", "DRAINED", "IN_FLIGHT", "LATENCY_MS"
    );
    for t in &u.targets {
        let ejected = if t.ejected {
            format!("{}ms", t.ejected_for_ms)
        } else {
            "no".to_owned()
        };
        println!(
            "  {:<32} {:<8} {:>6} {:<8} {:<10} {:<8} {:>9} {:>10.2}",
            t.url, t.set, t.weight, t.healthy, ejected, t.drained, t.in_flight, t.latency_ewma_ms
        );
    }
}
