//! Upstream tests: resets retried elsewhere, the concurrency limit, metrics,
//! canary headers, per-route connect timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::support::*;

use super::*;

/// A target that accepts connections and closes them before answering.
pub(super) async fn slammer() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            s.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
            drop(tcp);
        }
    });
    (addr, seen, task)
}

#[tokio::test]
async fn a_reset_before_the_response_is_retried_elsewhere() {
    let (bad, seen, task) = slammer().await;
    let good = Flaky::start("good").await;
    for (attempts, want_all_ok) in [(2, true), (1, false)] {
        let gw = gateway(&policy(
            &format!(
                "targets = [\"http://{bad}\", \"{}\"]\n[upstream.retry]\nattempts = {attempts}\n\
                 backoff_base = \"1ms\"\nbudget_min = 100\n[upstream.outlier]\nconsecutive_failures = 0",
                good.url()
            ),
            "",
        ))
        .await;
        let before = seen.load(Ordering::SeqCst);
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(get(&gw, "/x").await.0);
        }
        assert!(
            seen.load(Ordering::SeqCst) > before,
            "the bad target was tried"
        );
        if want_all_ok {
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        } else {
            assert!(statuses.contains(&502), "no retries: {statuses:?}");
        }
    }
    task.abort();
}

#[tokio::test]
async fn the_concurrency_limit_answers_503_without_touching_the_backend() {
    let a = Flaky::start("a").await;
    a.set(HANG);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.breaker]\nmax_concurrent = 2\nfailure_threshold = 0",
            targets(&[&a])
        ),
        "first_byte_timeout = \"20s\"",
    ))
    .await;
    let mut hung = JoinSet::new();
    for _ in 0..2 {
        let url = gw.url("/x");
        hung.spawn(async move {
            let _ = client()
                .get(url)
                .timeout(Duration::from_secs(20))
                .send()
                .await;
        });
    }
    let busy = eventually(5, || async { (a.hits() == 2).then_some(()) }).await;
    assert!(busy.is_some(), "two requests are in flight");
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_code(resp).await, "upstream_unavailable");
    assert_eq!(a.hits(), 2, "the third request never reached the backend");
    hung.abort_all();
}

#[tokio::test]
async fn decisions_are_counted_in_the_metrics_registry() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(FAIL_503);
    let gw = gateway(&policy(
        &format!(
            "targets = {}\n[upstream.retry]\nattempts = 2\nbackoff_base = \"1ms\"\n\
             [upstream.outlier]\nconsecutive_failures = 1\nbase_ejection = \"1h\"",
            targets(&[&a, &b])
        ),
        "",
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(get(&gw, "/x").await.0, 200);
    }
    let text = gw.running().shared().metrics().render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
    };
    assert_eq!(
        value("gatehouse_upstream_retries_total{upstream=\"u\"}"),
        1.0
    );
    let ejected = format!(
        "gatehouse_upstream_ejections_total{{upstream=\"u\",target=\"{}\"}}",
        a.url()
    );
    assert_eq!(value(&ejected), 1.0);
    assert_eq!(
        value("gatehouse_upstream_breaker_state{upstream=\"u\"}"),
        0.0
    );
    assert!(text.contains("# HELP gatehouse_upstream_retries_total"));
}

#[tokio::test]
async fn a_canary_header_picks_its_set_whatever_the_weights() {
    let (stable, canary) = (Flaky::start("stable").await, Flaky::start("canary").await);
    let gw = gateway(&policy(
        &format!(
            "[[upstream.set]]\nname = \"stable\"\ntargets = {}\n\
             [[upstream.set]]\nname = \"canary\"\ntargets = {}\nweight = 0\n\
             match_header = {{ name = \"x-canary\", value = \"1\" }}",
            targets(&[&stable]),
            targets(&[&canary])
        ),
        "",
    ))
    .await;
    for (header, want) in [
        (None, "stable"),
        (Some("1"), "canary"),
        (Some("0"), "stable"),
    ] {
        for _ in 0..3 {
            let mut req = client().get(gw.url("/x"));
            if let Some(v) = header {
                req = req.header("x-canary", v);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-target"], want, "x-canary: {header:?}");
        }
    }
    assert_eq!((stable.hits(), canary.hits()), (6, 3));
}

#[tokio::test]
async fn a_route_connect_timeout_overrides_the_upstreams() {
    // A loopback listener whose accept queue is full and never drained:
    // Linux then drops new SYNs, so connecting hangs until the timeout.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    if probe.is_ok() {
        println!("SKIPPED: this kernel accepts connections past a full accept queue");
        return;
    }
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"stuck\"\ntargets = [\"http://{addr}\"]\nconnect_timeout = \"20s\"\n\
                 [[route]]\nname = \"quick\"\nprefix = \"/quick\"\nupstream = \"stuck\"\n\
                 connect_timeout = \"200ms\"\nrequest_timeout = \"20s\"\n"
            ),
        )
        .start()
        .await;
    let started = std::time::Instant::now();
    let resp = client().get(gw.url("/quick")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(error_code(resp).await, "upstream_timeout");
    // The upstream's own 20 s connect timeout and the route's 20 s
    // deadline would both take 20 s: the route's 200 ms one answered.
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    drop(fillers);
    drop(listener);
    gw.shutdown().await;
}
