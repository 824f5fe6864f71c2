//! `/metrics`, and the status page at `/` with its data at `/status.json`.
//!
//! `/metrics` is the Prometheus text exposition (OpenMetrics text when the
//! scraper's `Accept` asks for `application/openmetrics-text`). It is open
//! unless `[admin] metrics_require_token` is set: Prometheus scrapes a
//! loopback admin port without credentials.
//!
//! The status page is server-rendered HTML with inline CSS and SVG: no
//! script, no external asset, no build step. It refreshes itself every
//! five seconds (`<meta http-equiv="refresh">`). It shows admins the
//! addresses of refused clients, so it is behind the admin token like
//! `/v1/`: as a bearer token, or as the password of HTTP Basic auth (what a
//! browser can send; any user name). Values from the config are escaped.

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde::Serialize;

use super::AdminState;
use super::console::render::{esc, health};
use super::token::TokenRefusal;
use crate::app::ListenerSummary;
use crate::proxy::UpstreamStatus;
use crate::snapshot::RouteSummary;
use crate::telemetry::access::unix_now;
use crate::telemetry::history::{Point, RefusedClient, SLOT_SECS};
use crate::telemetry::metrics::to_openmetrics;

/// The routes of this module.
pub(super) fn router() -> Router<AdminState> {
    Router::new()
        .route("/", get(page))
        .route("/status.json", get(json))
        .route("/metrics", get(metrics))
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(
    State(state): State<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if state.metrics_require_token
        && let Err(refused) = admit(&state, &headers, client, Challenge::Bearer).await
    {
        return refused;
    }
    let text = state.shared.metrics().render();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_TEXT)],
            to_openmetrics(&text),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Challenge {
    Bearer,
    Basic,
}

fn refusal(status: StatusCode, code: &str, message: &str, challenge: Challenge) -> Response {
    let body = axum::Json(serde_json::json!({"error": code, "message": message}));
    let mut resp = (status, body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        let value = match challenge {
            Challenge::Bearer => "Bearer realm=\"gatehouse-admin\"",
            Challenge::Basic => "Basic realm=\"gatehouse-admin\", charset=\"UTF-8\"",
        };
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    resp
}

/// The token a request presents: `Bearer TOKEN`, or `Basic` with the
/// token as the password.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

async fn admit(
    state: &AdminState,
    headers: &HeaderMap,
    client: SocketAddr,
    challenge: Challenge,
) -> Result<(), Response> {
    let Some(token) = &state.token else {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the status page needs `[admin] token_hash` in the config (see `gatehouse hash-secret`)",
            challenge,
        ));
    };
    let Some(presented) = presented(headers) else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin token required",
            challenge,
        ));
    };
    match token.check(&presented, client.ip()).await {
        Ok(()) => Ok(()),
        Err(TokenRefusal::Invalid) => {
            tracing::warn!(target: "gatehouse::audit", client = %client, action = "status.view", outcome = "unauthorized", "admin");
            Err(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid admin token",
                challenge,
            ))
        }
        Err(TokenRefusal::Throttled) => Err(refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            "too many failed admin token attempts; try again later",
            challenge,
        )),
        Err(TokenRefusal::Internal) => Err(refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            challenge,
        )),
    }
}

/// Everything the status page shows.
#[derive(Debug, Serialize)]
struct Status {
    generation: u64,
    loaded_at: String,
    config_hash: String,
    ready: bool,
    listeners: Vec<ListenerSummary>,
    certificates: Vec<Certificate>,
    routes: Vec<RouteSummary>,
    upstreams: Vec<UpstreamStatus>,
    functions: Vec<FunctionView>,
    /// Ten-second slots, oldest first, ending now.
    traffic: Vec<Point>,
    last_minute: Rates,
    last_five_minutes: Rates,
    refused_clients: Vec<RefusedClient>,
}

#[derive(Debug, Serialize)]
struct Certificate {
    file: String,
    names: Vec<String>,
    not_after: String,
    days_left: i64,
}

