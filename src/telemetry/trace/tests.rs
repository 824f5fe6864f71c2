//! Tests of trace context (traceparent), samplers, settings from the OTLP options, outgoing context.

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
    let half = Sampler::new(SamplerName::TraceIdRatio, Some(0.5)).unwrap();
    assert!(half.sample(&id_low(1), None));
    assert!(!half.sample(&id_low(u64::MAX - 1), None));
    let pb = Sampler::new(SamplerName::default(), None).unwrap();
    assert!(pb.sample(&id_low(5), None), "no parent: always on");
    assert!(!pb.sample(&id_low(5), Some(false)), "parent decides");
    let off = Sampler::new(SamplerName::ParentBasedAlwaysOff, None).unwrap();
    assert!(!off.sample(&id_low(5), None));
    assert!(off.sample(&id_low(5), Some(true)));
    let pb_none = Sampler::new(SamplerName::ParentBasedTraceIdRatio, Some(0.0)).unwrap();
    assert!(
        !pb_none.sample(&id_low(1), None),
        "ratio 0 without a parent"
    );
    assert!(
        pb_none.sample(&id_low(1), Some(true)),
        "parent still decides"
    );
    assert!(Sampler::new(SamplerName::TraceIdRatio, Some(2.0)).is_err());
    let names = [
        ("always_on", Some(SamplerName::AlwaysOn)),
        ("always_off", Some(SamplerName::AlwaysOff)),
        ("traceidratio", Some(SamplerName::TraceIdRatio)),
        (
            "parentbased_always_on",
            Some(SamplerName::ParentBasedAlwaysOn),
        ),
        (
            "parentbased_always_off",
            Some(SamplerName::ParentBasedAlwaysOff),
        ),
        (
            "parentbased_traceidratio",
            Some(SamplerName::ParentBasedTraceIdRatio),
        ),
        ("nonsense", None),
        ("AlwaysOn", None),
    ];
    for (name, want) in names {
        assert_eq!(name.parse::<SamplerName>().ok(), want, "{name}");
    }
    for (arg, want) in [
        ("0.25", Some(0.25)),
        ("1", Some(1.0)),
        ("2", None),
        ("x", None),
    ] {
        assert_eq!(parse_ratio(arg).ok(), want, "{arg}");
    }
}

#[test]
fn settings_from_options() {
    let opts = |endpoint: Option<&str>, traces: Option<&str>| OtlpOptions {
        endpoint: endpoint.map(str::to_owned),
        traces_endpoint: traces.map(str::to_owned),
        ..OtlpOptions::default()
    };
    assert!(
        TraceSettings::new(&OtlpOptions::default())
            .unwrap()
            .is_none(),
        "off by default"
    );
    let s = TraceSettings::new(&OtlpOptions {
        service_name: Some("edge".into()),
        ..opts(Some("http://127.0.0.1:4318/"), None)
    })
    .unwrap()
    .unwrap();
    assert_eq!(s.endpoint.to_string(), "http://127.0.0.1:4318/v1/traces");
    assert_eq!(s.service_name, "edge");
    let unnamed = TraceSettings::new(&opts(Some("http://a:1"), None))
        .unwrap()
        .unwrap();
    assert_eq!(unnamed.service_name, "gatehouse");
    let full = TraceSettings::new(&opts(Some("http://a:1"), Some("http://b:2/custom")))
        .unwrap()
        .unwrap();
    assert_eq!(full.endpoint.to_string(), "http://b:2/custom");
    let disabled = TraceSettings::new(&OtlpOptions {
        disabled: true,
        ..opts(Some("http://a:1"), None)
    })
    .unwrap();
    assert!(disabled.is_none());
    let keyed: Uri = "http://c:4318/v1/traces?api-key=s3cret".parse().unwrap();
    assert_eq!(endpoint_for_logs(&keyed), "http://c:4318/v1/traces");
    for bad in [
        "ftp://x",
        "not a url",
        "http://user:pw@host:1",
        "ftp://user:pw@host",
    ] {
        let e = TraceSettings::new(&opts(Some(bad), None));
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
