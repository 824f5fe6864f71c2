//! Upstream tests: DNS discovery (A/AAAA and SRV from an in-test DNS server)
//! and watched targets files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize};
use std::time::Duration;

use http::Response;
use tokio::net::TcpListener;

use crate::support::*;

use super::*;

/// Two backends, "a" on 127.0.0.1 and "b" on 127.0.0.2, on the same port
/// (so a name's answer alone decides which one gets traffic); `None` where
/// 127.0.0.2 cannot be bound.
pub(super) async fn two_loopback_backends() -> Option<(Flaky, Flaky, u16)> {
    let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = one.local_addr().unwrap().port();
    let two = TcpListener::bind(("127.0.0.2", port)).await.ok()?;
    let idle = |name| Flaky {
        name,
        addr: "127.0.0.1:0".parse().unwrap(),
        mode: Arc::new(AtomicU8::new(OK)),
        health: Arc::new(AtomicU8::new(OK)),
        hits: Arc::new(AtomicUsize::new(0)),
        checks: Arc::new(AtomicUsize::new(0)),
        delay_ms: Arc::new(AtomicU64::new(0)),
        tasks: None,
    };
    let (mut a, mut b) = (idle("a"), idle("b"));
    a.serve(one);
    b.serve(two);
    Some((a, b, port))
}

#[tokio::test]
async fn a_dns_name_follows_the_resolver_answer() {
    // The hosts-style file (the test's resolver) decides which backend the
    // name points at.
    let Some((_a, b, port)) = two_loopback_backends().await else {
        println!("skipped: 127.0.0.2 cannot be bound here");
        return;
    };
    let builder = GatewayBuilder::new().policy(
        "u.toml",
        &policy(
            &format!(
                "dns = {{ name = \"api.internal\", port = {port}, min_ttl = \"50ms\", max_ttl = \"1s\", hosts_file = \"hosts\" }}"
            ),
            "",
        ),
    );
    let hosts = builder.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 api.internal\n").unwrap();
    let gw = builder.start().await;
    let first = eventually(5, || async {
        (get(&gw, "/x").await == (200, "a".to_owned())).then_some(())
    })
    .await;
    assert!(first.is_some(), "the name resolved to a");
    std::fs::write(&hosts, "127.0.0.2 api.internal\n").unwrap();
    let moved = eventually(5, || async {
        (get(&gw, "/x").await == (200, "b".to_owned())).then_some(())
    })
    .await;
    assert!(moved.is_some(), "a new answer moved the traffic to b");
    // A failed resolution (the name vanished) keeps the last good set.
    std::fs::write(&hosts, "# nothing\n").unwrap();
    let b_hits = b.hits();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&gw, "/x").await, (200, "b".to_owned()));
    }
    assert_eq!(b.hits(), b_hits + 10);
}

/// DNS records by (lower-case name, type): TTL and record data.
pub(super) type Zone = std::collections::HashMap<(String, u16), (u32, Vec<Vec<u8>>)>;

/// A DNS server on a loopback UDP port serving a zone the test changes:
/// names it holds get their records (none for other types: "no data"),
/// other names NXDOMAIN. The time of every query of `logged` type is
/// logged.
pub(super) struct DnsServer {
    pub(super) addr: SocketAddr,
    pub(super) zone: Arc<std::sync::Mutex<Zone>>,
    pub(super) queries: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

pub(super) const DNS_A: u16 = 1;
pub(super) const DNS_SRV: u16 = 33;

pub(super) fn dns_wire_name(name: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire
}

/// The dotted, lower-case name of a query's question, and where it ends.
pub(super) fn dns_question(q: &[u8]) -> (String, usize) {
    let mut at = 12;
    let mut labels = Vec::new();
    while q[at] != 0 {
        let len = q[at] as usize;
        labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + len]).to_lowercase());
        at += 1 + len;
    }
    (labels.join("."), at + 1)
}