/// A Lambda function upstream.
#[derive(Debug, Serialize)]
struct FunctionView {
    name: String,
    function: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct Rates {
    requests: u64,
    requests_per_second: f64,
    error_rate: f64,
    refused: u64,
}

fn rates(points: &[Point], slots: usize) -> Rates {
    let recent = &points[points.len().saturating_sub(slots)..];
    let requests: u64 = recent.iter().map(|p| p.requests).sum();
    let errors: u64 = recent.iter().map(|p| p.errors).sum();
    let refused: u64 = recent.iter().map(|p| p.refused).sum();
    let secs = (recent.len() as u64 * SLOT_SECS).max(1) as f64;
    Rates {
        requests,
        requests_per_second: requests as f64 / secs,
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        refused,
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn status(state: &AdminState) -> Status {
    let shared = &state.shared;
    let snapshot = shared.snapshot();
    let now = unix_now();
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    let telemetry = shared.telemetry();
    let traffic = telemetry.history.points(now);
    let loaded = snapshot
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let mut upstreams: Vec<UpstreamStatus> =
        snapshot.upstreams.values().map(|u| u.status()).collect();
    let mut functions: Vec<FunctionView> = snapshot
        .functions
        .iter()
        .map(|(name, f)| FunctionView {
            name: name.clone(),
            function: f.label().to_owned(),
        })
        .collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    Status {
        generation: snapshot.generation,
        loaded_at: rfc3339(loaded),
        config_hash: snapshot.config_hash.clone(),
        ready: shared.is_ready(),
        listeners: shared.listeners().to_vec(),
        certificates: shared
            .certs()
            .iter()
            .map(|c| Certificate {
                file: c.path.display().to_string(),
                names: c.names.clone(),
                not_after: rfc3339(c.not_after),
                days_left: (c.not_after - now_i).div_euclid(86_400),
            })
            .collect(),
        routes: snapshot.route_list.clone(),
        upstreams,
        functions,
        last_minute: rates(&traffic, 6),
        last_five_minutes: rates(&traffic, 30),
        traffic,
        refused_clients: telemetry.history.top_refused(10),
    }
}

async fn json(
    State(state): State<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&state, &headers, client, Challenge::Bearer).await {
        return refused;
    }
    axum::Json(status(&state)).into_response()
}

async fn page(
    State(state): State<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&state, &headers, client, Challenge::Basic).await {
        return refused;
    }
    let html = render(&status(&state));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
        ],
        html,
    )
        .into_response()
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}\
th{background:#f0f0f0}.num{text-align:right;font-variant-numeric:tabular-nums}\
.warn{color:#a40}.ok{color:#070}.muted{color:#777}.cards{display:flex;gap:1em;flex-wrap:wrap}\
.card{background:#fff;border:1px solid #ddd;padding:.6em 1em;min-width:10em}\
.card b{display:block;font-size:1.5em}svg{background:#fff;border:1px solid #ddd}";

/// A line chart of `values` (oldest first) as inline SVG.
fn chart(title: &str, unit: &str, values: &[f64], id: &str) -> String {
    const W: f64 = 900.0;
    const H: f64 = 140.0;
    const PAD: f64 = 24.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let step = if values.len() > 1 {
        (W - 2.0 * PAD) / (values.len() - 1) as f64
    } else {
        0.0
    };
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = PAD + step * i as f64;
        let y = H - PAD - (v / top) * (H - 2.0 * PAD);
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    format!(
        "<svg id=\"{id}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{PAD}\" y=\"16\" font-size=\"12\">{t} (max {max:.2} {u})</text>\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#bbb\"/>\
         <text x=\"{PAD}\" y=\"{l}\" font-size=\"10\" fill=\"#777\">−15 min</text>\
         <text x=\"{r2}\" y=\"{l}\" font-size=\"10\" fill=\"#777\">now</text>\
         <polyline fill=\"none\" stroke=\"#2a6\" stroke-width=\"2\" points=\"{points}\"/></svg>",
        t = esc(title),
        u = esc(unit),
        b = H - PAD,
        r = W - PAD,
        r2 = W - PAD - 20.0,
        l = H - 6.0,
    )
}

fn render(s: &Status) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><link rel=\"icon\" href=\"data:,\">\
         <title>gatehouse status</title><style>{CSS}</style></head><body>\
         <h1>gatehouse</h1><p class=\"muted\">configuration generation <b id=\"generation\">{}</b>, \
         loaded {} (sha256 {}…) · {} · refreshes every 5 s</p>",
        s.generation,
        esc(&s.loaded_at),
        esc(s.config_hash.get(..12).unwrap_or("")),
        if s.ready {
            "<span class=\"ok\">ready</span>"
        } else {
            "<span class=\"warn\">not ready</span>"
        },
    );
    let _ = write!(
        h,
        "<div class=\"cards\">\
         <div class=\"card\">requests, last minute<b id=\"requests-1m\">{}</b></div>\
         <div class=\"card\">requests/s, last minute<b id=\"rps-1m\">{:.2}</b></div>\
         <div class=\"card\">5xx rate, last minute<b id=\"errors-1m\">{:.1}%</b></div>\
         <div class=\"card\">requests, last 5 minutes<b id=\"requests-5m\">{}</b></div>\
         <div class=\"card\">refused, last 5 minutes<b id=\"refused-5m\">{}</b></div></div>",
        s.last_minute.requests,
        s.last_minute.requests_per_second,
        s.last_minute.error_rate * 100.0,
        s.last_five_minutes.requests,
        s.last_five_minutes.refused,
    );
    let secs = SLOT_SECS as f64;
    let rps: Vec<f64> = s.traffic.iter().map(|p| p.requests as f64 / secs).collect();
    let p95: Vec<f64> = s.traffic.iter().map(|p| p.p95_ms).collect();
    let errors: Vec<f64> = s
        .traffic
        .iter()
        .map(|p| {
            if p.requests == 0 {
                0.0
            } else {
                p.errors as f64 * 100.0 / p.requests as f64
            }
        })
        .collect();
    h.push_str("<h2>Traffic, last 15 minutes</h2>");
    h.push_str(&chart("Requests per second", "req/s", &rps, "chart-rate"));
    h.push_str("<br>");
    h.push_str(&chart("Latency p95", "ms", &p95, "chart-latency"));
    h.push_str("<br>");
    h.push_str(&chart("5xx share", "%", &errors, "chart-errors"));

    h.push_str("<h2>Listeners</h2><table id=\"listeners\"><tr><th>name</th><th>address</th><th>TLS</th></tr>");
    for l in &s.listeners {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.name),
            l.addr,
            if l.tls { "yes" } else { "no" }
        );
    }
    h.push_str("</table><h2>Certificates</h2><table id=\"certificates\"><tr><th>file</th><th>names</th><th>expires</th><th>days left</th></tr>");
    for c in &s.certificates {
        let class = if c.days_left < 14 { "warn" } else { "ok" };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num {class}\">{}</td></tr>",
            esc(&c.file),
            esc(&c.names.join(", ")),
            esc(&c.not_after),
            c.days_left
        );
    }
    h.push_str("</table><h2>Routes</h2><table id=\"routes\"><tr><th>name</th><th>host</th><th>path</th><th>methods</th><th>upstream</th></tr>");
    for r in &s.routes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(r.host.as_deref().unwrap_or("any")),
            esc(&r.path),
            esc(&if r.methods.is_empty() {
                "all".to_owned()
            } else {
                r.methods.join(" ")
            }),
            esc(r.upstream.as_deref().unwrap_or("(answers itself)")),
        );
    }
    h.push_str("</table><h2>Upstreams</h2><table id=\"upstreams\"><tr><th>upstream</th><th>breaker</th><th>set</th><th>target</th><th>health</th><th>in flight</th><th>latency (EWMA)</th><th>requests</th></tr>");
    for u in &s.upstreams {
        let breaker_class = if u.breaker == "closed" { "ok" } else { "warn" };
        for t in &u.targets {
            let shown = health(t);
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{breaker_class}\">{}</td><td>{} ({})</td><td>{}</td><td>{shown}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{:.1} ms</td><td class=\"num\">{}</td></tr>",
                esc(&u.name),
                esc(&u.breaker),
                esc(&t.set),
                t.weight,
                esc(&t.url),
                t.in_flight,
                t.latency_ewma_ms,
                t.requests,
            );
        }
        if u.targets.is_empty() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{breaker_class}\">{}</td><td colspan=\"6\" class=\"warn\">no targets (answers 503)</td></tr>",
                esc(&u.name),
                esc(&u.breaker)
            );
        }
    }
    for f in &s.functions {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>-</td><td>-</td><td>{}</td><td>AWS Lambda</td><td></td><td></td><td></td></tr>",
            esc(&f.name),
            esc(&f.function)
        );
    }
    h.push_str("</table><h2>Clients refused most</h2><table id=\"refused\"><tr><th>client</th><th>refusals</th><th>last reason</th><th>last at</th></tr>");
    for c in &s.refused_clients {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            c.client,
            c.refusals,
            esc(c.last_reason),
            esc(&rfc3339(i64::try_from(c.last_at).unwrap_or(0)))
        );
    }
    h.push_str("</table><p class=\"muted\"><a href=\"/console/\">web console</a> · JSON: <code>/status.json</code> · metrics: <code>/metrics</code></p></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_bearer_and_basic() {
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret:x");
        let cases = [
            ("bearer", "Bearer abc".to_owned(), Some("abc")),
            ("bearer any case", "bEaReR abc ".to_owned(), Some("abc")),
            (
                "basic password with colon",
                format!("Basic {basic}"),
                Some("s3cret:x"),
            ),
            ("basic not base64", "Basic !!!".to_owned(), None),
            ("other scheme", "Digest abc".to_owned(), None),
        ];
        for (name, value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&value).unwrap(),
            );
            assert_eq!(presented(&h).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn rates_over_recent_slots() {
        let p = |requests, errors| Point {
            requests,
            errors,
            ..Point::default()
        };
        let points = vec![p(100, 100), p(10, 0), p(20, 5), p(30, 0)];
        let r = rates(&points, 3);
        assert_eq!(r.requests, 60);
        assert!((r.requests_per_second - 2.0).abs() < 1e-9);
        assert!((r.error_rate - 5.0 / 60.0).abs() < 1e-9);
        assert_eq!(rates(&[], 6).requests, 0);
    }

    #[test]
    fn chart_scales_to_its_box() {
        let svg = chart("R <x>", "req/s", &[0.0, 5.0, 10.0], "c");
        assert!(svg.contains("R &lt;x&gt;"), "title escaped");
        assert!(svg.contains("points=\"24.0,116.0 450.0,"), "{svg}");
        assert!(svg.contains("876.0,"), "last point at the right edge");
    }
}
