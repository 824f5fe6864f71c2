//! Rate limiting costs on the request path: the local limiter's check with
//! 10 000 active keys (the synchronous check and the same through the
//! async `Limiter` trait), and turning a client address into its key.

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::ratelimit::local::LocalLimiter;
use gatehouse::ratelimit::{Limit, Limiter, Rate, client_key};

const ACTIVE_KEYS: usize = 10_000;

fn local_check(c: &mut Criterion) {
    // Generous enough that most checks pass, as most requests do.
    let limit = Limit {
        rate: Rate::parse("1000/s").expect("rate"),
        burst: 100,
    };
    let keys: Vec<String> = (0..ACTIVE_KEYS)
        .map(|i| format!("api-per-consumer:c_{i:08}"))
        .collect();
    let limiter = LocalLimiter::new();
    for key in &keys {
        limiter.check_sync(key, &limit);
    }
    let mut group = c.benchmark_group("ratelimit/local");
    let mut i = 0;
    group.bench_function("check_sync, 10k active keys", |b| {
        b.iter(|| {
            i = (i + 1) % ACTIVE_KEYS;
            black_box(limiter.check_sync(black_box(&keys[i]), &limit))
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    group.bench_function("Limiter::check (async trait), 10k active keys", |b| {
        b.iter(|| {
            i = (i + 1) % ACTIVE_KEYS;
            runtime
                .block_on(limiter.check(black_box(&keys[i]), &limit))
                .unwrap()
        })
    });
    group.finish();
}

fn client_keys(c: &mut Criterion) {
    let v6 = IpAddr::V6(Ipv6Addr::new(
        0x2001, 0xdb8, 0x1234, 0x5678, 0x9abc, 0xdef0, 1, 2,
    ));
    let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut group = c.benchmark_group("ratelimit/client_key");
    group.bench_function("ipv6 /64", |b| b.iter(|| client_key(black_box(v6))));
    group.bench_function("ipv4", |b| b.iter(|| client_key(black_box(v4))));
    group.finish();
}

criterion_group!(benches, local_check, client_keys);
criterion_main!(benches);
