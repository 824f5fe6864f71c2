//! API key authentication costs: the per-request check on a warm cache (what
//! nearly every request pays) and an argon2id verification with the default
//! OWASP parameters (what a cache miss pays, off the runtime).

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::auth::SystemClock;
use gatehouse::auth::api_key::{
    ApiKeyAuth, ApiKeySettings, Argon2Settings, generate, hash_secret, verify_secret,
};
use gatehouse::store::{
    ApiKey, AuditEntry, Consumer, Credential, KeySet, KeyStore, StoreError, Timestamp,
};

/// A store that holds nothing: the benchmark loads the index directly and
/// the hot path never calls the store.
#[derive(Debug)]
struct NoStore;

#[async_trait::async_trait]
impl KeyStore for NoStore {
    async fn create_consumer(&self, _: &Consumer) -> Result<(), StoreError> {
        Ok(())
    }
    async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        Ok(Vec::new())
    }
    async fn consumer(&self, _: &str) -> Result<Option<Consumer>, StoreError> {
        Ok(None)
    }
    async fn disable_consumer(&self, _: &str, _: Timestamp) -> Result<Consumer, StoreError> {
        Err(StoreError::NotFound("consumer"))
    }
    async fn create_key(&self, _: &ApiKey, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn rotate_key(
        &self,
        _: &str,
        _: Timestamp,
        _: &ApiKey,
        _: &str,
    ) -> Result<ApiKey, StoreError> {
        Err(StoreError::NotFound("key"))
    }
    async fn list_keys(&self, _: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        Ok(Vec::new())
    }
    async fn key(&self, _: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(None)
    }
    async fn revoke_key(&self, _: &str, _: Timestamp) -> Result<ApiKey, StoreError> {
        Err(StoreError::NotFound("key"))
    }
    async fn update_hash(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn touch_keys(&self, _: &[(String, Timestamp)]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn key_set(&self) -> Result<KeySet, StoreError> {
        Ok(KeySet::default())
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        Ok(0)
    }
    async fn wait_for_change(&self, seen: i64, max_wait: Duration) -> Result<i64, StoreError> {
        tokio::time::sleep(max_wait).await;
        Ok(seen)
    }
    async fn record_audit(&self, _: &AuditEntry) -> Result<(), StoreError> {
        Ok(())
    }
    async fn audit(&self, _: u32) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(Vec::new())
    }
}

fn key_set(keys: usize, settings: &Argon2Settings) -> (KeySet, String) {
    let mut credentials = Vec::with_capacity(keys);
    let mut first = String::new();
    // Only the benchmarked key needs a real hash; the rest fill the index.
    for i in 0..keys {
        let new = generate().expect("OS RNG");
        let hash = if i == 0 {
            first = new.full.clone();
            hash_secret(new.secret(), settings).expect("hash")
        } else {
            String::from("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaA")
        };
        credentials.push(Credential {
            key: ApiKey {
                id: new.id,
                consumer_id: "c_bench".into(),
                name: "bench".into(),
                scopes: vec!["read".into()],
                expires_at: None,
                created_at: 0,
                last_used_at: None,
                revoked_at: None,
            },
            hash,
        });
    }
    let set = KeySet {
        consumers: vec![Consumer {
            id: "c_bench".into(),
            name: "bench".into(),
            plan: None,
            metadata: serde_json::Map::new(),
            created_at: 0,
            disabled_at: None,
        }],
        credentials,
        revision: 1,
    };
    (set, first)
}

fn cached_check(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = ApiKeySettings::default();
    let (set, key) = key_set(10_000, &settings.argon2);
    let auth = ApiKeyAuth::new(settings, Arc::new(NoStore), Arc::new(SystemClock));
    auth.load(set);
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    rt.block_on(auth.authenticate(&key, client))
        .expect("warm-up authenticates");

    c.bench_function("api_key/authenticate_cached (10k keys)", |b| {
        b.iter(|| rt.block_on(auth.authenticate(black_box(&key), client)))
    });
}

fn argon2_verify(c: &mut Criterion) {
    let settings = Argon2Settings::default();
    let phc = hash_secret("0123456789ABCDEFGHIJKL", &settings).expect("hash");
    let mut group = c.benchmark_group("api_key");
    group.sample_size(10);
    group.bench_function("argon2id_verify (m=19456,t=2,p=1)", |b| {
        b.iter(|| verify_secret(black_box("0123456789ABCDEFGHIJKL"), &phc, &settings))
    });
    group.finish();
}

criterion_group!(benches, cached_check, argon2_verify);
criterion_main!(benches);
