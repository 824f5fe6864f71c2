//! Observability tests: spans at an OTLP receiver, unsampled requests, trace
//! ids in the access log, TLS measurements, shipped alerts, certificate expiry.

use std::collections::BTreeSet;
use std::path::Path;

use gatehouse::telemetry::trace::{OtlpOptions, SamplerName};

use crate::support::*;

use super::*;

/// An OTLP/HTTP receiver: decodes every export into spans.
pub(super) async fn otlp_receiver() -> (
    Backend,
    std::sync::Arc<std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
) {
    use http_body_util::BodyExt;
    use prost::Message;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let backend = Backend::start(move |req| {
        let sink = sink.clone();
        async move {
            let path = req.uri().path().to_owned();
            let ctype = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(path, "/v1/traces");
            assert_eq!(ctype.as_deref(), Some("application/x-protobuf"));
            let export =
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                    body,
                )
                .expect("a valid OTLP export");
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        sink.lock().unwrap().push((service.clone(), span));
                    }
                }
            }
            http::Response::new(full(bytes::Bytes::new()))
        }
    })
    .await;
    (backend, spans)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn attr<'a>(
    span: &'a opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> Option<&'a opentelemetry_proto::tonic::common::v1::any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub(super) const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(super) const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_reach_an_otlp_receiver_with_the_clients_trace() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let (collector, spans) = otlp_receiver().await;
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "")
        .await
        .otlp(OtlpOptions {
            endpoint: Some(collector.url()),
            service_name: Some("edge-test".to_owned()),
            ..OtlpOptions::default()
        })
        .start()
        .await;
    let resp = client()
        .get(gw.url("/limited/x"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    let sent = echo
        .header("traceparent")
        .expect("traceparent to the backend");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], CLIENT_TRACE,
        "the backend sees the client's trace"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(parts[3], "01");
    assert_eq!(echo.header("tracestate"), Some("vendor=abc"));

    // A request without context starts its own trace.
    let fresh: Echo = client()
        .get(gw.url("/ok"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh_tp = fresh.header("traceparent").expect("a new traceparent");
    assert!(!fresh_tp.contains(CLIENT_TRACE));

    let got = eventually(15, || async {
        let s = spans.lock().unwrap();
        let ours = s
            .iter()
            .filter(|(_, sp)| hex(&sp.trace_id) == CLIENT_TRACE)
            .count();
        (ours >= 3).then(|| s.clone())
    })
    .await
    .expect("three spans of the client's trace exported");
    let ours: Vec<_> = got
        .iter()
        .filter(|(_, sp)| hex(&sp.trace_id) == CLIENT_TRACE)
        .collect();
    assert!(ours.iter().all(|(service, _)| service == "edge-test"));
    let by_name = |name: &str| {
        ours.iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no span {name}: {:?}",
                    ours.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let server = by_name("GET limited");
    assert_eq!(
        hex(&server.parent_span_id),
        CLIENT_SPAN,
        "child of the client's span"
    );
    assert_eq!(server.kind, 2, "SERVER");
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&V::IntValue(200))
    );
    assert_eq!(
        attr(server, "http.route"),
        Some(&V::StringValue("limited".into()))
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    let rate = by_name("rate_limit");
    assert_eq!(rate.parent_span_id, server.span_id);
    let upstream = by_name("upstream");
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(upstream.kind, 3, "CLIENT");
    assert_eq!(
        hex(&upstream.span_id),
        parts[2],
        "the backend's parent is the upstream span"
    );
    assert!(upstream.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(
        ours.len(),
        3,
        "server, rate_limit and upstream only (the route has no auth)"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unsampled_requests_pass_context_on_but_export_nothing() {
    let (collector, spans) = otlp_receiver().await;
    let backend = Backend::echo().await;
    let gw = mixed_gateway(&backend, "")
        .await
        .otlp(OtlpOptions {
            endpoint: Some(collector.url()),
            sampler: SamplerName::ParentBasedAlwaysOn,
            ..OtlpOptions::default()
        })
        .start()
        .await;
    let echo: Echo = client()
        .get(gw.url("/ok"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = echo.header("traceparent").unwrap();
    assert!(
        tp.starts_with(&format!("00-{CLIENT_TRACE}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    // A sampled request afterwards is exported: once it arrives, the
    // unsampled one (sent first, same exporter) would have too.
    let _ = client()
        .get(gw.url("/ok"))
        .header(
            "traceparent",
            format!("00-{}-{CLIENT_SPAN}-01", "1".repeat(32)),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let all = eventually(15, || async {
        let s = spans.lock().unwrap();
        (!s.is_empty()).then(|| s.clone())
    })
    .await
    .expect("the sampled request exported");
    assert!(
        all.iter().all(|(_, s)| hex(&s.trace_id) != CLIENT_TRACE),
        "the unsampled trace was exported"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_access_log_carries_the_trace_id() {
    let (collector, _spans) = otlp_receiver().await;
    let backend = Backend::echo().await;
    let builder = mixed_gateway(&backend, "").await;
    let config = builder.write();
    let endpoint = collector.url();
    let mut proc = Proc::spawn_with_env(
        &["serve", "--no-watch", "--config", config.to_str().unwrap()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let listening = proc.wait_for("listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let resp = client()
        .get(format!("http://{addr}/ok"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let line = proc.wait_for("access").await;
    assert_eq!(line["trace_id"], CLIENT_TRACE, "{line}");
    proc.signal("-TERM");
    let (status, _) = proc.finish().await;
    assert!(status.success());
}

#[tokio::test]
async fn tls_handshakes_and_certificate_expiry_are_measured() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue("site", &["localhost"]);
    let gw = GatewayBuilder::new()
        .main(&format!(
            "[[listener]]\nname = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .policy(
            "a.toml",
            "[[route]]\nname = \"hello\"\npath = \"/hello\"\nrespond = { status = 200, body = \"hi\" }\n",
        )
        .start()
        .await;
    let addr = gw.addr("tls");
    let https = tls_client(&ca.ca_pem(), &["localhost"], addr);
    for _ in 0..2 {
        let resp = https
            .get(format!("https://localhost:{}/hello", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Plain HTTP to the TLS port: a failed handshake.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink),
    )
    .await;
    let text = eventually(5, || async {
        let t = scrape(&gw).await;
        sample(
            &t,
            r#"gatehouse_tls_handshake_failures_total{listener="tls",reason="protocol"}"#,
        )
        .is_some()
        .then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("no failed handshake counted"));
    // reqwest may reuse its connection: one or two handshakes.
    let done = sample(
        &text,
        r#"gatehouse_tls_handshakes_total{listener="tls",version="TLSv1.3"}"#,
    )
    .expect("handshakes counted");
    assert!((1.0..=2.0).contains(&done), "{done}");
    let expiry = text
        .lines()
        .find(|l| {
            l.starts_with("gatehouse_certificate_expiry_timestamp_seconds{cert=\"site.pem\",name=\"localhost\"}")
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .expect("certificate expiry exported");
    let now = unix_now() as f64;
    assert!(
        expiry > now + 86_400.0 && expiry < now + 400.0 * 86_400.0,
        "{expiry}"
    );
    gw.shutdown().await;
}

/// Every `gatehouse_*` metric name in `text`, without histogram suffixes.
pub(super) fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("gatehouse_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn shipped_alerts_and_dashboard_use_only_metrics_gatehouse_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut source = String::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/gatehouse.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file}: {used:?}");
        for name in used {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{file} uses `{name}`, which no code registers"
            );
        }
    }
}

#[tokio::test]
async fn a_certificate_close_to_expiry_is_warned_about_and_exported() {
    let builder = GatewayBuilder::new();
    let dir = builder.path().to_path_buf();
    let ca = TestCa::new(&dir);
    let pair = ca.ca.issue(&["localhost"], 5).unwrap();
    let (cert, key) = (dir.join("soon.pem"), dir.join("soon-key.pem"));
    gatehouse::tls::write_pair(&pair, &cert, &key).unwrap();
    let builder = builder.main(&format!(
            "[[listener]]\nname = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
    // The builder owns the temp dir: it lives until the end of the test.
    let config = builder.write();
    let mut proc = Proc::spawn(&["serve", "--no-watch", "--config", config.to_str().unwrap()]);
    // Written while the config loads, before anything listens.
    let warning = proc.wait_for("certificate expires in under 14 days").await;
    let admin = proc.wait_for("admin listening").await["admin_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let days = warning["days_left"].as_i64().unwrap();
    assert!((3..=5).contains(&days), "{warning}");
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry = text
        .lines()
        .find(|l| l.starts_with("gatehouse_certificate_expiry_timestamp_seconds{cert=\"soon.pem\""))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .expect("expiry gauge");
    let left = expiry - unix_now() as f64;
    assert!(left > 3.0 * 86_400.0 && left < 6.0 * 86_400.0, "{left}");
    proc.signal("-TERM");
    let (status, _) = proc.finish().await;
    assert!(status.success());
}
