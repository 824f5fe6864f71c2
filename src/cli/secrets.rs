//! `gatehouse hash-secret` and `token`: admin token hashes and dev JWTs.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gatehouse::auth::{Clock, SystemClock};

use super::*;
use crate::*;

pub(crate) fn hash_secret(generate: bool) -> anyhow::Result<ExitCode> {
    let settings = gatehouse::auth::api_key::Argon2Settings::default();
    let secret = if generate {
        let token = random_token()?;
        println!("token: {token}");
        token
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the secret from standard input")?;
        let secret = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(
            secret.len() >= 16,
            "the secret must be at least 16 characters"
        );
        secret
    };
    let hash = gatehouse::auth::api_key::hash_secret(&secret, &settings)
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    if generate {
        println!("hash:  {hash}");
    } else {
        println!("{hash}");
    }
    Ok(ExitCode::SUCCESS)
}

/// 256 bits from the OS RNG, as 64 hex digits.
pub(crate) fn random_token() -> anyhow::Result<String> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn token(
    config: &Path,
    issuer: &str,
    sub: &str,
    scopes: &[String],
    ttl: Duration,
    claims: &[String],
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(config)?;
    let spec = loaded
        .config
        .jwt_issuers
        .iter()
        .map(|s| s.get_ref())
        .find(|s| s.name == issuer)
        .with_context(|| format!("no [[jwt_issuer]] named `{issuer}` in {}", config.display()))?;
    gatehouse::auth::jwt::ensure_dev_keys(spec, &loaded.base_dir)?;
    let env = environment();
    let jwks = gatehouse::auth::jwks::JwksRegistry::new()?;
    let built =
        gatehouse::auth::jwt::Issuer::build(spec, &loaded.base_dir, &|n| env.get(n), &jwks)?;
    let mut extra = serde_json::Map::new();
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .with_context(|| format!("--claim `{c}` is not name=value"))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
        extra.insert(k.to_owned(), value);
    }
    let token = gatehouse::auth::jwt::mint(&built, sub, scopes, ttl, extra, SystemClock.now())?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
