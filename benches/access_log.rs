//! The access log line, end to end: serialising one request's 21 fields and
//! handing the line to the writer thread (the output is `io::sink`, so the
//! figure is the request path's share, not the disk's).
//!
//! - "tracing json": how `gatehouse serve` wrote access lines before
//!   `telemetry::access_log`: a `tracing::info!` event through
//!   tracing-subscriber's flattened JSON formatter into tracing-appender's
//!   non-blocking writer.
//! - "access_log": the same line through [`AccessLog::write_with`].

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::telemetry::access_log::{AccessLog, DEFAULT_CAPACITY};

struct Line {
    request_id: String,
    path: String,
    client: IpAddr,
    peer: SocketAddr,
}

fn line() -> Line {
    Line {
        request_id: "6d8b0c72b042c0ae99114c6fd00acc48".into(),
        path: "/v1/orders/12345".into(),
        client: IpAddr::from([203, 0, 113, 7]),
        peer: "203.0.113.7:51234".parse().unwrap(),
    }
}

fn access_log(c: &mut Criterion) {
    let l = line();
    let mut group = c.benchmark_group("access_log/line");

    let (writer, guard) = tracing_appender::non_blocking(std::io::sink());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("tracing json", |b| {
            b.iter(|| {
                tracing::info!(
                    target: "gatehouse::access",
                    request_id = %black_box(&l.request_id),
                    method = %http::Method::GET,
                    path = %black_box(&l.path),
                    route = "orders",
                    upstream = "orders-svc",
                    target_addr = "http://10.0.0.7:8080",
                    status = 200u16,
                    error = "-",
                    reason = "-",
                    consumer = "acme",
                    auth = "api_key",
                    duration_us = 1234u64,
                    bytes_in = 0u64,
                    bytes_out = 187u64,
                    complete = true,
                    client = %l.client,
                    peer = %l.peer,
                    listener = "https",
                    tls = "TLSv1.3",
                    http = "HTTP/1.1",
                    trace_id = "-",
                    "access"
                );
            });
        });
    });
    drop(guard);

    let (log, guard) = AccessLog::start(std::io::sink(), DEFAULT_CAPACITY).unwrap();
    group.bench_function("access_log", |b| {
        b.iter(|| {
            log.write_with(|j| {
                j.display(
                    "timestamp",
                    humantime::format_rfc3339_micros(std::time::SystemTime::now()),
                );
                j.str("level", "INFO");
                j.str("message", "access");
                j.str("request_id", black_box(&l.request_id));
                j.str("method", http::Method::GET.as_str());
                j.str("path", black_box(&l.path));
                j.str("route", "orders");
                j.str("upstream", "orders-svc");
                j.str("target_addr", "http://10.0.0.7:8080");
                j.uint("status", 200);
                j.str("error", "-");
                j.str("reason", "-");
                j.str("consumer", "acme");
                j.str("auth", "api_key");
                j.uint("duration_us", 1234);
                j.uint("bytes_in", 0);
                j.uint("bytes_out", 187);
                j.bool("complete", true);
                j.display("client", l.client);
                j.display("peer", l.peer);
                j.str("listener", "https");
                j.str("tls", "TLSv1.3");
                j.str("http", "HTTP/1.1");
                j.str("trace_id", "-");
                j.str("target", "gatehouse::access");
                j.end();
            });
        });
    });
    group.finish();
    drop(guard);
    // Lines the writer could not keep up with are dropped, which would
    // flatter the figure: say how many.
    eprintln!("access_log: {} line(s) dropped", log.dropped());
}

criterion_group!(benches, access_log);
criterion_main!(benches);