impl DnsServer {
    pub(super) async fn start(logged: u16) -> DnsServer {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(std::sync::Mutex::new(Zone::new()));
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (z, log) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = &buf[..n];
                let (qname, at) = dns_question(q);
                let qtype = u16::from_be_bytes([q[at], q[at + 1]]);
                if qtype == logged {
                    log.lock().unwrap().push(tokio::time::Instant::now());
                }
                let (known, records) = {
                    let zone = z.lock().unwrap();
                    let known = zone.keys().any(|(n, _)| *n == qname);
                    (known, zone.get(&(qname, qtype)).cloned())
                };
                let (ttl, data) = records.unwrap_or((0, Vec::new()));
                // Header: same id, QR + RD + RA, NXDOMAIN for unknown names.
                let mut reply = q[0..2].to_vec();
                reply.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
                reply.extend_from_slice(&[0, 1, 0, data.len() as u8, 0, 0, 0, 0]);
                reply.extend_from_slice(&q[12..at + 4]);
                for d in data {
                    reply.extend_from_slice(&[0xC0, 12]);
                    reply.extend_from_slice(&qtype.to_be_bytes());
                    reply.extend_from_slice(&[0, 1]);
                    reply.extend_from_slice(&ttl.to_be_bytes());
                    reply.extend_from_slice(&(d.len() as u16).to_be_bytes());
                    reply.extend_from_slice(&d);
                }
                let _ = sock.send_to(&reply, from).await;
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
            task,
        }
    }

    pub(super) fn set(&self, name: &str, qtype: u16, ttl: u32, data: Vec<Vec<u8>>) {
        let key = (name.to_lowercase(), qtype);
        self.zone.lock().unwrap().insert(key, (ttl, data));
    }

    pub(super) fn set_a(&self, name: &str, ip: [u8; 4], ttl: u32) {
        self.set(name, DNS_A, ttl, vec![ip.to_vec()]);
    }

    pub(super) fn queries(&self) -> Vec<tokio::time::Instant> {
        self.queries.lock().unwrap().clone()
    }

    /// Waits (up to `secs`) for more than `n` logged queries; returns them.
    pub(super) async fn wait_for_queries(&self, n: usize, secs: u64) -> Vec<tokio::time::Instant> {
        eventually(secs, || async {
            let q = self.queries();
            (q.len() > n).then_some(q)
        })
        .await
        .unwrap_or_else(|| panic!("fewer than {} DNS queries in {secs}s", n + 1))
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_dns_answer_is_kept_for_its_ttl_within_floor_and_ceiling() {
    let Some((a, b, port)) = two_loopback_backends().await else {
        println!("skipped: 127.0.0.2 cannot be bound here");
        return;
    };
    let dns = DnsServer::start(DNS_A).await;
    dns.set_a("api.internal", [127, 0, 0, 1], 3);
    let gw = gateway(&policy(
        &format!(
            "dns = {{ name = \"api.internal\", port = {port}, nameservers = [\"{}\"], \
             min_ttl = \"200ms\", max_ttl = \"4s\" }}",
            dns.addr
        ),
        "",
    ))
    .await;
    let first = eventually(5, || async {
        (get(&gw, "/x").await == (200, "a".to_owned())).then_some(())
    })
    .await;
    assert!(
        first.is_some(),
        "the name resolved to a through our DNS server"
    );
    let t0 = dns.queries()[0];

    // The answer changes at once, but the gateway holds the old one for its
    // 3s TTL (not the 200ms floor): a keeps the traffic until then.
    dns.set_a("api.internal", [127, 0, 0, 2], 3);
    while t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            get(&gw, "/x").await,
            (200, "a".to_owned()),
            "within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dns.queries().len(), 1, "no query before the TTL ran out");
    let moved = eventually(5, || async {
        (get(&gw, "/x").await == (200, "b".to_owned())).then_some(())
    })
    .await;
    assert!(
        moved.is_some(),
        "after the TTL the new answer moved traffic to b"
    );
    let q = dns.queries();
    assert!(
        q[1] - q[0] >= Duration::from_millis(2950),
        "asked again after the TTL: {:?}",
        q[1] - q[0]
    );
    let a_hits = a.hits();

    // A zero TTL is raised to the floor: queries every 200ms, not a storm.
    dns.set_a("api.internal", [127, 0, 0, 2], 0);
    let before = dns.queries().len();
    dns.wait_for_queries(before, 5).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let q = dns.queries();
    let fast = &q[before..];
    assert!(
        fast.len() >= 3,
        "re-asked at the floor: {} queries",
        fast.len()
    );
    for w in fast.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(190),
            "never below the floor: {:?}",
            w[1] - w[0]
        );
    }

    // A day-long TTL is cut to the 4s ceiling.
    dns.set_a("api.internal", [127, 0, 0, 2], 86_400);
    let n = dns.queries().len();
    dns.wait_for_queries(n, 5).await;
    let q = dns.wait_for_queries(n + 1, 8).await;
    let gap = q[n + 1] - q[n];
    assert!(
        gap >= Duration::from_millis(3950),
        "held up to the ceiling: {gap:?}"
    );
    assert_eq!(a.hits(), a_hits, "a got nothing once the answer moved");
    assert!(b.hits() > 0);
}

