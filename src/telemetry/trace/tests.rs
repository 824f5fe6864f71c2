//! Tests of trace context (traceparent), samplers, settings from the environment, outgoing context.

use super::*;

#[test]
fn traceparents() {
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases: [(&str, String, Option<bool>); 10] = [
        ("valid sampled", good.to_owned(), Some(true)),
        ("valid unsampled", good.replace("-01", "-00"), Some(false)),
        ("upper case", good.to_uppercase(), None),
        (
            "zero trace",
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            None,
        ),
        (
            "zero span",
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16)),
            None,
        ),
        ("version ff", good.replacen("00", "ff", 1), None),
        ("v00 with extra", format!("{good}-extra"), None),
        (
            "future version with extra",
            format!("{}-extra", good.replacen("00", "01", 1)),
            Some(true),
        ),
        ("short", good[..50].to_owned(), None),
        ("garbage", "hello".to_owned(), None),
    ];
    for (name, value, want) in cases {
        assert_eq!(parse_traceparent(&value).map(|p| p.sampled), want, "{name}");
    }
    let p = parse_traceparent(good).unwrap();
    assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
}

#[test]
fn samplers() {
    let id_low = |low: u64| {
        let mut id = [1u8; 16];
        id[8..].copy_from_slice(&low.to_be_bytes());
        id
    };
    let half = Sampler::parse(Some("traceidratio"), Some("0.5")).unwrap();
    assert!(half.sample(&id_low(1), None));
    assert!(!half.sample(&id_low(u64::MAX - 1), None));
    let pb = Sampler::parse(None, None).unwrap();
    assert!(pb.sample(&id_low(5), None), "no parent: always on");
    assert!(!pb.sample(&id_low(5), Some(false)), "parent decides");
    let off = Sampler::parse(Some("parentbased_always_off"), None).unwrap();
    assert!(!off.sample(&id_low(5), None));
    assert!(off.sample(&id_low(5), Some(true)));
    for (name, arg) in [
        ("nonsense", None),
        ("traceidratio", Some("2")),
        ("traceidratio", Some("x")),
    ] {
        assert!(Sampler::parse(Some(name), arg).is_err(), "{name} {arg:?}");
    }
}

#[test]
fn settings_from_env() {
    let env = |pairs: &[(&str, &str)]| {
        Environment::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    };
    assert!(
        TraceSettings::from_env(&env(&[])).unwrap().is_none(),
        "off by default"
    );
    let s = TraceSettings::from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
        ("OTEL_SERVICE_NAME", "edge"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(s.endpoint.to_string(), "http://127.0.0.1:4318/v1/traces");
    assert_eq!(s.service_name, "edge");
    let full = TraceSettings::from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:2/custom"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(full.endpoint.to_string(), "http://b:2/custom");
    let disabled = TraceSettings::from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
        ("OTEL_SDK_DISABLED", "true"),
    ]))
    .unwrap();
    assert!(disabled.is_none());
    let keyed: Uri = "http://c:4318/v1/traces?api-key=s3cret".parse().unwrap();
    assert_eq!(endpoint_for_logs(&keyed), "http://c:4318/v1/traces");
    for bad in ["ftp://x", "not a url", "http://user:pw@host:1"] {
        let e = TraceSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]));
        assert!(e.is_err(), "{bad}");
        assert!(!format!("{e:?}").contains("pw@"), "no credentials echoed");
    }
}

#[test]
fn outgoing_context_names_the_upstream_span() {
    let m = Metrics::new().unwrap();
    let (tracer, _rx) = Tracer::new(Sampler::AlwaysOn, &m);
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h.insert("tracestate", HeaderValue::from_static("vendor=1"));
    let t = tracer.start(&h);
    assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    let (id, tp, ts) = t.outgoing();
    let tp = tp.unwrap();
    let parsed = parse_traceparent(tp.to_str().unwrap()).unwrap();
    assert_eq!(parsed.trace_id, t.trace_id);
    assert_eq!(parsed.span_id, id);
    assert_ne!(id, t.span_id);
    assert_eq!(ts.unwrap(), "vendor=1");
    // A malformed parent starts a new trace and drops tracestate.
    let mut bad = HeaderMap::new();
    bad.insert("traceparent", HeaderValue::from_static("00-xyz"));
    bad.insert("tracestate", HeaderValue::from_static("vendor=1"));
    let fresh = tracer.start(&bad);
    assert_ne!(fresh.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(fresh.parent.is_none());
    assert!(fresh.outgoing().2.is_none());
}
