//! `gatehouse consumers` and `keys`: the key store from the command line,
//! every change written to the audit log.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gatehouse::admin::ops::{self, NewConsumer, NewKey, OpError, RotateKey};
use gatehouse::auth::{Clock, SystemClock};
use gatehouse::store::{ApiKey, AuditEntry, Consumer, KeyStore};

use super::*;
use crate::*;

/// `cli:USER`, for the audit trail.
pub(crate) fn cli_actor() -> String {
    let user = process_var("USER").unwrap_or_else(|| "unknown".to_owned());
    format!("cli:{user}")
}

/// Audits a CLI operation and turns its error into a message.
pub(crate) async fn audited<T>(
    store: &dyn KeyStore,
    action: &str,
    target: Option<&str>,
    result: Result<T, OpError>,
) -> anyhow::Result<T> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    let entry = AuditEntry {
        at: SystemClock.now(),
        actor: cli_actor(),
        client: None,
        action: action.to_owned(),
        target: target.map(str::to_owned),
        outcome: outcome.to_owned(),
    };
    if let Err(e) = store.record_audit(&entry).await {
        eprintln!("gatehouse: warning: cannot write the audit entry: {e}");
    }
    result.map_err(|e| match e {
        OpError::Invalid(fields) => {
            let lines: Vec<String> = fields
                .iter()
                .map(|(f, m)| format!("  {f}: {}", m.join("; ")))
                .collect();
            anyhow::anyhow!("invalid input:\n{}", lines.join("\n"))
        }
        OpError::Store(source) => anyhow::anyhow!("store error: {source}"),
        other => anyhow::anyhow!("{other}"),
    })
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints `value` as JSON (`--output json`) or with `text`.
pub(crate) fn show<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T),
) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        text(value);
        Ok(())
    }
}

pub(crate) fn when(t: Option<i64>) -> String {
    match t.and_then(|t| u64::try_from(t).ok()) {
        Some(secs) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        }
        None => "-".to_owned(),
    }
}

pub(crate) fn print_consumers(list: &[Consumer]) {
    println!(
        "{:<20} {:<24} {:<10} {:<21} DISABLED",
        "ID", "NAME", "PLAN", "CREATED"
    );
    for c in list {
        println!(
            "{:<20} {:<24} {:<10} {:<21} {}",
            c.id,
            c.name,
            c.plan.as_deref().unwrap_or("-"),
            when(Some(c.created_at)),
            when(c.disabled_at)
        );
    }
}

pub(crate) fn print_keys(list: &[ApiKey]) {
    println!(
        "{:<14} {:<20} {:<12} {:<24} {:<21} {:<21} REVOKED",
        "ID", "CONSUMER", "NAME", "SCOPES", "EXPIRES", "LAST USED"
    );
    for k in list {
        println!(
            "{:<14} {:<20} {:<12} {:<24} {:<21} {:<21} {}",
            k.id,
            k.consumer_id,
            k.name,
            if k.scopes.is_empty() {
                "-".to_owned()
            } else {
                k.scopes.join(",")
            },
            when(k.expires_at),
            when(k.last_used_at),
            when(k.revoked_at)
        );
    }
}

pub(crate) async fn consumers(
    target: &StoreTarget,
    command: ConsumersCommand,
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(&target.config)?;
    let store = open_store(&loaded).await?;
    let store = store.as_ref();
    let now = SystemClock.now();
    let json = target.output == Output::Json;
    match command {
        ConsumersCommand::Create {
            name,
            plan,
            metadata,
        } => {
            let metadata = match metadata {
                Some(m) => serde_json::from_str(&m).context("--metadata must be a JSON object")?,
                None => serde_json::Map::new(),
            };
            let input = NewConsumer {
                name,
                plan,
                metadata,
            };
            let result = ops::create_consumer(store, now, input).await;
            let id = result.as_ref().ok().map(|c| c.id.clone());
            let c = audited(store, "consumer.create", id.as_deref(), result).await?;
            show(json, &c, |v| print_consumers(std::slice::from_ref(v)))?;
        }
        ConsumersCommand::List => {
            let list = audited(
                store,
                "consumer.list",
                None,
                store.list_consumers().await.map_err(OpError::from),
            )
            .await?;
            show(json, &list, |v| print_consumers(v))?;
        }
        ConsumersCommand::Show { consumer } => {
            let result = async {
                let c = ops::consumer(store, &consumer).await?;
                let keys = store.list_keys(Some(&c.id)).await?;
                Ok((c, keys))
            }
            .await;
            let (c, keys) = audited(store, "consumer.show", Some(&consumer), result).await?;
            if json {
                print_json(&serde_json::json!({"consumer": c, "keys": keys}))?;
            } else {
                print_consumers(std::slice::from_ref(&c));
                println!();
                print_keys(&keys);
            }
        }
        ConsumersCommand::Disable { consumer } => {
            let result = ops::disable_consumer(store, now, &consumer).await;
            let c = audited(store, "consumer.disable", Some(&consumer), result).await?;
            show(json, &c, |v| print_consumers(std::slice::from_ref(v)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn keys(target: &StoreTarget, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let loaded = load_config(&target.config)?;
    let store = open_store(&loaded).await?;
    let store = store.as_ref();
    let now = SystemClock.now();
    let json = target.output == Output::Json;
    let argon2 = loaded.config.api_keys.argon2();
    let print_created = |created: &ops::CreatedKey| -> anyhow::Result<()> {
        if json {
            print_json(created)
        } else {
            print_keys(std::slice::from_ref(&created.key));
            if let Some(previous) = &created.previous {
                println!(
                    "previous key {} now expires {}",
                    previous.id,
                    when(previous.expires_at)
                );
            }
            println!();
            println!("API key (shown once, store it now):");
            println!("{}", created.api_key);
            Ok(())
        }
    };
    match command {
        KeysCommand::Create {
            consumer,
            name,
            scopes,
            expires_in,
        } => {
            let input = NewKey {
                name,
                scopes,
                expires_in,
            };
            let result = ops::create_key(store, now, &argon2, &consumer, input).await;
            let id = result
                .as_ref()
                .map_or(consumer.clone(), |k| k.key.id.clone());
            let created = audited(store, "key.create", Some(&id), result).await?;
            print_created(&created)?;
        }
        KeysCommand::List { consumer } => {
            let result = async {
                let owner = match &consumer {
                    Some(c) => Some(ops::consumer(store, c).await?.id),
                    None => None,
                };
                Ok(store.list_keys(owner.as_deref()).await?)
            }
            .await;
            let list = audited(store, "key.list", consumer.as_deref(), result).await?;
            show(json, &list, |v| print_keys(v))?;
        }
        KeysCommand::Revoke { key } => {
            let result = ops::revoke_key(store, now, &key).await;
            let k = audited(store, "key.revoke", Some(&key), result).await?;
            show(json, &k, |v| print_keys(std::slice::from_ref(v)))?;
        }
        KeysCommand::Rotate { key, grace } => {
            let grace_default = loaded.config.api_keys.rotation_grace.0;
            let result = ops::rotate_key(
                store,
                now,
                &argon2,
                &key,
                RotateKey { grace },
                grace_default,
            )
            .await;
            let created = audited(store, "key.rotate", Some(&key), result).await?;
            print_created(&created)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