#[tokio::test]
async fn srv_records_give_targets_ports_and_weights() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let dns = DnsServer::start(DNS_SRV).await;
    let srv = |priority: u16, weight: u16, port: u16, host: &str| {
        let mut d = Vec::new();
        for v in [priority, weight, port] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d.extend_from_slice(&dns_wire_name(host));
        d
    };
    // a and b share the top priority 3:1; c (priority 20) is a backup that
    // is not used while they are listed.
    dns.set(
        "_api._tcp.internal",
        DNS_SRV,
        1,
        vec![
            srv(10, 3, a.addr.port(), "a.internal"),
            srv(10, 1, b.addr.port(), "b.internal"),
            srv(20, 1, 9, "c.internal"),
        ],
    );
    for host in ["a.internal", "b.internal", "c.internal"] {
        dns.set_a(host, [127, 0, 0, 1], 60);
    }
    let gw = gateway(&policy(
        &format!(
            "dns = {{ name = \"_api._tcp.internal\", srv = true, nameservers = [\"{}\"], \
             min_ttl = \"100ms\", max_ttl = \"1s\" }}",
            dns.addr
        ),
        "",
    ))
    .await;
    let ready = eventually(5, || async {
        (get(&gw, "/x").await.0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the service resolved");
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..40 {
        assert_eq!(get(&gw, "/x").await.0, 200);
    }
    assert_eq!(
        (a.hits() - a0, b.hits() - b0),
        (30, 10),
        "the SRV weights, on the SRV ports"
    );

    // b leaves the service: after the 1s TTL only a is asked.
    dns.set(
        "_api._tcp.internal",
        DNS_SRV,
        1,
        vec![srv(10, 3, a.addr.port(), "a.internal")],
    );
    let moved = eventually(5, || async {
        let b_before = b.hits();
        for _ in 0..5 {
            get(&gw, "/x").await;
        }
        (b.hits() == b_before).then_some(())
    })
    .await;
    assert!(
        moved.is_some(),
        "b got no more traffic after leaving the SRV set"
    );
}

#[tokio::test]
async fn health_checks_of_a_dns_name_send_it_as_host() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let backend = Backend::start(move |req| {
        let log = log.clone();
        async move {
            if req.uri().path() == "/health" {
                let host = req
                    .headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_owned());
                log.lock().unwrap().push(host);
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let port = backend.addr.port();
    let builder = GatewayBuilder::new().policy(
        "u.toml",
        &policy(
            &format!(
                "dns = {{ name = \"api.internal\", port = {port}, hosts_file = \"hosts\", min_ttl = \"50ms\" }}\n\
                 [upstream.health]\npath = \"/health\"\ninterval = \"50ms\"\njitter = \"0s\""
            ),
            "",
        ),
    );
    std::fs::write(builder.path().join("hosts"), "127.0.0.1 api.internal\n").unwrap();
    let _gw = builder.start().await;
    let checked = eventually(5, || async { seen.lock().unwrap().first().cloned() }).await;
    assert_eq!(checked, Some(Some(format!("api.internal:{port}"))));
}

#[tokio::test]
async fn a_watched_targets_file_changes_the_set_without_a_reload() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let builder = GatewayBuilder::new().policy(
        "u.toml",
        &policy(
            "targets_file = \"targets.json\"\ntargets_file_poll = \"50ms\"",
            "",
        ),
    );
    let file = builder.path().join("targets.json");
    std::fs::write(&file, format!("[\"{}\"]", a.url())).unwrap();
    let gw = builder.start().await;
    assert_eq!(get(&gw, "/x").await, (200, "a".to_owned()), "read at start");
    let generation = gw.running().shared().generation();

    std::fs::write(
        &file,
        format!("[{{\"url\": \"{}\", \"weight\": 1}}]", b.url()),
    )
    .unwrap();
    let moved = eventually(5, || async {
        (get(&gw, "/x").await == (200, "b".to_owned())).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the new file moved the traffic to b");
    assert_eq!(gw.running().shared().generation(), generation, "no reload");

    // A broken file keeps the last good set.
    std::fs::write(&file, "[not json").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(&gw, "/x").await, (200, "b".to_owned()));

    // An empty list is an answer: 503 with the JSON body.
    std::fs::write(&file, "[]").unwrap();
    let empty = eventually(5, || async {
        let resp = client().get(gw.url("/x")).send().await.unwrap();
        (resp.status() == 503).then_some(resp)
    })
    .await
    .expect("an empty set answers 503");
    assert_eq!(error_code(empty).await, "no_upstream_target");
}
