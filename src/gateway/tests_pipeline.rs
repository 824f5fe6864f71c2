//! The pipeline driven in-process (tower `oneshot`, no socket): the steps
//! refuse in DESIGN.md's order, a refused request's body is never read, and
//! a full in-flight budget sheds before any step.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::auth::SystemClock;
use crate::auth::jwks::JwksRegistry;
use crate::config::Environment;
use crate::conn::{Activity, ConnHold};
use crate::proxy::{Tunnels, UpstreamRegistry};
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::quota::StoreQuotas;
use crate::snapshot::BuildDeps;
use crate::telemetry::Metrics;

const POLICY: &str = r#"
[[upstream]]
name = "closed"
targets = ["http://127.0.0.1:1"]

[[route]]
name = "keyed"
path = "/keyed"
upstream = "closed"
auth = "api_key"
max_body = 1024
json_schema = "order.json"

[[route]]
name = "open"
path = "/open"
upstream = "closed"
json_schema = "order.json"

[[route]]
name = "limited"
path = "/limited"
upstream = "closed"
json_schema = "order.json"

[[route]]
name = "direct"
path = "/direct"
respond = { status = 200, body = "hi" }

[[rate_limit]]
name = "one"
rate = "1/min"
burst = 1
key = "client_ip"
routes = ["limited"]
"#;

const SCHEMA: &str = r#"{"type": "object", "required": ["id"]}"#;

/// A body that counts how often it was read.
struct Watched {
    bytes: Option<Bytes>,
    polls: Arc<AtomicUsize>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(self.bytes.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }
}

struct Pipeline {
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    _dir: tempfile::TempDir,
}

async fn pipeline(max_in_flight: usize) -> Pipeline {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    std::fs::create_dir_all(dir.path().join("policies")).unwrap_or_else(|e| panic!("{e}"));
    write(
        "gatehouse.toml",
        "policies = \"policies\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\n",
    );
    write("policies/api.toml", POLICY);
    write("policies/order.json", SCHEMA);
    let loaded = crate::config::load(&dir.path().join("gatehouse.toml"))
        .unwrap_or_else(|e| panic!("config: {e:?}"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::disabled());
    let jwks = JwksRegistry::new().unwrap_or_else(|e| panic!("jwks: {e}"));
    let upstreams = UpstreamRegistry::new(metrics.clone());
    let deps = BuildDeps {
        env: &Environment::default(),
        jwks: &jwks,
        clock: &clock,
        metrics: &metrics,
        upstreams: &upstreams,
        aws: &Default::default(),
    };
    let snapshot = Snapshot::build(&loaded, 1, deps).unwrap_or_else(|e| panic!("build: {e:?}"));
    let store = crate::store::open(&loaded.config.store.options(&loaded.base_dir))
        .await
        .unwrap_or_else(|e| panic!("store: {e}"));
    let api_keys = Arc::new(ApiKeyAuth::new(
        loaded.config.api_keys.settings(),
        store.clone(),
        clock.clone(),
    ));
    let gateway = Gateway::new(GatewayDeps {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        api_keys,
        limiter: Arc::new(LocalLimiter::new()),
        quotas: Arc::new(StoreQuotas::new(store, Duration::from_secs(2))),
        quota_fail_open: true,
        clock,
        max_in_flight,
        telemetry: Arc::new(Telemetry::new(metrics, None)),
        tunnels: Tunnels::default(),
    });
    let conn = Arc::new(ConnInfo {
        peer: "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")),
        proxied_by: None,
        listener: "http".into(),
        tls_version: None,
        redirect_https_port: None,
        hsts: None,
        verdicts: None,
        requests: Default::default(),
        activity: Arc::new(Activity::default()),
        hold: Arc::new(ConnHold::default()),
    });
    Pipeline {
        gateway: Arc::new(gateway),
        conn,
        _dir: dir,
    }
}

struct Answered {
    status: StatusCode,
    code: Option<String>,
    request_id: Option<String>,
    body_request_id: Option<String>,
    body: Bytes,
    polls: usize,
}

