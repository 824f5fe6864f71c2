//! The admin bearer token: checked against an argon2id hash from the
//! config, once; afterwards against the SHA-256 of the token that passed,
//! in constant time, so argon2 does not run on every admin call. Failed
//! attempts are throttled per client address before any hashing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::api_key;

/// The configured admin token.
pub struct AdminToken {
    phc: String,
    verified: Mutex<Option<[u8; 32]>>,
    /// Failures per client address in the current window.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Failed admin-token attempts allowed per client address per window.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; the map is cleared of old windows beyond.
const MAX_TRACKED: usize = 10_000;

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken").finish_non_exhaustive()
    }
}

/// Checks that `hash` is an argon2id PHC string, as `gatehouse hash-secret`
/// prints.
pub fn check_token_hash(hash: &str) -> Result<(), String> {
    if hash.starts_with("$argon2id$") && argon2::PasswordHash::new(hash).is_ok() {
        Ok(())
    } else {
        Err(
            "`[admin] token_hash` must be an argon2id hash (run `gatehouse hash-secret`)"
                .to_owned(),
        )
    }
}

/// Why a presented admin token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Wrong or missing.
    Invalid,
    /// Too many failures from this address.
    Throttled,
    /// The check itself failed.
    Internal,
}

impl AdminToken {
    /// A token checker for the argon2id PHC string `hash`.
    pub fn new(hash: &str) -> Result<AdminToken, String> {
        check_token_hash(hash)?;
        Ok(AdminToken {
            phc: hash.to_owned(),
            verified: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn throttled(&self, client: IpAddr) -> bool {
        let Ok(map) = self.failures.lock() else {
            return true;
        };
        map.get(&client)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    fn charge(&self, client: IpAddr) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        if map.len() >= MAX_TRACKED {
            return;
        }
        let entry = map.entry(client).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// Checks `presented` for a call from `client`.
    pub async fn check(&self, presented: &str, client: IpAddr) -> Result<(), TokenRefusal> {
        let client = crate::validate::canonical(client);
        if self.throttled(client) {
            return Err(TokenRefusal::Throttled);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let known = self.verified.lock().ok().and_then(|g| *g);
        if let Some(known) = known
            && bool::from(known.ct_eq(&digest))
        {
            return Ok(());
        }
        let phc = self.phc.clone();
        let secret = presented.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            api_key::verify_admin_token(&secret, &phc, &api_key::Argon2Settings::default())
        })
        .await
        .map_err(|_| TokenRefusal::Internal)?;
        let ok = match ok {
            Ok(_) => true,
            Err(api_key::VerifyError::Mismatch) => false,
            Err(api_key::VerifyError::Hash(_)) => return Err(TokenRefusal::Internal),
        };
        if ok {
            if let Ok(mut g) = self.verified.lock() {
                *g = Some(digest);
            }
            Ok(())
        } else {
            self.charge(client);
            Err(TokenRefusal::Invalid)
        }
    }
}
