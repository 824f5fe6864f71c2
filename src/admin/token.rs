//! The admin bearer token: checked against an argon2id hash from the
//! config, once; afterwards against the SHA-256 of the token that passed,
//! in constant time, so argon2 does not run on every admin call. Failed
//! attempts are throttled per client address (IPv6 by /64) before any
//! hashing, and at most two argon2 runs are in flight at once: a flood of
//! wrong tokens gets 429s, not gigabytes of argon2 memory.
//!
//! The digest comparison comes before the throttle, so the right token,
//! once verified, is accepted even from an address that is throttled for
//! wrong ones: an operator is never locked out during an incident by
//! someone flooding from the same address. Caveat: a token never verified
//! since start (nothing cached yet) still needs argon2, which a throttled
//! address does not get until its window ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::check_token_hash;
use crate::auth::api_key;

/// The configured admin token.
pub struct AdminToken {
    phc: String,
    verified: Mutex<Option<[u8; 32]>>,
    /// Failures per client address (IPv6: /64) in the current window.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// argon2 runs in flight.
    verifying: std::sync::Arc<tokio::sync::Semaphore>,
}

/// argon2 runs of admin tokens in flight at once.
const MAX_VERIFYING: usize = 2;

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
            verifying: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_VERIFYING)),
        })
    }

    /// Whether `client` has no failures left. When the map is full of
    /// recent failures, unknown clients count as throttled too (refusing
    /// beats forgetting).
    fn throttled(&self, client: &str) -> bool {
        let Ok(mut map) = self.failures.lock() else {
            return true;
        };
        if let Some((n, since)) = map.get(client) {
            return *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW;
        }
        if map.len() >= MAX_TRACKED {
            // Old windows are forgotten before a stranger is refused.
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        map.len() >= MAX_TRACKED
    }

    fn charge(&self, client: &str) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        if map.len() >= MAX_TRACKED && !map.contains_key(client) {
            return;
        }
        let entry = map.entry(client.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// Checks `presented` for a call from `client`.
    /// A wrong token is charged where argon2 ran, so giving up on the call
    /// (an h2 stream reset) does not skip the charge.
    pub async fn check(
        self: &std::sync::Arc<Self>,
        presented: &str,
        client: IpAddr,
    ) -> Result<(), TokenRefusal> {
        // The last verified token first (cheap, constant time), so a
        // throttled address still gets in with the right token.
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let known = self.verified.lock().ok().and_then(|g| *g);
        if let Some(known) = known
            && bool::from(known.ct_eq(&digest))
        {
            return Ok(());
        }
        let client = crate::ratelimit::client_key(client);
        if self.throttled(&client) {
            return Err(TokenRefusal::Throttled);
        }
        let Ok(permit) = self.verifying.clone().try_acquire_owned() else {
            return Err(TokenRefusal::Throttled);
        };
        let phc = self.phc.clone();
        let secret = presented.to_owned();
        let this = std::sync::Arc::clone(self);
        let charged_client = client.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result =
                api_key::verify_admin_token(&secret, &phc, &api_key::Argon2Settings::default());
            if matches!(result, Err(api_key::VerifyError::Mismatch)) {
                this.charge(&charged_client);
            }
            result
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
            Err(TokenRefusal::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> std::sync::Arc<AdminToken> {
        let weak = api_key::Argon2Settings {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let hash = api_key::hash_admin_token("right-admin-token-0123456789", &weak).unwrap();
        std::sync::Arc::new(AdminToken::new(&hash).unwrap())
    }

    #[tokio::test]
    async fn floods_get_429_and_failures_lock_out_one_client() {
        let t = token();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // Twenty wrong tokens at once: at most two argon2 runs, the rest 429.
        let attempts = (0..20).map(|i| t.check(if i % 2 == 0 { "wrong" } else { "also-wrong" }, a));
        let results = futures_util::future::join_all(attempts).await;
        let throttled = results
            .iter()
            .filter(|r| **r == Err(TokenRefusal::Throttled))
            .count();
        let invalid = results
            .iter()
            .filter(|r| **r == Err(TokenRefusal::Invalid))
            .count();
        assert!(invalid <= MAX_VERIFYING, "{results:?}");
        assert_eq!(throttled + invalid, 20, "{results:?}");
        // Ten failures in a row lock this client (its /64 for IPv6) out.
        for _ in 0..MAX_FAILURES {
            let _ = t.check("wrong", a).await;
        }
        assert_eq!(
            t.check("right-admin-token-0123456789", a).await,
            Err(TokenRefusal::Throttled)
        );
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(t.check("right-admin-token-0123456789", b).await, Ok(()));
        // The verified token is then checked without argon2 (and still right).
        assert_eq!(t.check("right-admin-token-0123456789", b).await, Ok(()));
        assert_eq!(t.check("wrong", b).await, Err(TokenRefusal::Invalid));
    }

    #[tokio::test]
    async fn the_verified_token_passes_a_throttled_address() {
        let t = token();
        let right = "right-admin-token-0123456789";
        let operator: IpAddr = "2001:db8:7::1".parse().unwrap();
        assert_eq!(t.check(right, operator).await, Ok(()));
        // Someone in the operator's /64 floods it with wrong tokens.
        let noisy: IpAddr = "2001:db8:7::99".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            let _ = t.check("wrong", noisy).await;
        }
        let cases = [
            (
                "wrong token, throttled",
                "wrong",
                Err(TokenRefusal::Throttled),
            ),
            (
                "another wrong token",
                "also-wrong",
                Err(TokenRefusal::Throttled),
            ),
            ("the verified token", right, Ok(())),
            (
                "a prefix of it",
                "right-admin-token",
                Err(TokenRefusal::Throttled),
            ),
        ];
        for (name, presented, want) in cases {
            for from in [operator, noisy] {
                assert_eq!(
                    t.check(presented, from).await,
                    want,
                    "case {name} from {from}"
                );
            }
        }
    }

    #[test]
    fn hashes_are_checked() {
        assert!(
            check_token_hash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
                .is_ok()
        );
        assert!(check_token_hash("plain-text-token").is_err());
        assert!(check_token_hash("$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g").is_err());
    }
}