impl Pipeline {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answered {
        let polls = Arc::new(AtomicUsize::new(0));
        let watched = Watched {
            bytes: (!body.is_empty()).then(|| Bytes::from(body.to_owned())),
            polls: polls.clone(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(watched).unwrap_or_else(|e| panic!("request: {e}"));
        let (gateway, conn) = (self.gateway.clone(), self.conn.clone());
        let svc = tower::service_fn(move |req: Request<Watched>| {
            let (gateway, conn) = (gateway.clone(), conn.clone());
            async move { Ok::<_, Infallible>(gateway.handle(req, conn).await) }
        });
        let resp = svc.oneshot(req).await.unwrap_or_else(|e| match e {});
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| {
            json.as_ref()
                .and_then(|j| j.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Answered {
            status,
            code: field("error"),
            body_request_id: field("request_id"),
            request_id,
            body,
            polls: polls.load(Ordering::SeqCst),
        }
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// A named request and what must come of it: status, error code, and
/// whether its body was read.
type Case<'a> = (
    &'a str,
    Method,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    u16,
    Option<&'a str>,
    bool,
);

#[tokio::test]
async fn steps_refuse_in_order_and_never_read_a_refused_body() {
    let p = pipeline(16).await;
    let cases: &[Case] = &[
        (
            "3: no route",
            Method::GET,
            "/nope",
            &[],
            "",
            404,
            Some("route_not_found"),
            false,
        ),
        (
            "4 before 6: declared size over the limit, no key",
            Method::POST,
            "/keyed",
            &[JSON, ("content-length", "4096")],
            "",
            413,
            Some("payload_too_large"),
            false,
        ),
        (
            "6 before 9: no key, a body the schema refuses",
            Method::POST,
            "/keyed",
            &[JSON],
            "[1]",
            401,
            Some("missing_credentials"),
            false,
        ),
        (
            "9: the schema refuses",
            Method::POST,
            "/open",
            &[JSON],
            "{\"name\": 1}",
            422,
            Some("schema_violation"),
            true,
        ),
        (
            "11 after 9: a valid body goes on to the (closed) upstream",
            Method::POST,
            "/open",
            &[JSON],
            "{\"id\": 1}",
            502,
            Some("upstream_failed"),
            true,
        ),
        (
            "8: the first request spends the budget",
            Method::POST,
            "/limited",
            &[JSON],
            "{\"id\": 1}",
            502,
            Some("upstream_failed"),
            true,
        ),
        (
            "8 before 9: the second is refused unread",
            Method::POST,
            "/limited",
            &[JSON],
            "{\"id\": 1}",
            429,
            Some("rate_limited"),
            false,
        ),
        (
            "11: a direct answer never reads the body",
            Method::POST,
            "/direct",
            &[],
            "ignored",
            200,
            None,
            false,
        ),
    ];
    for (name, method, path, headers, body, status, code, read) in cases {
        let a = p.send(method.clone(), path, headers, body).await;
        assert_eq!(a.status.as_u16(), *status, "{name}: {:?}", a.body);
        assert_eq!(a.code.as_deref(), *code, "{name}: {:?}", a.body);
        assert_eq!(a.polls > 0, *read, "{name}: body polled {} times", a.polls);
        if code.is_some() {
            assert_eq!(a.request_id, a.body_request_id, "{name}: one request id");
        }
    }
    assert_eq!(
        p.send(Method::GET, "/direct", &[], "").await.body,
        Bytes::from_static(b"hi")
    );
}

#[tokio::test]
async fn request_ids_are_kept_when_well_formed_and_replaced_otherwise() {
    let p = pipeline(16).await;
    let cases: &[(&str, Option<&str>, bool)] = &[
        ("none sent", None, false),
        ("well-formed", Some("abc-123.x:y_z"), true),
        ("forged log text", Some("a b\"c"), false),
        ("too long", Some(&*"a".repeat(129)), false),
    ];
    for (name, sent, kept) in cases {
        let headers: Vec<(&str, &str)> = sent.iter().map(|v| ("x-request-id", *v)).collect();
        let a = p.send(Method::GET, "/nope", &headers, "").await;
        let got = a.request_id.unwrap_or_default();
        assert_eq!(a.body_request_id.as_deref(), Some(&*got), "{name}");
        if *kept {
            assert_eq!(Some(&*got), *sent, "{name}");
        } else {
            assert_eq!(got.len(), 32, "{name}: a new id, not {got:?}");
            assert!(
                got.bytes().all(|b| b.is_ascii_hexdigit()),
                "{name}: {got:?}"
            );
        }
    }
    let first = p.send(Method::GET, "/nope", &[], "").await.request_id;
    let second = p.send(Method::GET, "/nope", &[], "").await.request_id;
    assert_ne!(first, second, "generated ids differ");
}

#[tokio::test]
async fn a_full_in_flight_budget_sheds_before_any_step_with_a_json_answer() {
    let p = pipeline(0).await;
    for (name, path, headers, body) in [
        ("a route", "/open", &[JSON][..], "{\"id\": 1}"),
        ("no route", "/nope", &[][..], ""),
    ] {
        let a = p.send(Method::POST, path, headers, body).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_eq!(a.code.as_deref(), Some("overloaded"), "{name}");
        assert_eq!(a.request_id, a.body_request_id, "{name}: one request id");
        assert!(a.request_id.is_some(), "{name}");
        assert_eq!(a.polls, 0, "{name}: a shed body is never read");
    }
}
