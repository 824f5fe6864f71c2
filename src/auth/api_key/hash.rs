//! Argon2id hashing of secrets (API key secrets, admin tokens) as PHC strings.
//!
//! These functions are CPU- and memory-heavy (19 MiB and tens of
//! milliseconds with the defaults) and synchronous: call them from
//! `spawn_blocking` or a CLI, never directly on the async runtime.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{self, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id cost parameters for new hashes. Hashes made with other
/// parameters still verify (the PHC string carries its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's first recommendation: m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Argon2Settings {
    fn hasher(&self) -> Result<Argon2<'static>, HashError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(HashError::Params)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Why a secret could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The configured parameters are out of argon2's range.
    #[error("invalid argon2 parameters")]
    Params(#[source] argon2::Error),
    /// Hashing failed (including the OS RNG failing to give a salt).
    #[error("hashing failed")]
    Hash(#[source] password_hash::Error),
}

/// Why a secret did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The secret does not match the hash.
    #[error("secret does not match")]
    Mismatch,
    /// The stored hash is not a usable argon2 PHC string.
    #[error("unusable stored hash")]
    Hash(#[source] password_hash::Error),
}

/// Hashes `secret` with argon2id, `settings` and a random 16-byte salt from
/// the OS RNG, as a PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
/// Works for any secret string: API key secrets and admin tokens alike.
pub fn hash_secret(secret: &str, settings: &Argon2Settings) -> Result<String, HashError> {
    let hash = settings
        .hasher()?
        .hash_password(secret.as_bytes())
        .map_err(HashError::Hash)?;
    Ok(hash.to_string())
}

/// Verifies `secret` against a PHC string using the parameters in the
/// string (so hashes made with older settings still verify). On success
/// returns whether the hash should be replaced: it is not argon2id v19, or
/// its memory, iterations, parallelism or output length are below
/// `settings`. The comparison is constant-time (in `password-hash`).
pub fn verify_secret(
    secret: &str,
    phc: &str,
    settings: &Argon2Settings,
) -> Result<bool, VerifyError> {
    let parsed = PasswordHash::new(phc).map_err(|e| VerifyError::Hash(e.into()))?;
    match Argon2::default().verify_password(secret.as_bytes(), &parsed) {
        Ok(()) => Ok(needs_rehash(&parsed, settings)),
        Err(password_hash::Error::PasswordInvalid) => Err(VerifyError::Mismatch),
        Err(e) => Err(VerifyError::Hash(e)),
    }
}

/// [`hash_secret`] for the admin token (`gatehouse hash-secret`).
pub fn hash_admin_token(token: &str, settings: &Argon2Settings) -> Result<String, HashError> {
    hash_secret(token, settings)
}

/// [`verify_secret`] for the admin token. Like every verification here it
/// costs a full argon2 run: cache or throttle callers accordingly.
pub fn verify_admin_token(
    token: &str,
    phc: &str,
    settings: &Argon2Settings,
) -> Result<bool, VerifyError> {
    verify_secret(token, phc, settings)
}

fn needs_rehash(hash: &PasswordHash, settings: &Argon2Settings) -> bool {
    if hash.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str()
        || hash.version != Some(Version::V0x13.into())
    {
        return true;
    }
    let Ok(params) = Params::try_from(hash) else {
        return true;
    };
    params.m_cost() < settings.memory_kib
        || params.t_cost() < settings.iterations
        || params.p_cost() < settings.parallelism
        || params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN) < Params::DEFAULT_OUTPUT_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Argon2Settings = Argon2Settings {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    const WEAK: Argon2Settings = Argon2Settings {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn default_settings_are_owasp() {
        let phc = hash_secret("correct horse", &Argon2Settings::default()).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        let needs_rehash =
            verify_secret("correct horse", &phc, &Argon2Settings::default()).unwrap();
        assert!(!needs_rehash);
    }

    #[test]
    fn verify_cases() {
        let fast = hash_secret("s3cret", &FAST).unwrap();
        let weak = hash_secret("s3cret", &WEAK).unwrap();
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"s3cret")
        .unwrap()
        .to_string();
        let short_output = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, Some(16)).unwrap(),
        )
        .hash_password(b"s3cret")
        .unwrap()
        .to_string();
        // (name, secret, phc, want: Some(needs_rehash) or None for mismatch)
        let cases: Vec<(&str, &str, &str, Option<bool>)> = vec![
            ("right secret, current params", "s3cret", &fast, Some(false)),
            ("wrong secret", "s3cre7", &fast, None),
            ("empty secret", "", &fast, None),
            (
                "weaker memory: verifies, needs rehash",
                "s3cret",
                &weak,
                Some(true),
            ),
            ("weaker memory, wrong secret", "nope", &weak, None),
            (
                "argon2i: verifies, needs rehash",
                "s3cret",
                &argon2i,
                Some(true),
            ),
            (
                "short output: needs rehash",
                "s3cret",
                &short_output,
                Some(true),
            ),
        ];
        for (name, secret, phc, want) in cases {
            match (verify_secret(secret, phc, &FAST), want) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "case {name}"),
                (Err(VerifyError::Mismatch), None) => {}
                (got, want) => panic!("case {name}: got {got:?}, want {want:?}"),
            }
        }
        // Stronger current settings make the FAST hash stale too.
        assert!(verify_secret("s3cret", &fast, &Argon2Settings::default()).unwrap());
    }

    #[test]
    fn unusable_hashes() {
        let cases = [
            ("empty", ""),
            ("not phc", "plaintext"),
            (
                "bcrypt",
                "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            ),
            (
                "unknown algorithm",
                "$scrypt$ln=4,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            ),
            (
                "bad params",
                "$argon2id$v=19$m=x,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            ),
        ];
        for (name, phc) in cases {
            assert!(
                matches!(verify_secret("s", phc, &FAST), Err(VerifyError::Hash(_))),
                "case {name}"
            );
        }
    }

    #[test]
    fn salts_are_random() {
        let a = hash_secret("same", &FAST).unwrap();
        let b = hash_secret("same", &FAST).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn invalid_settings_are_an_error() {
        let bad = Argon2Settings {
            memory_kib: 1,
            iterations: 0,
            parallelism: 1,
        };
        assert!(matches!(hash_secret("x", &bad), Err(HashError::Params(_))));
    }

    #[test]
    fn admin_token_helpers() {
        let phc = hash_admin_token("admin-token-value", &FAST).unwrap();
        assert!(!verify_admin_token("admin-token-value", &phc, &FAST).unwrap());
        assert!(matches!(
            verify_admin_token("other", &phc, &FAST),
            Err(VerifyError::Mismatch)
        ));
    }
}
