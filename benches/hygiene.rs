//! Header hygiene on the request path: `HeaderPolicy::sanitize` on a
//! typical browser-like request (nothing to remove but hop-by-hop
//! `Connection: keep-alive`), and on one carrying rewrite/trust headers and
//! an underscore name that must go.

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gatehouse::config::UnderscoreHeaders;
use gatehouse::validate::HeaderPolicy;
use http::{HeaderMap, HeaderName, HeaderValue, Version};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

fn sanitize(c: &mut Criterion) {
    let policy = HeaderPolicy::new(&[], &[], UnderscoreHeaders::Drop).unwrap();
    let typical = headers(&[
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("connection", "keep-alive"),
        ("x-api-key", "gth_0123456789abcdefghijklmnopqrstuvwxyz0123"),
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("x-request-id", "7f3c2a"),
    ]);
    let mut hostile = typical.clone();
    for (k, v) in [
        ("x-original-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-real-ip", "6.6.6.6"),
        ("x_forwarded_for", "6.6.6.6"),
    ] {
        hostile.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let mut group = c.benchmark_group("hygiene/sanitize");
    for (name, input) in [
        ("typical 10 headers", &typical),
        ("hostile 14 headers", &hostile),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || input.clone(),
                |h| black_box(policy.sanitize(Version::HTTP_11, h).is_ok()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, sanitize);
criterion_main!(benches);
