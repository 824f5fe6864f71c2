//! Console sessions: an in-memory table, bounded, with an idle timeout and
//! an absolute lifetime, on the shared `Clock` seam.
//!
//! A session id is 256 bits from the OS RNG, base64url without padding,
//! handed to the browser once in the `Set-Cookie` of the sign-in answer.
//! The table is keyed by the SHA-256 of the id: the raw id is never stored
//! or logged, so a dump of the table (or of the process) does not yield a
//! cookie that works. Looking a digest up in a hash map is not constant
//! time, but what leaks is about a SHA-256 of a random 256-bit value, which
//! tells nothing about any other id. Each session carries its own CSRF
//! token (256 bits too), compared in constant time by `guard`.
//!
//! The table is process memory: sessions end on restart, and each node of a
//! cluster has its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::auth::{Clock, Timestamp};

/// The session cookie's name.
pub(super) const COOKIE: &str = "gatehouse_console";
/// The pre-session (sign-in form) CSRF cookie's name.
pub(super) const PRE_COOKIE: &str = "gatehouse_console_pre";

/// How many sessions, and for how long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Sessions kept at most; beyond it the oldest is evicted.
    pub(super) max: usize,
    /// Seconds without a request after which a session ends.
    pub(super) idle: i64,
    /// Seconds after sign-in after which a session ends however busy.
    pub(super) lifetime: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max: 256,
            idle: 30 * 60,
            lifetime: 12 * 3600,
        }
    }
}

/// The OS random number generator failed: no session or token was made.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed")]
pub(super) struct RngError(#[source] rand::rand_core::OsError);

/// 256 random bits from the OS RNG, base64url without padding.
pub(super) fn random_token() -> Result<String, RngError> {
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes).map_err(RngError)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

struct Entry {
    created: Timestamp,
    last_seen: Timestamp,
    csrf: String,
}

/// A live session, as a request sees it.
#[derive(Clone)]
pub(super) struct Session {
    /// This session's CSRF token (the hidden field of every form).
    pub(super) csrf: String,
    key: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// The session table.
pub(super) struct Sessions {
    table: Mutex<HashMap<[u8; 32], Entry>>,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// An empty table on `clock`.
    pub(super) fn new(clock: Arc<dyn Clock>, limits: Limits) -> Sessions {
        Sessions {
            table: Mutex::new(HashMap::new()),
            clock,
            limits,
        }
    }

    fn live(&self, e: &Entry, now: Timestamp) -> bool {
        now.saturating_sub(e.last_seen) < self.limits.idle
            && now.saturating_sub(e.created) < self.limits.lifetime
    }

    /// Starts a session: returns its raw id (for the cookie, once) and the
    /// session. Expired sessions are dropped first; when the table is still
    /// full, the oldest one is evicted.
    pub(super) fn open(&self) -> Result<(String, Session), RngError> {
        let raw = random_token()?;
        let csrf = random_token()?;
        let now = self.clock.now();
        let key = digest(&raw);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.retain(|_, e| self.live(e, now));
        while table.len() >= self.limits.max.max(1) {
            let oldest = table.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => table.remove(&k),
                None => break,
            };
        }
        table.insert(
            key,
            Entry {
                created: now,
                last_seen: now,
                csrf: csrf.clone(),
            },
        );
        Ok((raw, Session { csrf, key }))
    }

    /// The live session with raw id `raw`, marked as seen now; an expired
    /// one is removed.
    pub(super) fn find(&self, raw: &str) -> Option<Session> {
        let now = self.clock.now();
        let key = digest(raw);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let live = table.get(&key).map(|e| self.live(e, now))?;
        if !live {
            table.remove(&key);
            return None;
        }
        let e = table.get_mut(&key)?;
        e.last_seen = now;
        Some(Session {
            csrf: e.csrf.clone(),
            key,
        })
    }

    /// Ends `session` (sign-out).
    pub(super) fn close(&self, session: &Session) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&session.key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(super) fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/console`,
/// `Secure` when the console is served over TLS; `max_age` 0 deletes it.
pub(super) fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<i64>) -> String {
    let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct TestClock(AtomicI64);

    impl Clock for TestClock {
        fn now(&self) -> Timestamp {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl TestClock {
        fn advance(&self, secs: i64) {
            self.0.fetch_add(secs, Ordering::SeqCst);
        }
    }

    fn table(max: usize) -> (Arc<TestClock>, Sessions) {
        let clock = Arc::new(TestClock(AtomicI64::new(1_000_000)));
        let limits = Limits {
            max,
            idle: 30 * 60,
            lifetime: 12 * 3600,
        };
        (clock.clone(), Sessions::new(clock, limits))
    }

    #[test]
    fn ids_and_tokens_are_256_random_bits() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let (clock, sessions) = table(8);
        let (raw, s) = sessions.open().unwrap();
        assert_eq!(sessions.find(&raw).unwrap().csrf, s.csrf);
        // Busy: a request every 29 minutes keeps it alive...
        for _ in 0..23 {
            clock.advance(29 * 60);
            assert!(sessions.find(&raw).is_some(), "idle less than 30 min");
        }
        // ...until 12 hours after sign-in.
        clock.advance(29 * 60);
        assert!(sessions.find(&raw).is_some(), "11h36m after sign-in");
        clock.advance(29 * 60);
        assert!(sessions.find(&raw).is_none(), "past the 12 h lifetime");
        assert_eq!(sessions.len(), 0, "expired sessions are removed");

        let (raw, _) = sessions.open().unwrap();
        clock.advance(30 * 60);
        assert!(sessions.find(&raw).is_none(), "idle 30 min");
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let (clock, sessions) = table(3);
        let mut raws = Vec::new();
        for _ in 0..3 {
            raws.push(sessions.open().unwrap().0);
            clock.advance(1);
        }
        let (newest, _) = sessions.open().unwrap();
        assert_eq!(sessions.len(), 3);
        assert!(sessions.find(&raws[0]).is_none(), "the oldest was evicted");
        for raw in [&raws[1], &raws[2], &newest] {
            assert!(sessions.find(raw).is_some());
        }
    }

    #[test]
    fn only_the_digest_is_kept_and_close_ends_it() {
        let (_, sessions) = table(8);
        let (raw, s) = sessions.open().unwrap();
        assert!(sessions.find("not-a-session").is_none());
        assert!(sessions.find(&raw[..raw.len() - 1]).is_none(), "a prefix");
        assert!(
            !format!("{sessions:?}{s:?}").contains(&raw),
            "Debug hides ids"
        );
        assert!(
            !format!("{s:?}").contains(&s.csrf),
            "Debug hides the CSRF token"
        );
        sessions.close(&s);
        assert!(sessions.find(&raw).is_none(), "signed out");
    }

    #[test]
    fn cookies_are_read_and_written() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; gatehouse_console=abc".parse().unwrap(),
        );
        h.append(
            axum::http::header::COOKIE,
            "gatehouse_console_pre=xyz".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, PRE_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "gatehouse"), None);
        assert_eq!(
            set_cookie(COOKIE, "v", false, None),
            "gatehouse_console=v; Path=/console; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            set_cookie(COOKIE, "", true, Some(0)),
            "gatehouse_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
        );
    }
}
