//! Upstreams that survive failure: balancing, outlier ejection, health
//! checks, retries under a budget, circuit breakers, target sets and
//! drains, with real loopback backends that die, hang, fail and come back.

mod discovery;
mod failures;
mod resilience;
mod sets;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::support::*;

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const FAIL_503: u8 = 2;
const HANG: u8 = 3;

/// A backend that can be told to fail or hang, killed (listener closed,
/// every connection cut) and brought back on the same port. Health-check
/// requests (`/health`) are counted apart and follow `health`.
struct Flaky {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    health: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

impl Flaky {
    async fn start(name: &'static str) -> Flaky {
        let mut f = Flaky {
            name,
            addr: "127.0.0.1:0".parse().unwrap(),
            mode: Arc::new(AtomicU8::new(OK)),
            health: Arc::new(AtomicU8::new(OK)),
            hits: Arc::new(AtomicUsize::new(0)),
            checks: Arc::new(AtomicUsize::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            tasks: None,
        };
        f.serve(TcpListener::bind("127.0.0.1:0").await.unwrap());
        f
    }

    fn serve(&mut self, listener: TcpListener) {
        self.addr = listener.local_addr().unwrap();
        let mut set = JoinSet::new();
        let (name, mode, health, hits, checks, delay) = (
            self.name,
            self.mode.clone(),
            self.health.clone(),
            self.hits.clone(),
            self.checks.clone(),
            self.delay_ms.clone(),
        );
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (mode, health, hits, checks, delay) = (
                    mode.clone(),
                    health.clone(),
                    hits.clone(),
                    checks.clone(),
                    delay.clone(),
                );
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (mode, health, hits, checks, delay) = (
                            mode.clone(),
                            health.clone(),
                            hits.clone(),
                            checks.clone(),
                            delay.clone(),
                        );
                        async move {
                            let ms = delay.load(Ordering::SeqCst);
                            if ms > 0 && req.uri().path() != "/health" {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let m = if req.uri().path() == "/health" {
                                checks.fetch_add(1, Ordering::SeqCst);
                                health.load(Ordering::SeqCst)
                            } else {
                                hits.fetch_add(1, Ordering::SeqCst);
                                mode.load(Ordering::SeqCst)
                            };
                            Ok::<_, Infallible>(answer(name, m, req).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        self.tasks = Some(set);
    }

    /// Stops accepting and cuts every open connection.
    fn kill(&mut self) {
        self.tasks = None;
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn set_health(&self, mode: u8) {
        self.health.store(mode, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(name: &str, mode: u8, req: Request<Incoming>) -> Response<TestBody> {
    let status = match mode {
        FAIL_500 => 500,
        FAIL_503 => 503,
        HANG => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            200
        }
        _ => 200,
    };
    let deadline = req
        .headers()
        .get("x-request-deadline")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Response::builder()
        .status(status)
        .header("x-target", name)
        .header("x-seen-deadline", deadline)
        .body(full(name.to_owned()))
        .unwrap()
}

fn targets(backends: &[&Flaky]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    format!("[{}]", list.join(", "))
}

/// A policy with upstream `u` (extra TOML appended to it) and route `/`.
fn policy(upstream: &str, route_extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"u\"\n{upstream}\n\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n{route_extra}\n"
    )
}

async fn gateway(policy_text: &str) -> TestGateway {
    GatewayBuilder::new()
        .policy("u.toml", policy_text)
        .start()
        .await
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String) {
    let resp = client()
        .get(gw.url(path))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let target = resp
        .headers()
        .get("x-target")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, target)
}
