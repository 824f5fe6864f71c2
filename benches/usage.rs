//! The usage meter's share of a request: [`Tally::record`] for a caller
//! whose consumer, key and minute already have an entry (the common case
//! between two flushes), and for 1,000 keys in turn (entries spread over
//! the shards, maps larger than the cache line they start in).

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::usage::UsageMeters;
use gatehouse::usage::tally::{Seen, Tally};

fn seen<'a>(consumer: &'a Arc<str>, key: &'a Arc<str>) -> Seen<'a> {
    Seen {
        consumer,
        key,
        status: 200,
        error: None,
        refused: false,
        route: None,
        bytes_in: 0,
        bytes_out: 512,
        at: 1_796_342_400,
    }
}

fn record(c: &mut Criterion) {
    let tally = Tally::new(100_000, UsageMeters::default());
    let consumer: Arc<str> = "c_0123456789abcdef".into();
    let key: Arc<str> = "k_0123456789abcdef".into();
    c.bench_function("usage record, one key", |b| {
        b.iter(|| tally.record(black_box(&seen(&consumer, &key))));
    });
    let keys: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("k_{i:016}"))).collect();
    let mut i = 0;
    c.bench_function("usage record, 1000 keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            tally.record(black_box(&seen(&consumer, &keys[i])));
        });
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
