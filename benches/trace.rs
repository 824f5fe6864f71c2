//! One traced request, ours against the OpenTelemetry SDK's: start a trace
//! from the client's `traceparent`, record 3 child spans (auth, rate limit,
//! the upstream call whose id goes out in `traceparent`), finish the
//! request span, and encode the spans as an OTLP/protobuf export request
//! in batches of 256 requests (what reaches the wire; no network).
//!
//! - "ours": `telemetry::trace::Tracer` (a bounded tokio channel to the
//!   exporter task); the bench drains the channel itself and encodes with
//!   [`encode_batch`], so the figure is the whole CPU cost per request.
//! - "sdk": `opentelemetry_sdk` with a parent-based always-on sampler, a
//!   `BatchSpanProcessor` (its own thread) into an exporter that encodes
//!   with `opentelemetry-proto`'s transform (what `opentelemetry-otlp`'s
//!   HTTP exporter does before its POST). The bench calls `force_flush`
//!   every 256 requests, so the export thread's work is in the figure too
//!   and no span is dropped.
//! - "…/hot path": the same without the encoding (ours: the finished trace
//!   is dropped after the queue; sdk: spans are ended into a processor that
//!   discards them), i.e. what a request's own task pays.

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::telemetry::Metrics;
use gatehouse::telemetry::trace::{Kind, Sampler, SamplerName, Tracer, Value, encode_batch};
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prost::Message as _;

const BATCH: usize = 256;

fn incoming() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h.insert("tracestate", HeaderValue::from_static("vendor=abc"));
    h
}

/// One request through our tracer; the finished trace lands in `rx`.
fn ours_request(tracer: &Tracer, headers: &HeaderMap) -> Option<HeaderValue> {
    let mut t = tracer.start(headers);
    let start = t.clock();
    t.child(
        "authenticate",
        start,
        vec![("gatehouse.auth", Value::Str("api_key".into()))],
        false,
    );
    let start = t.clock();
    t.child(
        "rate_limit",
        start,
        vec![("gatehouse.rate_limit.remaining", Value::Int(99))],
        false,
    );
    let (id, traceparent, _state) = t.outgoing();
    let start = t.clock();
    t.child_with_id(
        "upstream",
        Kind::Client,
        id,
        start,
        vec![
            ("server.address", Value::Str("backend.internal".into())),
            ("http.response.status_code", Value::Int(200)),
        ],
        false,
    );
    tracer.finish(
        t,
        "GET /v1/orders/{id}".into(),
        vec![
            ("http.request.method", Value::Str("GET".into())),
            ("http.route", Value::Str("/v1/orders/{id}".into())),
            ("http.response.status_code", Value::Int(200)),
            ("client.address", Value::Str("203.0.113.7".into())),
        ],
        false,
    );
    traceparent
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// One request through the SDK, the same spans and attributes.
fn sdk_request(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    propagator: &TraceContextPropagator,
    headers: &HeaderMap,
) -> HeaderMap {
    let parent = propagator.extract(&HeaderExtractor(headers));
    let root = tracer
        .span_builder("GET /v1/orders/{id}")
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    let cx = Context::current_with_span(root);
    let mut auth = tracer
        .span_builder("authenticate")
        .with_attributes([KeyValue::new("gatehouse.auth", "api_key")])
        .start_with_context(tracer, &cx);
    auth.end();
    let mut rl = tracer
        .span_builder("rate_limit")
        .with_attributes([KeyValue::new("gatehouse.rate_limit.remaining", 99i64)])
        .start_with_context(tracer, &cx);
    rl.end();
    let upstream = tracer
        .span_builder("upstream")
        .with_kind(SpanKind::Client)
        .start_with_context(tracer, &cx);
    let up_cx = cx.with_span(upstream);
    let mut out = HeaderMap::new();
    propagator.inject_context(&up_cx, &mut HeaderInjector(&mut out));
    let span = up_cx.span();
    span.set_attribute(KeyValue::new("server.address", "backend.internal"));
    span.set_attribute(KeyValue::new("http.response.status_code", 200i64));
    span.end();
    let root = cx.span();
    root.set_attributes([
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("http.route", "/v1/orders/{id}"),
        KeyValue::new("http.response.status_code", 200i64),
        KeyValue::new("client.address", "203.0.113.7"),
    ]);
    root.set_status(Status::Unset);
    root.end();
    out
}

/// What `opentelemetry-otlp`'s HTTP exporter does before the POST: the
/// proto transform and the protobuf encoding.
#[derive(Debug)]
struct EncodingExporter {
    resource: ResourceAttributesWithSchema,
    bytes: Arc<AtomicUsize>,
}

impl SpanExporter for EncodingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let req = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        self.bytes
            .fetch_add(req.encode_to_vec().len(), Ordering::Relaxed);
        Ok(())
    }
}

/// Ends spans into nothing: the SDK's request-side cost alone.
#[derive(Debug)]
struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn sdk_provider(processor: impl SpanProcessor + 'static) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOn,
        )))
        .with_resource(Resource::builder_empty().with_service_name("bench").build())
        .with_span_processor(processor)
        .build()
}

fn traces(c: &mut Criterion) {
    let headers = incoming();
    let metrics = Metrics::new().unwrap();
    let sampler = Sampler::new(SamplerName::ParentBasedAlwaysOn, None).unwrap();
    let mut group = c.benchmark_group("trace/request");

    {
        let (tracer, mut rx) = Tracer::new(sampler, &metrics);
        let mut batch = Vec::with_capacity(BATCH);
        group.bench_function("ours", |b| {
            b.iter(|| {
                black_box(ours_request(&tracer, &headers));
                batch.push(rx.try_recv().expect("queued"));
                if batch.len() == BATCH {
                    black_box(encode_batch("bench", &batch));
                    batch.clear();
                }
            })
        });
        group.bench_function("ours/hot path", |b| {
            b.iter(|| {
                black_box(ours_request(&tracer, &headers));
                black_box(rx.try_recv().expect("queued"));
            })
        });
    }

    {
        let bytes = Arc::new(AtomicUsize::new(0));
        let resource = Resource::builder_empty().with_service_name("bench").build();
        let exporter = EncodingExporter {
            resource: (&resource).into(),
            bytes: bytes.clone(),
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(4 * BATCH * 4)
                    .with_max_export_batch_size(4 * BATCH)
                    .build(),
            )
            .build();
        let provider = sdk_provider(processor);
        let tracer = provider.tracer("gatehouse");
        let propagator = TraceContextPropagator::new();
        let mut n = 0usize;
        group.bench_function("sdk", |b| {
            b.iter(|| {
                black_box(sdk_request(&tracer, &propagator, &headers));
                n += 1;
                if n % BATCH == 0 {
                    provider.force_flush().expect("flush");
                }
            })
        });
        provider.force_flush().expect("flush");
        assert!(
            bytes.load(Ordering::Relaxed) > 0,
            "the SDK exported nothing"
        );
        let _ = provider.shutdown();
    }
    {
        let provider = sdk_provider(Discard);
        let tracer = provider.tracer("gatehouse");
        let propagator = TraceContextPropagator::new();
        group.bench_function("sdk/hot path", |b| {
            b.iter(|| black_box(sdk_request(&tracer, &propagator, &headers)))
        });
    }
    group.finish();
}

criterion_group!(benches, traces);
criterion_main!(benches);
