//! The authenticator's settings from `[api_keys]`: the config says what
//! the operator wrote, this says what the authenticator runs with (the
//! conversion lives here so that `config` does not depend on `auth`).

use crate::config::ApiKeysConfig;

use super::{ApiKeySettings, Argon2Settings};

impl ApiKeysConfig {
    /// The authenticator's settings.
    pub fn settings(&self) -> ApiKeySettings {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        ApiKeySettings {
            argon2: self.argon2(),
            cache_ttl: self.cache_ttl.0,
            cache_capacity: self.cache_capacity,
            max_concurrent_verifications: if self.max_concurrent_verifications == 0 {
                cpus
            } else {
                self.max_concurrent_verifications
            },
            verify_wait: self.verify_wait.0,
            failures_per_minute: self.failures_per_minute,
            failure_burst: self.failure_burst,
            key_failures_per_minute: self.key_failures_per_minute,
            key_failure_burst: self.key_failure_burst,
            last_used_flush: self.last_used_flush.0,
        }
    }

    /// The argon2id parameters new hashes are made with.
    pub fn argon2(&self) -> Argon2Settings {
        Argon2Settings {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }
}
